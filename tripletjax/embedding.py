"""Embedding many images: a folder's files or a dataset's splits, batch by
batch, so that memory stays bounded whatever their number."""

from __future__ import annotations

import os
from typing import Callable, Sequence

import numpy as np

from tripletjax import config as config_lib
from tripletjax import data
from tripletjax.data import folders
from tripletjax.evaluation import Embedder


def image_files(folder: str) -> list[str]:
  """Image files under `folder` (nested folders included), by relative
  path, in name order.

  Raises:
    ValueError: `folder` is not a folder or holds no image files.
  """
  if not os.path.isdir(folder):
    raise ValueError(f"images {folder!r} is not a folder.")
  found = []
  for directory, subdirs, names in os.walk(folder):
    subdirs.sort()
    found += [os.path.relpath(os.path.join(directory, n), folder)
              for n in sorted(names) if not n.startswith(".")
              and n.lower().endswith(folders.EXTENSIONS)]
  if not found:
    raise ValueError(f"images {folder!r} holds no image files.")
  return sorted(found)


def embed_folder(embedder: Embedder, read: Callable[[str], np.ndarray],
                 folder: str, paths: Sequence[str]) -> np.ndarray:
  """``float32 [N, D]``: the embeddings of the image files `paths`
  (relative to `folder`, e.g. from `image_files`), each read by
  `read(path)`."""
  out = []
  for start in range(0, len(paths), embedder.batch_size):
    out.append(embedder(np.stack([
        read(os.path.join(folder, p))
        for p in paths[start:start + embedder.batch_size]])))
  return np.concatenate(out).astype(np.float32)


def embed_dataset(embedder: Embedder, config: config_lib.Config,
                  spec: str) -> dict[str, np.ndarray]:
  """The embeddings of dataset `spec`, ``NAME`` (its train and test splits)
  or ``NAME:train`` / ``NAME:test``, loaded as `config` (with its dataset
  replaced) describes.

  Returns:
    ``embeddings`` float32 ``[N, D]``, ``labels`` ``[N]``, ``split``
    (``train`` or ``test``) and ``index`` (within the split) ``[N]``, and
    ``class_names`` (empty where the dataset has none).
  """
  name, _, split = spec.partition(":")
  if split not in ("", "train", "test"):
    raise ValueError(f"dataset split must be train or test, got {spec!r}.")
  config = config_lib.validate(config.replace(dataset=name, train_classes=()))
  splits = dict(zip(("train", "test"), data.load_splits(config)))
  out = {"embeddings": [], "labels": [], "split": [], "index": []}
  for s in [split] if split else list(splits):
    n = len(splits[s].labels)
    out["embeddings"].append(embedder(splits[s].images).astype(np.float32))
    out["labels"].append(splits[s].labels.astype(np.int64))
    out["split"].append(np.full(n, s))
    out["index"].append(np.arange(n))
  result = {k: np.concatenate(v) for k, v in out.items()}
  result["class_names"] = np.array(splits["test"].class_names or (), str)
  return result
