"""Photo datasets, decoded once into the disk cache and read from it.

* ``folder:PATH``: a user's folder of images (`tripletjax.data.folders`).
* ``cub200``, ``cars196``, ``sop``: the metric-learning benchmarks through
  tensorflow-datasets (``caltech_birds2011``, ``cars196``,
  ``stanford_online_products``), with the class-disjoint protocol of the
  field: CUB-200-2011's classes 1-100 train and 101-200 test (its
  train and test splits merged first), Cars196's 1-98 and 99-196, Stanford
  Online Products' own splits (their classes are already disjoint).

Each image's shorter side is resized to ``config.stored_size`` and its
centre cropped square (`tripletjax.data.images`), into a cache entry keyed
by the source's content and these settings: later runs read the entry.
"""

from __future__ import annotations

import dataclasses
import functools
import os

from absl import logging
import numpy as np
import tensorflow_datasets as tfds

from tripletjax import config as config_lib
from tripletjax.data import cache
from tripletjax.data import folders
from tripletjax.data import images as images_lib
from tripletjax.data import tfds_loader
from tripletjax.data.split import Split

CACHE_VERSION = 1  # Bump when the decoding changes what a cache holds.


@dataclasses.dataclass(frozen=True)
class Benchmark:
  """A benchmark's tensorflow-datasets source and its protocol.

  Attributes:
    tfds_name: the tensorflow-datasets name.
    label_key: its class feature.
    train_classes: labels below this are the training classes; None: the
      dataset's own ``train`` split trains and ``test`` tests.
  """
  tfds_name: str
  label_key: str
  train_classes: int | None


BENCHMARKS = {
    "cub200": Benchmark("caltech_birds2011", "label", 100),
    "cars196": Benchmark("cars196", "label", 98),
    "sop": Benchmark("stanford_online_products", "class_id", None),
}


def load_splits(config: config_lib.Config) -> tuple[Split, Split]:
  """The train and test splits of photo dataset ``config.dataset``."""
  size, channels = config.stored_size, config.channels or 3
  if config.dataset.startswith(config_lib.FOLDER_PREFIX):
    return tuple(_folder_split(split, config, size, channels)
                 for split in folders.scan(
                     config.dataset, test_fraction=config.test_fraction))
  return _benchmark_splits(config, BENCHMARKS[config.dataset], size,
                           channels)


def _decode_or_none(path: str, *, size: int, channels: int
                    ) -> np.ndarray | None:
  """The image at `path`, or None if Pillow cannot decode it."""
  try:
    return images_lib.decode_file(path, size=size, channels=channels)
  except (OSError, ValueError, SyntaxError) as e:  # Pillow's errors.
    logging.info("Cannot decode %s: %s", path, e)
    return None


def _folder_split(split: folders.FolderSplit, config: config_lib.Config,
                  size: int, channels: int) -> Split:
  directory = cache.entry(config.data_dir, "folder", cache.key(
      CACHE_VERSION, os.path.abspath(split.root), folders.fingerprint(split),
      size, channels))
  if split.paths:
    decode = functools.partial(_decode_or_none, size=size, channels=channels)
    decoded = cache.decode_in_workers(
        decode, [os.path.join(split.root, p) for p in split.paths])
    cache.build(directory, row_shape=(size, size, channels),
                examples=zip(decoded, split.labels.tolist(), split.paths),
                count=len(split.paths),
                meta={"source": split.root, "class_names": split.class_names})
  else:  # An empty split (a folder whose files all hashed to train).
    cache.build(directory, row_shape=(size, size, channels), examples=(),
                count=0, meta={"source": split.root})
  images, labels, _ = cache.load(directory)
  return Split(images=images, labels=labels,
               num_classes=len(split.class_names),
               class_names=split.class_names)


def _benchmark_splits(config: config_lib.Config, benchmark: Benchmark,
                      size: int, channels: int) -> tuple[Split, Split]:
  builder = tfds_loader.prepare(benchmark.tfds_name, data_dir=config.data_dir,
                                manual_dir=config.manual_dir)
  num_classes = builder.info.features[benchmark.label_key].num_classes
  directory = cache.entry(config.data_dir, config.dataset, cache.key(
      CACHE_VERSION, benchmark.tfds_name, str(builder.info.version), size,
      channels))
  meta = {"source": benchmark.tfds_name, "examples": {}}

  def examples():  # The train split, then the test split.
    for split in ("train", "test"):
      stream = tfds.as_numpy(tfds_loader.as_dataset(
          builder, split=split, shuffle_files=False))
      for i, example in enumerate(stream):
        meta["examples"][split] = i + 1  # Recorded when the build ends.
        yield (images_lib.from_array(example["image"], size=size,
                                     channels=channels),
               int(example[benchmark.label_key]), f"{split}[{i}]")

  cache.build(directory, row_shape=(size, size, channels),
              examples=examples(), meta=meta)
  images, labels, meta = cache.load(directory)
  if benchmark.train_classes is not None:
    train = labels < benchmark.train_classes
  else:  # The rows of the dataset's train split come first.
    train = images.rows < meta["examples"].get("train", 0)
  whole = Split(images=images, labels=labels, num_classes=num_classes)
  return whole.select(train), whole.select(~train)
