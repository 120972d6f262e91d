"""The Omniglot builder on small zips laid out like Lake et al.'s, and the
official one-shot scoring."""

import io
import json
import os
import subprocess
import sys
import zipfile

import numpy as np
from PIL import Image
import pytest

from tripletjax import config as config_lib
from tripletjax import data
from tripletjax import few_shot
from tripletjax import train
from tripletjax import workdir as workdir_lib
from tripletjax.data import omniglot


def _png(value: int) -> bytes:
  """A 105x105 Omniglot-like PNG: white, with a black square of `value`."""
  image = np.full((105, 105), 255, np.uint8)
  image[value:value + 10, value:value + 10] = 0
  out = io.BytesIO()
  Image.fromarray(image).save(out, format="PNG")
  return out.getvalue()


def _images_zip(path, top, characters, drawers):
  """Character i of `characters` by drawer d: `_png(20 i + d)`."""
  with zipfile.ZipFile(path, "w") as z:
    for i, (alphabet, character) in enumerate(characters):
      for d in range(drawers):
        z.writestr(f"{top}/{alphabet}/{character}/{character}_{d:02d}.png",
                   _png(20 * i + d))


@pytest.fixture(scope="module")
def omniglot_dirs(tmp_path_factory):
  manual = tmp_path_factory.mktemp("manual") / "omniglot"
  manual.mkdir()
  background = [("Alpha", "character01"), ("Alpha", "character02"),
                ("Beta", "character01")]
  _images_zip(manual / "images_background.zip", "images_background",
              background, 3)
  _images_zip(manual / "images_evaluation.zip", "images_evaluation",
              [("Gamma", "character01"), ("Gamma", "character02"),
               ("Delta", "character01")], 4)
  _images_zip(manual / "images_background_small1.zip",
              "images_background_small1", background[2:], 2)
  _images_zip(manual / "images_background_small2.zip",
              "images_background_small2", background[:1], 2)
  # Copies of the evaluation images, as Lake et al.'s runs: class c of run
  # r is character c - 1 by drawer r - 1; item c is class 4 - c by drawer
  # r + 1.
  with zipfile.ZipFile(manual / "all_runs.zip", "w") as z:
    for run in (1, 2):
      lines = []
      for c in range(1, 4):
        z.writestr(f"run{run:02d}/training/class{c:02d}.png",
                   _png(20 * (c - 1) + run - 1))
        z.writestr(f"run{run:02d}/test/item{c:02d}.png",
                   _png(20 * (3 - c) + run + 1))
        lines.append(f"run{run:02d}/test/item{c:02d}.png "
                     f"run{run:02d}/training/class{4 - c:02d}.png")
      z.writestr(f"run{run:02d}/class_labels.txt", "\n".join(lines) + "\n")
  data_dir = tmp_path_factory.mktemp("data")
  return {"data_dir": str(data_dir), "manual_dir": str(manual.parent)}


def test_splits_and_labels(omniglot_dirs):
  load = lambda split: data.load(omniglot.NAME, split, **omniglot_dirs)
  train, test = load("train"), load("test")
  assert train.images.shape == (9, 105, 105, 1)
  np.testing.assert_array_equal(np.bincount(train.labels), [3, 3, 3])
  assert sorted(set(test.labels.tolist())) == [964, 965, 966]
  # The small sets reuse the labels of the same characters in train.
  assert set(load("small1").labels.tolist()) == {2}
  assert set(load("small2").labels.tolist()) == {0}
  # Inverted: the black square becomes 255 on a 0 background.
  image = train.images[train.labels == 0][0, ..., 0]
  assert image.max() == 255 and np.median(image) == 0
  small = data.load(omniglot.NAME, "train", image_size=28, **omniglot_dirs)
  assert small.images.shape == (9, 28, 28, 1)


def test_alphabets(omniglot_dirs):
  alphabets = omniglot.alphabets(omniglot_dirs["manual_dir"], "train")
  assert alphabets == {"Alpha": (0, 1), "Beta": (2,)}
  train = data.load(omniglot.NAME, "train", **omniglot_dirs)
  beta = train.images[train.labels == 2, ..., 0]
  assert beta.shape == (3, 105, 105)  # Beta's one character, three drawers.
  # The evaluation set's, numbered as the test split (sorted by alphabet,
  # then character: Delta, written last, comes first).
  assert omniglot.alphabets(omniglot_dirs["manual_dir"], "test") == {
      "Delta": (964,), "Gamma": (965, 966)}


def test_drawers(omniglot_dirs):
  features, _ = data.load_features(omniglot.NAME, "train",
                                   ("label", "drawer"), **omniglot_dirs)
  for label in (0, 1, 2):  # Files <character>_00.png to _02.png.
    assert sorted(features["drawer"][features["label"] == label]) == [0, 1, 2]
  runs, _ = data.load_features(omniglot.NAME, "one_shot", ("drawer",),
                               **omniglot_dirs)
  assert set(runs["drawer"].tolist()) == {-1}


def test_official_characters_are_found_by_their_images(omniglot_dirs):
  test, _ = data.load_features(omniglot.NAME, "test", ("image", "label"),
                               **omniglot_dirs)
  runs, _ = data.load_features(omniglot.NAME, "one_shot", ("image", "run"),
                               **omniglot_dirs)
  # Gamma's two characters and Delta's one: labels 965, 966 and 964.
  assert omniglot.official_characters(
      test["image"], test["label"], runs["image"], runs["run"]) == [
          (964, 965, 966), (964, 965, 966)]
  # Without Delta's images, its copies in the runs are not found.
  gamma = test["label"] != 964
  with pytest.raises(ValueError, match="official run 0 is not in the test"):
    omniglot.official_characters(test["image"][gamma], test["label"][gamma],
                                 runs["image"], runs["run"])


def test_one_shot_runs(omniglot_dirs):
  runs, _ = data.load_features(omniglot.NAME, "one_shot",
                               ("label", "run", "is_query"), **omniglot_dirs)
  assert len(runs["label"]) == 12
  for run in (0, 1):
    mine = runs["run"] == run
    train_labels = runs["label"][mine & ~runs["is_query"]]
    test_labels = runs["label"][mine & runs["is_query"]]
    base = 964 + 659 + 20 * run
    assert sorted(train_labels.tolist()) == [base, base + 1, base + 2]
    assert sorted(test_labels.tolist()) == sorted(train_labels.tolist())


def test_few_shot_script_adds_episodes_over_the_official_characters(
    omniglot_dirs, tmp_path):
  workdir = str(tmp_path / "run")
  train.train_and_evaluate(config_lib.Config(
      dataset=omniglot.NAME, image_size=28, widths=(4,), hidden_dim=16,
      embedding_dim=8, classes_per_batch=3, examples_per_class=2, steps=2,
      warmup_steps=1, eval_every=0, checkpoint_every=0, few_shot_ways=2,
      few_shot_episodes=5, few_shot_shots=(1,), steps_per_call=1,
      write_figures=False, **omniglot_dirs), workdir)
  result = subprocess.run(
      [sys.executable, "-m", "experiments.few_shot", f"--workdir={workdir}",
       "--ways=2", "--shots=1", "--queries_per_class=1", "--episodes=30"],
      cwd=os.path.dirname(os.path.dirname(__file__)), capture_output=True,
      text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  assert ("2-way 1-shot over the official runs' characters: prototype"
          in result.stdout)
  assert "Sets of characters of the 2 official runs: 1." in result.stdout
  saved = json.load(open(os.path.join(workdir, "few_shot.json")))
  # Both runs have the evaluation set's three characters.
  run = workdir_lib.restore(workdir)
  test, _ = data.load_features(omniglot.NAME, "test",
                               ("image", "label", "drawer"), image_size=28,
                               **omniglot_dirs)
  want = few_shot.evaluate(run.embedder(test["image"]), test["label"],
                           ways=2, shots=1, queries_per_class=1, episodes=30,
                           groups=[(964, 965, 966)],
                           sources=test["drawer"])
  assert saved["2way_1shot_official_characters"] == want
  assert 0 <= saved["official_one_shot_accuracy"] <= 1


def test_missing_zip_is_named(tmp_path):
  (tmp_path / "images_background.zip").write_bytes(b"")
  with pytest.raises(FileNotFoundError, match="images_evaluation.zip"):
    data.prepare(omniglot.NAME, data_dir=str(tmp_path / "data"),
                 manual_dir=str(tmp_path))


def test_one_shot_accuracy_by_hand():
  # Run 0: training items at 0 and 10 (labels 5, 6); run 1: at 0 (label 7)
  # and 1 (label 8). Queries: 1 -> label 5 (right), 9 -> 6 (right),
  # 0.9 -> 8 (right, nearest is 1), 0.2 -> 8 (wrong: nearest is 0, label 7).
  embeddings = np.array([[0.0], [10.0], [1.0], [9.0],
                         [0.0], [1.0], [0.9], [0.2]], np.float32)
  labels = np.array([5, 6, 5, 6, 7, 8, 8, 8])
  run = np.array([0, 0, 0, 0, 1, 1, 1, 1])
  is_query = np.array([0, 0, 1, 1, 0, 0, 1, 1], bool)
  assert few_shot.omniglot_one_shot_accuracy(embeddings, labels, run,
                                             is_query) == 0.75
