"""Verification: "same class or not?" answered by thresholding a distance.

`verification_metrics` scores every pair of a set (or given pairs) by its
distance, a pair being called "same" when its distance is at most a
threshold, and measures, exactly:

* ``roc_auc``: the probability that a pair of different classes is farther
  apart than a pair of the same class (ties count one half);
* ``eer``: the equal error rate, the smallest over thresholds of the larger
  of the false accept rate (FAR: pairs of different classes called same) and
  the false reject rate (FRR: pairs of one class called different);
* ``tar_at_far_{f:g}``: the largest true accept rate (1 - FRR) of a
  threshold whose FAR is at most ``f``;
* ``threshold``, ``accuracy``: the threshold of the best accuracy over all
  pairs, and that accuracy (pairs weighted alike, so with many classes it
  favours "different"); ``threshold_far``, ``threshold_tar``: its rates;
* ``positive_pairs``, ``negative_pairs``: how many pairs of each kind.

Every one of these is reached at a threshold equal to the distance of a pair
of one class (between two such distances the FRR stays and the FAR can only
grow), so it suffices to know, for each such distance, how many pairs of
different classes are closer or equally close. Those counts are accumulated
block by block against the sorted distances of the same-class pairs: memory
holds those distances and one block of the pair matrix, never all pairs.
"""

from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from tripletjax import distances

_BYTES_PER_ENTRY = 16  # A distance, its masks and NumPy's copies.


@functools.partial(jax.jit, static_argnames="metric")
def _block_distances(rows: jax.Array, embeddings: jax.Array, *,
                     metric: str) -> jax.Array:
  return distances.pairwise_distances(rows, embeddings, metric=metric)


def _pair_blocks(embeddings: np.ndarray, labels: np.ndarray, metric: str,
                 memory_budget: int):
  """Yields ``(same, different)``: distances of the pairs ``i < j`` of one
  block of rows, of one class and of different classes."""
  n = embeddings.shape[0]
  rows = max(1, min(n, memory_budget // (_BYTES_PER_ENTRY * max(n, 1))))
  device_embeddings = jnp.asarray(embeddings)
  columns = np.arange(n)
  for start in range(0, n, rows):
    stop = min(n, start + rows)
    block = np.zeros((rows, embeddings.shape[1]), embeddings.dtype)
    block[:stop - start] = embeddings[start:stop]  # One shape, one compile.
    d = np.asarray(_block_distances(jnp.asarray(block), device_embeddings,
                                    metric=metric))[:stop - start]
    upper = columns[None, :] > np.arange(start, stop)[:, None]
    same = labels[start:stop, None] == labels[None, :]
    yield d[upper & same], d[upper & ~same]


def _check(embeddings, labels):
  embeddings = np.asarray(embeddings, np.float32)
  labels = np.asarray(labels)
  if embeddings.ndim != 2:
    raise ValueError(f"embeddings must be [N, D], got shape "
                     f"{embeddings.shape}.")
  if labels.shape != embeddings.shape[:1]:
    raise ValueError(f"labels must be [N] = [{embeddings.shape[0]}], got "
                     f"shape {labels.shape}.")
  return embeddings, labels


def verification_metrics(
    embeddings: np.ndarray,
    labels: np.ndarray,
    *,
    metric: str = "euclidean",
    far_targets: Sequence[float] = (1e-3, 1e-2),
    pairs: np.ndarray | Sequence[tuple[int, int, bool]] | None = None,
    memory_budget: int = 64 * 2**20,
) -> dict[str, float]:
  """Verification metrics of all pairs of `embeddings`, or of `pairs`.

  Args:
    embeddings: ``[N, D]``.
    labels: ``[N]`` integer classes (ignored when `pairs` are given).
    metric: the distance (`tripletjax.distances`).
    far_targets: the false accept rates of the ``tar_at_far_*`` entries.
    pairs: ``[P, 3]`` rows ``(i, j, same)``: score these pairs alone (the
      face-verification style); None: every pair ``i < j`` of the set.
    memory_budget: bytes of one block of the pair matrix.

  Returns:
    The metrics of the module doc, as floats.

  Raises:
    ValueError: bad shapes or indices, or no pair of one class or none of
      different classes.
  """
  distances.check_metric(metric)
  embeddings, labels = _check(embeddings, labels)
  if pairs is None:
    same = np.sort(np.concatenate(
        [s for s, _ in _pair_blocks(embeddings, labels, metric,
                                    memory_budget)]
        + [np.zeros(0, np.float32)]))
    negatives = (d for _, d in _pair_blocks(embeddings, labels, metric,
                                            memory_budget))
  else:
    pairs = np.asarray(pairs, np.int64).reshape(-1, 3)
    if pairs.size and (pairs[:, :2].min() < 0
                       or pairs[:, :2].max() >= len(embeddings)):
      raise ValueError(f"pairs index images 0..{len(embeddings) - 1}; got "
                       f"{pairs[:, :2].min()}..{pairs[:, :2].max()}.")
    d = np.asarray(distances.paired_distances(
        embeddings[pairs[:, 0]], embeddings[pairs[:, 1]], metric=metric))
    same = np.sort(d[pairs[:, 2] != 0])
    negatives = iter([d[pairs[:, 2] == 0]])
  # For each same-class distance (sorted), how many different-class pairs
  # are closer (less) and at most as far (at_most).
  less = np.zeros(len(same) + 1, np.int64)
  at_most = np.zeros(len(same) + 1, np.int64)
  num_negative = 0
  for block in negatives:
    num_negative += block.size
    # Sorted, the binary searches walk `same` in order instead of jumping
    # about it (docs/performance.md: the metrics about twice as fast).
    block = np.sort(block)
    at_most += np.bincount(np.searchsorted(same, block, "left"),
                           minlength=len(same) + 1)
    less += np.bincount(np.searchsorted(same, block, "right"),
                        minlength=len(same) + 1)
  if not len(same) or not num_negative:
    raise ValueError(
        f"Verification needs pairs of one class and pairs of different "
        f"classes; got {len(same)} and {num_negative}.")
  return _metrics(same, np.cumsum(less)[:-1], np.cumsum(at_most)[:-1],
                  num_negative, far_targets)


def _metrics(same: np.ndarray, less: np.ndarray, at_most: np.ndarray,
             num_negative: int, far_targets: Sequence[float]
             ) -> dict[str, float]:
  """The metrics from the sorted same-class distances and, for each, the
  numbers of different-class pairs closer than it and not farther."""
  num_positive = len(same)
  # Ties of different-class pairs with a same-class one count one half.
  auc = float(np.sum(num_negative - (less + at_most) / 2)
              / (num_positive * num_negative))
  # Thresholds: no pair accepted, then each distinct same-class distance
  # (the last of equal distances accepts them all).
  last = np.r_[same[1:] != same[:-1], True]
  tar = np.r_[0.0, (np.flatnonzero(last) + 1) / num_positive]
  far = np.r_[0.0, at_most[last] / num_negative]
  thresholds = np.r_[-np.inf, same[last]]
  eer = float(np.min(np.maximum(far, 1.0 - tar)))
  accepted = tar * num_positive + (1.0 - far) * num_negative
  best = int(np.argmax(accepted))
  return {
      "roc_auc": auc,
      "eer": eer,
      **{f"tar_at_far_{f:g}": float(np.max(tar[far <= f]))
         for f in far_targets},
      "threshold": float(thresholds[best]),
      "accuracy": float(accepted[best] / (num_positive + num_negative)),
      "threshold_far": float(far[best]),
      "threshold_tar": float(tar[best]),
      "positive_pairs": float(num_positive),
      "negative_pairs": float(num_negative),
  }
