"""A split of an image dataset in host memory, and the splits of a run."""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class Split:
  """One split of a dataset in host memory.

  Attributes:
    images: ``uint8 [N, H, W, C]``.
    labels: ``int32 [N]``, class ids in ``[0, num_classes)``.
    num_classes: number of classes of the dataset (not only of this split).
  """
  images: np.ndarray
  labels: np.ndarray
  num_classes: int

  def __post_init__(self):
    if self.images.ndim != 4 or self.images.shape[0] != self.labels.shape[0]:
      raise ValueError(
          f"images must be [N, H, W, C] and labels [N], got "
          f"{self.images.shape} and {self.labels.shape}.")

  def __len__(self) -> int:
    return self.labels.shape[0]

  @property
  def image_shape(self) -> tuple[int, int, int]:
    return tuple(self.images.shape[1:])

  def select(self, keep: np.ndarray) -> Split:
    """The examples where `keep` (a boolean mask or indices) selects."""
    return Split(images=self.images[keep], labels=self.labels[keep],
                 num_classes=self.num_classes)
