"""A gallery index: embeddings of reference images, searched by queries.

An index is a folder: ``embeddings.npy`` (float32 ``[N, D]``), ``labels.npy``
(int64 ``[N]``, -1 where unknown), ``references.npy`` (each item's image: a
file path or ``dataset:split:index``), all NumPy's format, and
``index.json`` (the run that embedded them: its workdir, step and settings,
the metric and embedding size, class names). Adding items writes a new
folder beside the old one and swaps them, so an interrupted ``add`` leaves
the old index intact. Search is exact (`tripletjax.neighbors`, blockwise:
memory is the gallery itself and bounded blocks).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import shutil
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from tripletjax import neighbors

_ARRAYS = ("embeddings", "labels", "references")
INFO_FILE = "index.json"


@dataclasses.dataclass(frozen=True)
class Gallery:
  """Gallery items and the run that embedded them.

  Attributes:
    embeddings: ``float32 [N, D]``.
    labels: ``int64 [N]``, -1 where unknown.
    references: ``str [N]``: what each item is (a path, an example id).
    info: ``workdir``, ``step``, ``settings`` (the run's), ``metric``,
      ``embedding_dim``, ``class_names`` (or None).
  """
  embeddings: np.ndarray
  labels: np.ndarray
  references: np.ndarray
  info: dict[str, Any]

  def __post_init__(self):
    n = self.embeddings.shape[0]
    if (self.embeddings.ndim != 2 or self.labels.shape != (n,)
        or self.references.shape != (n,)):
      raise ValueError(f"A gallery needs embeddings [N, D] with labels and "
                       f"references [N]; got {self.embeddings.shape}, "
                       f"{self.labels.shape} and {self.references.shape}.")

  def __len__(self) -> int:
    return self.embeddings.shape[0]

  def check_run(self, workdir: str, step: int, settings: dict) -> None:
    """Refuses queries embedded by another network than the gallery's."""
    if (self.info["settings"] != settings or self.info["step"] != step):
      raise ValueError(
          f"The index was built by step {self.info['step']} of the run in "
          f"{self.info['workdir']!r}; the queries would be embedded by step "
          f"{step} of {workdir!r}, with "
          f"{'other' if self.info['settings'] != settings else 'the same'} "
          "settings. Rebuild the index with that run.")

  def add(self, other: "Gallery") -> "Gallery":
    """This gallery with `other`'s items appended (same run required)."""
    other_info = other.info
    self.check_run(other_info["workdir"], other_info["step"],
                   other_info["settings"])
    return Gallery(np.concatenate([self.embeddings, other.embeddings]),
                   np.concatenate([self.labels, other.labels]),
                   np.concatenate([self.references, other.references]),
                   self.info)

  @functools.cached_property
  def _device_embeddings(self) -> jax.Array:
    return jnp.asarray(self.embeddings)  # Moved once, searched many times.

  def search(self, queries: np.ndarray, k: int
             ) -> tuple[np.ndarray, np.ndarray]:
    """The `k` nearest items of each query ``[Q, D]``, exactly:
    ``(distances, indices)``, ``[Q, k]`` each, nearest first (ties to the
    earlier item)."""
    if queries.ndim != 2 or queries.shape[1] != self.embeddings.shape[1]:
      raise ValueError(f"queries must be [Q, {self.embeddings.shape[1]}], got "
                       f"{queries.shape}.")
    d, i = neighbors.nearest_neighbors(jnp.asarray(queries),
                                       self._device_embeddings,
                                       k=min(k, len(self)),
                                       metric=self.info["metric"])
    return np.asarray(d), np.asarray(i)


def save(gallery: Gallery, path: str) -> None:
  """Writes `gallery` to folder `path`, replacing what is there whole."""
  temporary, old = path.rstrip("/") + ".writing", path.rstrip("/") + ".old"
  shutil.rmtree(temporary, ignore_errors=True)
  os.makedirs(temporary)
  for name in _ARRAYS:
    np.save(os.path.join(temporary, f"{name}.npy"), getattr(gallery, name),
            allow_pickle=False)
  with open(os.path.join(temporary, INFO_FILE), "w", encoding="utf-8") as f:
    json.dump({**gallery.info, "size": len(gallery)}, f, indent=2)
  if os.path.exists(path):
    shutil.rmtree(old, ignore_errors=True)
    os.replace(path, old)
    os.replace(temporary, path)
    shutil.rmtree(old)
  else:
    os.replace(temporary, path)


def load(path: str) -> Gallery:
  """The gallery in folder `path`.

  Raises:
    ValueError: `path` is not an index.
  """
  if not os.path.isfile(os.path.join(path, INFO_FILE)):
    raise ValueError(f"{path!r} is not a gallery index (no {INFO_FILE}).")
  with open(os.path.join(path, INFO_FILE), encoding="utf-8") as f:
    info = json.load(f)
  info.pop("size", None)
  arrays = {name: np.load(os.path.join(path, f"{name}.npy"),
                          allow_pickle=False) for name in _ARRAYS}
  return Gallery(info=info, **arrays)

