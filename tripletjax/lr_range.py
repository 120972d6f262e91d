"""The learning-rate range test's pure parts (Smith, "Cyclical Learning
Rates for Training Neural Networks", 2017; fastai's ``lr_find``): the
exponential ramp of rates, the smoothing of the losses and the suggested
peak rates. The run itself is `experiments.lr_range_test`."""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np

SMOOTHING = 0.98
DIVERGED = 4.0  # Stop once the smoothed loss is this many times its lowest.


def ramp(min_lr: float, max_lr: float, steps: int):
  """The schedule ``min_lr (max_lr / min_lr) ** (step / (steps - 1))``, an
  `optax.Schedule`."""
  growth = math.log(max_lr / min_lr) / max(1, steps - 1)
  return lambda step: min_lr * jnp.exp(growth * step)


def smooth(losses: np.ndarray) -> np.ndarray:
  """The debiased exponential moving average of `losses` (as Adam's first
  moment: the average of the first steps is not pulled towards 0)."""
  average, out = 0.0, []
  for i, loss in enumerate(losses, start=1):
    average = SMOOTHING * average + (1 - SMOOTHING) * loss
    out.append(average / (1 - SMOOTHING ** i))
  return np.array(out)


def suggestions(rates: np.ndarray, smoothed: np.ndarray) -> dict[str, float]:
  """Suggested peak learning rates: ``steepest``, where the smoothed loss
  falls fastest against log(rate), and ``minimum / 10``, a tenth of the
  rate of the lowest smoothed loss (the usual rule of thumb).

  Args:
    rates, smoothed: ``[S]`` each step's learning rate and smoothed loss.
  """
  lowest = int(np.argmin(smoothed))
  # The slope between the average's first span (about 1 / (1 - 0.98)
  # steps, where it rests on few losses) and the lowest loss (past it the
  # loss only rises).
  first = min(int(round(1 / (1 - SMOOTHING))), lowest // 2)
  slope = np.gradient(smoothed[first:lowest + 1],
                      np.log(rates[first:lowest + 1])) if (
                          lowest - first >= 1) else np.zeros(1)
  return {"steepest": float(rates[first + int(np.argmin(slope))]),
          "minimum / 10": float(rates[lowest] / 10)}
