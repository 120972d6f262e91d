"""A gallery index: embeddings of reference images, searched by queries.

An index is a folder: ``embeddings.npy`` (float32 ``[N, D]``), ``labels.npy``
(int64 ``[N]``, -1 where unknown), ``references.npy`` (each item's image: a
file path or ``dataset:split:index``), all NumPy's format, and
``index.json`` (the run that embedded them: its workdir, step and settings,
the metric and embedding size, class names). Adding items writes a new
folder beside the old one and swaps them, so an interrupted ``add`` leaves
the old index intact. Search is exact (`tripletjax.neighbors`, blockwise:
memory is the gallery itself and bounded blocks), or approximate through a
faiss HNSW graph (``faiss.index``, faiss's own format, built with
``approximate=True``; faiss-cpu is an optional extra,
``requirements-faiss.txt``) for galleries beyond what exact search serves in
interactive time.
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
FAISS_FILE = "faiss.index"
BACKENDS = ("exact", "faiss")
# faiss's HNSW graph: links per item (its usual setting), and candidates
# kept while searching (faiss's default, 16, finds about 3 of 4 true
# neighbours among random 64-d vectors; 128 trades speed for recall).
HNSW_LINKS = 32
HNSW_EF_SEARCH = 128


@dataclasses.dataclass(frozen=True)
class Gallery:
  """Gallery items and the run that embedded them.

  Attributes:
    embeddings: ``float32 [N, D]``.
    labels: ``int64 [N]``, -1 where unknown.
    references: ``str [N]``: what each item is (a path, an example id).
    info: ``workdir``, ``step``, ``settings`` (the run's), ``metric``,
      ``embedding_dim``, ``class_names`` (or None).
    approximate: a faiss index of the same items, or None.
  """
  embeddings: np.ndarray
  labels: np.ndarray
  references: np.ndarray
  info: dict[str, Any]
  approximate: Any = None

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
    approximate = None
    if self.approximate is not None:  # A copy: this gallery stays as it is.
      approximate = _faiss().clone_index(self.approximate)
      approximate.add(_faiss_vectors(other.embeddings, self.info["metric"]))
    return Gallery(np.concatenate([self.embeddings, other.embeddings]),
                   np.concatenate([self.labels, other.labels]),
                   np.concatenate([self.references, other.references]),
                   self.info, approximate)

  def with_approximate(self) -> "Gallery":
    """This gallery with a faiss HNSW graph of its items."""
    faiss = _faiss()
    index = faiss.IndexHNSWFlat(self.embeddings.shape[1], HNSW_LINKS)
    index.hnsw.efSearch = HNSW_EF_SEARCH
    index.add(_faiss_vectors(self.embeddings, self.info["metric"]))
    return dataclasses.replace(self, approximate=index)

  @functools.cached_property
  def _device_embeddings(self) -> jax.Array:
    return jnp.asarray(self.embeddings)  # Moved once, searched many times.

  def search(self, queries: np.ndarray, k: int, *, backend: str = "exact"
             ) -> tuple[np.ndarray, np.ndarray]:
    """The `k` nearest items of each query ``[Q, D]``: ``(distances,
    indices)``, ``[Q, k]`` each, nearest first. ``exact``: ties to the
    earlier item; ``faiss``: approximately, through the HNSW graph
    (distances in the metric's terms all the same)."""
    if backend not in BACKENDS:
      raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}.")
    if queries.ndim != 2 or queries.shape[1] != self.embeddings.shape[1]:
      raise ValueError(f"queries must be [Q, {self.embeddings.shape[1]}], got "
                       f"{queries.shape}.")
    k = min(k, len(self))
    if backend == "faiss":
      if self.approximate is None:
        raise ValueError("This index has no faiss graph; build it with "
                         "--approximate.")
      squared, i = self.approximate.search(
          _faiss_vectors(queries, self.info["metric"]), k)
      return _from_squared(np.maximum(squared, 0.0),
                           self.info["metric"]), i.astype(np.int64)
    d, i = neighbors.nearest_neighbors(jnp.asarray(queries),
                                       self._device_embeddings,
                                       k=k,
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
  if gallery.approximate is not None:
    _faiss().write_index(gallery.approximate,
                         os.path.join(temporary, FAISS_FILE))
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
  approximate = None
  if os.path.exists(os.path.join(path, FAISS_FILE)):
    approximate = _faiss().read_index(os.path.join(path, FAISS_FILE))
  return Gallery(info=info, approximate=approximate, **arrays)


def _faiss():
  try:
    import faiss  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise ValueError("Approximate search needs faiss-cpu: pip install -r "
                     "requirements-faiss.txt.") from None
  return faiss


def _faiss_vectors(x: np.ndarray, metric: str) -> np.ndarray:
  """What faiss's L2 graph searches: unit vectors for the cosine distance
  (1 - cos is half their squared distance), the embeddings otherwise."""
  x = np.ascontiguousarray(x, np.float32)
  if metric == "cosine":
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
  return x


def _from_squared(squared: np.ndarray, metric: str) -> np.ndarray:
  if metric == "euclidean":
    return np.sqrt(squared)
  return squared / 2.0 if metric == "cosine" else squared

