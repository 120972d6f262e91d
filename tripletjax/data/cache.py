"""Decoded data on disk: images read by random access, or whole arrays.

An image entry (`build`, `load`) is a directory holding ``images.npy``
(``uint8 [N, S, S, C]``, NumPy's format), ``rows.npy`` (the rows that
decoded; a file that did not is a zero row left out of them), ``labels.npy``
(one per kept row) and ``meta.json``. An array entry (`build_arrays`,
`load_arrays`) holds named arrays in ``arrays.npz`` (NumPy's format) and
``meta.json``. ``meta.json`` is written last: an entry without it is
incomplete. Entries are built in a temporary directory and renamed into
place, under a file lock, so processes started together build an entry once.

`ImageArray` reads rows with ``pread`` instead of mapping the file, so a
process holds only the rows it asked for, however large the cache: a folder
larger than memory trains.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import shutil
import tempfile
from typing import Any, Callable, Iterable, Sequence

from absl import logging
import numpy as np

from tripletjax.data import filelock

META_FILE = "meta.json"


class ImageArray:
  """Rows of a cache's ``images.npy``, read on demand.

  Indexing with an int, a slice, a boolean mask or an array of indices
  (any shape) reads those rows and returns an ``np.ndarray``; `select`
  returns a view of some rows without reading any.
  """

  def __init__(self, path: str, rows: np.ndarray | None = None):
    self.path = path
    with open(path, "rb") as f:
      read_header = {(1, 0): np.lib.format.read_array_header_1_0,
                     (2, 0): np.lib.format.read_array_header_2_0}[
                         np.lib.format.read_magic(f)]
      shape, _, dtype = read_header(f)
      self._offset = f.tell()
    self._row_shape = tuple(shape[1:])
    self.dtype = np.dtype(dtype)
    self._row_bytes = int(np.prod(self._row_shape)) * self.dtype.itemsize
    self._rows = (np.arange(shape[0]) if rows is None
                  else np.asarray(rows, np.int64))
    self._fd = None
    self._pid = None

  @property
  def shape(self) -> tuple[int, ...]:
    return (len(self._rows), *self._row_shape)

  @property
  def ndim(self) -> int:
    return 1 + len(self._row_shape)

  def __len__(self) -> int:
    return len(self._rows)

  @property
  def rows(self) -> np.ndarray:
    """The file rows these are, in order."""
    return self._rows

  def select(self, keep) -> ImageArray:
    """The rows `keep` (a mask or indices) selects, without reading them."""
    return ImageArray(self.path, self._rows[keep])

  def __getitem__(self, key) -> np.ndarray:
    if isinstance(key, (int, np.integer)):
      return self._read(self._rows[[key]])[0]
    if isinstance(key, tuple):
      raise IndexError("ImageArray takes one index (rows), not a tuple.")
    wanted = self._rows[key]
    return self._read(wanted.reshape(-1)).reshape(*wanted.shape,
                                                  *self._row_shape)

  def __array__(self, dtype=None, copy=None):
    del copy
    out = self[:]
    return out if dtype is None else out.astype(dtype)

  def _file(self) -> int:
    if self._pid != os.getpid():  # A forked process opens its own.
      self._fd, self._pid = os.open(self.path, os.O_RDONLY), os.getpid()
    return self._fd

  def _read(self, rows: np.ndarray) -> np.ndarray:
    """Rows `rows` of the file, in order; runs of consecutive rows are read
    with one call."""
    out = np.empty((len(rows), self._row_bytes), np.uint8)
    if not len(rows):
      return out.view(self.dtype).reshape(0, *self._row_shape)
    order = np.argsort(rows, kind="stable")
    sorted_rows = rows[order]
    breaks = np.flatnonzero(np.diff(sorted_rows) != 1) + 1
    fd = self._file()
    for run in np.split(np.arange(len(rows)), breaks):
      first = int(sorted_rows[run[0]])
      data = os.pread(fd, self._row_bytes * len(run),
                      self._offset + first * self._row_bytes)
      if len(data) != self._row_bytes * len(run):
        raise OSError(f"{self.path} is shorter than its header says.")
      block = np.frombuffer(data, np.uint8).reshape(len(run), -1)
      out[order[run]] = block
    return out.view(self.dtype).reshape(len(rows), *self._row_shape)

  def __getstate__(self) -> dict[str, Any]:
    return {**self.__dict__, "_fd": None, "_pid": None}


def key(*parts) -> str:
  """A short name for what an entry holds: a digest of `parts` (JSON
  values: versions, sources, settings)."""
  return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:16]


def entry(data_dir: str | None, name: str, key: str) -> str:
  """The directory of cache entry `key` of dataset `name`."""
  root = os.path.expanduser(data_dir or os.path.join("~",
                                                     "tensorflow_datasets"))
  safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
  return os.path.join(root, "tripletjax_cache", f"{safe}-{key}")


def load(directory: str) -> tuple[ImageArray, np.ndarray, dict[str, Any]]:
  """``(images, labels, meta)`` of a complete cache entry."""
  with open(os.path.join(directory, META_FILE), encoding="utf-8") as f:
    meta = json.load(f)
  rows = np.load(os.path.join(directory, "rows.npy"))
  labels = np.load(os.path.join(directory, "labels.npy"))
  return (ImageArray(os.path.join(directory, "images.npy"), rows), labels,
          meta)


def _publish(directory: str, fill: Callable[[str], dict[str, Any]]
             ) -> dict[str, Any] | None:
  """Makes entry `directory` unless it is complete already: `fill(scratch)`
  writes the entry's files into a scratch directory and returns its meta,
  written last; the scratch directory is then renamed into place.

  Returns:
    The meta written, or None if the entry was complete already.
  """
  with filelock.exclusive(directory + ".lock"):
    if os.path.exists(os.path.join(directory, META_FILE)):
      return None
    os.makedirs(os.path.dirname(directory), exist_ok=True)
    partial = tempfile.mkdtemp(dir=os.path.dirname(directory),
                               prefix=".building-")
    try:
      os.chmod(partial, 0o755)  # mkdtemp's 0700 would hide it from others.
      meta = fill(partial)
      with open(os.path.join(partial, META_FILE), "w", encoding="utf-8") as f:
        json.dump(meta, f)
      if os.path.exists(directory):  # An incomplete entry of a dead build.
        shutil.rmtree(directory)
      os.rename(partial, directory)
    except BaseException:
      shutil.rmtree(partial, ignore_errors=True)
      raise
  return meta


def build(directory: str, *, row_shape: tuple[int, int, int],
          examples: Iterable[tuple[np.ndarray | None, int, str]],
          meta: dict[str, Any], count: int | None = None) -> None:
  """Writes image entry `directory` unless it is complete already.

  Args:
    directory: the entry (see `entry`).
    row_shape: ``(S, S, C)`` of each image.
    examples: ``(image, label, name)`` in order: the image ``uint8
      row_shape`` or None where it could not be decoded, and how to name it
      in warnings (its path).
    meta: recorded in ``meta.json`` beside what the build adds, once
      `examples` is exhausted (so a generator may add to it as it goes).
    count: how many examples there are, if known (the images are then
      written in place; else to a scratch file first).
  """
  def fill(partial: str) -> dict[str, Any]:
    labels, good, bad = _write_images(os.path.join(partial, "images.npy"),
                                      row_shape, examples, count)
    np.save(os.path.join(partial, "rows.npy"), np.array(good, np.int64))
    np.save(os.path.join(partial, "labels.npy"),
            np.asarray(labels, np.int32)[good])
    return {**meta, "images": len(labels), "undecodable": bad}

  written = _publish(directory, fill)
  bad = written["undecodable"] if written else []
  if bad:
    logging.warning("%d image file(s) could not be decoded and are left out: "
                    "%s%s", len(bad), ", ".join(bad[:5]),
                    " ..." if len(bad) > 5 else "")


def build_arrays(directory: str, make: Callable[[], dict[str, np.ndarray]],
                 meta: dict[str, Any]) -> None:
  """Writes array entry `directory` from `make()` unless it is complete
  already (then `make` is not called)."""
  def fill(partial: str) -> dict[str, Any]:
    arrays = make()
    # Numbered members: feature names may hold characters a member name
    # cannot; meta maps them back.
    np.savez(os.path.join(partial, "arrays.npz"),
             *[arrays[k] for k in arrays])
    return {**meta, "arrays": list(arrays)}

  _publish(directory, fill)


def load_arrays(directory: str) -> tuple[dict[str, np.ndarray],
                                         dict[str, Any]]:
  """``(arrays, meta)`` of a complete array entry."""
  with open(os.path.join(directory, META_FILE), encoding="utf-8") as f:
    meta = json.load(f)
  with np.load(os.path.join(directory, "arrays.npz")) as npz:
    arrays = {k: npz[f"arr_{i}"] for i, k in enumerate(meta["arrays"])}
  return arrays, meta


def _write_header(f, count: int, row_shape) -> None:
  np.lib.format.write_array_header_2_0(f, {
      "descr": np.lib.format.dtype_to_descr(np.dtype(np.uint8)),
      "fortran_order": False, "shape": (count, *row_shape)})


def _write_images(path: str, row_shape, examples, count: int | None
                  ) -> tuple[list[int], list[int], list[str]]:
  """Streams the images into ``images.npy`` (never all in memory).

  Returns:
    ``(labels of every example, rows that decoded, names of those that did
    not)``.
  """
  labels, good, bad = [], [], []
  zeros = np.zeros(row_shape, np.uint8)
  rows_path = path if count is not None else path + ".rows"
  with open(rows_path, "wb") as f:
    if count is not None:
      _write_header(f, count, row_shape)
    for i, (image, label, name) in enumerate(examples):
      labels.append(label)
      if image is None:
        bad.append(name)
        image = zeros
      else:
        good.append(i)
      f.write(np.ascontiguousarray(image, np.uint8).tobytes())
  if count is None:  # The header first, then the rows.
    with open(path, "wb") as out, open(rows_path, "rb") as rows:
      _write_header(out, len(labels), row_shape)
      shutil.copyfileobj(rows, out, 2**24)
    os.remove(rows_path)
  elif len(labels) != count:
    raise ValueError(f"expected {count} images, got {len(labels)}.")
  return labels, good, bad


def decode_in_workers(decode: Callable[[str], np.ndarray | None],
                      paths: Sequence[str], *, workers: int | None = None
                      ) -> Iterable[np.ndarray | None]:
  """``decode(path)`` of every path, in order, in worker processes (as many
  as this process may use CPUs)."""
  workers = workers or len(os.sched_getaffinity(0))
  if workers <= 1:
    yield from map(decode, paths)
    return
  # Spawned, not forked: a fork of a process running JAX's threads can hang.
  with multiprocessing.get_context("spawn").Pool(workers) as pool:
    yield from pool.imap(decode, paths, chunksize=16)
