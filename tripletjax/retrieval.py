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

How it stays exact at the cost of about one matrix product:

* Ranking. References are ranked by the similarity ``q.r - |r|^2 / 2``
  (Euclidean metrics: ``|q - r|^2 = |q|^2 - 2 (q.r - |r|^2 / 2)``) or
  ``q.r / |q| |r|`` (cosine), highest first, as one product of vectors with
  one extra coordinate: the order of the distances, up to float32 rounding
  of pairs within about ``sqrt(eps) |x|`` of each other (as in any
  brute-force float32 search).
* Counting instead of sorting. The metrics need only where each query's
  negatives (references of another label) fall among its first
  ``max(R, k)`` places: a negative's place is one plus the positives ranked
  before it (a binary search in the query's sorted positives) plus the
  negatives ranked before it. MAP@R then follows in closed form: between two
  consecutive negatives the m-th positive sits at place ``m + j``, and the
  sum of ``m / (m + j)`` over a run of places is a difference of harmonic
  numbers.
* Finding those negatives without ranking every reference, when R is at
  least the depth needed (the usual case; queries are ranked in blocks, and
  a block takes this way when all its queries can): a ladder of thresholds,
  the similarities of the query's positives ``m_t = R - 2^t + 1``. If at
  least ``R - m_t`` negatives are more similar than positive ``m_t``, that
  positive sits at place R or later, so every negative within the first R
  places is at least as similar as it: one pass over all query x reference
  pairs (the matrix product and a comparison, packed into bits) lists those
  negatives, their similarities are recomputed exactly, and the count is
  checked on them. The rung comes from counts over a sample of the
  references (rung 2 at least, which an outlier among the last positives
  rarely defeats); one too high is lowered, and rung 0, the R-th positive,
  always suffices. A query with more than `max_candidates` negatives above
  its rung is ranked against every reference.
* When R is below the depth (classes of a few images, k of recall@k or kNN
  larger), the positives give no threshold (and a pass for the few queries
  of a block that have one would cost nearly as much as for all). The
  references, sorted by label, are cut into groups of `group_size`; one pass
  over all pairs (the matrix product and a maximum per group) gives each
  query its best similarity in every group. Every negative more similar than
  ``theta_k``, the largest group maximum outside the query's k best groups,
  lies in those groups (or in the two groups where the query's own class
  begins and ends, always candidates), and those k groups hold at least k
  such negatives: the ranking from their members, recomputed exactly, is
  exact above ``theta_k`` (less a bound on float32 rounding) and reaches at
  least the depth ``k + (positives above theta_k)``. Each query takes the
  smallest k whose depth suffices; one that would need more than
  `max_groups` groups is ranked against every reference.

Memory is bounded by ``memory_budget`` bytes per block, whatever the number
of references; two blocks are ranked at once where two CPUs are usable.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import dataclasses
import functools
import math
import threading
import time
from typing import Sequence

import jax
import jax.numpy as jnp
from jax import lax
import numpy as np

from tripletjax import distances
from tripletjax import sorting

_KEY_MAX = np.uint32(0xFFFFFFFF)  # Sort key of "no reference".
_KEYS_PER_ROW_SEARCH = 256  # `_count_below` searches row by row above this.
_BLOCK_REFERENCES = 2048  # References per block of a pass over them all.
# Rungs of each query's ladder (its positives R, R - 1, R - 3, ..., R - 2^15
# + 1) and the sampling of the references that estimates their counts.
_RUNGS = 16
_SAMPLE_STRIDE = 16
_FIRST_RUNG_AT_LEAST = 2  # (`_Ranker.rungs`)
_MAX_ROWS = 1024  # Queries per block.
# Candidates are ranked by sorting each row when at least 1 in this many
# is a negative to rank (`_in_rank_order`).
_DENSE_FRACTION = 32
# Similarity of a padding reference: below any real one, finite (0 * inf
# would be NaN in the product).
_PADDING_SIMILARITY = -1e30


class _Phases:
  """Wall-clock seconds per phase of one call, when asked for, summed over
  the threads that rank blocks at once."""

  def __init__(self, enabled: bool):
    self.seconds = collections.defaultdict(float) if enabled else None
    self._lock = threading.Lock()

  @contextlib.contextmanager
  def __call__(self, name: str):
    start = time.perf_counter()
    yield
    if self.seconds is not None:
      with self._lock:
        self.seconds[name] += time.perf_counter() - start


def _order_keys(similarity: jax.Array) -> jax.Array:
  """``uint32`` keys that sort ascending as `similarity` descends."""
  x = -similarity
  x = jnp.where(x == 0, 0.0, x)  # -0.0 and 0.0 are one key.
  bits = lax.bitcast_convert_type(x, jnp.uint32)
  return jnp.where(bits >> 31 == 1, ~bits, bits | np.uint32(0x80000000))


def _product(a: jax.Array, b: jax.Array) -> jax.Array:
  return jnp.matmul(a, b.T, precision=lax.Precision.HIGHEST)


@jax.jit
def _positive_keys(queries, span, lo, hi, own):
  """Keys of each query's positives among `span` (``[lo, hi)``, except
  position `own`), `_KEY_MAX` elsewhere: ``uint32 [n, S]``."""
  position = jnp.arange(span.shape[0])[None, :]
  mine = (position >= lo[:, None]) & (position < hi[:, None]) & (
      position != own[:, None])
  return jnp.where(mine, _order_keys(_product(queries, span)), _KEY_MAX)


@jax.jit
def _group_maxima(queries, groups, num_refs, first, last):
  """``[n, G]`` each query's highest similarity in each group; -inf for
  the groups ``first..last`` (its own class) and groups of padding."""
  num_groups, size, dim = groups.shape
  per_block = max(1, _BLOCK_REFERENCES // size)
  blocks = groups.reshape(-1, per_block * size, dim)

  def block_maxima(_, block):
    s = _product(queries, block)
    return None, s.reshape(len(queries), per_block, size).max(axis=2)

  _, maxima = lax.scan(block_maxima, None, blocks)
  maxima = maxima.transpose(1, 0, 2).reshape(len(queries), num_groups)
  ids = jnp.arange(num_groups)[None, :]
  excluded = ((ids >= first[:, None]) & (ids <= last[:, None])) | (
      ids * size >= num_refs)
  return jnp.where(excluded, -jnp.inf, maxima)


def _negative_similarities(queries, block, positions, num_refs, lo, hi):
  """``[n, B]`` similarities to the references at sorted `positions`
  ``[B]``; -inf for the query's own class ``[lo, hi)`` and for padding."""
  excluded = ((positions >= lo[:, None]) & (positions < hi[:, None])) | (
      positions >= num_refs)
  return jnp.where(excluded, -jnp.inf, _product(queries, block))


@jax.jit
def _counts_above(queries, blocks, positions, num_refs, thresholds, lo, hi):
  """``int32 [n, T]``: each query's negatives among `blocks` (``[K, B, D]``
  at sorted `positions` ``[K, B]``) more similar than each of its
  `thresholds` ``[n, T]``."""

  def add(count, block):
    s = _negative_similarities(queries, *block, num_refs, lo, hi)

    def add_one(t, count):
      # One threshold per iteration: XLA's CPU backend is five times
      # slower on a [n, B, T] comparison reduced over B, or on T unrolled
      # reductions.
      above = s > lax.dynamic_slice_in_dim(thresholds, t, 1, axis=1)
      return lax.dynamic_update_slice_in_dim(
          count, lax.dynamic_slice_in_dim(count, t, 1, axis=1) + above.sum(
              axis=1, keepdims=True, dtype=jnp.int32), t, axis=1)

    return lax.fori_loop(0, thresholds.shape[1], add_one, count), None

  count, _ = lax.scan(add, jnp.zeros(thresholds.shape, jnp.int32),
                      (blocks, positions))
  return count


@jax.jit
def _bits_above(queries, blocks, positions, num_refs, threshold, lo, hi):
  """Each query's negatives at least as similar as its `threshold` ``[n]``:
  ``uint8 [n, K * B / 8]`` whose bit j of byte b marks the reference at
  sorted position ``8 b + j`` (`positions` ``arange(K * B)``), and
  ``int32 [n]`` how many."""
  n = len(queries)

  def mark(_, block):
    above = _negative_similarities(queries, *block, num_refs, lo, hi) >= (
        threshold[:, None])
    bits = (above.reshape(n, -1, 8).astype(jnp.uint8) <<
            jnp.arange(8, dtype=jnp.uint8)).sum(axis=2, dtype=jnp.uint8)
    # Counted from the packed bytes: XLA's CPU backend reduces the boolean
    # [n, B] on one thread, which cost a third of the pass.
    return None, (bits, lax.population_count(bits).sum(axis=1,
                                                       dtype=jnp.int32))

  _, (bits, count) = lax.scan(mark, None, (blocks, positions))
  return bits.transpose(1, 0, 2).reshape(n, -1), count.sum(axis=0)


@jax.jit
def _candidate_keys(queries, references, positions):
  """Keys of the references at sorted `positions` ``[n, C]``: ``[n, C]``."""
  return _order_keys(jnp.einsum("nd,ncd->nc", queries, references[positions],
                                precision=lax.Precision.HIGHEST))


@jax.jit
def _all_keys(queries, references):
  return _order_keys(_product(queries, references))


_order_keys_jit = jax.jit(_order_keys)


def _ranking_vectors(x: np.ndarray, metric: str, *, query: bool
                     ) -> np.ndarray:
  """``[N, D + 1]`` float32 rows whose products are the similarities."""
  x = np.asarray(x, np.float64)
  if metric == "cosine":
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    x = np.where(norm > 0, x / np.where(norm > 0, norm, 1), 0.0)
    extra = np.ones(len(x)) if query else np.zeros(len(x))
  else:
    extra = np.ones(len(x)) if query else -0.5 * np.sum(x * x, axis=1)
  return np.concatenate([x, extra[:, None]], axis=1).astype(np.float32)


def _blocks(references: np.ndarray, positions: np.ndarray
            ) -> tuple[jax.Array, jax.Array]:
  """`references` ``[N, D]`` at sorted `positions` ``[N]`` in blocks of
  `_BLOCK_REFERENCES`: ``[K, B, D]`` and ``[K, B]``, padded with zero
  rows at position ``2^31 - 1`` (past every reference)."""
  k = max(1, -(-len(references) // _BLOCK_REFERENCES))
  x = np.zeros((k * _BLOCK_REFERENCES, references.shape[1]), np.float32)
  x[:len(references)] = references
  p = np.full(k * _BLOCK_REFERENCES, np.iinfo(np.int32).max, np.int32)
  p[:len(positions)] = positions
  return (jnp.asarray(x.reshape(k, _BLOCK_REFERENCES, -1)),
          jnp.asarray(p.reshape(k, _BLOCK_REFERENCES)))


def _similarity_of(keys: np.ndarray) -> np.ndarray:
  """The ``float64`` similarities of `_order_keys`'s keys."""
  keys = np.asarray(keys, np.uint32)
  bits = np.where(keys >> 31 == 1, keys & np.uint32(0x7FFFFFFF), ~keys)
  return -bits.view(np.float32).astype(np.float64)


def _round(x: np.ndarray, up: bool) -> np.ndarray:
  """`x` in float32, one step further up (or down) than the nearest, so
  that no rounding moves it the wrong way."""
  return np.nextafter(np.asarray(x, np.float32),
                      np.float32(np.inf if up else -np.inf))


def _set_positions(bits: np.ndarray) -> np.ndarray:
  """The set bits of ``uint8 [n, P / 8]`` (bit j of byte b: position
  ``8 b + j``), row after row, each row's ascending: ``int64 [bits set]``."""
  row, byte = np.nonzero(bits)
  unpacked = np.unpackbits(bits[row, byte][:, None], axis=1,
                           bitorder="little")
  entry, bit = np.nonzero(unpacked)
  return byte[entry] * 8 + bit


def _unflatten(flat: np.ndarray, start: np.ndarray, count: np.ndarray,
               width: int) -> np.ndarray:
  """``[n, width]``: the entries ``flat[start_i : start_i + count_i]`` of
  each row, then -1."""
  column = np.arange(width)[None, :]
  take = column < count[:, None]
  return np.append(flat, -1)[np.where(take, start[:, None] + column,
                                      len(flat))]


def _bucket(n: int, minimum: int = 8) -> int:
  """`n` rounded up to one of four sizes per octave (few compilations)."""
  if n <= minimum:
    return minimum
  step = 2 ** max(0, math.ceil(math.log2(n)) - 3)
  return -(-n // step) * step


def _power_of_two(n: np.ndarray) -> np.ndarray:
  """The powers of two >= max(n, 4)."""
  return 2 ** np.ceil(np.log2(np.maximum(n, 4))).astype(np.int64)


def _pad_columns(x: np.ndarray, n: int) -> np.ndarray:
  return np.pad(x, ((0, 0), (0, n - x.shape[1])))


def _pad_rows(x: np.ndarray, n: int, value=0) -> np.ndarray:
  pad = n - x.shape[0]
  if pad <= 0:
    return x
  return np.concatenate([x, np.full((pad, *x.shape[1:]), value, x.dtype)])


def retrieval_metrics(
    queries: np.ndarray,
    query_labels: np.ndarray,
    references: np.ndarray | None = None,
    reference_labels: np.ndarray | None = None,
    *,
    metric: str = "euclidean",
    recall_ks: Sequence[int] = (1, 2, 4, 8),
    knn_ks: Sequence[int] = (1,),
    group_size: int = 8,
    max_groups: int = 512,
    max_candidates: int = 16384,
    rank_directly_below: int = 8192,
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
    group_size: references per group of the group pass.
    max_groups: the most groups whose members a query ranks; a query that
      needs more is ranked against every reference.
    max_candidates: the most negatives above a rung of its ladder that a
      query ranks; a query with more is ranked against every reference.
    rank_directly_below: with fewer references than this, every query is
      ranked against all of them (cheap there, and fewer compilations).
    memory_budget: bytes of the largest block of work arrays (two blocks
      at a time where two CPUs are usable).
    profile: also return the seconds of each phase (``"seconds <phase>"``;
      a device phase includes waiting for the device; summed over the
      threads, so they may add up to more than the call).

  Returns:
    ``{name: mean over the queries with R >= 1}`` for the metrics of the
    module docstring, plus ``queries``, ``lone_queries`` (how many had
    R = 0), the mean number of references ranked per query
    (``ranked_per_query``: its positives and its candidate negatives, every
    attempt counted) and how many queries were ranked against every
    reference (``fully_ranked_queries``).
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
  if min(group_size, max_groups, max_candidates) < 1:
    raise ValueError(f"group_size, max_groups and max_candidates must be >= "
                     f"1, got {group_size}, {max_groups} and "
                     f"{max_candidates}.")
  for name, x in (("queries", queries), ("references", references)):
    if not np.isfinite(x).all():
      raise ValueError(f"{name} contain NaN or infinite values.")
  num_q, num_r = len(queries), len(references)
  min_depth = max(*recall_ks, *knn_ks)
  if num_r - leave_one_out < min_depth:
    raise ValueError(f"{num_r} references are too few for k = {min_depth}.")

  phase = _Phases(profile)
  ranker = _Ranker(queries, references, reference_labels, metric,
                   group_size, memory_budget, phase)
  # Each query's class: its references at sorted positions [lo, hi).
  classes, lo, counts = np.unique(ranker.sorted_labels, return_index=True,
                                  return_counts=True)
  class_of_query = np.minimum(np.searchsorted(classes, query_labels),
                              len(classes) - 1)
  known = classes[class_of_query] == query_labels
  query_lo = np.where(known, lo[class_of_query], 0)
  query_hi = np.where(known, query_lo + counts[class_of_query], 0)
  own = np.full(num_q, -1)
  if leave_one_out:
    own = ranker.position_of[np.arange(num_q)]
  num_relevant = query_hi - query_lo - (leave_one_out & known)
  counted = num_relevant >= 1
  harmonic = np.concatenate([[0.0], np.cumsum(
      1.0 / np.arange(1, int(num_relevant.max(initial=0)) + 2))])

  names = _metric_names(recall_ks, knn_ks)
  per_query = {name: np.zeros(num_q) for name in names}
  ranked = []  # References ranked by each call of `score` (appended).

  def score(chunk, part, keys, index, labels, bound) -> np.ndarray:
    ranked.append(int(chunk.relevant[part].sum()) + int(np.sum(
        (index >= 0) & (labels != chunk.label[part, None]))))
    with phase("rank (host)"):
      return _rank(chunk, part, keys, index, labels, bound, harmonic,
                   recall_ks, knn_ks, per_query)

  def rank_chunk(rows) -> int:
    """Ranks and scores the queries `rows`; returns how many of them were
    ranked against every reference."""
    span_lo, span_hi = query_lo[rows].min(), query_hi[rows].max()
    with phase("positives (device)"):
      positive_keys = ranker.positive_keys(
          rows, span_lo, span_hi, query_lo[rows] - span_lo,
          query_hi[rows] - span_lo,
          np.where(own[rows] >= 0, own[rows] - span_lo, -1))
    with phase("sort positives (host)"):
      sorted_positives = _by_rows(lambda x: np.sort(x, axis=1),
                                  positive_keys)
    chunk = _Chunk(
        rows=rows, label=query_labels[rows], relevant=num_relevant[rows],
        needed=np.maximum(num_relevant[rows], min_depth), lo=query_lo[rows],
        hi=query_hi[rows], positive_keys=positive_keys,
        span_index=ranker.order[span_lo:span_hi],
        sorted_positives=sorted_positives, reference_labels=reference_labels)
    if num_r < rank_directly_below:
      full = np.arange(len(rows))
    else:
      # The ladders only where every query of the chunk has one: a pass
      # over all references costs less per query for many queries at once.
      by_groups = np.full(len(rows), (chunk.needed > chunk.relevant).any())
      full = np.concatenate([
          _rank_by_ladder(ranker, chunk, np.flatnonzero(~by_groups),
                          max_candidates, score),
          _rank_by_groups(ranker, chunk, np.flatnonzero(by_groups),
                          max_groups, score)])
    for part in ranker.full_parts(full):
      score(chunk, part, *ranker.all_candidates(rows[part]), None)
    return len(full)

  # Two blocks of queries at once where two CPUs are usable: one block's
  # host work (NumPy, much of it on one thread) overlaps the other's device
  # work (docs/performance.md). Half the budget each was slower.
  chunks = _chunks(np.flatnonzero(counted), query_lo, query_hi,
                   memory_budget)
  with concurrent.futures.ThreadPoolExecutor(
      min(2, sorting.usable_cpus())) as pool:
    fully = sum(pool.map(rank_chunk, chunks))

  results = {name: float(np.mean(values[counted])) if counted.any()
             else float("nan") for name, values in per_query.items()}
  results["lone_queries"] = int(num_q - counted.sum())
  results["queries"] = num_q
  results["ranked_per_query"] = sum(ranked) / max(1, counted.sum())
  results["fully_ranked_queries"] = fully
  if profile:
    results.update({f"seconds {name}": value
                    for name, value in phase.seconds.items()})
  return results


def _rank_by_ladder(ranker, chunk, part, max_candidates, score
                    ) -> np.ndarray:
  """Ranks the queries ``chunk.rows[part]`` (each with R at least the depth
  needed) from their negatives above a rung of their ladder
  (`_Ranker.rungs`), two rungs lower for those whose rung was too high.

  Returns:
    the rows of `part` left to rank against every reference (more than
    `max_candidates` negatives above the rung).
  """
  full = [part[:0]]
  rung = ranker.rungs(chunk, part) if len(part) else part
  while len(part):
    retry, retry_rung = [part[:0]], [part[:0]]
    for i in ranker.pass_blocks(len(part)):
      block = part[i]
      positions, count, bound = ranker.negatives_above(
          chunk, block, rung[i], max_candidates)
      fits = count <= max_candidates
      full.append(block[~fits])
      start = np.cumsum(np.where(fits, count, 0)) - np.where(fits, count, 0)
      width = _power_of_two(count)
      for j in ranker.parts_by_width(np.flatnonzero(fits), width[fits]):
        keys, index, labels = ranker.candidates(
            chunk.rows[block[j]],
            _unflatten(positions, start[j], count[j], int(width[j].max())))
        wrong = ~score(chunk, block[j], keys, index, labels, bound[j])
        was = rung[i][j]
        # Rung 0 (the R-th positive) always suffices; were it ever not to,
        # a full ranking would.
        full.append(block[j][wrong & (was == 0)])
        again = wrong & (was > 0)
        retry.append(block[j][again])
        retry_rung.append(np.maximum(was[again] - 2, 0))
    part, rung = np.concatenate(retry), np.concatenate(retry_rung)
  return np.concatenate(full)


def _rank_by_groups(ranker, chunk, part, max_groups, score) -> np.ndarray:
  """Ranks the queries ``chunk.rows[part]`` from the members of their best
  groups (`_Ranker.groups_needed`).

  Returns:
    the rows of `part` left to rank against every reference (more than
    `max_groups` groups needed).
  """
  if not len(part):
    return part
  rows = chunk.rows[part]
  maxima, ids = ranker.best_groups(rows, chunk.lo[part], chunk.hi[part],
                                   max_groups + 1)
  with ranker.phase("choose groups (host)"):
    take, bound = ranker.groups_needed(chunk, part, maxima)
  full = [part[take < 0]]
  width = (_power_of_two(take) + 2) * ranker.size
  for j in ranker.parts_by_width(np.flatnonzero(take >= 0),
                                 width[take >= 0]):
    keys, index, labels = ranker.group_candidates(
        rows[j], ids[j], take[j], chunk.lo[part[j]], chunk.hi[part[j]])
    exact = score(chunk, part[j], keys, index, labels, bound[j])
    full.append(part[j][~exact])
  return np.concatenate(full)


def _chunks(rows: np.ndarray, lo: np.ndarray, hi: np.ndarray,
            memory_budget: int) -> list[np.ndarray]:
  """`rows` (queries with positives) in blocks of consecutive classes whose
  positives' keys (``[rows, span]``: 4 bytes each, and 4 of a sorted copy)
  fit the budget at 20 bytes an entry (blocks of more queries were no
  faster)."""
  rows = rows[np.argsort(lo[rows], kind="stable")]
  entries = max(1, memory_budget // 20)
  out, start = [], 0
  while start < len(rows):
    end = start + 1
    span_lo = lo[rows[start]]
    while end < len(rows) and end - start < _MAX_ROWS and (
        (end - start + 1) * (hi[rows[end]] - span_lo) <= entries):
      end += 1
    out.append(rows[start:end])
    start = end
  return out


class _Ranker:
  """The references, sorted by label and grouped, on the device; the device
  computations of `retrieval_metrics`, block by block."""

  def __init__(self, queries, references, reference_labels, metric,
               group_size, memory_budget, phase):
    self.order = np.argsort(reference_labels, kind="stable")
    self.sorted_labels = reference_labels[self.order]
    self.position_of = np.empty_like(self.order)
    self.position_of[self.order] = np.arange(len(self.order))
    self.queries = _ranking_vectors(queries, metric, query=True)
    sorted_refs = _ranking_vectors(references[self.order], metric,
                                   query=False)
    self.num_refs, dim = sorted_refs.shape
    self.size = group_size
    num_groups = -(-self.num_refs // group_size)
    per_block = max(1, _BLOCK_REFERENCES // group_size)
    num_groups = -(-num_groups // per_block) * per_block
    padded = np.zeros((num_groups * group_size, dim), np.float32)
    padded[:, -1] = _PADDING_SIMILARITY
    padded[:self.num_refs] = sorted_refs
    self.sorted_refs = sorted_refs
    self.sorted_refs_on_device = jnp.asarray(sorted_refs)
    self.groups = jnp.asarray(padded.reshape(num_groups, group_size, dim))
    self.blocks = _blocks(sorted_refs, np.arange(self.num_refs))
    self.sample = _blocks(sorted_refs[::_SAMPLE_STRIDE],
                          np.arange(0, self.num_refs, _SAMPLE_STRIDE))
    # A bound on the float32 rounding of one similarity: twice the worst
    # case of a dot product of D + 1 terms, relative to |q| |r|.
    self.tolerance = 2 * dim * np.finfo(np.float32).eps * np.linalg.norm(
        self.queries, axis=1) * np.linalg.norm(sorted_refs, axis=1).max(
            initial=0)
    self.budget = memory_budget
    self.phase = phase

  def _query_block(self, rows: np.ndarray) -> jax.Array:
    return jnp.asarray(_pad_rows(self.queries[rows], _bucket(len(rows))))

  def positive_keys(self, rows, span_lo, span_hi, lo, hi, own) -> np.ndarray:
    """``uint32 [len(rows), span]``: keys of each query's positives."""
    span = span_hi - span_lo
    n = _bucket(len(rows))
    refs = _pad_rows(self.sorted_refs[span_lo:span_hi],
                     _bucket(span))
    keys = _positive_keys(self._query_block(rows), jnp.asarray(refs),
                          jnp.asarray(_pad_rows(lo, n)),
                          jnp.asarray(_pad_rows(hi, n)),
                          jnp.asarray(_pad_rows(own, n, -1)))
    return np.asarray(keys)[:len(rows), :span]

  def best_groups(self, rows, lo, hi, top) -> tuple[np.ndarray, np.ndarray]:
    """``(maxima, ids)`` of the `top` best groups outside the own class."""
    n = _bucket(len(rows))
    with self.phase("group maxima (device)"):
      maxima = np.asarray(_group_maxima(
          self._query_block(rows), self.groups, self.num_refs,
          jnp.asarray(_pad_rows(lo // self.size, n)),
          jnp.asarray(_pad_rows((hi - 1) // self.size, n))))[:len(rows)]
    # The best `top` by a partial sort: XLA's top_k is several times
    # slower on the CPU for hundreds of groups.
    with self.phase("select groups (host)"):
      return _by_rows(functools.partial(_best, top=min(top, maxima.shape[1])),
                      maxima)

  def groups_needed(self, chunk, part, maxima
                    ) -> tuple[np.ndarray, np.ndarray]:
    """How many of its best groups each query ``chunk.rows[part]`` ranks,
    and the key below which its ranking is then exact: ``[n]`` each.

    With k groups, the ranking is exact above ``theta_k`` (the next group's
    maximum) plus the rounding bound ``tol``, and holds there every positive
    and at least one negative of each group whose maximum exceeds
    ``theta_k + 2 tol``. The smallest k for which those reach the needed
    depth is taken; queries for which no k within `maxima` does get -1.
    """
    n, top = maxima.shape
    tol = self.tolerance[chunk.rows[part], None]

    def keys_of(x):  # Keys of x rounded up, so that nothing is cut short.
      return np.asarray(_order_keys_jit(jnp.asarray(
          _pad_rows(_round(x, up=True), _bucket(n)))))[:n]

    bound = keys_of(maxima.astype(np.float64) + tol)
    sure = keys_of(maxima.astype(np.float64) + 2 * tol)
    group_keys = keys_of(maxima.astype(np.float64))  # Ascending.
    rows = np.arange(n)

    def enough(k):  # Increasing in k: a binary search finds the first.
      groups = _count_below(group_keys, np.full(n, top), rows, sure[rows, k])
      above = _count_below(chunk.sorted_positives, chunk.relevant, part,
                           bound[rows, k])
      return (groups + above >= chunk.needed[part]) | np.isneginf(
          maxima[rows, k])

    lo, hi = np.zeros(n, np.int64), np.full(n, top)
    while (lo < hi).any():
      mid = (lo + hi) // 2
      ok = enough(np.minimum(mid, top - 1)) & (lo < hi)
      hi = np.where(ok, mid, hi)
      lo = np.where(~ok & (lo < hi), mid + 1, lo)
    take = np.where(lo < top, lo, -1)
    return take, bound[rows, np.minimum(lo, top - 1)]

  def _rows_per_block(self, width: int) -> int:
    """Queries per block of `_candidate_keys` with `width` candidates."""
    return int(np.clip(self.budget // (
        width * (4 * self.queries.shape[1] + 32)), 1, _MAX_ROWS))

  def parts_by_width(self, rows: np.ndarray, width: np.ndarray
                     ) -> list[np.ndarray]:
    """`rows` in blocks of equal `width` ``[len(rows)]`` (candidates per
    query: few values, so that few shapes compile), within the budget."""
    parts = []
    for w in np.unique(width):
      mine, block = rows[width == w], self._rows_per_block(w)
      parts += [mine[i:i + block] for i in range(0, len(mine), block)]
    return parts

  def candidates(self, rows, positions):
    """Keys, reference indices (-1: none) and labels of the references at
    sorted `positions` ``[n, C]`` (-1: none) for the queries `rows`:
    ``[n, C]`` each."""
    valid = positions >= 0
    position = np.where(valid, positions, 0)
    with self.phase("candidates (device)"):
      n = min(self._rows_per_block(positions.shape[1]),
              int(_power_of_two(len(rows))))
      keys = np.asarray(_candidate_keys(
          jnp.asarray(_pad_rows(self.queries[rows], n)),
          self.sorted_refs_on_device,
          jnp.asarray(_pad_rows(position, n))))[:len(rows)]
    return (keys, np.where(valid, self.order[position], -1),
            self.sorted_labels[position])

  def rungs(self, chunk, part) -> np.ndarray:
    """The rung of its ladder each query ``chunk.rows[part]`` starts from.

    Rung t is the similarity of the query's positive ``m_t = max(R - 2^t +
    1, 1)``; ranking the negatives above it suffices when at least ``R -
    m_t`` negatives are above it (the positive then sits at place R or
    later). The counts come from every `_SAMPLE_STRIDE`-th reference, so
    the rung is an estimate, taken with a margin of two; `_rank` checks it.
    No query starts below rung `_FIRST_RUNG_AT_LEAST`: the last positives
    are often outliers with many negatives above them (a trained MNIST
    embedding's test split, leave-one-out: 2,182 references ranked per
    query when rung 0 could start, 1,125 since), and where the sample is
    too sparse to prove rung 2, it usually suffices all the same; where it
    does not, rung 0 follows.
    """
    rungs = np.arange(_RUNGS)
    m = np.maximum(chunk.relevant[part, None] - 2 ** rungs + 1, 1)
    with self.phase("choose rungs (device, sampled)"):
      counts = []
      for i in np.array_split(np.arange(len(part)),
                              -(-len(part) // _MAX_ROWS)):
        block, n = part[i], _bucket(len(i))
        similarity = _similarity_of(chunk.sorted_positives[
            block[:, None], m[i] - 1])
        upper = _round(similarity + self.tolerance[chunk.rows[block], None],
                       up=True)
        counts.append(np.asarray(_counts_above(
            self._query_block(chunk.rows[block]), *self.sample,
            self.num_refs, jnp.asarray(_pad_rows(upper, n)),
            jnp.asarray(_pad_rows(chunk.lo[block], n)),
            jnp.asarray(_pad_rows(chunk.hi[block], n))))[:len(block)])
    estimate = np.concatenate(counts) * _SAMPLE_STRIDE
    deficit = chunk.relevant[part, None] - m
    enough = estimate >= 2 * deficit  # Rung 0 always: no deficit.
    return np.maximum(_RUNGS - 1 - np.argmax(enough[:, ::-1], axis=1),
                      _FIRST_RUNG_AT_LEAST)

  def negatives_above(self, chunk, part, rung, max_candidates):
    """The negatives of the queries ``chunk.rows[part]`` at least as
    similar as their positive of `rung`, less a rounding bound.

    Returns:
      ``(positions, count, bound)``: the sorted positions of each query's
      negatives, the queries one after the other (those with more than
      `max_candidates` left out), how many each has ``[n]``, and the key
      below which every negative is listed (that positive's key, plus one)
      ``[n]``.
    """
    m = np.maximum(chunk.relevant[part] - 2 ** rung + 1, 1)
    key = chunk.sorted_positives[part, m - 1]
    lower = _round(_similarity_of(key) - self.tolerance[chunk.rows[part]],
                   up=False)
    n = _bucket(len(part))
    with self.phase("negatives above (device)"):
      bits, count = _bits_above(
          self._query_block(chunk.rows[part]), *self.blocks, self.num_refs,
          jnp.asarray(_pad_rows(lower, n)),
          jnp.asarray(_pad_rows(chunk.lo[part], n)),
          jnp.asarray(_pad_rows(chunk.hi[part], n)))
      bits, count = np.asarray(bits)[:len(part)], np.asarray(count)[
          :len(part)]
    listed = np.where(count <= max_candidates, count, 0)
    with self.phase("list negatives (host)"):
      positions = _by_rows(_set_positions, bits[listed > 0])
    return positions, count, np.minimum(key, _KEY_MAX - 1) + 1

  def group_candidates(self, rows, ids, take, lo, hi):
    """Keys, reference indices and labels of the members of each query's
    `take` best groups and its own class's first and last group:
    ``[n, C]`` each."""
    width = int(_power_of_two(take).max())
    first, last = lo // self.size, (hi - 1) // self.size
    chosen = np.concatenate([
        np.where(np.arange(width)[None, :] < take[:, None],
                 ids[:, :width] if ids.shape[1] >= width else _pad_columns(
                     ids, width), -1),
        first[:, None], np.where(last > first, last, -1)[:, None]], axis=1)
    position = (chosen[:, :, None] * self.size +
                np.arange(self.size)).reshape(len(rows), -1)
    valid = np.repeat(chosen >= 0, self.size, axis=1) & (
        position < self.num_refs)
    return self.candidates(rows, np.where(valid, position, -1))

  def pass_blocks(self, n: int) -> list[np.ndarray]:
    """``range(n)`` in blocks of queries for `_bits_above` within the
    budget (its bits, and a block of similarities three times over)."""
    per_query = self.blocks[1].size // 8 + 12 * _BLOCK_REFERENCES
    rows = int(np.clip(self.budget // per_query, 1, _MAX_ROWS))
    return np.array_split(np.arange(n), -(-n // rows))

  def full_parts(self, pending: np.ndarray) -> list[np.ndarray]:
    rows = max(1, self.budget // (24 * self.num_refs))
    return [pending[i:i + rows] for i in range(0, len(pending), rows)]

  def all_candidates(self, rows):
    """Keys, indices and labels of every reference, for each of `rows`."""
    with self.phase("full ranking (device)"):
      keys = np.asarray(_all_keys(self._query_block(rows),
                                  self.sorted_refs_on_device))[:len(rows)]
    shape = keys.shape
    return (keys, np.broadcast_to(self.order, shape),
            np.broadcast_to(self.sorted_labels, shape))


@dataclasses.dataclass(frozen=True)
class _Chunk:
  """Queries ranked together (``[n]`` fields) and the keys of their
  positives (``uint32 [n, S]`` over the span of references their classes
  cover: `_KEY_MAX` where not a positive)."""
  rows: np.ndarray
  label: np.ndarray
  relevant: np.ndarray
  needed: np.ndarray
  lo: np.ndarray  # The own class's sorted positions [lo, hi).
  hi: np.ndarray
  positive_keys: np.ndarray
  span_index: np.ndarray  # [S], the reference index of each column.
  sorted_positives: np.ndarray  # Each row's keys, ascending: R positives.
  reference_labels: np.ndarray  # [R], by reference index.


def _rank(chunk: _Chunk, part: np.ndarray, keys, index, labels, bound,
          harmonic, recall_ks, knn_ks, per_query) -> np.ndarray:
  """Scores the queries ``chunk.rows[part]`` from their candidate negatives.

  Args:
    chunk: the queries' block.
    part: ``[n]`` rows of the block.
    keys, index, labels: ``[n, C]`` the candidates' keys, reference indices
      (-1: none) and labels.
    bound: ``uint32 [n]``: every negative with a smaller key is among the
      candidates; None: every negative is.
    harmonic: ``H[i] = sum_{j<=i} 1 / j``, ``H[0] = 0``.
    recall_ks, knn_ks: as `retrieval_metrics`.
    per_query: ``{name: [Q]}``, written for the queries ranked exactly.

  Returns:
    ``bool [n]``: which queries were ranked exactly to their needed depth.
  """
  label = chunk.label[part]
  relevant = chunk.relevant[part]
  needed = chunk.needed[part]
  negative = (index >= 0) & (labels != label[:, None])
  # Past the R-th positive a negative's place is past R: where R places
  # are all that is needed, those negatives need no ranking.
  last = np.where(needed == relevant, chunk.sorted_positives[
      part, np.maximum(relevant - 1, 0)], _KEY_MAX)
  negative &= keys <= last[:, None]
  if bound is not None:
    negative &= keys < bound[:, None]
  count = negative.sum(axis=1)
  # Each negative's place is past its rank among the negatives, so only a
  # row's first `needed` negatives can sit within the depth: where far more
  # are listed (a query ranked against every reference, whose positives lie
  # far out), a partition finds the key of its needed-th and the rest are
  # dropped (their places would be past the depth; ties at it are kept).
  over = np.flatnonzero(count > 2 * needed)
  if len(over):
    kth = int(needed[over].max()) - 1
    kept, kept_keys = negative[over], keys[over]
    limit = np.partition(np.where(kept, kept_keys, _KEY_MAX), kth,
                         axis=1)[:, kth]
    kept &= kept_keys <= limit[:, None]
    negative[over], count[over] = kept, kept.sum(axis=1)
  width = max(1, int(count.max(initial=0)))
  row, rank, neg_keys, neg_refs = _in_rank_order(
      negative, count, width, keys, index,
      dense=count.sum() * _DENSE_FRACTION >= negative.size)
  # Each negative's place: 1 + the positives and the negatives before it
  # (at equal keys, the lower reference index first: the words' order).
  before = _positives_before(chunk, part[row], neg_keys, neg_refs)
  place = np.full((len(part), width), np.iinfo(np.int64).max)
  place[row, rank] = before + rank + 1
  neg_index = np.zeros((len(part), width), np.int64)
  neg_index[row, rank] = neg_refs
  exact = np.ones(len(part), bool)
  if bound is not None:
    known = _count_below(chunk.sorted_positives, chunk.relevant, part,
                         bound) + count
    exact = (bound > last) | (known >= needed)
  found = np.arange(width)[None, :] < count[:, None]
  neg_labels = np.where(found, chunk.reference_labels[
      np.where(found, neg_index, 0)], -1)
  values = _metrics_from_places(place, neg_labels, label, relevant, harmonic,
                                recall_ks, knn_ks)
  rows = chunk.rows[part[exact]]
  for name, v in values.items():
    per_query[name][rows] = v[exact]
  return exact


def _in_rank_order(negative, count, width, keys, index, dense: bool):
  """The negatives of each row in rank order (by key, then reference
  index): ``(row, rank in the row, key, reference index)``, rows ascending.

  Dense (more than about 3 % of the entries negatives, as typically in
  the ladders' candidates and in a full ranking): one 64-bit word ``key <<
  32 | index`` per entry, sorted along the rows, the others last: faster
  than a lexsort of them all. Sparse (a few candidates left negative): a
  lexsort of those alone, faster than sorting every row
  (docs/performance.md).
  """
  if dense:
    words = _words(keys, index)
    words[~negative] = np.iinfo(np.uint64).max
    words.sort(axis=1)
    row, rank = np.nonzero(np.arange(width)[None, :] < count[:, None])
    word = words[row, rank]
    return (row, rank, _key_of(word),
            (word & np.uint64(0xFFFFFFFF)).astype(np.int64))
  row, column = np.nonzero(negative)
  order = np.lexsort((index[row, column], keys[row, column], row))
  row, column = row[order], column[order]
  rank = np.arange(len(row)) - np.repeat(np.cumsum(count) - count, count)
  return row, rank, keys[row, column], index[row, column].astype(np.int64)


def _words(keys, index) -> np.ndarray:
  """``uint64`` words ``key << 32 | index`` (broadcast): ordered as the
  keys, equal keys by reference index, which is the order of rank."""
  words = np.asarray(keys).astype(np.uint64)
  words <<= np.uint64(32)
  words |= np.asarray(index).astype(np.uint64)
  return words


def _key_of(words: np.ndarray) -> np.ndarray:
  """The ``uint32`` keys of `_words`."""
  return (words >> np.uint64(32)).astype(np.uint32)


def _best(x: np.ndarray, top: int) -> tuple[np.ndarray, np.ndarray]:
  """The `top` largest values of each row of `x` and their columns,
  largest first."""
  column = np.argpartition(-x, top - 1, axis=1)[:, :top]
  value = np.take_along_axis(x, column, axis=1)
  order = np.argsort(-value, axis=1, kind="stable")
  return (np.take_along_axis(value, order, axis=1),
          np.take_along_axis(column, order, axis=1))


def _by_rows(function, *arrays: np.ndarray):
  """``function(*arrays)`` for blocks of rows in one thread per CPU (NumPy
  releases the GIL in its sorts), the blocks' results concatenated."""
  blocks = [b for b in np.array_split(np.arange(len(arrays[0])),
                                      sorting.usable_cpus()) if len(b)]
  if len(blocks) <= 1:
    return function(*arrays)
  with concurrent.futures.ThreadPoolExecutor(len(blocks)) as pool:
    results = list(pool.map(
        lambda b: function(*(x[b[0]:b[-1] + 1] for x in arrays)), blocks))
  if isinstance(results[0], tuple):
    return tuple(np.concatenate(r) for r in zip(*results))
  return np.concatenate(results)


def _positives_before(chunk: _Chunk, row: np.ndarray, key: np.ndarray,
                      index: np.ndarray) -> np.ndarray:
  """For each negative ``(key[i], index[i])`` of query ``chunk.rows[row[i]]``,
  how many of the query's positives rank before it: a smaller key, or the
  same key and a smaller reference index.

  The positives' keys are sorted without their indices (half the bytes of
  sorting both); the rare negatives that tie with a positive look the tied
  positives' indices up.
  """
  before = _count_below(chunk.sorted_positives, chunk.relevant, row, key)
  width = chunk.sorted_positives.shape[1]
  tied = np.flatnonzero((before < chunk.relevant[row]) & (
      chunk.sorted_positives.reshape(-1)[row * width + np.minimum(
          before, width - 1)] == key))
  span = len(chunk.span_index)
  for block in np.array_split(tied, max(1, -(-len(tied) * span // 2**22))):
    before[block] += np.sum(
        (chunk.positive_keys[row[block]] == key[block, None]) &
        (chunk.span_index[None, :] < index[block, None]), axis=1)
  return before


def _count_below(sorted_rows: np.ndarray, length: np.ndarray,
                 row: np.ndarray, key: np.ndarray) -> np.ndarray:
  """For each ``(row[i], key[i])``, how many of the first ``length[row[i]]``
  entries of ``sorted_rows[row[i]]`` (ascending) are below ``key[i]``.

  With many keys per row (a fully ranked query's negatives, which come
  sorted), one search per row walks its entries in order; with few, one
  binary search steps all pairs at once (a search per row would cost more
  in calls than in work).
  """
  if len(row) and len(row) >= _KEYS_PER_ROW_SEARCH * (
      int(row.max()) - int(row.min()) + 1):
    order = np.argsort(row, kind="stable")
    by_row = row[order]
    starts = np.flatnonzero(np.diff(by_row, prepend=-1))
    out = np.empty(len(row), np.int64)
    for start, stop in zip(starts, [*starts[1:], len(row)]):
      r, mine = by_row[start], order[start:stop]
      out[mine] = np.searchsorted(sorted_rows[r, :length[r]], key[mine])
    return out
  lo, hi = np.zeros(len(row), np.int64), length[row].astype(np.int64)
  width = sorted_rows.shape[1]
  flat, start = sorted_rows.reshape(-1), row.astype(np.int64) * width
  while (lo < hi).any():
    active = lo < hi
    mid = (lo + hi) // 2
    value = flat[start + np.minimum(mid, width - 1)]
    below = value < key
    lo = np.where(active & below, mid + 1, lo)
    hi = np.where(active & ~below, mid, hi)
  return lo


def _metrics_from_places(place, neg_labels, label, relevant, harmonic,
                         recall_ks, knn_ks) -> dict[str, np.ndarray]:
  """Per-query metrics from the places of the negatives.

  Args:
    place: ``[n, J]`` 1-based places of each query's negatives, ascending;
      padding (and negatives past the needed depth) may be any larger value.
    neg_labels: ``[n, J]`` their labels.
    label: ``[n]`` the queries' labels.
    relevant: ``[n]`` R >= 1.
    harmonic: harmonic numbers, ``len > max(R) + 1``.
    recall_ks, knn_ks: as `retrieval_metrics`.

  Returns:
    ``{name: float64 [n]}``.
  """
  n, width = place.shape
  r = relevant[:, None]
  # Runs of positives between consecutive negatives, cut at place R: the
  # run after the j-th negative holds places b..e, the m-th positive at
  # place m + j, so it adds sum_{p=b..e} (p - j) / p.
  cut = np.concatenate([np.zeros((n, 1), np.int64), np.minimum(place, r + 1),
                        r + 1], axis=1)
  begin, end = cut[:, :-1] + 1, cut[:, 1:] - 1
  length = end - begin + 1
  j = np.arange(width + 1)[None, :]
  ap = np.where(length > 0, length - j * (
      harmonic[np.maximum(end, 0)] - harmonic[np.maximum(begin - 1, 0)]), 0.0)
  negatives_in_r = np.sum(place <= r, axis=1)
  leading = np.sum(place == np.arange(1, width + 1)[None, :], axis=1)
  out = {
      "precision_at_1": (leading == 0).astype(np.float64),
      "r_precision": (relevant - negatives_in_r) / relevant,
      "map_at_r": ap.sum(axis=1) / relevant,
  }
  for k in recall_ks:
    out[f"recall_at_{k}"] = (leading < k).astype(np.float64)
  depth = max(knn_ks)
  first = np.repeat(label[:, None], depth + 1, axis=1)
  slot = np.where(place <= depth, place - 1, depth)
  np.put_along_axis(first, slot, neg_labels, axis=1)
  for k in knn_ks:
    out[f"knn_accuracy_at_{k}"] = _majority_is_right(
        first[:, :k], label).astype(np.float64)
  return out


def _majority_is_right(labels: np.ndarray, truth: np.ndarray) -> np.ndarray:
  """Whether the majority of each row of `labels` is `truth`; a tie in
  votes goes to the tied label that appears first in the row."""
  votes = (labels[:, :, None] == labels[:, None, :]).sum(axis=2)
  votes = np.where(labels >= 0, votes, -1)
  winner = labels[np.arange(len(labels)), np.argmax(votes, axis=1)]
  return winner == truth


def _metric_names(recall_ks, knn_ks) -> list[str]:
  return ["precision_at_1", "r_precision", "map_at_r",
          *(f"recall_at_{k}" for k in recall_ks),
          *(f"knn_accuracy_at_{k}" for k in knn_ks)]
