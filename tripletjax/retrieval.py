"""Retrieval metrics, exact, with the definitions of "A Metric Learning
Reality Check" (Musgrave et al., 2020) and PyTorch Metric Learning's
`AccuracyCalculator`.

Every query ranks the references by distance, ties by reference index. With
``R`` the number of references that share the query's label (the query
itself excluded in leave-one-out) and ``rel_i`` whether the i-th ranked
reference does:

* ``precision_at_1``: ``rel_1``.
* ``r_precision``: ``sum_{i<=R} rel_i / R``.
* ``map_at_r``: ``sum_{i<=R} rel_i * precision_at_i / R``.
* ``recall_at_k``: 1 if any of the first k references has the label.
* ``knn_accuracy_at_k``: the majority label of the first k references is the
  query's; a tie in votes goes to the tied label ranked first.

Each is averaged over the queries with ``R >= 1``; queries whose label no
reference has ("lone" queries) are left out of every metric and counted in
``lone_queries``, as PyTorch Metric Learning does.

How it stays exact without a query x reference matrix: MAP@R needs each
query's ranking to depth R, which for MNIST is 6,000 references. Most of
those are positives. So each query's positives (all of them, computed class
by class) are merged with its ``negatives_k`` nearest negatives (one blockwise
pass, `neighbors.nearest_neighbors`). The merged ranking is exact up to and
including its ``negatives_k``-th negative; the rare query whose needed depth
goes beyond that is ranked against every reference instead, a few queries at
a time. Memory is bounded by ``memory_budget`` bytes per step, whatever the
number of references.

Distances are the Gram-matrix expansion (`tripletjax.distances.
pairwise_distances` with ``precise_close_pairs=False``), as in brute-force
float32 search: references within about ``sqrt(eps) |x|`` of each other are
ranked at rounding level.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import time
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from tripletjax import distances
from tripletjax import neighbors

_NONE = np.uint64(np.iinfo(np.uint64).max)  # Sort key of "no reference".
# Bytes of host memory per ranked entry (keys, indices, labels, metrics).
_BYTES_PER_ENTRY = 64


def _pack(d: np.ndarray, index: np.ndarray) -> np.ndarray:
  """Sort keys ``(distance, reference index)`` as ``uint64`` (inf is last)."""
  d = np.maximum(np.asarray(d, np.float32), 0)  # Bits of floats >= 0 sort.
  keys = (d.view(np.uint32).astype(np.uint64) << np.uint64(32)) | (
      np.asarray(index).astype(np.uint32).astype(np.uint64))
  return np.where(np.isfinite(d) & (np.asarray(index) >= 0), keys, _NONE)


def _unpack_index(keys: np.ndarray) -> np.ndarray:
  return np.where(keys == _NONE, -1,
                  (keys & np.uint64(0xFFFFFFFF)).astype(np.int64))


@functools.partial(jax.jit, static_argnames="metric")
def _distances(queries, references, exclude, reference_index, *, metric):
  """``[q, r]`` distances, inf where ``reference_index == exclude``."""
  d = distances.pairwise_distances(queries, references, metric=metric,
                                   precise_close_pairs=False)
  return jnp.where(reference_index[None, :] == exclude[:, None], jnp.inf, d)


class _Phases:
  """Wall-clock seconds per phase of one call, when asked for."""

  def __init__(self, enabled: bool):
    self.seconds = collections.defaultdict(float) if enabled else None

  @contextlib.contextmanager
  def __call__(self, name: str):
    start = time.perf_counter()
    yield
    if self.seconds is not None:
      self.seconds[name] += time.perf_counter() - start


def _pad_to(x: np.ndarray, n: int, value=0) -> np.ndarray:
  pad = n - x.shape[0]
  if pad <= 0:
    return x
  return np.concatenate([x, np.full((pad, *x.shape[1:]), value, x.dtype)])


def metrics_from_ranking(neighbor_labels: np.ndarray, query_labels: np.ndarray,
                         num_relevant: np.ndarray, *,
                         recall_ks: Sequence[int] = (1, 2, 4, 8),
                         knn_ks: Sequence[int] = (1,)) -> dict[str, np.ndarray]:
  """Per-query metrics from each query's ranked reference labels.

  Args:
    neighbor_labels: ``[Q, P]`` labels of the references in ranked order,
      ``P >= max(R, recall_ks, knn_ks)`` for every query; -1 pads.
    query_labels: ``[Q]``.
    num_relevant: ``[Q]`` R, the number of references with the query's label.
    recall_ks: the k of recall@k.
    knn_ks: the k of k-NN accuracy.

  Returns:
    ``{name: float64 [Q]}``, one value per query.
  """
  query_labels = np.asarray(query_labels)
  rel = neighbor_labels == query_labels[:, None]
  depth = rel.shape[1]
  positions = np.arange(1, depth + 1)
  within_r = positions[None, :] <= num_relevant[:, None]
  hits = np.cumsum(rel, axis=1)
  safe_r = np.maximum(num_relevant, 1)
  out = {
      "precision_at_1": rel[:, 0].astype(np.float64),
      "r_precision": np.sum(rel & within_r, axis=1) / safe_r,
      "map_at_r": np.sum(np.where(rel & within_r, hits / positions, 0.0),
                         axis=1) / safe_r,
  }
  for k in recall_ks:
    out[f"recall_at_{k}"] = rel[:, :k].any(axis=1).astype(np.float64)
  for k in knn_ks:
    out[f"knn_accuracy_at_{k}"] = _majority_is_right(
        neighbor_labels[:, :k], query_labels).astype(np.float64)
  return out


def _majority_is_right(labels: np.ndarray, truth: np.ndarray) -> np.ndarray:
  """Whether the majority of each row of `labels` is `truth`; a tie in
  votes goes to the tied label that appears first in the row."""
  votes = (labels[:, :, None] == labels[:, None, :]).sum(axis=2)
  votes = np.where(labels >= 0, votes, -1)
  winner = labels[np.arange(len(labels)), np.argmax(votes, axis=1)]
  return winner == truth


def retrieval_metrics(
    queries: np.ndarray,
    query_labels: np.ndarray,
    references: np.ndarray | None = None,
    reference_labels: np.ndarray | None = None,
    *,
    metric: str = "euclidean",
    recall_ks: Sequence[int] = (1, 2, 4, 8),
    knn_ks: Sequence[int] = (1,),
    negatives_k: int = 64,
    memory_budget: int = 64 * 2**20,
    profile: bool = False,
) -> dict[str, float]:
  """Retrieval metrics of `queries` against `references`.

  Args:
    queries: ``float [Q, D]`` embeddings.
    query_labels: ``int [Q]``.
    references: ``float [R, D]``; None: leave-one-out, the queries are the
      references and no query retrieves itself.
    reference_labels: ``int [R]``; None with `references` None.
    metric: a name of `tripletjax.distances.METRIC_NAMES`.
    recall_ks: the k of ``recall_at_k``.
    knn_ks: the k of ``knn_accuracy_at_k``.
    negatives_k: nearest negatives kept per query in the blockwise pass.
    memory_budget: bytes of the largest intermediate array.

  Returns:
    ``{name: mean over the queries with R >= 1}`` for the metrics of the
    module docstring, plus ``queries``, ``lone_queries`` (how many had
    R = 0), and how many queries needed the deeper pass with
    ``8 * negatives_k`` negatives (``deeper_ranked_queries``) and the full
    ranking (``fully_ranked_queries``).
  """
  distances.check_metric(metric)
  leave_one_out = references is None
  if leave_one_out != (reference_labels is None):
    raise ValueError("Give both references and reference_labels, or neither "
                     "(leave-one-out).")
  queries = np.asarray(queries, np.float32)
  query_labels = np.asarray(query_labels).astype(np.int64)
  if leave_one_out:
    references, reference_labels = queries, query_labels
  references = np.asarray(references, np.float32)
  reference_labels = np.asarray(reference_labels).astype(np.int64)
  if queries.ndim != 2 or references.ndim != 2 or (
      queries.shape[1] != references.shape[1]):
    raise ValueError(f"queries and references must be [N, D] with the same "
                     f"D, got {queries.shape} and {references.shape}.")
  if query_labels.shape != queries.shape[:1] or (
      reference_labels.shape != references.shape[:1]):
    raise ValueError(
        f"labels must have one entry per row: {query_labels.shape} labels for "
        f"{queries.shape[0]} queries, {reference_labels.shape} for "
        f"{references.shape[0]} references.")
  if min(*recall_ks, *knn_ks) < 1:
    raise ValueError(f"recall_ks and knn_ks must be >= 1, got {recall_ks} "
                     f"and {knn_ks}.")
  num_q, num_r = len(queries), len(references)
  min_depth = max(*recall_ks, *knn_ks)
  if num_r - leave_one_out < min_depth:
    raise ValueError(f"{num_r} references are too few for k = {min_depth}.")

  classes, class_of_ref = np.unique(reference_labels, return_inverse=True)
  members = [np.flatnonzero(class_of_ref == c) for c in range(len(classes))]
  class_of_query = np.searchsorted(classes, query_labels)
  known = (class_of_query < len(classes)) & (
      classes[np.minimum(class_of_query, len(classes) - 1)] == query_labels)
  self_index = np.arange(num_q) if leave_one_out else np.full(num_q, -1)
  num_relevant = np.zeros(num_q, np.int64)
  num_relevant[known] = np.array([len(m) for m in members])[
      class_of_query[known]] - leave_one_out
  counted = num_relevant >= 1
  depth = max(min_depth, int(num_relevant.max(initial=0)))

  per_query = {name: np.zeros(num_q) for name in _metric_names(
      recall_ks, knn_ks)}

  phase = _Phases(profile)

  def score(chunk, labels):
    with phase("metrics (host)"):
      _score(chunk, labels)

  def _score(chunk, labels):
    for name, values in metrics_from_ranking(
        labels, query_labels[chunk], num_relevant[chunk],
        recall_ks=recall_ks, knn_ks=knn_ks).items():
      per_query[name][chunk] = values

  pending = np.flatnonzero(known)
  deeper = 0
  # Each query's positives merged with its nearest negatives; the queries
  # that need a deeper ranking try again with 8x as many negatives.
  for k in sorted({min(negatives_k, num_r), min(8 * negatives_k, num_r)}):
    if not len(pending):
      break
    if k > negatives_k:
      deeper = len(pending)
    with phase("nearest negatives (device)"):
      neg_d, neg_i = neighbors.nearest_neighbors(
          jnp.asarray(queries[pending]), jnp.asarray(references), k=k,
          metric=metric, labels=(jnp.asarray(query_labels[pending]),
                                 jnp.asarray(reference_labels)))
      neg_d, neg_i = np.asarray(neg_d), np.asarray(neg_i)
    neg_keys = np.zeros((num_q, k), np.uint64)
    neg_keys[pending] = _pack(neg_d, neg_i)
    too_shallow = _merged_rankings(
        pending, neg_keys, members, class_of_query, queries, references,
        query_labels, reference_labels, self_index, num_relevant, min_depth,
        metric, memory_budget, score, phase)
    pending = pending[too_shallow]

  # The few rankings too shallow for their query: against all references.
  redo = pending
  rows = max(1, memory_budget // (_BYTES_PER_ENTRY * num_r))
  all_refs = jnp.asarray(references)
  ref_index = jnp.arange(num_r)
  for start in range(0, len(redo), rows):
    chunk = redo[start:start + rows]
    padded = _pad_to(chunk, rows, chunk[0])
    with phase("full ranking (device)"):
      d = np.asarray(_distances(jnp.asarray(queries[padded]), all_refs,
                                jnp.asarray(self_index[padded]), ref_index,
                                metric=metric))[:len(chunk)]
    with phase("full ranking (host)"):
      keys = _pack(d, np.broadcast_to(np.arange(num_r), d.shape))
      index = _unpack_index(np.sort(keys, axis=1)[:, :depth])
    score(chunk, np.where(index >= 0, reference_labels[index], -1))

  results = {name: float(np.mean(values[counted])) if counted.any()
             else float("nan") for name, values in per_query.items()}
  results["lone_queries"] = int(num_q - counted.sum())
  results["queries"] = num_q
  results["deeper_ranked_queries"] = deeper
  results["fully_ranked_queries"] = len(redo)
  if profile:
    results.update({f"seconds {name}": value
                    for name, value in phase.seconds.items()})
  return results


def _merged_rankings(pending, neg_keys, members, class_of_query, queries,
                     references, query_labels, reference_labels, self_index,
                     num_relevant, min_depth, metric, memory_budget, score,
                     phase) -> np.ndarray:
  """Scores the `pending` queries from their positives and `neg_keys`.

  Returns:
    ``bool [len(pending)]``: the queries whose merged ranking was exact to
    a smaller depth than they need (their scores are then not final).
  """
  k = neg_keys.shape[1]
  largest = max(len(m) for m in members)
  is_pending = np.zeros(len(queries), bool)
  is_pending[pending] = True
  rows = max(1, min(memory_budget // (_BYTES_PER_ENTRY * (largest + k)),
                    int(np.bincount(class_of_query[pending]).max())))
  too_shallow = np.zeros(len(queries), bool)
  for c, refs in enumerate(members):
    mine = np.flatnonzero(is_pending & (class_of_query == c))
    if not len(mine):
      continue
    # Padded (references of index -1) so that one compilation serves all.
    padded_refs = _pad_to(refs, largest, -1)
    ref_vectors = jnp.asarray(references[np.maximum(padded_refs, 0)])
    for start in range(0, len(mine), rows):
      chunk = mine[start:start + rows]
      padded = _pad_to(chunk, rows, chunk[0])
      with phase("positives (device)"):
        d = np.asarray(_distances(
            jnp.asarray(queries[padded]), ref_vectors,
            jnp.asarray(self_index[padded]), jnp.asarray(padded_refs),
            metric=metric))[:len(chunk)]
      merge = phase("merge (host)")
      merge.__enter__()
      keys = np.concatenate(
          [_pack(d, np.broadcast_to(padded_refs, d.shape)), neg_keys[chunk]],
          axis=1)
      keys.sort(axis=1)
      index = _unpack_index(keys)
      labels = np.where(index >= 0, reference_labels[index], -1)
      # Exact up to and including the k-th negative, if there are k.
      negatives = np.cumsum((index >= 0) & (
          labels != query_labels[chunk, None]), axis=1, dtype=np.int32)
      exact = np.where(negatives[:, -1] < k, keys.shape[1],
                       np.argmax(negatives == k, axis=1) + 1)
      too_shallow[chunk] = exact < np.maximum(num_relevant[chunk], min_depth)
      merge.__exit__(None, None, None)
      score(chunk, labels)
  return too_shallow[pending]


def _metric_names(recall_ks, knn_ks) -> list[str]:
  return ["precision_at_1", "r_precision", "map_at_r",
          *(f"recall_at_{k}" for k in recall_ks),
          *(f"knn_accuracy_at_{k}" for k in knn_ks)]
