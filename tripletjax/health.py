"""Numerical health of a run: non-finite values stop it, collapse is reported.

Both read the host copy of each step's metrics (`train.train_step`'s output).
"""

from __future__ import annotations

from typing import Callable, Mapping

from absl import logging
import numpy as np

WATCHED = ("loss", "grad_norm")


def check_finite(step: int, metrics: Mapping[str, float]) -> None:
  """Raises `FloatingPointError` naming the step and the quantity."""
  for name in WATCHED:
    if not np.isfinite(metrics[name]):
      raise FloatingPointError(
          f"Step {step}: {name} is {metrics[name]}. Training stopped; the "
          "last checkpoint is intact.")


class CollapseDetector:
  """Warns when the embedding collapses or the loss stalls at the margin.

  * Collapse: the mean distance between negatives falls below
    `min_distance` (every embedding in nearly the same place).
  * Stall: the loss stays within `tolerance` of the margin for `patience`
    consecutive steps, the signature of a hinge loss whose triplets all sit
    at ``d_ap = d_an`` (typical of batch-hard from a bad start).

  Each warning is given once per episode and repeated only after the
  condition has cleared.
  """

  def __init__(self, *, margin: float, patience: int = 200,
               tolerance: float = 0.01, min_distance: float = 1e-3,
               warn: Callable[[str], None] = logging.warning):
    self.margin, self.patience = margin, patience
    self.tolerance, self.min_distance = tolerance, min_distance
    self._warn = warn
    self._stalled_since: int | None = None
    self._warned_stall = self._warned_collapse = False

  def __call__(self, step: int, metrics: Mapping[str, float]) -> None:
    negative = metrics.get("mean_negative_distance")
    if negative is not None and metrics.get("num_triplets", 1) > 0:
      if negative < self.min_distance:
        if not self._warned_collapse:
          self._warn(
              f"Step {step}: embedding collapse: the mean distance between "
              f"negatives is {negative:.3g} (positives: "
              f"{metrics.get('mean_positive_distance', float('nan')):.3g}).")
          self._warned_collapse = True
      else:
        self._warned_collapse = False
    at_margin = self.margin > 0 and abs(
        metrics["loss"] - self.margin) <= self.tolerance * self.margin
    if not at_margin:
      self._stalled_since, self._warned_stall = None, False
      return
    if self._stalled_since is None:
      self._stalled_since = step
    if step - self._stalled_since + 1 >= self.patience and \
        not self._warned_stall:
      self._warn(
          f"Step {step}: the loss has been within {self.tolerance:.0%} of the "
          f"margin ({self.margin}) for {step - self._stalled_since + 1} steps "
          f"(now {metrics['loss']:.4g}; mean positive distance "
          f"{metrics.get('mean_positive_distance', float('nan')):.3g}, "
          f"negative {metrics.get('mean_negative_distance', float('nan')):.3g}"
          "): the embedding may have collapsed.")
      self._warned_stall = True
