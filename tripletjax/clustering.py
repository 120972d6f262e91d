"""Clustering quality of embeddings: NMI of a k-means clustering.

The third figure metric-learning papers report beside Recall@k and MAP@R:
the test embeddings are clustered by k-means into as many clusters as there
are classes, and the clusters are compared with the classes by normalised
mutual information, ``NMI = 2 I(Y; C) / (H(Y) + H(C))`` (the arithmetic
normalisation, scikit-learn's default).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from tripletjax import distances
from tripletjax import neighbors


def nmi(labels: np.ndarray, clusters: np.ndarray) -> float:
  """Normalised mutual information of two labellings of the same points.

  Args:
    labels: ``[N]`` class ids.
    clusters: ``[N]`` cluster ids.

  Returns:
    In [0, 1]; 1 when the clusters are the classes (whatever their ids).
    Two labellings of one group each give 1.

  >>> nmi(np.array([0, 0, 1, 1]), np.array([5, 5, 7, 7]))
  1.0
  >>> nmi(np.array([0, 0, 1, 1]), np.array([0, 1, 0, 1]))
  0.0
  """
  _, y = np.unique(np.asarray(labels), return_inverse=True)
  _, c = np.unique(np.asarray(clusters), return_inverse=True)
  joint = np.zeros((y.max() + 1, c.max() + 1))
  np.add.at(joint, (y, c), 1.0)
  joint /= joint.sum()
  py, pc = joint.sum(axis=1), joint.sum(axis=0)
  entropy = lambda p: -float(np.sum(p[p > 0] * np.log(p[p > 0])))
  h_y, h_c = entropy(py), entropy(pc)
  if h_y + h_c == 0:
    return 1.0
  nonzero = joint > 0
  mutual = float(np.sum(joint[nonzero] * np.log(
      joint[nonzero] / np.outer(py, pc)[nonzero])))
  return max(0.0, 2.0 * mutual / (h_y + h_c))


def kmeans(points: np.ndarray, k: int, *, seed: int = 0,
           iterations: int = 20, metric: str = "euclidean") -> np.ndarray:
  """Cluster ids of `points` by k-means (k-means++ start, then Lloyd's
  iterations), each point to its nearest centre by `metric`.

  Args:
    points: ``[N, D]`` embeddings.
    k: clusters, ``1 <= k <= N``.
    seed: seed of the k-means++ start.
    iterations: Lloyd's iterations.
    metric: a name of `tripletjax.distances.METRIC_NAMES`.

  Returns:
    ``int [N]`` cluster ids in ``[0, k)``.
  """
  distances.check_metric(metric)
  points = np.asarray(points, np.float32)
  if not 1 <= k <= len(points):
    raise ValueError(f"k must be in [1, {len(points)}], got {k}.")
  centres = jnp.asarray(points[_kmeans_plus_plus(points, k, seed)])
  data = jnp.asarray(points)
  nearest = lambda centres: neighbors.nearest_neighbors(
      data, centres, k=1, metric=metric)[1][:, 0]
  for _ in range(iterations):
    centres = _means(data, nearest(centres), centres)
  return np.asarray(nearest(centres))


def _kmeans_plus_plus(points: np.ndarray, k: int, seed: int) -> np.ndarray:
  """Indices of k starting centres: each next one drawn with probability
  proportional to the squared distance to the nearest chosen so far."""
  rng = np.random.default_rng(seed)
  chosen = [int(rng.integers(len(points)))]
  nearest = np.sum((points - points[chosen[0]]) ** 2, axis=1)
  for _ in range(k - 1):
    total = nearest.sum()
    pick = (int(rng.choice(len(points), p=nearest / total)) if total > 0
            else int(rng.integers(len(points))))
    chosen.append(pick)
    nearest = np.minimum(nearest, np.sum((points - points[pick]) ** 2,
                                         axis=1))
  return np.array(chosen)


@jax.jit
def _means(points: jax.Array, assignment: jax.Array, centres: jax.Array
           ) -> jax.Array:
  """Each cluster's mean; an empty cluster keeps its centre."""
  k = centres.shape[0]
  sums = jax.ops.segment_sum(points, assignment, num_segments=k)
  counts = jax.ops.segment_sum(jnp.ones(points.shape[0]), assignment,
                               num_segments=k)
  return jnp.where(counts[:, None] > 0,
                   sums / jnp.maximum(counts, 1)[:, None], centres)
