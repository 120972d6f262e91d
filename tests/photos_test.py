"""Photo datasets: a user's folder, the disk cache, the benchmarks (mocked)."""

import logging
import os

import numpy as np
from PIL import Image
import pytest
import tensorflow_datasets as tfds

from experiments import shapes
from tripletjax import config as config_lib
from tripletjax import data
from tripletjax import sampling
from tripletjax.data import cache
from tripletjax.data import folders
from tripletjax.data import images


def config_for(root, tmp_path, **changes):
  return config_lib.Config(
      dataset=f"folder:{root}", image_size=24, resize_size=28,
      data_dir=str(tmp_path / "data"), classes_per_batch=2,
      examples_per_class=2).replace(**changes)


def tree(root):
  """Every file under `root` with its size and modification time."""
  return {os.path.join(d, f): (os.stat(os.path.join(d, f)).st_size,
                               os.stat(os.path.join(d, f)).st_mtime_ns)
          for d, _, names in os.walk(root) for f in names}


@pytest.fixture
def shape_folder(tmp_path):
  root = tmp_path / "shapes"
  shapes.write_folder(str(root), classes=3, per_class=10)
  return root


def test_folder_of_classes_splits_by_path_hash(shape_folder, tmp_path):
  before = tree(shape_folder)
  config = config_for(shape_folder, tmp_path)
  train, test = data.load_splits(config)
  assert train.class_names == ("class_00_disc", "class_01_square",
                               "class_02_triangle")
  assert len(train) + len(test) == 30 and len(test) > 0
  assert train.image_shape == (28, 28, 3) and train.images.dtype == np.uint8
  assert data.input_shape(config, train) == (24, 24, 3)
  # Nested files belong to their class; the split follows the path hash.
  paths, _ = folders.scan(config.dataset, test_fraction=0.2)
  assert any("nested" in p for p in paths.paths)
  for path, label in zip(paths.paths, paths.labels):
    assert path.startswith(train.class_names[label])
    assert not folders.in_test_split(path, 0.2)
  assert tree(shape_folder) == before  # Nothing written into the folder.
  # Adding images moves none of the existing ones between splits.
  shapes.write_folder(str(shape_folder / "class_00_disc" / "more"),
                                 classes=1, per_class=8, seed=1)
  more, _ = folders.scan(config.dataset, test_fraction=0.2)
  assert set(paths.paths) <= set(more.paths)


def test_train_and_test_folders(tmp_path):
  for split, count in (("train", 6), ("test", 3)):
    shapes.write_folder(str(tmp_path / "two" / split), classes=2,
                                   per_class=count)
  train, test = data.load_splits(config_for(tmp_path / "two", tmp_path))
  assert (len(train), len(test)) == (12, 6)
  assert sorted(set(test.labels.tolist())) == [0, 1]


def test_formats_modes_sizes_and_orientation(tmp_path):
  root = tmp_path / "formats"
  os.makedirs(root / "a")
  os.makedirs(root / "b")
  rgb = np.zeros((30, 50, 3), np.uint8)
  rgb[:, :25] = (255, 0, 0)  # Left half red, right half black.
  Image.fromarray(rgb).save(root / "a" / "rgb.png")
  Image.fromarray(rgb).convert("L").save(root / "a" / "grey.bmp")
  Image.fromarray(rgb).convert("P").save(root / "a" / "palette.gif")
  Image.fromarray(rgb).save(root / "a" / "photo.webp")
  transparent = np.zeros((20, 20, 4), np.uint8)  # Fully transparent.
  Image.fromarray(transparent).save(root / "b" / "clear.png")
  # EXIF orientation 3 (rotated 180 degrees): the red half ends up right.
  exif = Image.Exif()
  exif[0x0112] = 3
  Image.fromarray(rgb).save(root / "b" / "turned.jpg", exif=exif, quality=95)
  frames = [Image.fromarray(np.full((16, 16, 3), v, np.uint8)) for v in
            (10, 240)]
  frames[0].save(root / "b" / "animated.gif", save_all=True,
                 append_images=frames[1:])
  decode = lambda name: images.decode_file(str(root / name), size=10,
                                           channels=3)
  assert decode("a/rgb.png")[5, 0, 0] > 200  # Red left, black right.
  assert decode("a/rgb.png")[5, 9, 0] < 50
  assert decode("b/turned.jpg")[5, 9, 0] > 200  # Orientation applied.
  assert decode("b/turned.jpg")[5, 0, 0] < 50
  np.testing.assert_array_equal(decode("b/clear.png"), 255)  # Over white.
  assert abs(int(decode("b/animated.gif").mean()) - 10) <= 2  # 1st frame.
  grey = images.decode_file(str(root / "a" / "grey.bmp"), size=10,
                            channels=1)
  assert grey.shape == (10, 10, 1)
  for name in ("a/palette.gif", "a/photo.webp"):
    assert decode(name).shape == (10, 10, 3)
  config = config_for(root, tmp_path, channels=1, test_fraction=0.01)
  train, _ = data.load_splits(config)
  assert train.image_shape == (28, 28, 1)


def test_undecodable_files_are_skipped_with_one_warning(shape_folder, tmp_path,
                                                        caplog):
  (shape_folder / "class_01_square" / "broken.jpg").write_bytes(b"no image")
  (shape_folder / "class_01_square" / "notes.txt").write_text("not an image")
  with caplog.at_level(logging.WARNING):
    train, test = data.load_splits(config_for(shape_folder, tmp_path,
                                              test_fraction=0.01))
  warnings = [r.getMessage() for r in caplog.records
              if "could not be decoded" in r.getMessage()]
  assert len(warnings) == 1 and "broken.jpg" in warnings[0]
  assert "1 image file(s)" in warnings[0]
  assert len(train) + len(test) == 30


@pytest.mark.parametrize("make, message", [
    (lambda root: None, "does not exist"),
    (lambda root: root.write_text("x"), "is not a folder"),
    (lambda root: root.mkdir(), "holds no class folders"),
    (lambda root: shapes.write_folder(str(root), classes=1,
                                                 per_class=2),
     "holds one class"),
])
def test_bad_folders_name_the_path(tmp_path, make, message):
  root = tmp_path / "bad"
  make(root)
  with pytest.raises(ValueError, match=message) as error:
    data.load_splits(config_for(root, tmp_path))
  assert str(root) in str(error.value)


def test_small_classes_dropped_or_named(tmp_path):
  root = tmp_path / "tail"
  shapes.write_folder(str(root), classes=2, per_class=12)
  os.makedirs(root / "zz_tiny")
  for i in range(3):
    Image.new("RGB", (30, 30), (i, 0, 0)).save(root / "zz_tiny" / f"{i}.png")
  config = config_for(root, tmp_path, test_fraction=0.01,
                      examples_per_class=4)
  train, _ = data.load_splits(config)
  assert np.bincount(train.labels)[2] == 3
  assert 2 not in sampling.create(config, train.labels,
                                  train.class_names).eligible
  with pytest.raises(ValueError, match=r"zz_tiny \(3\).*small_classes"):
    sampling.create(config.replace(small_classes="error"), train.labels,
                    train.class_names)


def test_cache_is_built_once_and_follows_the_files(shape_folder, tmp_path):
  config = config_for(shape_folder, tmp_path)
  data.load_splits(config)
  entries = sorted((tmp_path / "data" / "tripletjax_cache").glob("folder-*"))
  entries = [e for e in entries if e.is_dir()]
  stamps = [os.stat(e / cache.META_FILE).st_mtime_ns for e in entries]
  data.load_splits(config)  # Read back, not rebuilt.
  assert [os.stat(e / cache.META_FILE).st_mtime_ns for e in entries] == stamps
  Image.new("RGB", (40, 40)).save(shape_folder / "class_00_disc" / "new.png")
  data.load_splits(config)  # A changed folder: a new entry.
  assert len([e for e in (tmp_path / "data" / "tripletjax_cache").glob(
      "folder-*") if e.is_dir()]) > len(entries)


def test_image_array_reads_like_an_array(tmp_path):
  rng = np.random.default_rng(0)
  want = rng.integers(0, 256, (9, 4, 4, 3), np.uint8)
  cache.build(str(tmp_path / "entry"), row_shape=(4, 4, 3),
              examples=[(want[i] if i != 4 else None, i, str(i))
                        for i in range(9)], meta={})
  got, labels, meta = cache.load(str(tmp_path / "entry"))
  kept = np.delete(np.arange(9), 4)  # Row 4 did not decode.
  np.testing.assert_array_equal(labels, kept)
  assert meta["undecodable"] == ["4"] and got.shape == (8, 4, 4, 3)
  want = want[kept]
  np.testing.assert_array_equal(got[3], want[3])
  np.testing.assert_array_equal(got[2:7], want[2:7])
  np.testing.assert_array_equal(got[[7, 0, 0, 5]], want[[7, 0, 0, 5]])
  index = np.array([[1, 2], [6, 0]])
  np.testing.assert_array_equal(got[index], want[index])
  mask = np.array([True, False] * 4)
  np.testing.assert_array_equal(got.select(mask)[[3, 0]], want[mask][[3, 0]])
  np.testing.assert_array_equal(np.asarray(got), want)


@pytest.mark.parametrize("name, train_classes", [("cub200", 100),
                                                 ("cars196", 98),
                                                 ("sop", None)])
def test_benchmarks_follow_their_protocol(name, train_classes, tmp_path,
                                          monkeypatch):
  # The mocked dataset needs no files: no manual directory to look in.
  monkeypatch.delenv(data.MANUAL_DIR_ENV, raising=False)
  config = config_lib.Config(dataset=name, image_size=16, resize_size=20,
                             data_dir=str(tmp_path))
  with tfds.testing.mock_data(num_examples=12):
    train, test = data.load_splits(config)
  assert len(train) + len(test) == 24  # Both splits of the source.
  assert train.image_shape == (20, 20, 3)
  if train_classes is not None:  # Classes split by id.
    assert train.labels.max(initial=-1) < train_classes
    assert test.labels.min(initial=10**6) >= train_classes
  else:  # The dataset's own splits.
    assert (len(train), len(test)) == (12, 12)
