"""A split of an image dataset: its images, labels and classes."""

from __future__ import annotations

import dataclasses

import numpy as np

from tripletjax.data.cache import ImageArray


@dataclasses.dataclass(frozen=True)
class Split:
  """One split of a dataset.

  Attributes:
    images: ``uint8 [N, H, W, C]``: an array in host memory, or an
      `ImageArray` that reads the rows asked for from the disk cache.
    labels: ``int32 [N]``, class ids in ``[0, num_classes)``.
    num_classes: number of classes of the dataset (not only of this split).
    class_names: the name of each class id, where the dataset has them.
  """
  images: np.ndarray | ImageArray
  labels: np.ndarray
  num_classes: int
  class_names: tuple[str, ...] | None = None

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
    """The examples `keep` (a boolean mask or indices) selects; cached
    images are not read."""
    images = (self.images.select(keep) if isinstance(self.images, ImageArray)
              else self.images[keep])
    return dataclasses.replace(self, images=images, labels=self.labels[keep])
