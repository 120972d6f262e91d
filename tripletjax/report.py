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

import os
from typing import Callable

import jax
import numpy as np

from tripletjax import losses
from tripletjax import neighbors
from tripletjax import plotting
from tripletjax import writers
from tripletjax.data import Split

_ACCURACY_KEYS = ("test_knn_accuracy_at_1", "test_map_at_r",
                  "unseen_knn_accuracy_at_1", "unseen_map_at_r")
# One compilation instead of one per operation (seconds, run eagerly).
_hardest_triplets = jax.jit(losses.hardest_triplets, static_argnames="metric")


def _one_per_class(labels: np.ndarray, count: int) -> np.ndarray:
  """Indices of up to `count` examples, from as many classes as possible."""
  _, first = np.unique(labels, return_index=True)
  picked = np.sort(first)[:count]
  rest = np.setdiff1d(np.arange(len(labels)), picked)
  return np.concatenate([picked, rest[:count - len(picked)]]).astype(np.int64)


def write_figures(workdir: str, embedder: Callable[[np.ndarray], np.ndarray],
                  train: Split, test: Split, batch_indices, batch_labels,
                  *, metric: str, rows: int = 8, max_points: int = 5000,
                  train_embeddings: np.ndarray | None = None,
                  test_embeddings: np.ndarray | None = None) -> list[str]:
  """Writes the figures of the module docstring; returns their paths.

  Args:
    workdir: the run's directory.
    embedder: ``uint8 [N, H, W, C] -> [N, D]`` host arrays
      (`tripletjax.evaluation.Embedder`).
    train, test: the run's splits.
    train_embeddings, test_embeddings: the embeddings of the whole splits
      where already computed (``[N, D]``), used instead of `embedder`.
    batch_indices: indices into `train` of one P x K training batch.
    batch_labels: the labels that batch trains with.
    metric: the run's distance.
    rows: triplets and queries shown.
    max_points: test embeddings drawn in the projection.
  """
  out = os.path.join(workdir, "figures")
  paths = []
  paths.append(plotting.training_curves(
      writers.read_metrics(os.path.join(workdir, "metrics.jsonl")),
      os.path.join(out, "training_curves.png"),
      accuracy_keys=_ACCURACY_KEYS))

  def embeddings(split, cached, indices=None):
    if cached is not None:
      return cached if indices is None else cached[indices]
    return embedder(split.images if indices is None
                    else split.images[indices])

  shown = np.random.default_rng(0).permutation(len(test))[:max_points]
  shown_embeddings = embeddings(test, test_embeddings, shown)
  paths.append(plotting.embedding_projection(
      shown_embeddings, test.labels[shown],
      os.path.join(out, "embeddings_2d.png"), class_names=train.class_names))

  positive, negative, d_ap, d_an, has_both = (np.asarray(v) for v in
                                              _hardest_triplets(
      embeddings(train, train_embeddings, batch_indices), batch_labels,
      metric=metric))
  anchors = _one_per_class(batch_labels, rows)
  anchors = anchors[has_both[anchors]]
  positive, negative = positive[anchors], negative[anchors]
  d_ap, d_an = d_ap[anchors], d_an[anchors]
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
    reference_images, reference_rows, exclude = train.images, None, False
  else:
    references, reference_labels = shown_embeddings, test.labels[shown]
    reference_images, reference_rows, exclude = test.images, shown, True
  k = min(5, len(references) - 1)
  d, index = neighbors.nearest_neighbors(
      references if exclude else shown_embeddings[queries],
      references, k=k, metric=metric, exclude_self=exclude)
  d, index = np.asarray(d), np.asarray(index)
  if exclude:
    d, index = d[queries], index[queries]
  # Only the images shown are read (photos are read from the disk cache).
  paths.append(plotting.retrieval_grid(
      test.images[shown[queries]], test.labels[shown][queries],
      reference_images[index if reference_rows is None
                       else reference_rows[index]], reference_labels[index],
      os.path.join(out, "retrieval.png"), neighbor_distances=d,
      class_names=train.class_names))
  return paths
