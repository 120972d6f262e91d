"""Image-classification datasets from tensorflow-datasets, held in host memory.

Any TFDS dataset with an image and an integer label works (``mnist``,
``fashion_mnist``, ...). Images stay ``uint8`` on the host; the model's
`tripletjax.models.preprocess` turns them into floats on the device, inside
the compiled step.

A split is read through TensorFlow once: the features asked for are kept
decoded in the data directory (`tripletjax.data.cache`, keyed by the prepared
files, the split and the resizing), and later loads read them with NumPy,
without importing TensorFlow (which takes seconds per process).

Offline use: tensorflow-datasets takes the original download files from a
*manual directory* instead of the network. `manual_dir` may be that directory
itself or a directory with one sub-directory per dataset name (``mnist/``,
``fashion_mnist/``), so one setting serves every dataset. The environment
variable ``TRIPLETJAX_MANUAL_DIR`` supplies the default.
"""

from __future__ import annotations

import os

from absl import logging
import numpy as np
import tensorflow_datasets as tfds

from tripletjax.data import cache
from tripletjax.data import filelock
# Imported for its side effect: it registers the omniglot_lake builder.
from tripletjax.data import omniglot  # pylint: disable=unused-import
from tripletjax.data.split import Split

MANUAL_DIR_ENV = "TRIPLETJAX_MANUAL_DIR"
CACHE_VERSION = 1  # Bump when what an entry holds changes.


class DatasetUnavailableError(RuntimeError):
  """A dataset could be neither downloaded nor prepared from a manual
  directory."""


def resolve_manual_dir(name: str, manual_dir: str | None) -> str | None:
  """The manual directory for dataset `name`: ``<dir>/<name>`` if it exists."""
  manual_dir = manual_dir or os.environ.get(MANUAL_DIR_ENV) or None
  if manual_dir is None:
    return None
  manual_dir = os.path.expanduser(manual_dir)
  per_dataset = os.path.join(manual_dir, name.split(":")[0].split("/")[0])
  return per_dataset if os.path.isdir(per_dataset) else manual_dir


def _hide_accelerators_from_tensorflow() -> None:
  """TensorFlow only reads files here; it must not take GPU memory from JAX."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  tf.config.set_visible_devices([], "GPU")


def as_dataset(builder, **kwargs):
  """``builder.as_dataset(**kwargs)``, TensorFlow kept off the GPUs."""
  _hide_accelerators_from_tensorflow()
  return builder.as_dataset(**kwargs)


def _builder(name: str, data_dir: str | None):
  try:
    return tfds.builder(name, data_dir=data_dir)
  except Exception as e:  # TFDS raises several types for unknown names.
    raise ValueError(f"Unknown tensorflow-datasets dataset {name!r}: {e}") \
        from None


def prepare(name: str, *, data_dir: str | None = None,
            manual_dir: str | None = None):
  """Downloads (or takes from `manual_dir`) and prepares dataset `name`.

  Processes preparing the same dataset at once take turns (a file lock in
  the data directory): the first prepares it, the others then read it.

  Returns:
    The prepared `tfds.core.DatasetBuilder`.

  Raises:
    FileNotFoundError: `manual_dir` lacks a file the dataset needs; the
      message lists the files and where they were looked for.
    DatasetUnavailableError: the download failed (typically: no network
      and no manual directory).
  """
  builder = _builder(name, data_dir)
  if builder.is_prepared():
    return builder
  # Runs launched together on a fresh machine would otherwise extract the
  # same files at once and fail; the second one waits, then finds the data.
  with filelock.exclusive(os.path.join(str(builder.data_dir_root),
                                    f".{builder.name}.prepare.lock")):
    # A builder reads the split information when it is made: one made
    # before another process prepared the data would have none.
    builder = _builder(name, data_dir)
    if not builder.is_prepared():
      _download_and_prepare(builder, name, manual_dir)
  return builder


def _download_and_prepare(builder, name: str, manual_dir: str | None) -> None:
  manual_dir = resolve_manual_dir(name, manual_dir)
  if manual_dir is not None:
    wanted = sorted({info.filename or os.path.basename(url)
                     for url, info in (builder.url_infos or {}).items()})
    missing = [f for f in wanted
               if not os.path.exists(os.path.join(manual_dir, f))]
    if missing:
      raise FileNotFoundError(
          f"Dataset {name!r} needs {', '.join(missing)} in the manual "
          f"directory {os.path.abspath(manual_dir)}, which lacks them. Put the "
          "original download files there, or unset the manual directory to "
          "download them.")
  logging.info("Preparing %s in %s (manual directory: %s).", name,
               builder.data_dir, manual_dir)
  _hide_accelerators_from_tensorflow()
  # tensorflow-datasets extracts archives to downloads/extracted/<kind>.<file
  # name>; MNIST and Fashion-MNIST have the same file names, so a shared
  # folder would hand one dataset the other's files. One folder per dataset.
  extract_dir = os.path.join(str(builder.data_dir_root), "downloads",
                             "extracted", builder.name)
  try:
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(
            manual_dir=manual_dir, extract_dir=extract_dir))
  except FileNotFoundError:
    raise
  except Exception as e:  # Network errors come in many types.
    # One line: TensorFlow Datasets' messages run over several (for a
    # missing manual directory, the files to put there).
    raise DatasetUnavailableError(
        f"Could not download or prepare dataset {name!r} ({type(e).__name__}: "
        f"{' '.join(str(e).split())}). Offline, pass a manual "
        f"directory holding its original download files (--manual_dir or "
        f"${MANUAL_DIR_ENV}).") from e


def load_features(name: str, split: str, keys: tuple[str, ...], *,
                  data_dir: str | None = None,
                  manual_dir: str | None = None, image_key: str = "image",
                  image_size: int | None = None
                  ) -> tuple[dict[str, np.ndarray], tfds.core.DatasetInfo]:
  """Features `keys` of a whole split, as host arrays (one row per example),
  and the dataset's information, preparing the dataset if needed.

  Args:
    name: tensorflow-datasets name, e.g. ``"mnist"``.
    split: split name or slice, e.g. ``"train"`` or ``"train[:1000]"``.
    keys: the features wanted.
    data_dir: where tensorflow-datasets keeps prepared data (its default
      when ``None``).
    manual_dir: original download files, for offline use (see module doc).
    image_key: the image feature that `image_size` resizes.
    image_size: resize feature `image_key` to ``image_size x image_size``
      (`resize`); None keeps its size.

  Raises:
    ValueError: naming a missing feature or split and those there are.
  """
  builder = prepare(name, data_dir=data_dir, manual_dir=manual_dir)
  features = builder.info.features
  for key in keys:
    if key not in features:
      raise ValueError(
          f"Dataset {name!r} has no feature {key!r}; it has "
          f"{', '.join(features.keys())}.")
  resized = image_key if image_size is not None and image_key in keys \
      else None
  directory = cache.entry(str(builder.data_dir_root), name, _cache_key(
      builder, split, keys, resized, image_size))

  def read() -> dict[str, np.ndarray]:
    try:
      arrays = tfds.as_numpy(as_dataset(builder, split=split, batch_size=-1))
    except Exception as e:  # Unknown splits raise several types.
      raise ValueError(
          f"Dataset {name!r} has no split {split!r}; it has "
          f"{', '.join(builder.info.splits.keys())}.") from e
    out = {key: np.asarray(arrays[key]) for key in keys}
    if resized is not None:
      out[resized] = resize(out[resized], image_size)
    # Text features come as Python objects, which NumPy's files refuse.
    return {k: v.astype(np.bytes_) if v.dtype == object else v
            for k, v in out.items()}

  cache.build_arrays(directory, read, meta={"dataset": name, "split": split})
  return cache.load_arrays(directory)[0], builder.info


def _cache_key(builder, split: str, keys: tuple[str, ...],
               resized: str | None, image_size: int | None) -> str:
  """Names what a cached split holds: the prepared files (a dataset
  prepared again gets a new entry), the split and the features."""
  stats = {f: os.stat(os.path.join(builder.data_dir, f))
           for f in sorted(os.listdir(builder.data_dir))}
  files = [(f, s.st_size, s.st_mtime_ns) for f, s in stats.items()]
  return cache.key(CACHE_VERSION, str(builder.info.version), files, split,
                   list(keys), resized, image_size)


def load(name: str, split: str, *, data_dir: str | None = None,
         manual_dir: str | None = None, image_key: str = "image",
         label_key: str = "label", image_size: int | None = None) -> Split:
  """Loads a whole split into host memory, preparing the dataset if needed.

  Args:
    name, split, data_dir, manual_dir: as in `load_features`.
    image_key: feature holding the image.
    label_key: feature holding the integer class label.
    image_size: resize the images to ``image_size x image_size`` (area
      averaging); None keeps their size.

  Returns:
    The split as a `Split`.
  """
  arrays, info = load_features(name, split, (image_key, label_key),
                               data_dir=data_dir, manual_dir=manual_dir,
                               image_key=image_key, image_size=image_size)
  images = arrays[image_key]
  if images.ndim == 3:
    images = images[..., None]
  if images.dtype != np.uint8:
    raise ValueError(f"Dataset {name!r}: expected uint8 images, got "
                     f"{images.dtype}.")
  return Split(images=images, labels=arrays[label_key].astype(np.int32),
               num_classes=info.features[label_key].num_classes)


def resize(images: np.ndarray, size: int | None, *, chunk: int = 4096
           ) -> np.ndarray:
  """``uint8 [N, H, W, C]`` (or ``[N, H, W]``) images resized to ``[N, size,
  size, C]`` (``[N, size, size]``) by area averaging (the anti-aliased way to
  shrink), in chunks; None: unchanged."""
  if size is None or images.shape[1:3] == (size, size):
    return images
  if images.ndim == 3:
    return resize(images[..., None], size, chunk=chunk)[..., 0]
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  return np.concatenate([
      np.asarray(tf.cast(tf.round(tf.image.resize(
          images[i:i + chunk], (size, size), method="area")), tf.uint8))
      for i in range(0, len(images), chunk)])
