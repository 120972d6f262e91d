"""The train and test splits of a configured run."""

from __future__ import annotations

import functools

import numpy as np

from tripletjax import config as config_lib
from tripletjax.data import tfds_loader
from tripletjax.data.split import Split


def load_splits(config: config_lib.Config) -> tuple[Split, Split]:
  """The train split (only ``config.train_classes`` if given) and the test
  split of ``config.dataset``.

  Raises:
    ValueError: a class of ``train_classes`` does not occur in the train
      split.
  """
  load = functools.partial(
      tfds_loader.load, config.dataset, data_dir=config.data_dir,
      manual_dir=config.manual_dir, image_size=config.image_size or None)
  train, test = load(config.train_split), load(config.test_split)
  if config.train_classes:
    absent = sorted(set(config.train_classes) - set(train.labels.tolist()))
    if absent:
      raise ValueError(
          f"train_classes {absent} do not occur in {config.dataset!r} "
          f"{config.train_split!r} (labels {train.labels.min()}-"
          f"{train.labels.max()}).")
    train = train.select(np.isin(train.labels, config.train_classes))
  return train, test
