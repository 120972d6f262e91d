r"""The learning-rate range test (Smith, "Cyclical Learning Rates for
Training Neural Networks", 2017; fastai's ``lr_find``): a run whose learning
rate grows exponentially from --min_lr to --max_lr, step by step, on the
main job's data, network, loss and batches (any training flag applies).
The loss, smoothed by an exponential moving average (0.98, debiased), falls
while the rate is useful and rises or flattens once it is too high (for a
triplet loss: towards the margin, where the embedding collapses); the test
stops when the smoothed loss exceeds four times its lowest (or is not
finite).

Suggested peak learning rates: ``steepest``, where the smoothed loss falls
fastest against log(rate), and ``minimum / 10``, a tenth of the rate of the
lowest smoothed loss (the usual rule of thumb). Writes into --output
``lr_range.csv`` (step, rate, loss, smoothed loss) and ``lr_range.png``.

  python -m experiments.lr_range_test --output=runs/lr_range
  python -m experiments.lr_range_test --norm=batch --output=runs/lr_bn

Expected for the main job on MNIST (docs/results.md): the lowest smoothed
loss near a rate of 1e-2, both suggestions between 1e-4 and 2e-3.
"""

from __future__ import annotations

import csv
import functools
import os

from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

from experiments import common
from tripletjax import data
from tripletjax import lr_range
from tripletjax import parallel
from tripletjax import plotting
from tripletjax import sampling
from tripletjax import train

common.define_config_flags()
_MIN_LR = flags.DEFINE_float("min_lr", 1e-5, "Learning rate of the first "
                             "step.")
_MAX_LR = flags.DEFINE_float("max_lr", 1.0, "Learning rate of the last step.")
_RANGE_STEPS = flags.DEFINE_integer("range_steps", 300,
                                    "Steps from --min_lr to --max_lr.")
_OUTPUT = flags.DEFINE_string("output", "runs/lr_range",
                              "Directory of the table and the figure.")


def main(argv):
  del argv  # Checked by common.run.
  config = common.config_from_flags()
  min_lr, max_lr, steps = _MIN_LR.value, _MAX_LR.value, _RANGE_STEPS.value
  if not 0 < min_lr < max_lr:
    raise ValueError(f"--min_lr and --max_lr must satisfy 0 < min_lr < "
                     f"max_lr, got {min_lr} and {max_lr}.")
  if steps < 2:
    raise ValueError(f"--range_steps must be >= 2, got {steps}.")
  train_split, _ = data.load_splits(config)
  sampler = sampling.create(config, train_split.labels,
                            train_split.class_names)
  schedule = lr_range.ramp(min_lr, max_lr, steps)
  graphdef, state, tx = train.initial_state(
      config, data.input_shape(config, train_split), learning_rate=schedule)
  step_fn = jax.jit(functools.partial(train.train_step, graphdef=graphdef,
                                      tx=tx, config=config),
                    donate_argnums=0)
  rates = np.asarray(schedule(np.arange(steps)))
  losses = []
  for step in range(steps):
    indices = sampler(step)
    images, labels = parallel.local_batch(
        indices, sampler.batch_labels(indices, train_split.labels),
        train_split.images)
    state, metrics = step_fn(state, jnp.asarray(images), jnp.asarray(labels))
    losses.append(float(metrics["loss"]))
    smoothed = lr_range.smooth(np.array(losses))
    if not np.isfinite(smoothed[-1]) or (
        smoothed[-1] > lr_range.DIVERGED * smoothed.min()):
      break
  rates = rates[:len(losses)]
  smoothed = lr_range.smooth(np.array(losses))
  suggested = lr_range.suggestions(rates, smoothed)
  os.makedirs(_OUTPUT.value, exist_ok=True)
  with open(os.path.join(_OUTPUT.value, "lr_range.csv"), "w", newline="",
            encoding="utf-8") as f:
    writer = csv.writer(f)
    writer.writerow(["step", "learning_rate", "loss", "smoothed_loss"])
    writer.writerows(zip(range(len(losses)), rates, losses, smoothed))
  figure = plotting.lines(
      {"loss": (rates, np.array(losses), None),
       "smoothed loss": (rates, smoothed, None)},
      os.path.join(_OUTPUT.value, "lr_range.png"), xlabel="learning rate",
      ylabel="loss", title=f"{config.dataset}, {config.model}, "
      f"{config.loss}", log_x=True, log_base=10, marked=suggested)
  print(f"{len(losses)} steps, learning rate {rates[0]:.3g} to "
        f"{rates[-1]:.3g}" + (" (stopped: the loss diverged)"
                               if len(losses) < steps else ""))
  print(f"lowest smoothed loss {smoothed.min():.4f} at learning rate "
        f"{rates[int(np.argmin(smoothed))]:.3g}")
  for name, rate in suggested.items():
    print(f"suggested peak learning rate ({name}): {rate:.3g}")
  print(f"Wrote {figure} and lr_range.csv.")


if __name__ == "__main__":
  common.run(main)
