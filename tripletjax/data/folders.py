"""A user's folder of images as a labelled dataset.

Two layouts, as tensorflow-datasets' ``ImageFolder`` has them:

* ``PATH/<class>/<image>``: one sub-folder per class (files in folders
  nested below a class folder belong to it). The test split is chosen per
  file from a hash of its path relative to ``PATH``, so adding images never
  moves existing ones between splits.
* ``PATH/train/<class>/<image>`` and ``PATH/test/<class>/<image>``: the
  splits as given.

Class names are the folder names, sorted; labels are their positions. Only
files with an image extension count; hidden files and folders are skipped.
Nothing under ``PATH`` is ever written to.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os

import numpy as np

PREFIX = "folder:"
EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif",
              ".tiff")


@dataclasses.dataclass(frozen=True)
class FolderSplit:
  """The files of one split of a folder dataset.

  Attributes:
    root: the folder the paths are relative to.
    paths: relative paths of the image files, sorted.
    labels: ``int32 [N]`` their class ids.
    class_names: the classes' folder names; label ``i`` is ``class_names[i]``.
  """
  root: str
  paths: tuple[str, ...]
  labels: np.ndarray
  class_names: tuple[str, ...]


def is_folder(dataset: str) -> bool:
  """Whether `dataset` names a folder (``folder:PATH``)."""
  return dataset.startswith(PREFIX)


def _visible(name: str) -> bool:
  return not name.startswith(".")


def _class_files(folder: str) -> dict[str, list[str]]:
  """``{class name: [image paths relative to folder]}``, nested files
  included; classes without image files are left out."""
  classes = {}
  for name in sorted(filter(_visible, os.listdir(folder))):
    top = os.path.join(folder, name)
    if not os.path.isdir(top):
      continue
    files = []
    for directory, subdirs, names in os.walk(top):
      subdirs[:] = sorted(filter(_visible, subdirs))
      files += [os.path.relpath(os.path.join(directory, f), folder)
                for f in sorted(filter(_visible, names))
                if f.lower().endswith(EXTENSIONS)]
    if files:
      classes[name] = files
  return classes


def in_test_split(path: str, test_fraction: float) -> bool:
  """Whether the file at relative `path` is a test image: a hash of the path
  (with ``/`` separators), uniform in [0, 1), falls below `test_fraction`.

  >>> in_test_split("apple/1.jpg", 0.0), in_test_split("apple/1.jpg", 1.0)
  (False, True)
  """
  digest = hashlib.sha256(path.replace(os.sep, "/").encode()).digest()
  return int.from_bytes(digest[:8], "big") / 2**64 < test_fraction


def scan(dataset: str, *, test_fraction: float
         ) -> tuple[FolderSplit, FolderSplit]:
  """The train and test splits of folder dataset `dataset`
  (``folder:PATH``).

  Args:
    dataset: ``folder:PATH``.
    test_fraction: the share of each class's files in the test split when
      the folder has no ``train/`` and ``test/`` sub-folders.

  Raises:
    ValueError: the path does not exist, is not a folder, holds no class
      folder with images, or only one class.
  """
  root = os.path.expanduser(dataset[len(PREFIX):])
  if not os.path.exists(root):
    raise ValueError(f"dataset folder {root!r} does not exist.")
  if not os.path.isdir(root):
    raise ValueError(f"dataset folder {root!r} is not a folder.")
  split_dirs = [os.path.join(root, s) for s in ("train", "test")]
  if all(os.path.isdir(d) for d in split_dirs):
    train, test = (_class_files(d) for d in split_dirs)
    names = tuple(sorted(set(train) | set(test)))
    _check_classes(split_dirs[0], names, train)
    splits = [({c: [os.path.join(s, p) for p in files]
                for c, files in found.items()}) for s, found in
              (("train", train), ("test", test))]
  else:
    found = _class_files(root)
    names = tuple(sorted(found))
    _check_classes(root, names, found)
    splits = [{c: [p for p in files
                   if in_test_split(p, test_fraction) == is_test]
               for c, files in found.items()} for is_test in (False, True)]
  return tuple(_split(root, names, files) for files in splits)


def _check_classes(folder: str, names, found) -> None:
  if not found:
    raise ValueError(
        f"dataset folder {folder!r} holds no class folders with images "
        f"(expected <class>/<image> with extensions {', '.join(EXTENSIONS)}).")
  if len(names) < 2:
    raise ValueError(
        f"dataset folder {folder!r} holds one class ({names[0]!r}); triplets "
        "need at least two.")


def _split(root: str, names: tuple[str, ...], files: dict[str, list[str]]
           ) -> FolderSplit:
  index = {name: i for i, name in enumerate(names)}
  pairs = sorted((p, index[c]) for c, paths in files.items() for p in paths)
  return FolderSplit(root=root, paths=tuple(p for p, _ in pairs),
                     labels=np.array([l for _, l in pairs], np.int32),
                     class_names=names)


def fingerprint(split: FolderSplit) -> str:
  """A digest of the split's files (paths, sizes, modification times):
  it changes when a file is added, removed or rewritten."""
  h = hashlib.sha256()
  for path in split.paths:
    stat = os.stat(os.path.join(split.root, path))
    h.update(f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
  return h.hexdigest()
