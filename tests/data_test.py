"""Loading real MNIST offline, and the errors of a bad manual directory."""

import io
import os
import subprocess
import sys

import numpy as np
import pytest

from tripletjax import data
from tripletjax.data import run_splits


def test_loads_mnist_slice(dataset_dirs):
  split = data.load("mnist", "test[:300]", **dataset_dirs)
  assert split.images.shape == (300, 28, 28, 1)
  assert split.images.dtype == np.uint8 and split.labels.dtype == np.int32
  assert split.num_classes == 10
  assert set(np.unique(split.labels)) <= set(range(10))


def test_a_split_is_read_through_tensorflow_once(dataset_dirs):
  # The first load keeps the split decoded; a later process reads that copy
  # without importing TensorFlow, and gets what TensorFlow reads.
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  builder = data.prepare("mnist", **dataset_dirs)
  want = tfds.as_numpy(builder.as_dataset(split="test[100:260]",
                                          batch_size=-1))
  data.load("mnist", "test[100:260]", **dataset_dirs)
  script = ("import sys, numpy as np; from tripletjax import data; "
            "s = data.load('mnist', 'test[100:260]', data_dir=sys.argv[1]); "
            "np.save(sys.stdout.buffer, s.images); "
            "np.save(sys.stdout.buffer, s.labels); "
            "assert 'tensorflow' not in sys.modules, 'tensorflow imported'")
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  run = subprocess.run([sys.executable, "-c", script,
                        dataset_dirs["data_dir"]], cwd=repo,
                       capture_output=True, timeout=300, check=False)
  assert run.returncode == 0, run.stderr.decode()[-2000:]
  out = io.BytesIO(run.stdout)
  np.testing.assert_array_equal(np.load(out), want["image"])
  np.testing.assert_array_equal(np.load(out), want["label"])
  # Another slice and a resizing are other entries.
  other = data.load("mnist", "test[:160]", **dataset_dirs)
  np.testing.assert_array_equal(
      other.images, tfds.as_numpy(builder.as_dataset(
          split="test[:160]", batch_size=-1))["image"])
  small = data.load("mnist", "test[100:260]", image_size=14, **dataset_dirs)
  # Halving by area averaging: the mean of each 2 x 2 block.
  blocks = want["image"].reshape(160, 14, 2, 14, 2, 1).astype(np.float64)
  np.testing.assert_array_equal(small.images,
                                np.round(blocks.mean(axis=(2, 4))))
  assert small.images.shape == (160, 14, 14, 1)


def test_datasets_with_the_same_file_names_stay_apart(dataset_dirs):
  # MNIST and Fashion-MNIST name their files alike; prepared into one data
  # directory (the suite's, where MNIST is prepared already), each must
  # still get its own images.
  mnist = data.load("mnist", "test[:200]", **dataset_dirs)
  fashion = data.load("fashion_mnist", "test[:200]", **dataset_dirs)
  assert not np.array_equal(mnist.images, fashion.images)
  # Clothes cover much more of the image than digit strokes.
  assert mnist.images.mean() < 40 < 60 < fashion.images.mean()


def test_manual_dir_with_a_folder_per_dataset(tmp_path):
  (tmp_path / "mnist").mkdir()
  assert data.resolve_manual_dir("mnist", str(tmp_path)) == str(
      tmp_path / "mnist")
  assert data.resolve_manual_dir("fashion_mnist", str(tmp_path)) == str(
      tmp_path)


def test_missing_file_is_named_with_where_it_was_looked_for(
    dataset_dirs, tmp_path):
  manual = tmp_path / "manual"
  manual.mkdir()
  source = os.path.join(dataset_dirs["manual_dir"], "mnist")
  for name in os.listdir(source):
    if name != "t10k-labels-idx1-ubyte.gz":
      os.symlink(os.path.join(source, name), manual / name)
  with pytest.raises(FileNotFoundError,
                     match=f"t10k-labels-idx1-ubyte.gz.*{manual}"):
    data.load("mnist", "train", data_dir=str(tmp_path / "tfds"),
              manual_dir=str(manual))


def test_empty_manual_dir_is_one_line_naming_the_files(tmp_path):
  (tmp_path / "empty").mkdir()
  with pytest.raises(data.DatasetUnavailableError,
                     match="'omniglot_lake'.*images_background.zip") as e:
    data.load("omniglot_lake", "train", data_dir=str(tmp_path / "tfds"),
              manual_dir=str(tmp_path / "empty"))
  assert "\n" not in str(e.value)


def test_unknown_dataset_and_split(dataset_dirs):
  with pytest.raises(ValueError, match="no_such_dataset"):
    data.load("no_such_dataset", "train", **dataset_dirs)
  with pytest.raises(ValueError, match="no split 'validation'"):
    data.load("mnist", "validation", **dataset_dirs)


def test_runs_launched_together_prepare_the_dataset_once(dataset_dirs,
                                                         tmp_path):
  # Two processes preparing into one fresh data directory used to extract
  # the same archives at once, and one of them failed.
  script = ("import sys; from tripletjax import data; "
            "s = data.load('mnist', 'test[:50]', data_dir=sys.argv[1], "
            "manual_dir=sys.argv[2]); print(int(s.labels.sum()))")
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  runs = [subprocess.Popen(
      [sys.executable, "-c", script, str(tmp_path),
       dataset_dirs["manual_dir"]], cwd=repo, stdout=subprocess.PIPE,
      stderr=subprocess.PIPE, text=True) for _ in range(2)]
  outputs = [run.communicate(timeout=300) for run in runs]
  for run, (_, stderr) in zip(runs, outputs):
    assert run.returncode == 0, stderr[-2000:]
  expected = int(data.load("mnist", "test[:50]", **dataset_dirs).labels.sum())
  assert [int(out.strip().splitlines()[-1]) for out, _ in outputs] == [
      expected, expected]


def test_channels_converts_grey_and_rgb():
  grey = data.Split(images=np.arange(24, dtype=np.uint8).reshape(2, 3, 4, 1),
                    labels=np.array([0, 1], np.int32), num_classes=2)
  rgb = run_splits.with_channels(grey, 3)
  assert rgb.image_shape == (3, 4, 3)
  np.testing.assert_array_equal(rgb.images[..., 2], grey.images[..., 0])
  back = run_splits.with_channels(rgb, 1)  # Equal channels: the same grey.
  np.testing.assert_array_equal(back.images, grey.images)
  assert run_splits.with_channels(grey, 0) is grey


def test_rotated_classes_turn_each_class_into_four():
  # Two 2 x 2 images, hand-turned a quarter counterclockwise:
  # [[a, b], [c, d]] -> [[b, d], [a, c]].
  images = np.array([[[1, 2], [3, 4]], [[5, 6], [7, 8]]], np.uint8)[..., None]
  split = data.Split(images=images, labels=np.array([1, 0], np.int32),
                     num_classes=3, class_names=("a", "b", "c"))
  rotated = data.with_rotated_classes(split)
  assert len(rotated) == 8 and rotated.num_classes == 12
  np.testing.assert_array_equal(rotated.labels, [1, 0, 4, 3, 7, 6, 10, 9])
  np.testing.assert_array_equal(rotated.images[:2], images)
  np.testing.assert_array_equal(rotated.images[2, ..., 0], [[2, 4], [1, 3]])
  np.testing.assert_array_equal(rotated.images[4, ..., 0], [[4, 3], [2, 1]])
  np.testing.assert_array_equal(rotated.images[7, ..., 0], [[7, 5], [8, 6]])
  assert rotated.class_names[:4] == ("a", "b", "c", "a (90 degrees)")
  assert rotated.class_names[11] == "c (270 degrees)"
  with pytest.raises(ValueError, match="square images, got 3 x 4"):
    data.with_rotated_classes(data.Split(
        images=np.zeros((2, 3, 4, 1), np.uint8),
        labels=np.array([0, 1], np.int32), num_classes=2))
