r"""Speed of the train step and of embedding, on synthetic data.

Set-ups (--models), each at several batch sizes:

* ``reference``: the reference CNN (conv 3x3 32 -> pool -> conv 3x3 64 ->
  pool -> dense 256 -> dense 64, L2-normalised), batch-hard loss, Adam, no
  augmentation: the network of the PyTorch comparison.
* ``default``: the main job's model and settings (batch-all loss, random
  shifts), at the same batch sizes;
* ``resnet18``, ``resnet50``, ...: torchvision's ResNets with batch norm and
  ImageNet input normalisation, batch-all, on RGB images of --image_size.

Images/s of the train step is the median over timed windows after
compilation. GFLOP/s counts the model's FLOPs, the same on every backend:
the multiply-adds of its convolutions and matrix products (2 FLOPs each) in
the forward pass, times 3 for forward and backward. The CPU peak is the
CPU's single-precision peak, cores x clock x FLOPs per cycle, derived from
what the CPU is (`experiments.cpu_peak`: Zen 4 runs AVX-512 on 256-bit halves,
32 FLOPs per cycle; Zen 5 has 512-bit pipes, 64); the report says how. Pass
--peak_gflops where that is wrong.

  python -m experiments.benchmark_train
  python -m experiments.benchmark_train --batch_sizes=256 --json=train.json
  python -m experiments.benchmark_train --models=resnet18,resnet50 \
      --image_size=64 --batch_sizes=32 --eval_batch_size=64
      # also --image_size=224 --batch_sizes=16; --dtype=bfloat16

With --loop, the whole training loop instead: the main job on MNIST
(`train.train_and_evaluate`, no evaluation, checkpoint or figure during
the loop) for each --sampling and --steps_per_call, next to its train step
alone on a batch already on the device; "loop/step" is the loop's time per
step over the step's, the host's share of the loop. The loop is timed after
its first call, which compiles.

  python -m experiments.benchmark_train --loop --models=mlp \
      --sampling=host,device --steps_per_call=1,10,50 --loop_steps=2000
  XLA_FLAGS=--xla_force_host_platform_device_count=8 \
      python -m experiments.benchmark_train --loop --models=mlp ...

Expected (docs/performance.md): the reference CNN at about 3,300 images/s at
batch 256 on two Zen 4 or Zen 5 cores with the XLA CPU flags; several
hundred thousand on one H100.
"""

import statistics
import tempfile
import time

from absl import flags
from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np

from experiments import common
from experiments import cpu_peak
from experiments import timed_step
from tripletjax import config as config_lib
from tripletjax import models
from tripletjax import train

_MODELS = flags.DEFINE_list(
    "models", ["reference", "default"],
    "Which set-ups to time: reference, default, or a ResNet's name.")
_BATCH_SIZES = flags.DEFINE_list("batch_sizes", ["256", "512"],
                                 "Images per train step.")
_WINDOWS = flags.DEFINE_integer("windows", 5, "Timed windows (median kept).")
_STEPS = flags.DEFINE_integer("steps_per_window", 20, "Steps per window.")
_EVAL_IMAGES = flags.DEFINE_integer(
    "eval_images", 10240, "Images embedded to time evaluation.")
_EVAL_BATCH_SIZE = flags.DEFINE_integer(
    "eval_batch_size", 0, "Images per embedding call (0: the main job's "
    "--eval_batch_size, 1,024; a ResNet-50 at 224 pixels needs about 20 GB "
    "for that many).")
_PEAK = flags.DEFINE_float(
    "peak_gflops", None, "The device's peak GFLOP/s (default: estimated for "
    "CPUs from /proc/cpuinfo; none on accelerators).")
_JSON = flags.DEFINE_string("json", None, "Also write the rows to this file.")

_IMAGE_SIZE = flags.DEFINE_integer(
    "image_size", 0, "Images of this many pixels square, RGB (0: 28 x 28 "
    "grey, MNIST's).")
_DTYPE = flags.DEFINE_string("dtype", "float32",
                             "What convolutions compute in: float32 or "
                             "bfloat16.")

_LOOP = flags.DEFINE_bool(
    "loop", False, "Time the main job's training loop on MNIST next to its "
    "step alone; --models then names main-job models (cnn, mlp).")
_SAMPLING = flags.DEFINE_list("sampling", ["host", "device"],
                              "--loop: where batches are drawn.")
_STEPS_PER_CALL = flags.DEFINE_list("steps_per_call", ["1", "10"],
                                    "--loop: steps per compiled call.")
_LOOP_STEPS = flags.DEFINE_integer("loop_steps", 2000,
                                   "--loop: training steps of each run.")
_LOOP_TEST_SPLIT = flags.DEFINE_string(
    "loop_test_split", "test[:2000]", "--loop: the split whose MAP@R (against "
    "the train split) shows that each set-up trains alike; a check, not a "
    "result (the full test split's 50 million verification pairs take "
    "minutes).")

def setup(name: str, batch_size: int) -> config_lib.Config:
  """The `Config` of set-up `name` at `batch_size` (a multiple of 16)."""
  if name == "reference":
    settings = timed_step.REFERENCE
  elif name == "default":
    settings = {}
  elif name.startswith("resnet"):  # Photo recipe, ImageNet normalisation.
    settings = dict(model=name, augment="none", input_norm="imagenet")
  else:
    raise ValueError(f"models must be reference, default or a ResNet, got "
                     f"{name!r}.")
  return timed_step.config(batch_size, dtype=_DTYPE.value, **settings)


def image_shape() -> tuple[int, int, int]:
  """28 x 28 grey images, or RGB ones of --image_size."""
  size = _IMAGE_SIZE.value
  return (size, size, 3) if size else (28, 28, 1)


def model_flops_per_image(model, image_shape) -> float:
  """FLOPs of one image's forward pass: 2 per multiply-add of every
  convolution and matrix product in the traced model."""
  def forward(images):
    return model(images)
  jaxpr = jax.make_jaxpr(forward)(jnp.zeros((1, *image_shape)))
  flops = 0.0
  for eqn in jaxpr.eqns:
    out = eqn.outvars[0].aval.shape
    if eqn.primitive.name == "conv_general_dilated":
      kernel = eqn.invars[1].aval.shape
      spec = eqn.params["dimension_numbers"].rhs_spec  # (out, in, spatial..)
      per_output = np.prod([kernel[d] for d in spec[1:]])
      flops += 2.0 * np.prod(out) * per_output
    elif eqn.primitive.name == "dot_general":
      (contract, _), _ = eqn.params["dimension_numbers"]
      lhs = eqn.invars[0].aval.shape
      flops += 2.0 * np.prod(out) * np.prod([lhs[d] for d in contract])
  return float(flops)


def measure_step(config: config_lib.Config, windows: int,
                 steps_per_window: int) -> dict:
  """Compile time, FLOPs and images/s of the train step of `config`."""
  step = timed_step.TimedStep(config, image_shape())
  step.run(1)  # Warm-up.
  images_per_second = statistics.median(
      steps_per_window * config.batch_size / step.run(steps_per_window)
      for _ in range(windows))
  model = nnx.merge(step.graphdef, step.state.params, step.state.batch_stats)
  model.eval()  # Counting FLOPs traces it; training mode would update it.
  flops = 3 * model_flops_per_image(model, image_shape()) * config.batch_size
  return {
      "compile_seconds": step.compile_seconds,
      "images_per_second": images_per_second,
      "step_ms": 1e3 * config.batch_size / images_per_second,
      "gflop_per_step": flops / 1e9,
      "gflops": flops / 1e9 * images_per_second / config.batch_size,
      "state": step.state,
      "graphdef": step.graphdef,
  }


def measure_embedding(graphdef, state, batch_size: int, num_images: int
                      ) -> float:
  """Images/s of embedding `num_images` images in batches (after compiling)."""
  images = jnp.zeros((batch_size, *image_shape()), jnp.uint8)
  jax.block_until_ready(models.embed(graphdef, state.params,
                                     state.batch_stats, images))
  calls = max(1, num_images // batch_size)
  start = time.perf_counter()
  for _ in range(calls):
    out = models.embed(graphdef, state.params, state.batch_stats, images)
  jax.block_until_ready(out)
  return calls * batch_size / (time.perf_counter() - start)


def measure_loop(config: config_lib.Config) -> dict:
  """The main job's loop under `config`, next to its step alone."""
  step = measure_step(config, _WINDOWS.value, _STEPS.value)
  with tempfile.TemporaryDirectory() as workdir:
    results = train.train_and_evaluate(config, workdir)
  loop_ms = 1e3 * config.batch_size / results["images_per_second"]
  return {"loop_images_per_second": results["images_per_second"],
          "images_per_second": step["images_per_second"],
          "loop_ms": loop_ms, "step_ms": step["step_ms"],
          "loop_over_step": loop_ms / step["step_ms"],
          "first_call_seconds": results["first_call_seconds"],
          "test_map_at_r": results["test_map_at_r"]}


def main_loop(device) -> None:
  """--loop: each model x sampling x steps per call."""
  table = common.Table([
      ("model", "model", ""), ("sampling", "sampling", ""),
      ("steps/call", "steps_per_call", "d"),
      ("loop img/s", "loop_images_per_second", ".0f"),
      ("step img/s", "images_per_second", ".0f"),
      ("loop ms/step", "loop_ms", ".2f"), ("step ms", "step_ms", ".2f"),
      ("loop/step", "loop_over_step", ".2f"),
      ("first call (s)", "first_call_seconds", ".1f"),
      ("MAP@R", "test_map_at_r", ".4f")], _JSON.value)
  for model in _MODELS.value:
    for sampling in _SAMPLING.value:
      for per_call in map(int, _STEPS_PER_CALL.value):
        config = config_lib.Config(
            model=model, steps=_LOOP_STEPS.value, eval_every=0,
            test_split=_LOOP_TEST_SPLIT.value,
            checkpoint_every=0, write_figures=False, sampling=sampling,
            steps_per_call=per_call, log_every_seconds=3600.0)
        table.add({"model": model, "sampling": sampling,
                   "steps_per_call": per_call, **measure_loop(config),
                   "devices": jax.device_count(),
                   "device": device.device_kind, "platform": device.platform})
  table.close()


def main(argv):
  del argv  # Checked by common.run.
  device = jax.devices()[0]
  peak, how = _PEAK.value, "--peak_gflops"
  if peak is None and device.platform == "cpu":
    estimate = cpu_peak.cpu_peak()
    if estimate is not None:
      peak, how = estimate.gflops, estimate.how
  print(f"Device: {device.device_kind} ({device.platform}), "
        f"{jax.device_count()} device(s); JAX {jax.__version__}; peak "
        f"{'unknown' if peak is None else f'{peak:.0f} GFLOP/s ({how})'}.")
  if _LOOP.value:
    main_loop(device)
    return
  table = common.Table([
      ("model", "model", ""), ("size", "image_size", "d"),
      ("batch", "batch_size", "d"),
      ("images/s", "images_per_second", ".0f"), ("step (ms)", "step_ms", ".1f"),
      ("compile (s)", "compile_seconds", ".2f"),
      ("GFLOP/step", "gflop_per_step", ".2f"), ("GFLOP/s", "gflops", ".1f"),
      ("of peak", "fraction_of_peak", ".0%"),
      ("embed img/s", "embed_images_per_second", ".0f")], _JSON.value)
  for name in _MODELS.value:
    for batch_size in map(int, _BATCH_SIZES.value):
      config = setup(name, batch_size)
      result = measure_step(config, _WINDOWS.value, _STEPS.value)
      embed_rate = measure_embedding(
          result.pop("graphdef"), result.pop("state"),
          _EVAL_BATCH_SIZE.value or config.eval_batch_size,
          _EVAL_IMAGES.value)
      table.add({"model": name, "image_size": image_shape()[0],
                 "batch_size": batch_size, **result,
                 "embed_images_per_second": embed_rate,
                 "fraction_of_peak": result["gflops"] / peak if peak else None,
                 "device": device.device_kind, "platform": device.platform})
  table.close()


if __name__ == "__main__":
  common.run(main)
