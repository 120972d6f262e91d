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
  split of ``config.dataset``: a photo dataset from the disk cache
  (`tripletjax.data.photos`), any other from tensorflow-datasets into host
  memory.

  Raises:
    ValueError: a class of ``train_classes`` does not occur in the train
      split.
  """
  if config.is_photo_dataset:
    train, test = photos.load_splits(config)
  else:
    load = functools.partial(
        tfds_loader.load, config.dataset, data_dir=config.data_dir,
        manual_dir=config.manual_dir, image_size=config.image_size or None)
    train, test = (with_channels(load(s), config.channels)
                   for s in (config.train_split, config.test_split))
  if config.train_classes:
    absent = sorted(set(config.train_classes) - set(train.labels.tolist()))
    if absent:
      raise ValueError(
          f"train_classes {absent} do not occur in {config.dataset!r} "
          f"{config.train_split!r} (labels {train.labels.min()}-"
          f"{train.labels.max()}).")
    train = train.select(np.isin(train.labels, config.train_classes))
  return train, test
