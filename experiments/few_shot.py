r"""Few-shot evaluation of a trained run on classes it never saw.

N-way K-shot episodes (nearest prototype and nearest neighbour, mean
accuracy over episodes with a 95% interval) on the test images of the classes
the run did not train on; for ``omniglot_lake`` also the same episodes over
the characters of the official runs where the run tests on the whole test
split (each episode those of one run, its support drawn by one person and its
queries by others: they rank networks far more precisely than the 20 runs)
and Lake et al.'s official one-shot task (20 runs of 20-way 1-shot). Writes
``few_shot.json`` into the workdir.

  python -m experiments.train --train_classes=0,1,2,3,4 \
      --classes_per_batch=5 --examples_per_class=50 --workdir=runs/m04
  python -m experiments.few_shot --workdir=runs/m04 --ways=5 --shots=1,5
  python -m experiments.few_shot --workdir=runs/omniglot --ways=5,20 --shots=1,5

Expected (docs/results.md): on MNIST's unseen digits 5-9, 5-way 1-shot
about 50 % and 5-shot about 60 %; for the best Omniglot run of
docs/results.md (56 x 56 pixels, rotated classes), 20-way 1-shot about 95 %,
over the official runs' characters about 91 %, the official task 93.75 %.
"""

import json
import os

from absl import flags
import numpy as np

from experiments import common
from tripletjax import config as config_lib
from tripletjax import data
from tripletjax import few_shot
from tripletjax import workdir as workdir_lib
from tripletjax.data import omniglot

_WORKDIR = common.define_trained_run_flag()
_WAYS = flags.DEFINE_list("ways", ["5"], "Classes per episode.")
_SHOTS = flags.DEFINE_list("shots", ["1", "5"], "Support examples per class.")
_QUERIES = flags.DEFINE_integer(
    "queries_per_class", few_shot.QUERIES_PER_CLASS,
    "Query examples per class and episode.")
_EPISODES = flags.DEFINE_integer("episodes", 1000, "Episodes per setting.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the episodes.")
_DATASET = flags.DEFINE_string(
    "dataset", None, "Episodes on every image of this dataset instead (for "
    "example a folder of your own photos, folder:PATH), embedded by the "
    "run's network; default: the run's unseen test classes.")


def _official_characters(config: config_lib.Config, test: data.Split,
                         unseen: np.ndarray) -> dict[str, object]:
  """`few_shot.evaluate`'s groups and sources for episodes over the
  official runs' characters on the run's Omniglot test images
  ``test[unseen]``: each episode takes the characters of one run, its
  support drawn by one person and its queries by others, all at random.
  The official task has one pair of people per run (20 runs): 1,000
  episodes rank networks far more precisely (its own drawers score
  higher: docs/results.md)."""
  features, _ = data.load_features(
      omniglot.NAME, "test", ("image", "label", "drawer"),
      data_dir=config.data_dir, manual_dir=config.manual_dir)
  runs, _ = data.load_features(
      omniglot.NAME, "one_shot", ("image", "run"),
      data_dir=config.data_dir, manual_dir=config.manual_dir)
  # The split read again (at full size, to find the runs' images): the
  # same examples in order.
  assert np.array_equal(features["label"], test.labels)
  characters = omniglot.official_characters(
      features["image"], features["label"], runs["image"], runs["run"])
  print(f"Sets of characters of the {len(characters)} official runs: "
        f"{len(set(characters))}.")
  return {"groups": sorted(set(characters)),
          "sources": features["drawer"][unseen]}


def main(argv):
  del argv  # Checked by common.run.
  if not _WORKDIR.value:
    raise ValueError("Give the trained run's directory: --workdir.")
  run = workdir_lib.restore(_WORKDIR.value)
  config, step, embedder = run.config, run.step, run.embedder
  if _DATASET.value:
    other = config_lib.validate(config.replace(dataset=_DATASET.value,
                                               train_classes=()))
    splits = data.load_splits(other)
    embeddings = np.concatenate([embedder(s.images) for s in splits])
    labels = np.concatenate([s.labels for s in splits])
    print(f"{_DATASET.value}, embedded by step {step} of {config.dataset}: "
          f"{len(labels)} images of {len(np.unique(labels))} classes.")
  else:
    train_split, test = data.load_splits(config)
    unseen = ~np.isin(test.labels, train_split.labels)
    if not unseen.any():
      raise ValueError(
          f"Every class of {config.dataset!r} {config.test_split!r} was "
          "trained on; train with --train_classes to hold some out, or give "
          "--dataset.")
    embeddings = embedder(test.images[unseen])
    labels = test.labels[unseen]
    print(f"{config.dataset}, step {step}: {unseen.sum()} test images of "
          f"{len(np.unique(labels))} classes never trained on.")
  results = {"step": step, "episodes": _EPISODES.value}
  kinds = {"": {}}
  official = config.dataset == omniglot.NAME and not _DATASET.value
  if official and config.test_split == "test" and not config.test_classes:
    kinds[" over the official runs' characters"] = _official_characters(
        config, test, unseen)
  for ways in map(int, _WAYS.value):
    for shots in map(int, _SHOTS.value):
      for kind, constraints in kinds.items():
        r = few_shot.evaluate(embeddings, labels, ways=ways, shots=shots,
                              queries_per_class=_QUERIES.value,
                              episodes=_EPISODES.value, metric=config.metric,
                              seed=_SEED.value, **constraints)
        suffix = "_official_characters" if kind else ""
        results[f"{ways}way_{shots}shot{suffix}"] = r
        print(f"{ways:>3}-way {shots}-shot{kind}: prototype "
              f"{r['prototype']:.2%} ± {r['prototype_ci95']:.2%}, nearest "
              f"neighbour {r['nearest_neighbor']:.2%} ± "
              f"{r['nearest_neighbor_ci95']:.2%}")
  if official:
    task, _ = data.load_features(
        omniglot.NAME, "one_shot", ("image", "label", "run", "is_query"),
        data_dir=config.data_dir, manual_dir=config.manual_dir,
        image_size=config.image_size or None)
    accuracy = few_shot.omniglot_one_shot_accuracy(
        embedder(task["image"]),
        task["label"], task["run"], task["is_query"], metric=config.metric)
    results["official_one_shot_accuracy"] = accuracy
    print(f"Official one-shot task (20 runs of 20-way 1-shot): "
          f"{accuracy:.2%} ({1 - accuracy:.2%} error)")
  with open(os.path.join(_WORKDIR.value, "few_shot.json"), "w",
            encoding="utf-8") as f:
    json.dump(results, f, indent=2)


if __name__ == "__main__":
  common.run(main)
