"""Omniglot from Lake et al.'s zips, and their official one-shot task.

tensorflow-datasets' own ``omniglot`` builder needs the four original zips
with their original checksums. `OmniglotLake` (dataset name
``omniglot_lake``) is a small tensorflow-datasets builder over the files of
brendenlake/omniglot instead, taken from the manual directory (the folder
itself or its ``omniglot/`` sub-folder):

* ``images_background.zip`` -> split ``train``: 30 alphabets, 964
  characters x 20 drawers, labels 0-963.
* ``images_evaluation.zip`` -> split ``test``: 20 other alphabets, 659
  characters x 20 drawers, labels 964-1622.
* ``images_background_small1.zip``, ``images_background_small2.zip`` ->
  splits ``small1`` and ``small2``, Lake et al.'s reduced background sets
  (labels of the same characters in ``train``).
* ``all_runs.zip`` -> split ``one_shot``: the official task, 20 runs of
  20-way one-shot classification. Feature ``run`` (0-19) and ``is_query``;
  the 20 training images of run r have labels ``1623 + 20 r + class`` and
  each test image the label of the training image it belongs to. Each run
  keeps to one alphabet of the evaluation set, its training images drawn
  by one person and its test images by another.

Feature ``drawer`` (1-20) names the person who drew an image (-1 in
``one_shot``): Lake et al. had 20 people draw each character once.

Images are 105 x 105 x 1 uint8, inverted so that strokes are 255 on a black
background (as in MNIST); `tripletjax.data.load` can shrink them
(``image_size``). tensorflow-datasets prepares every split at once, so all
five zips are needed. The official task's evaluation is
`tripletjax.few_shot.omniglot_one_shot_accuracy`.
"""

from __future__ import annotations

import io
import os
import re
import zipfile

import numpy as np
import tensorflow_datasets as tfds

NAME = "omniglot_lake"
IMAGE_SHAPE = (105, 105, 1)
NUM_BACKGROUND, NUM_EVALUATION = 964, 659
RUNS, WAYS = 20, 20
NUM_CLASSES = NUM_BACKGROUND + NUM_EVALUATION + RUNS * WAYS
FILES = {"train": "images_background.zip", "test": "images_evaluation.zip",
         "small1": "images_background_small1.zip",
         "small2": "images_background_small2.zip",
         "one_shot": "all_runs.zip"}


def _decode(data: bytes) -> np.ndarray:
  """A PNG of Lake et al. (white background) -> ``uint8 [105, 105, 1]``,
  strokes 255."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  image = np.asarray(Image.open(io.BytesIO(data)).convert("L"))
  if image.shape != IMAGE_SHAPE[:2]:
    raise ValueError(f"Omniglot image of shape {image.shape}, expected "
                     f"{IMAGE_SHAPE[:2]}.")
  return (255 - image)[..., None].astype(np.uint8)


def _drawer(name: str) -> int:
  """The drawer (1-20) of an image named ``<image>_<drawer>.png``."""
  found = re.fullmatch(r".*_(\d+)\.png", name)
  if found is None:
    raise ValueError(f"Omniglot image {name!r} is not named "
                     "<image>_<drawer>.png.")
  return int(found[1])


def _characters(archive: zipfile.ZipFile) -> dict[tuple[str, str], list[str]]:
  """``{(alphabet, character): [png names]}`` of an images_* zip."""
  found: dict[tuple[str, str], list[str]] = {}
  for name in sorted(archive.namelist()):
    parts = name.split("/")
    if name.endswith(".png") and len(parts) == 4:
      found.setdefault((parts[1], parts[2]), []).append(name)
  return found


def _ids(manual_dir: str, split: str) -> dict[tuple[str, str], int]:
  """``{(alphabet, character): label}`` of split ``train`` or ``test``."""
  first = {"train": 0, "test": NUM_BACKGROUND}[split]
  with zipfile.ZipFile(os.path.join(manual_dir, FILES[split])) as archive:
    return {key: first + i
            for i, key in enumerate(sorted(_characters(archive)))}


class OmniglotLake(tfds.core.GeneratorBasedBuilder):
  """Omniglot from Lake et al.'s zips, with the official one-shot runs."""

  VERSION = tfds.core.Version("1.1.0")
  RELEASE_NOTES = {"1.0.0": "Background, evaluation, small sets, all_runs.",
                   "1.1.0": "Feature drawer."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      f"Put {', '.join(FILES.values())} from "
      "https://github.com/brendenlake/omniglot (python/) in the manual "
      "directory or its omniglot/ sub-directory.")

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=IMAGE_SHAPE),
            "label": tfds.features.ClassLabel(num_classes=NUM_CLASSES),
            "run": np.int32,
            "is_query": np.bool_,
            "drawer": np.int32,
        }),
        supervised_keys=("image", "label"),
        homepage="https://github.com/brendenlake/omniglot",
        citation="Lake, Salakhutdinov and Tenenbaum. Human-level concept "
                 "learning through probabilistic program induction. "
                 "Science, 2015.")

  def _split_generators(self, dl_manager):
    manual_dir = find_manual_dir(str(dl_manager.manual_dir))
    # The small sets take the labels of their characters in train.
    ids = {split: _ids(manual_dir, split) for split in ("train", "test")}
    return {split: self._generate_examples(os.path.join(manual_dir, f),
                                           split, ids.get(split, ids["train"]))
            for split, f in FILES.items()}

  def _generate_examples(self, path: str, split: str, ids):
    with zipfile.ZipFile(path) as archive:
      if split == "one_shot":
        yield from _one_shot_examples(archive)
        return
      for key, names in sorted(_characters(archive).items()):
        if key not in ids:
          raise ValueError(f"{os.path.basename(path)}: character {key} is "
                           f"not in {FILES['train']}.")
        label = ids[key]
        for name in names:
          yield name, {"image": _decode(archive.read(name)), "label": label,
                       "run": -1, "is_query": False, "drawer": _drawer(name)}


def _one_shot_examples(archive: zipfile.ZipFile):
  """Examples of the one_shot split from all_runs.zip (folders runNN/)."""
  runs = sorted({n.split("/")[0] for n in archive.namelist()
                 if re.fullmatch(r"run\d+/class_labels.txt", n)})
  for run, prefix in enumerate(runs):
    base = NUM_BACKGROUND + NUM_EVALUATION + WAYS * run
    pairs = archive.read(f"{prefix}/class_labels.txt").decode().split()
    for test_name, train_name in zip(pairs[::2], pairs[1::2]):
      label = base + int(re.search(r"class(\d+)", train_name)[1]) - 1
      for name, is_query in ((train_name, False), (test_name, True)):
        yield name, {"image": _decode(archive.read(name)), "label": label,
                     "run": run, "is_query": is_query, "drawer": -1}


def alphabets(manual_dir: str, split: str) -> dict[str, tuple[int, ...]]:
  """``{alphabet: labels of its characters}`` of the background set (split
  ``train``: for splits by alphabet, as Lake et al.'s evaluation set is
  split from the background set) or of the evaluation set (``test``: for
  episodes within one alphabet, as the official runs), in the builder's
  numbering.

  Args:
    manual_dir: the manual directory or its ``omniglot/`` sub-folder.
    split: ``train`` or ``test``.
  """
  found: dict[str, list[int]] = {}
  for (alphabet, _), label in _ids(find_manual_dir(manual_dir),
                                   split).items():
    found.setdefault(alphabet, []).append(label)
  return {name: tuple(labels) for name, labels in sorted(found.items())}


def official_characters(images: np.ndarray, labels: np.ndarray,
                        run_images: np.ndarray, runs: np.ndarray
                        ) -> list[tuple[int, ...]]:
  """The characters of each official run, as labels of the test split.

  The runs' images are copies of the evaluation set's, so each is found by
  its pixels.

  Args:
    images: ``uint8 [N, H, W, 1]``, the test split's images.
    labels: ``int [N]``, their labels.
    run_images: ``uint8 [M, H, W, 1]``, the ``one_shot`` split's images, of
      the same size.
    runs: ``int [M]``, their feature ``run``.

  Returns:
    The sorted labels of each run's characters, one tuple per run.

  Raises:
    ValueError: an image of a run is not in `images`.
  """
  index = {image.tobytes(): int(label) for image, label in zip(images, labels)}
  found: dict[int, set[int]] = {}
  for image, run in zip(run_images, runs):
    label = index.get(image.tobytes())
    if label is None:
      raise ValueError(f"An image of official run {run} is not in the "
                       "test split given.")
    found.setdefault(int(run), set()).add(label)
  return [tuple(sorted(found[run])) for run in sorted(found)]


def find_manual_dir(manual_dir: str) -> str:
  """`manual_dir` or its ``omniglot/`` sub-folder, whichever has the zips.

  Raises:
    FileNotFoundError: naming the missing zips and where they were sought.
  """
  for folder in (manual_dir, os.path.join(manual_dir, "omniglot")):
    missing = [f for f in FILES.values()
               if not os.path.exists(os.path.join(folder, f))]
    if not missing:
      return folder
  raise FileNotFoundError(
      f"Dataset {NAME!r} needs {', '.join(missing)} in the manual directory "
      f"{os.path.abspath(manual_dir)} (or its omniglot/ sub-folder), which "
      "lacks them. " + OmniglotLake.MANUAL_DOWNLOAD_INSTRUCTIONS)
