r"""Time and memory of each triplet loss plus its gradient, by batch size.

Each (loss, batch size) runs in a fresh process, so the peak resident memory
it reports belongs to that measurement alone (it includes the ~0.3 GiB that
importing JAX costs). Time is the median over repeats after compilation.

  python -m experiments.benchmark_losses
  python -m experiments.benchmark_losses --losses=batch_all \
      --batch_sizes=4096 --dim=64
  python -m experiments.benchmark_losses --losses=batch_all \
      --batch_sizes=8192 --devices=8   # XLA temp is then per device
  python -m experiments.benchmark_losses --losses=batch_all \
      --batch_sizes=250 --steps_per_call=10 --sort_implementation=xla
      # ten descents on the embeddings in one call, as the trainer's
      # --steps_per_call runs steps: the NumPy sort's callback per step
      # against XLA's sort

Expected on two CPU cores (docs/performance.md): batch-all loss and gradient
at B = 4,096 in about 0.5-0.7 s with about 0.7 GiB of XLA temporaries;
batch-hard about half of that; memory grows as B^2, never B^3.
"""

import multiprocessing
import os
import resource
import statistics
import time

from absl import flags

from experiments import common

_LOSSES = flags.DEFINE_list(
    "losses", ["batch_all", "batch_hard", "semihard", "random_triplets"],
    "Losses to time: names of tripletjax.MINING_LOSSES or random_triplets.")
_BATCH_SIZES = flags.DEFINE_list(
    "batch_sizes", ["256", "1024", "2048", "4096", "8192"], "Batch sizes B.")
_DIM = flags.DEFINE_integer("dim", 64, "Embedding dimension D.")
_CLASSES = flags.DEFINE_integer("classes", 64, "Number of classes in a batch.")
_METRIC = flags.DEFINE_string("metric", "euclidean", "Distance metric.")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed repeats after compiling.")
_DEVICES = flags.DEFINE_integer(
    "devices", 1,
    "Split the batch over this many devices (simulated CPU devices on a "
    "CPU) with global mining in shard_map, as the trainer does.")
_SORT = flags.DEFINE_enum(
    "sort_implementation", "auto", ["auto", "numpy", "xla"],
    "How batch_all and semihard sort (tripletjax.sorting.argsort_rows).")
_STEPS_PER_CALL = flags.DEFINE_integer(
    "steps_per_call", 1, "Evaluations per compiled call: a lax.scan of "
    "gradient-descent steps on the embeddings; the time is per evaluation.")
_JSON = flags.DEFINE_string("json", None, "Also write the rows to this file.")


def _measure(loss_name: str, batch: int, dim: int, classes: int, metric: str,
             repeats: int, devices: int, sort_implementation: str,
             steps_per_call: int) -> dict:
  """Runs in a child process: compiles, times and measures one loss."""
  if devices > 1:
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                               f" --xla_force_host_platform_device_count="
                               f"{devices}")
  # pylint: disable=g-import-not-at-top
  import jax
  import jax.numpy as jnp
  from jax.sharding import PartitionSpec as P
  import tripletjax
  from tripletjax import parallel
  # pylint: enable=g-import-not-at-top

  key_x, key_y = jax.random.split(jax.random.key(0))
  x = jax.random.normal(key_x, (batch, dim))
  labels = jax.random.randint(key_y, (batch,), 0, classes)
  if loss_name == "random_triplets":
    def loss_fn(e, _):
      a, p, n = jnp.split(e[: batch - batch % 3], 3)
      return tripletjax.triplet_margin_loss(a, p, n, margin=0.2, metric=metric)
  else:
    sorts = loss_name in ("batch_all", "semihard")
    def loss_fn(e, y):
      return tripletjax.MINING_LOSSES[loss_name](
          e, y, margin=0.2, metric=metric,
          axis_name=parallel.DATA_AXIS if devices > 1 else None,
          **({"sort_implementation": sort_implementation} if sorts else {}))
    if devices > 1:
      assert jax.device_count() == devices
      loss_fn = jax.shard_map(loss_fn, mesh=parallel.make_mesh(),
                              in_specs=(P(parallel.DATA_AXIS),) * 2,
                              out_specs=P())
  step = jax.value_and_grad(loss_fn, has_aux=True)
  if steps_per_call > 1:
    one = step

    def step(x, labels):  # Each evaluation depends on the one before.
      def descend(x, _):
        (loss, _), grad = one(x, labels)
        return x - 1e-3 * grad, loss
      return jax.lax.scan(descend, x, length=steps_per_call)
  step = jax.jit(step)
  start = time.perf_counter()
  compiled = step.lower(x, labels).compile()
  compile_s = time.perf_counter() - start
  jax.block_until_ready(compiled(x, labels))
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(compiled(x, labels))
    times.append(time.perf_counter() - start)
  memory = compiled.memory_analysis()
  return {
      "loss": loss_name,
      "batch": batch,
      "dim": dim,
      "metric": metric,
      "seconds": statistics.median(times) / steps_per_call,
      "steps_per_call": steps_per_call,
      "sort": sort_implementation,
      "compile_seconds": compile_s,
      "devices": devices,
      "xla_temp_mib": memory.temp_size_in_bytes / 2**20 if memory else None,
      "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
  }


def main(argv):
  del argv  # Checked by common.run.
  context = multiprocessing.get_context("spawn")
  table = common.Table([
      ("loss", "loss", ""), ("B", "batch", "d"), ("time (s)", "seconds", ".4f"),
      ("compile (s)", "compile_seconds", ".2f"),
      ("XLA temp (MiB)", "xla_temp_mib", ".1f"),
      ("peak RSS (MiB)", "peak_rss_mib", ".0f")], _JSON.value)
  for loss_name in _LOSSES.value:
    for batch in map(int, _BATCH_SIZES.value):
      with context.Pool(1) as pool:
        table.add(pool.apply(_measure, (loss_name, batch, _DIM.value,
                                        _CLASSES.value, _METRIC.value,
                                        _REPEATS.value, _DEVICES.value,
                                        _SORT.value, _STEPS_PER_CALL.value)))
  table.close()


if __name__ == "__main__":
  common.run(main)
