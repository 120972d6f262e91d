"""The figures of a finished run: computes what `tripletjax.plotting` draws.

`write_figures` writes into ``workdir/figures/``:

* ``training_curves.png``: loss, fraction of active triplets, evaluation
  metrics against the step (from ``metrics.jsonl``).
* ``embeddings_2d.png``: test embeddings on their first two principal
  components, coloured by class.
* ``mined_triplets.png``: anchors of one training batch with their hardest
  positive and hardest negative in that batch under the trained model.
* ``retrieval.png``: test queries and their 5 nearest references.
"""

from __future__ import annotations

import json
import os
from typing import Callable

import numpy as np

from tripletjax import data
from tripletjax import distances
from tripletjax import evaluation
from tripletjax import plotting

_ACCURACY_KEYS = ("test_knn_accuracy_at_1", "test_map_at_r",
                  "unseen_knn_accuracy_at_1", "unseen_map_at_r")


def _one_per_class(labels: np.ndarray, count: int) -> np.ndarray:
  """Indices of up to `count` examples, from as many classes as possible."""
  _, first = np.unique(labels, return_index=True)
  picked = np.sort(first)[:count]
  rest = np.setdiff1d(np.arange(len(labels)), picked)
  return np.concatenate([picked, rest[:count - len(picked)]]).astype(np.int64)


def hardest_triplets(embeddings: np.ndarray, labels: np.ndarray,
                     anchors: np.ndarray, *, metric: str):
  """The hardest positive and negative of each anchor within a batch.

  Args:
    embeddings: ``[B, D]``; labels: ``[B]``.
    anchors: indices of the anchors.
    metric: a name of `tripletjax.distances.METRICS`.

  Returns:
    ``(positive indices, negative indices, d(a, p), d(a, n))``; anchors
    without a positive or negative are dropped (as are their rows).
  """
  d = np.asarray(distances.pairwise_distances(embeddings, metric=metric))
  valid = labels >= 0
  same = (labels[:, None] == labels[None, :]) & valid[None, :]
  np.fill_diagonal(same, False)
  different = (labels[:, None] != labels[None, :]) & valid[None, :]
  keep = anchors[valid[anchors] & same[anchors].any(1)
                 & different[anchors].any(1)]
  d_a = d[keep]
  positive = np.argmax(np.where(same[keep], d_a, -np.inf), axis=1)
  negative = np.argmin(np.where(different[keep], d_a, np.inf), axis=1)
  rows = np.arange(len(keep))
  return keep, positive, negative, d_a[rows, positive], d_a[rows, negative]


def write_figures(workdir: str, embed: Callable[[np.ndarray], np.ndarray],
                  train: data.Split, test: data.Split, batch_indices,
                  *, metric: str, rows: int = 8, max_points: int = 5000,
                  train_embeddings: np.ndarray | None = None,
                  test_embeddings: np.ndarray | None = None) -> list[str]:
  """Writes the figures of the module docstring; returns their paths.

  Args:
    workdir: the run's directory.
    embed: ``uint8 [N, H, W, C] -> [N, D]``, in batches (host arrays).
    train, test: the run's splits.
    train_embeddings, test_embeddings: the embeddings of the whole splits
      where already computed (``[N, D]``), used instead of `embed`.
    batch_indices: indices into `train` of one P x K training batch.
    metric: the run's distance.
    rows: triplets and queries shown.
    max_points: test embeddings drawn in the projection.
  """
  out = os.path.join(workdir, "figures")
  paths = []
  records = []
  metrics_path = os.path.join(workdir, "metrics.jsonl")
  if os.path.exists(metrics_path):
    with open(metrics_path, encoding="utf-8") as f:
      records = [json.loads(line) for line in f if line.strip()]
  paths.append(plotting.training_curves(
      records, os.path.join(out, "training_curves.png"),
      accuracy_keys=_ACCURACY_KEYS))

  def embeddings(split, cached, indices=None):
    if cached is not None:
      return cached if indices is None else cached[indices]
    return embed(split.images if indices is None else split.images[indices])

  shown = np.random.default_rng(0).permutation(len(test))[:max_points]
  shown_embeddings = embeddings(test, test_embeddings, shown)
  paths.append(plotting.embedding_projection(
      shown_embeddings, test.labels[shown],
      os.path.join(out, "embeddings_2d.png")))

  batch_labels = train.labels[batch_indices]
  anchors = _one_per_class(batch_labels, rows)
  anchors, positive, negative, d_ap, d_an = hardest_triplets(
      embeddings(train, train_embeddings, batch_indices), batch_labels,
      anchors, metric=metric)
  images = train.images[batch_indices]
  paths.append(plotting.triplet_grid(
      images[anchors], images[positive], images[negative],
      os.path.join(out, "mined_triplets.png"), positive_distances=d_ap,
      negative_distances=d_an))

  # Queries of classes trained on search the train split; unseen ones
  # search the other test images.
  seen = np.isin(test.labels[shown], train.labels)
  queries = _one_per_class(test.labels[shown], rows)
  if seen.all():
    references = embeddings(train, train_embeddings)
    reference_labels = train.labels
    reference_images, exclude = train.images, False
  else:
    references, reference_labels = shown_embeddings, test.labels[shown]
    reference_images, exclude = test.images[shown], True
  k = min(5, len(references) - 1)
  d, index = evaluation.nearest_neighbors(
      references if exclude else shown_embeddings[queries],
      references, k=k, metric=metric, exclude_self=exclude)
  d, index = np.asarray(d), np.asarray(index)
  if exclude:
    d, index = d[queries], index[queries]
  paths.append(plotting.retrieval_grid(
      test.images[shown][queries], test.labels[shown][queries],
      reference_images[index], reference_labels[index],
      os.path.join(out, "retrieval.png"), neighbor_distances=d))
  return paths
