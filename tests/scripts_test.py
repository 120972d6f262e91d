"""The evaluation scripts on a tiny trained run, run as a user runs them."""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
from PIL import Image
import pytest

from experiments import shapes
from tests import train_test
from tripletjax import config as config_lib
from tripletjax import train

REPO = pathlib.Path(__file__).resolve().parents[1]


def run_script(module, *flags):
  return subprocess.run([sys.executable, "-m", module, *flags], cwd=REPO,
                        capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def trained_run(dataset_dirs, tmp_path_factory):
  """A run trained on digits 0-4, its workdir."""
  workdir = str(tmp_path_factory.mktemp("run"))
  train.train_and_evaluate(train_test.tiny_config(
      dataset_dirs, train_classes=(0, 1, 2, 3, 4), few_shot_episodes=10), workdir)
  return workdir


def test_few_shot(trained_run):
  result = run_script("experiments.few_shot", f"--workdir={trained_run}",
                      "--ways=3,5", "--shots=1", "--episodes=20")
  assert result.returncode == 0, result.stderr[-3000:]
  assert "5-way 1-shot: prototype" in result.stdout
  saved = json.load(open(pathlib.Path(trained_run) / "few_shot.json"))
  assert 0 <= saved["3way_1shot"]["prototype"] <= 1
  assert saved["episodes"] == 20


def test_retrieve(trained_run, tmp_path):
  image = np.zeros((40, 30), np.uint8)
  image[10:30, 12:18] = 255  # Something like a "1", any size.
  Image.fromarray(image).save(tmp_path / "one.png")
  output = tmp_path / "grid.png"
  result = run_script("experiments.retrieve", f"--workdir={trained_run}",
                      f"--images={tmp_path / 'one.png'}",
                      "--test_indices=0,3", "--k=4", f"--output={output}")
  assert result.returncode == 0, result.stderr[-3000:]
  lines = [l for l in result.stdout.splitlines() if l.startswith(
      (str(tmp_path), "test["))]
  assert len(lines) == 3 and all(l.count("train[") == 4 for l in lines)
  with Image.open(output) as grid:
    assert grid.size[0] > grid.size[1] / 3 * 2  # 3 rows of 5 images.


def test_retrieve_misses(trained_run, tmp_path):
  """The misses are the 1-NN errors that the run's precision_at_1 counts,
  each shown with a nearest train image of another label."""
  from tripletjax import data  # pylint: disable=g-import-not-at-top
  from tripletjax import workdir  # pylint: disable=g-import-not-at-top
  result = run_script("experiments.retrieve", f"--workdir={trained_run}",
                      "--misses", "--k=2", f"--output={tmp_path / 'g.png'}")
  assert result.returncode == 0, result.stderr[-3000:]
  first, *lines = result.stdout.splitlines()
  metrics = json.load(open(pathlib.Path(trained_run) / "results.json"))
  queries = metrics["test_queries"]
  expected = (1 - metrics["test_precision_at_1"]) * queries
  assert first.startswith(f"{round(expected)} misses among the "
                          f"{int(queries)} test images"), first
  assert 0 < round(expected) < 64  # Each miss drawn, and some to check.
  train, test = data.load_splits(workdir.restore(trained_run).config)
  named = [int(x.split("]")[0]) for x in first.split("test[")[1:]]
  shown = [l for l in lines if l.startswith("test[")]
  assert [int(l[5:l.index("]")]) for l in shown] == named
  for i, line in zip(named, shown):
    nearest = int(line.split("train[")[1].split("]")[0])
    assert train.labels[nearest] != test.labels[i] < 5, line
  assert (tmp_path / "g.png").exists()


@pytest.mark.parametrize("module,flags,message", [
    ("experiments.retrieve", ["--test_indices=0"], "--workdir"),
    ("experiments.retrieve", ["--workdir=/nonexistent", "--test_indices=0"],
     "holds no run"),
    ("experiments.few_shot", ["--workdir=/nonexistent"], "holds no run"),
    ("experiments.retrieve", ["--workdir=/x", "--misses", "--test_indices=0"],
     "leave out --images, --test_indices"),
])
def test_bad_input_is_one_line(module, flags, message):
  result = run_script(module, *flags)
  assert result.returncode == 2
  assert result.stderr.strip().splitlines()[-1].startswith("Error:")
  assert message in result.stderr


def test_bad_test_index(trained_run):
  result = run_script("experiments.retrieve", f"--workdir={trained_run}",
                      "--test_indices=100000")
  assert result.returncode == 2
  assert "outside [0, 500)" in result.stderr


def test_embed_a_dataset_with_a_run(trained_run, tmp_path):
  """The embeddings of a run's test split, as its evaluation makes them."""
  from tripletjax import data  # pylint: disable=g-import-not-at-top
  from tripletjax import workdir  # pylint: disable=g-import-not-at-top
  result = run_script("experiments.embed", f"--workdir={trained_run}",
                      "--dataset=mnist:test", f"--output={tmp_path / 'e.npz'}",
                      "--batch_size=96")
  assert result.returncode == 0, result.stderr[-3000:]
  assert "Embedded 500 images of mnist:test into 8-d" in result.stdout
  saved = np.load(tmp_path / "e.npz")
  run = workdir.restore(trained_run)
  _, test = data.load_splits(run.config)
  np.testing.assert_allclose(saved["embeddings"], run.embedder(test.images),
                             atol=1e-6)
  np.testing.assert_array_equal(saved["labels"], test.labels)
  assert set(saved["split"]) == {"test"}
  assert json.loads(str(saved["settings"]))["step"] == 12


LOADER = """
import importlib.util, json, sys
import jax, numpy as np
assert importlib.util.find_spec("tripletjax") is None, "tripletjax importable"
folder, images, output = sys.argv[1:]
with open(folder + "/embed.jax_export", "rb") as f:
  exported = jax.export.deserialize(f.read())
signature = json.load(open(folder + "/signature.json"))
x = np.load(images)
assert list(x.shape[1:]) == signature["input"]["shape"][1:]
np.save(output, np.concatenate([np.asarray(exported.call(x[:3])),
                                np.asarray(exported.call(x[3:]))]))
"""


def test_export_runs_without_tripletjax(trained_run, tmp_path):
  """The exported function, loaded by a process that cannot import
  tripletjax, at two batch sizes, gives the run's embeddings."""
  from tripletjax import workdir  # pylint: disable=g-import-not-at-top
  result = run_script("experiments.export", f"--workdir={trained_run}",
                      f"--output={tmp_path / 'export'}", "--saved_model")
  assert result.returncode == 0, result.stderr[-3000:]
  assert "uint8 [N, 28, 28, 1] -> float32 [N, 8] on cpu" in result.stdout
  signature = json.load(open(tmp_path / "export" / "signature.json"))
  assert signature["metric"] == "euclidean" and signature["step"] == 12
  images = np.random.default_rng(0).integers(0, 256, (7, 28, 28, 1), np.uint8)
  np.save(tmp_path / "images.npy", images)
  env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
  loaded = subprocess.run(
      [sys.executable, "-c", LOADER, str(tmp_path / "export"),
       str(tmp_path / "images.npy"), str(tmp_path / "out.npy")],
      cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
  assert loaded.returncode == 0, loaded.stderr[-3000:]
  want = workdir.restore(trained_run).embedder(images)
  np.testing.assert_allclose(np.load(tmp_path / "out.npy"), want, atol=1e-5)
  # The SavedModel, as TensorFlow Serving would call it.
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  serve = tf.saved_model.load(str(tmp_path / "export" / "saved_model")
                              ).signatures["serving_default"]
  np.testing.assert_allclose(serve(images=tf.constant(images))["embeddings"],
                             want, atol=1e-5)


def test_verify_two_images(trained_run, tmp_path):
  """The distance of two image files against the run's calibrated
  threshold; the same image twice is "same"."""
  results = json.load(open(pathlib.Path(trained_run) / "results.json"))
  threshold = results["unseen_verification_threshold"]
  assert 0 < results["unseen_verification_roc_auc"] <= 1
  for name, value in (("a", 0), ("b", 255)):
    image = np.full((28, 28), value, np.uint8)
    image[8:20, 12:16] = 255 - value
    Image.fromarray(image).save(tmp_path / f"{name}.png")
  result = run_script("experiments.verify", f"--workdir={trained_run}",
                      str(tmp_path / "a.png"), str(tmp_path / "a.png"))
  assert result.returncode == 0, result.stderr[-3000:]
  assert result.stdout.startswith(f"distance 0, threshold {threshold:.4g} "
                                  "(test images of classes never trained on)"
                                  ": same"), result.stdout
  result = run_script("experiments.verify", f"--workdir={trained_run}",
                      "--threshold=-1", str(tmp_path / "a.png"),
                      str(tmp_path / "b.png"))
  assert result.returncode == 0, result.stderr[-3000:]
  assert "threshold -1 (--threshold): different" in result.stdout


def test_index_build_add_info_and_retrieve(trained_run, tmp_path):
  """A gallery of the test split plus two files; retrieval from it embeds
  the queries alone and equals exact search over the same embeddings."""
  from tripletjax import data  # pylint: disable=g-import-not-at-top
  from tripletjax import workdir  # pylint: disable=g-import-not-at-top
  index = tmp_path / "index"
  result = run_script("experiments.index", "build", f"--workdir={trained_run}",
                      "--dataset=mnist:test", f"--output={index}")
  assert result.returncode == 0, result.stderr[-3000:]
  assert "500 items (500 labelled, 10 classes), 8-d" in result.stdout
  (tmp_path / "new").mkdir()
  for i in range(2):
    Image.fromarray(np.full((28, 28), 60 * i, np.uint8)).save(
        tmp_path / "new" / f"{i}.png")
  result = run_script("experiments.index", "add", f"--index={index}",
                      f"--images={tmp_path / 'new'}")
  assert result.returncode == 0, result.stderr[-3000:]
  assert "502 items (500 labelled" in result.stdout
  result = run_script("experiments.index", "info", f"--index={index}")
  assert "502 items" in result.stdout and "step 12 of" in result.stdout
  result = run_script("experiments.retrieve", f"--index={index}",
                      f"--images={tmp_path / 'new' / '1.png'}",
                      "--test_indices=3", "--k=3",
                      f"--output={tmp_path / 'grid.png'}")
  assert result.returncode == 0, result.stderr[-3000:]
  lines = result.stdout.splitlines()
  assert lines[0].startswith(f"{tmp_path / 'new' / '1.png'}: "
                             f"{tmp_path / 'new'}/1.png (d=0.000)")
  run = workdir.restore(trained_run)
  _, test = data.load_splits(run.config)
  gallery = run.embedder(test.images)
  d = np.linalg.norm(gallery - run.embedder(test.images[3:4]), axis=1)
  nearest = np.argsort(d, kind="stable")[:3]
  assert lines[1] == "test[3]: " + ", ".join(
      f"mnist:test:{i} (label {test.labels[i]}, d={d[i]:.3f})"
      for i in nearest)
  # An index is searched only with the run that built it.
  other = tmp_path / "other"
  other.mkdir()
  config = json.loads((pathlib.Path(trained_run) / "config.json").read_text())
  config["margin"] = 0.25
  (other / "config.json").write_text(json.dumps(config))
  for name in ("inputs.json", "checkpoints"):
    src = pathlib.Path(trained_run) / name
    (other / name).symlink_to(src, target_is_directory=src.is_dir())
  result = run_script("experiments.retrieve", f"--index={index}",
                      f"--workdir={other}", "--test_indices=0")
  assert result.returncode == 2
  assert "The index was built by step 12" in result.stderr


def test_bad_input_of_the_run_scripts(trained_run, tmp_path):
  (tmp_path / "empty").mkdir()
  untrained = tmp_path / "untrained"
  untrained.mkdir()
  for name in ("config.json", "inputs.json"):
    (untrained / name).write_text(
        (pathlib.Path(trained_run) / name).read_text())
  for module, flags, message in (
      ("experiments.embed", [f"--workdir={trained_run}",
                             f"--images={tmp_path / 'empty'}",
                             f"--output={tmp_path / 'x.npz'}"],
       "holds no image files"),
      ("experiments.embed", [f"--workdir={trained_run}", "--model=resnet18",
                             "--dataset=mnist", "--output=x.npz"],
       "one of the two"),
      ("experiments.export", [f"--workdir={untrained}",
                              f"--output={tmp_path / 'e'}"], "checkpoint"),
      ("experiments.verify", [f"--workdir={trained_run}",
                              str(tmp_path / "missing.png"),
                              str(tmp_path / "missing.png")],
       "No image file"),
      ("experiments.verify", [f"--workdir={trained_run}", "a.png"],
       "two image files"),
      ("experiments.train", ["--dataset=omniglot_lake",
                             f"--data_dir={tmp_path / 'tfds'}",
                             f"--manual_dir={tmp_path / 'empty'}",
                             f"--workdir={tmp_path / 'w'}"],
       "Could not download or prepare dataset 'omniglot_lake'"),
  ):
    result = run_script(module, *flags)
    assert result.returncode == 2, (module, result.stderr[-2000:])
    assert result.stderr.strip().splitlines()[-1].startswith("Error:")
    assert message in result.stderr, (module, result.stderr[-2000:])


@pytest.fixture(scope="module")
def photo_run(tmp_path_factory):
  """A run trained on a generated folder of photos, its workdir, and a
  second folder of two other classes (apples and bananas, say)."""
  root = tmp_path_factory.mktemp("photos")
  shapes.write_folder(str(root / "shapes"), classes=3, per_class=8)
  shapes.write_folder(str(root / "fruit"), classes=2, per_class=8,
                                 seed=1)
  workdir = str(root / "run")
  train.train_and_evaluate(config_lib.Config(
      dataset=f"folder:{root / 'shapes'}", image_size=16, resize_size=20,
      data_dir=str(root / "data"), classes_per_batch=3, examples_per_class=2,
      widths=(4,), hidden_dim=16, embedding_dim=8, steps=4, warmup_steps=1,
      eval_every=0, checkpoint_every=0, few_shot_ways=2, few_shot_episodes=5,
      write_figures=False), workdir)
  return workdir, root


def test_few_shot_on_another_folder(photo_run):
  workdir, root = photo_run
  result = run_script("experiments.few_shot", f"--workdir={workdir}",
                      f"--dataset=folder:{root / 'fruit'}", "--ways=2",
                      "--shots=1,5", "--queries_per_class=3",
                      "--episodes=10")
  assert result.returncode == 0, result.stderr[-3000:]
  assert "16 images of 2 classes" in result.stdout
  assert "2-way 5-shot: prototype" in result.stdout


def test_retrieve_a_photo_by_class_name(photo_run, tmp_path):
  workdir, root = photo_run
  query = next((root / "fruit").rglob("*.jpg"))
  result = run_script("experiments.retrieve", f"--workdir={workdir}",
                      f"--images={query}", "--k=3",
                      f"--output={tmp_path / 'grid.png'}")
  assert result.returncode == 0, result.stderr[-3000:]
  line = next(l for l in result.stdout.splitlines()
              if l.startswith(str(query)))
  assert line.count("(class_0") == 3  # Neighbours named by their class.
  broken = tmp_path / "broken.png"
  broken.write_bytes(b"no image")
  result = run_script("experiments.retrieve", f"--workdir={workdir}",
                      f"--images={broken}")
  assert result.returncode == 2 and "Cannot read image file" in result.stderr


def test_embed_a_folder_with_published_weights(tmp_path):
  from flax import nnx  # pylint: disable=g-import-not-at-top
  from safetensors import numpy as safetensors_numpy  # pylint: disable=g-import-not-at-top
  from tests import weights_test  # pylint: disable=g-import-not-at-top
  from tripletjax import models  # pylint: disable=g-import-not-at-top
  from tripletjax.data import images as images_lib  # pylint: disable=g-import-not-at-top
  shapes.write_folder(str(tmp_path / "photos"), classes=2, per_class=3)
  source = models.create("resnet18", image_shape=(32, 32, 3), seed=3,
                         input_norm="imagenet")
  safetensors_numpy.save_file(weights_test.torchvision_state_dict(source),
                              str(tmp_path / "r18.safetensors"))
  result = run_script(
      "experiments.embed", "--model=resnet18", "--image_size=32",
      f"--init_from={tmp_path / 'r18.safetensors'}",
      f"--images={tmp_path / 'photos'}", f"--output={tmp_path / 'out.npz'}",
      "--batch_size=4")
  assert result.returncode == 0, result.stderr[-3000:]
  assert "Embedded 6 images" in result.stdout and "512-d" in result.stdout
  saved = np.load(tmp_path / "out.npz")
  assert list(saved["paths"]) == sorted(saved["paths"])
  # The same features computed here from the source network.
  graphdef, params, stats = nnx.split(source, nnx.Param, nnx.BatchStat)
  first = images_lib.decode_file(str(tmp_path / "photos" / saved["paths"][0]),
                                 size=32, channels=3)
  want = models.embed(graphdef, params, stats, first[None], True)
  np.testing.assert_allclose(saved["embeddings"][0], want[0], rtol=1e-4,
                             atol=1e-5)
  assert saved["embeddings"].shape == (6, 512)
