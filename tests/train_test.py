"""End-to-end training on a slice of real MNIST with a tiny CNN."""

import functools
import json
import os

from flax import nnx
import jax
import numpy as np
import pytest

from experiments import shapes
from tests import reference
from tripletjax import checkpointing
from tripletjax import config as config_lib
from tripletjax import data
from tripletjax import export
from tripletjax import models
from tripletjax import sampling
from tripletjax import train
from tripletjax import workdir
from tripletjax.models import weights


def tiny_config(dataset_dirs, **changes):
  # One step per compiled call unless a test says otherwise: the CPU traces a
  # call's steps one after the other, and compiling is a tiny run's time.
  # No figures unless a test checks them: drawing them takes seconds.
  return config_lib.Config(
      train_split="train[:2000]", test_split="test[:500]", widths=(4,),
      hidden_dim=16, embedding_dim=8, classes_per_batch=5,
      examples_per_class=4, triplets_per_batch=8, steps=12, warmup_steps=2,
      eval_every=0, checkpoint_every=4, eval_batch_size=256,
      log_every_seconds=1000.0, steps_per_call=1, write_figures=False,
      **dataset_dirs).replace(**changes)


def saved_params(config, workdir):
  """The parameters of the latest checkpoint in `workdir`."""
  _, like, _ = train.initial_state(config, (28, 28, 1))
  checkpointer = checkpointing.Checkpointer(
      os.path.join(workdir, "checkpoints"), keep=3)
  state = checkpointer.restore(checkpointer.latest_step(), like)
  checkpointer.close()
  return state


def test_train_and_evaluate_writes_results(dataset_dirs, tmp_path):
  config = tiny_config(dataset_dirs, eval_every=6, write_figures=True)
  results = train.train_and_evaluate(config, str(tmp_path))
  assert results["steps"] == 12
  assert 0.1 < results["test_knn_accuracy_at_1"] <= 1.0
  with open(tmp_path / "results.json") as f:
    assert (json.load(f)["test_knn_accuracy_at_1"] ==
            results["test_knn_accuracy_at_1"])
  lines = [json.loads(l) for l in open(tmp_path / "metrics.jsonl")]
  assert [l["step"] for l in lines if "loss" in l] == list(range(1, 13))
  assert [l["step"] for l in lines if "test_knn_accuracy_at_1" in l] == [6, 12]
  assert set(config_lib.Config.__dataclass_fields__) == set(
      json.load(open(tmp_path / "config.json")))
  assert os.listdir(tmp_path / "tensorboard")
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["12", "4", "8"]
  assert sorted(os.listdir(tmp_path / "figures")) == [
      "embeddings_2d.png", "mined_triplets.png", "retrieval.png",
      "training_curves.png"]


@pytest.mark.parametrize("test_time_flip, test_time_shift",
                         [(False, 0), (True, 0), (False, 1)])
def test_results_are_test_queries_against_the_train_split(
    dataset_dirs, tmp_path, test_time_flip, test_time_shift):
  """The main job's test metrics, recomputed by brute force from the saved
  network's embeddings: each test image ranks every train image. With
  test-time augmentation, the run embeds as `models.embed` with it does
  (the test of that function checks it against its views), in its
  evaluation as afterwards: with the flip, an image and its mirror alike."""
  config = tiny_config(dataset_dirs, test_split="test[:200]", knn_ks=(1, 3),
                       test_time_flip=test_time_flip,
                       test_time_shift=test_time_shift)
  results = train.train_and_evaluate(config, str(tmp_path))
  run = workdir.restore(str(tmp_path))
  assert run.step == config.steps
  train_split, test = data.load_splits(config)
  mirrored = test.images[:, :, ::-1]
  assert np.allclose(run.embedder(mirrored), run.embedder(test.images),
                     atol=1e-6) == test_time_flip
  np.testing.assert_allclose(
      run.embedder(test.images[:8]),
      models.embed(run.graphdef, run.params, run.batch_stats,
                   test.images[:8], False, test_time_flip, test_time_shift),
      atol=1e-6)
  if test_time_flip or test_time_shift:
    # The exported function embeds as the run does.
    exported = jax.export.deserialize(export.export_embedder(run)[0])
    np.testing.assert_allclose(exported.call(test.images[:8]),
                               run.embedder(test.images[:8]), atol=1e-6)
  want, lone = reference.retrieval_metrics(
      run.embedder(test.images), test.labels, run.embedder(train_split.images),
      train_split.labels, config.metric, recall_ks=(1, 2, 4, 8),
      knn_ks=(1, 3))
  assert lone == 0 and results["test_queries"] == len(test)
  # The run ranks by float32 distances: once nine views are averaged, this
  # tiny network puts some references within 1e-6 of each other, and those
  # may swap.
  tolerance = 1e-5 if test_time_shift else 1e-6
  for name, value in want.items():
    assert results[f"test_{name}"] == pytest.approx(value, abs=tolerance), name


def test_test_time_augmentation_changes_only_the_evaluation(dataset_dirs,
                                                            tmp_path):
  # Evaluations during training embed with it; the trained weights are
  # those of the run without it, bit for bit.
  config = tiny_config(dataset_dirs, steps=6, eval_every=3)
  configs = {"plain": config, "augmented": config.replace(
      test_time_flip=True, test_time_shift=1)}
  results = {name: train.train_and_evaluate(c, str(tmp_path / name))
             for name, c in configs.items()}
  plain, augmented = (saved_params(c, str(tmp_path / name))
                      for name, c in configs.items())
  for a, b in zip(jax.tree.leaves(plain), jax.tree.leaves(augmented)):
    np.testing.assert_array_equal(a, b)
  assert results["plain"]["test_map_at_r"] != results["augmented"][
      "test_map_at_r"]


def test_rotated_classes_train_on_four_turns_and_evaluate_the_splits(
    dataset_dirs, tmp_path, monkeypatch):
  """With rotated_classes, a run's steps are those of a run handed the
  four turns of each class as its train split (turned here by transposes
  and flips), bit for bit; its evaluation is that of the splits as they
  are: test queries against the unturned train split."""
  config = tiny_config(dataset_dirs, steps=4, test_split="test[:200]",
                       knn_ks=(1,))
  results = train.train_and_evaluate(config.replace(rotated_classes=True),
                                     str(tmp_path / "rotated"))
  train_split, test = data.load_splits(config)
  turns = [train_split.images]
  for _ in range(3):  # A quarter turn counterclockwise: transpose, flip.
    turns.append(turns[-1].swapaxes(1, 2)[:, ::-1])
  handed = data.Split(
      images=np.concatenate(turns), num_classes=40,
      labels=np.concatenate([train_split.labels + 10 * k for k in range(4)]))
  monkeypatch.setattr(train.data, "load_splits", lambda _: (handed, test))
  train.train_and_evaluate(config, str(tmp_path / "handed"))
  for a, b in zip(*(jax.tree.leaves(saved_params(config, str(tmp_path / d)))
                    for d in ("rotated", "handed"))):
    np.testing.assert_array_equal(a, b)
  run = workdir.restore(str(tmp_path / "rotated"))
  want, _ = reference.retrieval_metrics(
      run.embedder(test.images), test.labels,
      run.embedder(train_split.images), train_split.labels, config.metric,
      recall_ks=(1,), knn_ks=(1,))
  assert results["test_map_at_r"] == pytest.approx(want["map_at_r"],
                                                   abs=1e-6)


def test_held_out_classes_are_evaluated_as_unseen(dataset_dirs, tmp_path):
  config = tiny_config(dataset_dirs, train_classes=(0, 1, 2, 3, 4),
                       few_shot_episodes=20, few_shot_shots=(1, 3))
  results = train.train_and_evaluate(config, str(tmp_path))
  train_split, test = data.load_splits(config)
  assert set(train_split.labels.tolist()) == {0, 1, 2, 3, 4}
  seen = int(np.isin(test.labels, [0, 1, 2, 3, 4]).sum())
  assert results["test_queries"] == seen
  assert results["unseen_queries"] == len(test) - seen
  for name in ("test_map_at_r", "unseen_map_at_r", "unseen_recall_at_8",
               "unseen_5way_1shot_prototype",
               "unseen_5way_3shot_nearest_neighbor"):
    assert 0.0 <= results[name] <= 1.0, name
  assert results["unseen_5way_1shot_prototype_ci95"] > 0
  with pytest.raises(ValueError, match=r"train_classes \[12\] do not occur"):
    data.load_splits(config.replace(train_classes=(1, 12)))


def test_validation_classes_come_from_the_train_split(dataset_dirs):
  """train_classes and test_classes over one split: a validation set of
  held-out training classes, which nothing trains on."""
  config = tiny_config(dataset_dirs, test_split="train[:2000]",
                       train_classes=(0, 1, 2), test_classes=(3, 4))
  train_split, validation = data.load_splits(config)
  full = data.load("mnist", "train[:2000]", **dataset_dirs)
  held_out = np.isin(full.labels, [3, 4])
  assert set(train_split.labels.tolist()) == {0, 1, 2}
  np.testing.assert_array_equal(validation.labels, full.labels[held_out])
  np.testing.assert_array_equal(validation.images, full.images[held_out])
  with pytest.raises(ValueError, match=r"test_classes \[12\] do not occur"):
    data.load_splits(config.replace(test_classes=(3, 12)))


@pytest.mark.parametrize("sampling,steps_per_call,ema_decay",
                         [("host", 1, 0.9), ("device", 3, 0.0)])
def test_resume_equals_uninterrupted_run(dataset_dirs, tmp_path, sampling,
                                         steps_per_call, ema_decay):
  # Calls end at multiples of 3 and of the checkpoint period 4: 3, 4, 6, ...
  # The moving average of the weights, where kept, resumes too.
  config = tiny_config(dataset_dirs, sampling=sampling,
                       steps_per_call=steps_per_call, ema_decay=ema_decay)
  straight = tmp_path / "straight"
  train.train_and_evaluate(config, str(straight))
  resumed = tmp_path / "resumed"
  stopped = train.train_and_evaluate(config, str(resumed),
                                     should_stop=lambda step: step >= 6)
  assert stopped == {"interrupted": True, "steps": 6}
  results = train.train_and_evaluate(config, str(resumed))
  assert results["steps_this_run"] == 6
  want, got = saved_params(config, straight), saved_params(config, resumed)
  assert int(got.step) == 12
  for a, b in zip(jax.tree.leaves(want), jax.tree.leaves(got)):
    np.testing.assert_array_equal(a, b)


def test_moving_average_of_the_weights(dataset_dirs, tmp_path):
  """--ema_decay: the average follows its formula (in float64, from the
  weights of every step's checkpoint), training itself is unchanged, and
  the metrics and the restored network are the average's."""
  config = tiny_config(dataset_dirs, ema_decay=0.8, steps=6,
                       checkpoint_every=1, keep_checkpoints=10,
                       test_split="test[:200]", knn_ks=(1, 3))
  results = train.train_and_evaluate(config, str(tmp_path / "ema"))
  train.train_and_evaluate(config.replace(ema_decay=0.0),
                           str(tmp_path / "plain"))
  _, like, _ = train.initial_state(config, (28, 28, 1))
  ema = [np.asarray(x, np.float64) for x in jax.tree.leaves(like.params)]
  checkpointer = checkpointing.Checkpointer(
      str(tmp_path / "ema" / "checkpoints"), keep=10)
  for step in range(1, 7):
    state = checkpointer.restore(step, like)
    d = min(0.8, (1 + step) / (10 + step))
    ema = [d * e + (1 - d) * np.asarray(p, np.float64)
           for e, p in zip(ema, jax.tree.leaves(state.params))]
  checkpointer.close()
  for want, got in zip(ema, jax.tree.leaves(state.ema_params)):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
  plain = saved_params(config.replace(ema_decay=0.0), str(tmp_path / "plain"))
  for a, b in zip(jax.tree.leaves(plain.params),
                  jax.tree.leaves(state.params)):
    np.testing.assert_array_equal(a, b)
  run = workdir.restore(str(tmp_path / "ema"))
  for a, b, p in zip(jax.tree.leaves(run.params),
                     jax.tree.leaves(state.ema_params),
                     jax.tree.leaves(state.params)):
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, p)
  train_split, test = data.load_splits(config)
  want, _ = reference.retrieval_metrics(
      run.embedder(test.images), test.labels, run.embedder(train_split.images),
      train_split.labels, config.metric, recall_ks=(1, 2, 4, 8),
      knn_ks=(1, 3))
  for name, value in want.items():
    assert results[f"test_{name}"] == pytest.approx(value, abs=1e-6), name


def test_steps_per_call_change_nothing_but_rounding(dataset_dirs, tmp_path):
  """A call of 4 steps (unrolled on the CPU) takes the steps of 4 calls of
  one: the same batches and updates, up to float32 rounding."""
  params = []
  for per_call in (1, 4):
    config = tiny_config(dataset_dirs, steps=8, checkpoint_every=0,
                         sampling="host", steps_per_call=per_call)
    train.train_and_evaluate(config, str(tmp_path / str(per_call)))
    params.append(saved_params(config, tmp_path / str(per_call)))
  for a, b in zip(*map(jax.tree.leaves, params)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_workdir_with_other_config_is_refused(dataset_dirs, tmp_path):
  config = tiny_config(dataset_dirs, steps=2, warmup_steps=0,
                       checkpoint_every=0)
  train.train_and_evaluate(config, str(tmp_path))
  with pytest.raises(ValueError, match=r"margin: 0\.5 -> 0\.7"):
    train.train_and_evaluate(config.replace(margin=0.7), str(tmp_path))


@pytest.mark.parametrize("loss", config_lib.LOSS_NAMES)
def test_each_loss_lowers_its_loss(dataset_dirs, loss):
  """A few steps on one fixed batch must lower every loss."""
  config = tiny_config(dataset_dirs, loss=loss, augment_shift=0,
                       learning_rate=3e-3, warmup_steps=0, steps=100,
                       margin=0.5)
  split = data.load("mnist", "train[:500]", **dataset_dirs)
  sampler = sampling.create(config, split.labels)
  indices = sampler(0)
  images, labels = split.images[indices], split.labels[indices]
  graphdef, state, tx = train.initial_state(config, (28, 28, 1))
  step = jax.jit(lambda s: train.train_step(s, images, labels,
                                            graphdef=graphdef, tx=tx,
                                            config=config))
  first = None
  for _ in range(15):
    state, metrics = step(state)
    first = float(metrics["loss"]) if first is None else first
  assert float(metrics["loss"]) < 0.7 * first, (first, metrics["loss"])


def test_photo_folder_resumes_exactly(tmp_path):
  """A folder of photos from the disk cache, randomly cropped, flipped and
  colour-jittered: a stopped and resumed run ends where an uninterrupted one
  does, bit for bit."""
  shapes.write_folder(str(tmp_path / "shapes"), classes=3,
                                 per_class=8)
  config = config_lib.Config(
      dataset=f"folder:{tmp_path / 'shapes'}", image_size=16, resize_size=20,
      data_dir=str(tmp_path / "data"), classes_per_batch=3,
      examples_per_class=2, widths=(4,), hidden_dim=16, embedding_dim=8,
      steps=8, warmup_steps=1, eval_every=0, checkpoint_every=3,
      augment_color=0.3, write_figures=False, few_shot_ways=2,
      few_shot_episodes=5, log_every_seconds=1000.0)
  results = train.train_and_evaluate(config, str(tmp_path / "straight"))
  assert 0.0 <= results["test_map_at_r"] <= 1.0
  train.train_and_evaluate(config, str(tmp_path / "resumed"),
                           should_stop=lambda step: step >= 5)
  train.train_and_evaluate(config, str(tmp_path / "resumed"))
  want = workdir.restore(str(tmp_path / "straight"))
  got = workdir.restore(str(tmp_path / "resumed"))
  assert want.step == got.step == 8 and want.image_shape == (16, 16, 3)
  for a, b in zip(jax.tree.leaves(want.params), jax.tree.leaves(got.params)):
    np.testing.assert_array_equal(a, b)


def test_label_free_views_train_and_evaluate(tmp_path):
  """--positives=augmented: batches of P images in K augmented views each;
  the labels the folder has are used for evaluation only."""
  shapes.write_folder(str(tmp_path / "shapes"), classes=3,
                                 per_class=8)
  config = config_lib.Config(
      dataset=f"folder:{tmp_path / 'shapes'}", image_size=16, resize_size=20,
      data_dir=str(tmp_path / "data"), positives="augmented",
      classes_per_batch=4, examples_per_class=3, widths=(4,), hidden_dim=16,
      embedding_dim=8, steps=4, warmup_steps=1, eval_every=0,
      checkpoint_every=0, few_shot_ways=2, few_shot_episodes=5,
      log_every_seconds=1000.0)
  results = train.train_and_evaluate(config, str(tmp_path / "run"))
  assert results["steps"] == 4 and 0.0 <= results["test_map_at_r"] <= 1.0
  lines = [json.loads(l) for l in open(tmp_path / "run" / "metrics.jsonl")]
  # Each batch: 4 images x 3 views; every view has 2 positives.
  assert lines[0]["num_triplets"] == 12 * 2 * 9
  with pytest.raises(ValueError, match="positives=augmented needs"):
    config_lib.validate(config.replace(augment="none"))


@pytest.mark.parametrize("freeze_bn", [False, True])
def test_freeze_bn_keeps_batch_norm_fixed(freeze_bn):
  config = config_lib.Config(
      norm="batch", freeze_bn=freeze_bn, widths=(4,), hidden_dim=16,
      embedding_dim=8, warmup_steps=0, steps=10, augment_shift=0,
      learning_rate=0.1)
  graphdef, state, tx = train.initial_state(config, (8, 8, 1))
  images = np.random.default_rng(0).integers(0, 256, (8, 8, 8, 1), np.uint8)
  labels = np.repeat(np.arange(4), 2).astype(np.int32)
  step = jax.jit(functools.partial(train.train_step, graphdef=graphdef,
                                   tx=tx, config=config))
  new, _ = step(state, images, labels)
  mask = weights.batch_norm_mask(nnx.merge(graphdef, state.params,
                                           state.batch_stats), state.params)
  for frozen, before, after in zip(jax.tree.leaves(mask),
                                   jax.tree.leaves(state.params),
                                   jax.tree.leaves(new.params)):
    assert np.array_equal(before, after) == (frozen and freeze_bn)
  stats_equal = all(np.array_equal(a, b) for a, b in zip(
      jax.tree.leaves(state.batch_stats), jax.tree.leaves(new.batch_stats)))
  assert stats_equal == freeze_bn
