"""The train and test splits of a configured run."""

from __future__ import annotations

import dataclasses
import functools

import numpy as np

from tripletjax import config as config_lib
from tripletjax.data import photos
from tripletjax.data import tfds_loader
from tripletjax.data.split import Split


def with_channels(split: Split, channels: int) -> Split:
  """`split` with `channels` channels (0: as it is): grey images repeated to
  RGB, RGB images to their luminance (ITU-R 601-2, as Pillow's ``L``)."""
  have = split.image_shape[-1]
  if channels in (0, have):
    return split
  if (have, channels) == (1, 3):
    images = np.repeat(split.images, 3, axis=-1)
  elif (have, channels) == (3, 1):
    luminance = split.images @ np.array([0.299, 0.587, 0.114])
    images = np.round(luminance)[..., None].astype(np.uint8)
  else:
    raise ValueError(f"channels={channels} cannot be made from images of "
                     f"{have} channels.")
  return dataclasses.replace(split, images=images)


def with_rotated_classes(split: Split) -> Split:
  """`split` and its images rotated by 90, 180 and 270 degrees, each
  rotation of a class a class of its own: 4x the images and classes.

  A character turned a quarter is no longer the same character, so the
  turns add classes rather than views of one (Omniglot's usual few-shot
  augmentation: Santoro et al. 2016, Vinyals et al. 2016). The first
  ``len(split)`` rows are `split` itself; rotation ``k`` (counterclockwise,
  ``k * 90`` degrees) of class ``c`` has label ``c + k * num_classes``.

  Raises:
    ValueError: the images are not square (a quarter turn changes their
      shape), or are not held in memory.
  """
  h, w, _ = split.image_shape
  if h != w:
    raise ValueError(f"rotated_classes needs square images, got {h} x {w} "
                     "(set image_size).")
  if not isinstance(split.images, np.ndarray):
    raise ValueError("rotated_classes needs images held in memory, not a "
                     "photo cache.")
  names = split.class_names
  return Split(
      images=np.concatenate([np.rot90(split.images, k, axes=(1, 2))
                             for k in range(4)]),
      labels=np.concatenate([split.labels + k * split.num_classes
                             for k in range(4)]).astype(np.int32),
      num_classes=4 * split.num_classes,
      class_names=None if names is None else tuple(
          f"{name} ({k * 90} degrees)" if k else name
          for k in range(4) for name in names))


def input_shape(config: config_lib.Config, split: Split
                ) -> tuple[int, int, int]:
  """``(H, W, C)`` of the network's input: ``config.image_size`` square
  where set (photos are stored larger, and cropped to it), else the
  images' own."""
  h, w, c = split.image_shape
  size = config.image_size
  return (size, size, c) if size else (h, w, c)


def load_splits(config: config_lib.Config) -> tuple[Split, Split]:
  """The train split (only ``config.train_classes`` if given) and the test
  split (only ``config.test_classes`` if given) of ``config.dataset``: a
  photo dataset from the disk cache (`tripletjax.data.photos`), any other
  from tensorflow-datasets into host memory.

  Raises:
    ValueError: a class of ``train_classes`` (``test_classes``) does not
      occur in the train (test) split.
  """
  if config.is_photo_dataset:
    train, test = photos.load_splits(config)
  else:
    load = functools.partial(
        tfds_loader.load, config.dataset, data_dir=config.data_dir,
        manual_dir=config.manual_dir, image_size=config.image_size or None)
    train, test = (with_channels(load(s), config.channels)
                   for s in (config.train_split, config.test_split))
  return (_only(train, config.train_classes, "train_classes",
                f"{config.dataset!r} {config.train_split!r}"),
          _only(test, config.test_classes, "test_classes",
                f"{config.dataset!r} {config.test_split!r}"))


def _only(split: Split, classes: tuple[int, ...], name: str, where: str
          ) -> Split:
  """The images of `split` whose class is in `classes` (empty: all)."""
  if not classes:
    return split
  absent = sorted(set(classes) - set(split.labels.tolist()))
  if absent:
    raise ValueError(f"{name} {absent} do not occur in {where} (labels "
                     f"{split.labels.min()}-{split.labels.max()}).")
  return split.select(np.isin(split.labels, classes))
