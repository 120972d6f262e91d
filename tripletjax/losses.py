"""Triplet losses with online mining, as pure JAX functions.

Every loss takes a batch of ``embeddings [B, D]`` and integer ``labels [B]``
and returns ``(loss, metrics)``: a scalar loss and a dict of the batch's
scalar metrics (`BATCH_METRICS`). A label below zero marks a padding row, which
takes part in no triplet. A batch without a single valid triplet gives a loss
of 0 and zero gradients.

Triplet ``(a, p, n)`` is valid when ``a != p``, ``label[a] == label[p]`` and
``label[a] != label[n]``, all three rows not padding. Its loss is
``max(d(a, p) - d(a, n) + margin, 0)``.

Batch-all and semi-hard never build a ``B x B x B`` tensor: every anchor's
row of distances is sorted once (`tripletjax.sorting`), and running counts
along the sorted row give each positive's active negatives. This is exact,
takes O(B^2 log B) time and O(B^2) memory, and no gradient passes through the
sort: it flows through gathers with integer counts as weights.
"""

from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from tripletjax import distances
from tripletjax import sorting

Metrics = dict[str, jax.Array]
LossFn = Callable[..., tuple[jax.Array, Metrics]]

BATCH_METRICS = (
    "num_triplets",
    "num_active_triplets",
    "fraction_active_triplets",
    "mean_positive_distance",
    "mean_negative_distance",
    "hardest_positive_distance",
    "hardest_negative_distance",
    "mean_embedding_norm",
)


# --------------------------------------------------------------------------
# Input checks and the masks every miner shares.
# --------------------------------------------------------------------------
def _check_margin(margin) -> None:
  if isinstance(margin, jax.core.Tracer):
    return  # Traced margins are checked by whoever made them concrete.
  try:
    value = float(margin)
  except (TypeError, ValueError):
    raise ValueError(f"margin must be a number, got {margin!r}.") from None
  if not value >= 0:  # Also rejects NaN.
    raise ValueError(f"margin must be >= 0, got {margin!r}.")


def _check_batch(embeddings, labels, margin, metric: str):
  """Validates a mined batch; returns (embeddings, labels) as arrays."""
  distances.check_metric(metric)
  _check_margin(margin)
  embeddings = jnp.asarray(embeddings)
  labels = jnp.asarray(labels)
  if embeddings.ndim != 2:
    raise ValueError(
        f"embeddings must have shape [B, D], got shape {embeddings.shape}.")
  if not jnp.issubdtype(embeddings.dtype, jnp.floating):
    raise ValueError(
        f"embeddings must be floating point, got dtype {embeddings.dtype}.")
  if labels.shape != embeddings.shape[:1]:
    raise ValueError(
        f"labels must have shape [B] = [{embeddings.shape[0]}] to match "
        f"embeddings {embeddings.shape}, got shape {labels.shape}.")
  if not jnp.issubdtype(labels.dtype, jnp.integer):
    raise ValueError(
        f"labels must be integers (class ids, < 0 for padding), got dtype "
        f"{labels.dtype}.")
  return embeddings, labels


def _pair_masks(anchor_labels: jax.Array, anchor_index: jax.Array,
                candidate_labels: jax.Array):
  """Positive and negative masks ``[A, C]`` and the valid anchors ``[A]``.

  Args:
    anchor_labels: ``[A]`` labels of the anchors (rows).
    anchor_index: ``[A]`` position of each anchor among the candidates.
    candidate_labels: ``[C]`` labels of the candidates (columns).
  """
  valid = anchor_labels >= 0
  both_valid = valid[:, None] & (candidate_labels >= 0)[None, :]
  same = anchor_labels[:, None] == candidate_labels[None, :]
  not_self = anchor_index[:, None] != jnp.arange(candidate_labels.shape[0])
  return same & both_valid & not_self, ~same & both_valid, valid


def _safe_divide(num: jax.Array, den: jax.Array) -> jax.Array:
  """``num / den`` where ``den > 0``, else 0, with finite gradients."""
  den = jnp.asarray(den, jnp.float32)
  return jnp.where(den > 0, num / jnp.where(den > 0, den, 1.0), 0.0)


# Each miner reduces its rows to these sums, which add up across devices
# (the two hardest distances take a max and a min instead).
_REDUCE_MAX = ("hardest_positive_distance",)
_REDUCE_MIN = ("hardest_negative_distance",)


def _partial_statistics(dist, pos, neg, valid, anchors, *, loss_sum,
                        loss_count, num_triplets, num_active
                        ) -> dict[str, jax.Array]:
  """Sums over this block of anchor rows; no gradient flows but the loss's."""
  dist = jax.lax.stop_gradient(dist)
  anchors = jax.lax.stop_gradient(anchors)
  norms = distances.safe_sqrt(jnp.sum(anchors * anchors, axis=1))
  f32 = lambda x: jnp.asarray(x, jnp.float32)
  return {
      "loss_sum": loss_sum,
      "loss_count": f32(loss_count),
      "num_triplets": f32(num_triplets),
      "num_active_triplets": f32(num_active),
      "positive_sum": jnp.sum(jnp.where(pos, dist, 0.0)),
      "positive_count": f32(jnp.sum(pos)),
      "negative_sum": jnp.sum(jnp.where(neg, dist, 0.0)),
      "negative_count": f32(jnp.sum(neg)),
      "hardest_positive_distance": jnp.max(jnp.where(pos, dist, 0.0)),
      "hardest_negative_distance": jnp.min(jnp.where(neg, dist, jnp.inf)),
      "norm_sum": jnp.sum(jnp.where(valid, norms, 0.0)),
      "norm_count": f32(jnp.sum(valid)),
  }


def _combine(partials: dict[str, jax.Array], axis_name) -> dict[str, jax.Array]:
  """Adds up the partial statistics of every device along `axis_name`."""
  def reduce(name, value):
    if name in _REDUCE_MAX:
      return jax.lax.pmax(value, axis_name)
    if name in _REDUCE_MIN:
      return jax.lax.pmin(value, axis_name)
    return jax.lax.psum(value, axis_name)
  return {name: reduce(name, value) for name, value in partials.items()}


def _finalize(p: dict[str, jax.Array]) -> tuple[jax.Array, Metrics]:
  """The loss and the diagnostics of `BATCH_METRICS` from the sums."""
  loss = _safe_divide(p["loss_sum"], p["loss_count"])
  return loss, {
      "num_triplets": p["num_triplets"],
      "num_active_triplets": p["num_active_triplets"],
      "fraction_active_triplets": _safe_divide(p["num_active_triplets"],
                                               p["num_triplets"]),
      "mean_positive_distance": _safe_divide(p["positive_sum"],
                                             p["positive_count"]),
      "mean_negative_distance": _safe_divide(p["negative_sum"],
                                             p["negative_count"]),
      "hardest_positive_distance": p["hardest_positive_distance"],
      "hardest_negative_distance": jnp.where(
          p["negative_count"] > 0, p["hardest_negative_distance"], 0.0),
      "mean_embedding_norm": _safe_divide(p["norm_sum"], p["norm_count"]),
  }


def _mined_loss(rows_fn, embeddings, labels, *, margin, metric, axis_name,
                with_anchor_index: bool = False,
                **rows_kwargs) -> tuple[jax.Array, Metrics]:
  """Runs a miner over every anchor of the (global) batch.

  Without `axis_name` the anchors are the rows of `embeddings`. With it,
  `embeddings` is this device's shard of a batch split along the mapped axis
  `axis_name`: the shards are gathered (a differentiable all-gather, whose
  transpose returns each device the gradient of its own rows), this device
  mines its own anchors against the whole batch, and the partial sums are
  added up across devices. Memory per device is O(B_local * B).
  """
  embeddings, labels = _check_batch(embeddings, labels, margin, metric)
  anchor_index = jnp.arange(labels.shape[0])
  candidates, candidate_labels = embeddings, labels
  if axis_name is not None:
    candidates = jax.lax.all_gather(embeddings, axis_name, tiled=True)
    candidate_labels = jax.lax.all_gather(labels, axis_name, tiled=True)
    anchor_index += jax.lax.axis_index(axis_name) * labels.shape[0]
  dist = distances.pairwise_distances(embeddings, candidates, metric=metric)
  pos, neg, valid = _pair_masks(labels, anchor_index, candidate_labels)
  if with_anchor_index:  # Sampling miners draw per global anchor.
    rows_kwargs["anchor_index"] = anchor_index
  loss_sum, loss_count, num_triplets, num_active = rows_fn(
      dist, pos, neg, margin=margin, **rows_kwargs)
  partials = _partial_statistics(
      dist, pos, neg, valid, embeddings, loss_sum=loss_sum,
      loss_count=loss_count, num_triplets=num_triplets, num_active=num_active)
  if axis_name is not None:
    partials = _combine(partials, axis_name)
  return _finalize(partials)


_SORTS_LAST = np.uint32(0xFFFFFFFF)


def _merge_rows(values: jax.Array, queries: jax.Array, negatives: jax.Array,
                *, queries_first_at_ties: bool, sort_implementation: str):
  """Sorts each anchor's queries together with its negatives, by value.

  Args:
    values: ``[B, B]`` non-negative floats; entry ``(a, j)`` is the value of
      row ``j`` for anchor ``a``.
    queries: ``[B, B]`` bool, the entries sorted as queries.
    negatives: ``[B, B]`` bool, the entries sorted as negatives (disjoint from
      `queries`). Entries that are neither sort last.
    queries_first_at_ties: whether a query sorts before a negative of equal
      value (else after).
    sort_implementation: see `sorting.argsort_rows`.

  Returns:
    ``(sorted_values, is_query, is_negative)``, each ``[B, B]`` in every row's
    ascending order. `sorted_values` is a gather of `values`, so gradients
    flow back to the unsorted entries.
  """
  # A non-negative float orders like its bit pattern; the freed sign bit
  # holds the tie-break between a query and a negative of equal value.
  bits = jax.lax.bitcast_convert_type(
      jax.lax.stop_gradient(values).astype(jnp.float32), jnp.uint32) << 1
  query_bit, negative_bit = (0, 1) if queries_first_at_ties else (1, 0)
  keys = jnp.where(queries, bits | query_bit,
                   jnp.where(negatives, bits | negative_bit, _SORTS_LAST))
  order = sorting.argsort_rows(keys, implementation=sort_implementation)
  sorted_keys = jnp.take_along_axis(keys, order, axis=1)
  assigned = sorted_keys != _SORTS_LAST
  is_negative = assigned & ((sorted_keys & 1) == negative_bit)
  is_query = assigned & ~is_negative
  return jnp.take_along_axis(values, order, axis=1), is_query, is_negative


# --------------------------------------------------------------------------
# Losses.
# --------------------------------------------------------------------------
def batch_all_triplet_loss(
    embeddings: jax.typing.ArrayLike,
    labels: jax.typing.ArrayLike,
    *,
    margin: float,
    metric: str = "euclidean",
    sort_implementation: str = "auto",
    axis_name: str | None = None,
) -> tuple[jax.Array, Metrics]:
  """Triplet loss over every valid triplet of the batch ("batch-all").

  The loss is the mean over the triplets whose loss is positive (the active
  triplets), which keeps the gradient from shrinking as training makes most
  triplets easy; ``fraction_active_triplets`` reports how many those are.

  Args:
    embeddings: ``[B, D]`` float embeddings.
    labels: ``[B]`` integer class ids; rows with a label < 0 are padding.
    margin: non-negative margin.
    metric: ``"euclidean"``, ``"squared_euclidean"`` or ``"cosine"``.
    sort_implementation: how each anchor's distances are sorted; see
      `tripletjax.sorting.argsort_rows`.
    axis_name: name of a mapped axis (``jax.pmap``, ``jax.shard_map``) along
      which the batch is split: `embeddings` and `labels` are then this
      device's shard, mining runs over the global batch, and the loss and
      metrics are the global ones on every device.

  Returns:
    ``(loss, metrics)``: scalar loss and a dict of scalars (`BATCH_METRICS`).

  Examples:
    >>> import jax.numpy as jnp
    >>> x = jnp.array([[0.], [1.], [1.5]])
    >>> loss, metrics = batch_all_triplet_loss(
    ...     x, jnp.array([0, 0, 1]), margin=1.0)
    >>> float(loss), float(metrics["num_active_triplets"])
    (1.0, 2.0)

  References:
    Hermans, Beyer & Leibe, "In Defense of the Triplet Loss for Person
    Re-Identification", 2017 (arXiv:1703.07737).
  """
  return _mined_loss(_batch_all_rows, embeddings, labels, margin=margin,
                     metric=metric, axis_name=axis_name,
                     sort_implementation=sort_implementation)


def _batch_all_rows(dist, pos, neg, *, margin, sort_implementation):
  """Batch-all over anchor rows: (loss sum, loss count, triplets, active)."""
  # Triplet (a, p, n) is active iff d(a, n) < d(a, p) + margin. Sorting each
  # anchor's thresholds d(a, p) + margin together with its negatives' d(a, n)
  # (thresholds first at ties), a positive p is in as many active triplets as
  # there are negatives before its threshold, and a negative n in as many as
  # there are thresholds after it. The summed loss is
  #   sum_p count_p * (d(a, p) + margin) - sum_n count_n * d(a, n),
  # whose gradient takes the integer counts as constants.
  values, is_threshold, is_negative = _merge_rows(
      jnp.where(pos, dist + margin, dist), pos, neg,
      queries_first_at_ties=True, sort_implementation=sort_implementation)
  negatives_before = jnp.cumsum(is_negative, axis=1, dtype=jnp.int32)
  thresholds_after = (jnp.sum(pos, axis=1, keepdims=True, dtype=jnp.int32)
                      - jnp.cumsum(is_threshold, axis=1, dtype=jnp.int32))
  threshold_counts = jnp.where(is_threshold, negatives_before, 0)
  negative_counts = jnp.where(is_negative, thresholds_after, 0)
  total = jnp.sum((threshold_counts - negative_counts) * values)
  # Per-anchor sums stay exact in int32; their total may exceed it.
  num_active = jnp.sum(jnp.sum(threshold_counts, axis=1).astype(jnp.float32))
  num_triplets = jnp.sum(
      (jnp.sum(pos, axis=1) * jnp.sum(neg, axis=1)).astype(jnp.float32))
  return total, num_active, num_triplets, num_active


def batch_hard_triplet_loss(
    embeddings: jax.typing.ArrayLike,
    labels: jax.typing.ArrayLike,
    *,
    margin: float,
    metric: str = "euclidean",
    soft: bool = False,
    axis_name: str | None = None,
) -> tuple[jax.Array, Metrics]:
  """Triplet loss of each anchor's hardest positive and negative ("batch-hard").

  For every anchor with at least one positive and one negative in the batch,
  the farthest positive and the closest negative form its triplet; the loss is
  the mean over those anchors of ``max(d_ap - d_an + margin, 0)``, or with
  ``soft=True`` of ``softplus(d_ap - d_an + margin)`` (Hermans et al.'s soft
  margin is ``margin=0``). A triplet counts as active when
  ``d_ap - d_an + margin > 0``.

  Args:
    embeddings: ``[B, D]`` float embeddings.
    labels: ``[B]`` integer class ids; rows with a label < 0 are padding.
    margin: non-negative margin.
    metric: ``"euclidean"``, ``"squared_euclidean"`` or ``"cosine"``.
    soft: use the softplus instead of the hinge.
    axis_name: name of a mapped axis (``jax.pmap``, ``jax.shard_map``) along
      which the batch is split: `embeddings` and `labels` are then this
      device's shard, mining runs over the global batch, and the loss and
      metrics are the global ones on every device.

  Returns:
    ``(loss, metrics)``: scalar loss and a dict of scalars (`BATCH_METRICS`).

  Examples:
    >>> import jax.numpy as jnp
    >>> x = jnp.array([[0.], [1.], [1.5]])
    >>> loss, _ = batch_hard_triplet_loss(x, jnp.array([0, 0, 1]), margin=1.0)
    >>> float(loss)  # anchors 0 and 1: (1 - 1.5 + 1) and (1 - 0.5 + 1), halved
    1.0

  References:
    Hermans, Beyer & Leibe, "In Defense of the Triplet Loss for Person
    Re-Identification", 2017 (arXiv:1703.07737).
  """
  return _mined_loss(_batch_hard_rows, embeddings, labels, margin=margin,
                     metric=metric, axis_name=axis_name, soft=soft)


def _pick(dist, mask, closest: bool):
  """Per row, the closest (or farthest) column of `mask` (the first at
  ties): ``(column [A], its distance [A], whether the row has one [A])``;
  the distance's gradient flows to that column alone."""
  masked = jnp.where(mask, dist, jnp.inf if closest else -jnp.inf)
  column = jnp.argmin(masked, axis=1) if closest else jnp.argmax(masked,
                                                                   axis=1)
  return (column, jnp.take_along_axis(dist, column[:, None], axis=1)[:, 0],
          jnp.any(mask, axis=1))


def _hardest(dist, pos, neg):
  """Each anchor row's farthest positive and closest negative.

  Returns:
    ``(positive, negative, anchors)``: column indices ``[A]`` (the first at
    ties) and whether the row has both a positive and a negative.
  """
  positive, _, has_positive = _pick(dist, pos, closest=False)
  negative, _, has_negative = _pick(dist, neg, closest=True)
  return positive, negative, has_positive & has_negative


def hardest_triplets(
    embeddings: jax.typing.ArrayLike,
    labels: jax.typing.ArrayLike,
    *,
    metric: str = "euclidean",
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array, jax.Array]:
  """The triplets batch-hard mining picks: for each anchor, the farthest
  positive and the closest negative in the batch.

  Args:
    embeddings: ``[B, D]`` float embeddings.
    labels: ``[B]`` integer class ids; rows with a label < 0 are padding.
    metric: ``"euclidean"``, ``"squared_euclidean"`` or ``"cosine"``.

  Returns:
    ``(positive, negative, d_ap, d_an, anchors)``, each ``[B]``: the
    indices of each anchor's hardest positive and negative (the first at
    ties), their distances, and whether the anchor has both (where it has
    not, the other four are meaningless).

  Examples:
    >>> import jax.numpy as jnp
    >>> x = jnp.array([[0.], [1.], [1.5], [3.]])
    >>> p, n, d_ap, d_an, ok = hardest_triplets(x, jnp.array([0, 0, 1, 1]))
    >>> p.tolist(), n.tolist(), ok.tolist()
    ([1, 0, 3, 2], [2, 2, 1, 1], [True, True, True, True])
  """
  embeddings, labels = _check_batch(embeddings, labels, 0.0, metric)
  dist = distances.pairwise_distances(embeddings, metric=metric)
  pos, neg, _ = _pair_masks(labels, jnp.arange(labels.shape[0]), labels)
  positive, negative, anchors = _hardest(dist, pos, neg)
  rows = jnp.arange(labels.shape[0])
  return (positive, negative, dist[rows, positive], dist[rows, negative],
          anchors)


def _batch_hard_rows(dist, pos, neg, *, margin, soft):
  """Batch-hard over anchor rows: (loss sum, loss count, triplets, active)."""
  _, hardest_pos, has_positive = _pick(dist, pos, closest=False)
  _, hardest_neg, has_negative = _pick(dist, neg, closest=True)
  anchors = has_positive & has_negative
  violation = hardest_pos - hardest_neg + margin
  per_anchor = jax.nn.softplus(violation) if soft else jax.nn.relu(violation)
  num_anchors = jnp.sum(anchors)
  return (jnp.sum(jnp.where(anchors, per_anchor, 0.0)), num_anchors,
          num_anchors, jnp.sum(anchors & (violation > 0)))


def batch_semihard_triplet_loss(
    embeddings: jax.typing.ArrayLike,
    labels: jax.typing.ArrayLike,
    *,
    margin: float,
    metric: str = "euclidean",
    sort_implementation: str = "auto",
    axis_name: str | None = None,
) -> tuple[jax.Array, Metrics]:
  """FaceNet's semi-hard triplet loss, as tensorflow-addons defines it.

  For every positive pair ``(a, p)`` the negative is the closest one farther
  from ``a`` than ``p`` (``d_an > d_ap``); where there is none, the farthest
  negative. The loss is the mean over all positive pairs whose anchor has a
  negative of ``max(d_ap - d_an + margin, 0)``.

  Args:
    embeddings: ``[B, D]`` float embeddings.
    labels: ``[B]`` integer class ids; rows with a label < 0 are padding.
    margin: non-negative margin.
    metric: ``"euclidean"``, ``"squared_euclidean"`` or ``"cosine"``.
    sort_implementation: how each anchor's distances are sorted; see
      `tripletjax.sorting.argsort_rows`.
    axis_name: name of a mapped axis (``jax.pmap``, ``jax.shard_map``) along
      which the batch is split: `embeddings` and `labels` are then this
      device's shard, mining runs over the global batch, and the loss and
      metrics are the global ones on every device.

  Returns:
    ``(loss, metrics)``: scalar loss and a dict of scalars (`BATCH_METRICS`).

  Examples:
    >>> import jax.numpy as jnp
    >>> x = jnp.array([[0.], [1.], [1.5], [3.]])
    >>> loss, _ = batch_semihard_triplet_loss(
    ...     x, jnp.array([0, 0, 1, 1]), margin=1.0)
    >>> # Pairs (a, p) with their negative: (0, 1) the one at 1.5 -> 0.5;
    >>> # (1, 0) at 3 -> 0; (2, 3) none farther than 1.5, so the farthest,
    >>> # at 0 -> 1; (3, 2) at 1 -> 0.5. Mean over the 4 pairs:
    >>> float(loss)
    0.5

  References:
    Schroff, Kalenichenko & Philbin, "FaceNet: A Unified Embedding for Face
    Recognition and Clustering", CVPR 2015; `tfa.losses.TripletSemiHardLoss`.
  """
  return _mined_loss(_semihard_rows, embeddings, labels, margin=margin,
                     metric=metric, axis_name=axis_name,
                     sort_implementation=sort_implementation)


def _semihard_rows(dist, pos, neg, *, margin, sort_implementation):
  """Semi-hard over anchor rows: (loss sum, loss count, triplets, active)."""
  # Each anchor's positives sorted among its negatives (negatives first at
  # ties): a positive's negative is the next negative after it in the row,
  # or the row's last negative where none follows.
  values, is_positive, is_negative = _merge_rows(
      dist, pos, neg, queries_first_at_ties=False,
      sort_implementation=sort_implementation)
  size = values.shape[1]
  position = jax.lax.broadcasted_iota(jnp.int32, values.shape, 1)
  next_negative = jax.lax.cummin(jnp.where(is_negative, position, size),
                                 axis=1, reverse=True)
  last_negative = jnp.max(jnp.where(is_negative, position, -1), axis=1,
                          keepdims=True)
  chosen = jnp.where(next_negative < size, next_negative, last_negative)
  negative = jnp.take_along_axis(values, jnp.maximum(chosen, 0), axis=1)
  pairs = is_positive & (last_negative >= 0)
  per_pair = jax.nn.relu(values - negative + margin)
  num_pairs = jnp.sum(pairs)
  return (jnp.sum(jnp.where(pairs, per_pair, 0.0)), num_pairs, num_pairs,
          jnp.sum(pairs & (per_pair > 0)))


STRATEGIES = ("easy", "semihard", "hard")


def batch_easy_hard_triplet_loss(
    embeddings: jax.typing.ArrayLike,
    labels: jax.typing.ArrayLike,
    *,
    margin: float,
    positive: str = "easy",
    negative: str = "semihard",
    metric: str = "euclidean",
    axis_name: str | None = None,
) -> tuple[jax.Array, Metrics]:
  """One positive and one negative per anchor, each chosen by a strategy.

  The definitions of PyTorch Metric Learning's ``BatchEasyHardMiner``
  followed by ``TripletMarginLoss`` with ``MeanReducer``:

  * positive ``easy``: the closest positive; ``hard``: the farthest;
    ``semihard``: the farthest positive closer than the chosen negative
    (``d_ap < d_an``);
  * negative ``easy``: the farthest negative; ``hard``: the closest;
    ``semihard``: the closest negative farther than the chosen positive
    (``d_an > d_ap``);
  * the other side is chosen first where one is semi-hard (both cannot be);
    an anchor without a positive and a negative that satisfy its strategies
    takes no part. The loss is the mean over the remaining anchors of
    ``max(d_ap - d_an + margin, 0)``; ties go to the first column.

  ``positive="easy", negative="semihard"`` is Xuan, Stylianou & Pless's
  easy-positive mining; ``"hard", "hard"`` is batch-hard. The definitions
  are PyTorch Metric Learning's without change; its default distance
  normalises the embeddings first, which here is the network's
  ``normalize_embeddings`` setting.

  Args:
    embeddings: ``[B, D]`` float embeddings.
    labels: ``[B]`` integer class ids; rows with a label < 0 are padding.
    margin: non-negative margin.
    positive, negative: strategies of `STRATEGIES`, not both ``semihard``.
    metric: ``"euclidean"``, ``"squared_euclidean"`` or ``"cosine"``.
    axis_name: as for `batch_all_triplet_loss`: mining over the global batch
      of the mapped axis.

  Returns:
    ``(loss, metrics)``: scalar loss and a dict of scalars (`BATCH_METRICS`;
    a "triplet" is an anchor that takes part).

  Examples:
    >>> import jax.numpy as jnp
    >>> x = jnp.array([[0.], [1.], [1.5], [3.]])
    >>> loss, _ = batch_easy_hard_triplet_loss(
    ...     x, jnp.array([0, 0, 1, 1]), margin=1.0)
    >>> # Easy positives 1, 1, 1.5, 1.5; the closest negatives beyond them:
    >>> # 1.5 (-> 0.5), 3 (-> 0), none for anchor 2, 2 (-> 0.5). Mean of 3:
    >>> round(float(loss), 4)
    0.3333

  References:
    Xuan, Stylianou & Pless, "Improved Embeddings with Easy Positive Triplet
    Mining", WACV 2020; PyTorch Metric Learning's ``BatchEasyHardMiner``.
  """
  for name, value in (("positive", positive), ("negative", negative)):
    if value not in STRATEGIES:
      raise ValueError(f"{name} must be one of {STRATEGIES}, got {value!r}.")
  if positive == negative == "semihard":
    raise ValueError("positive and negative cannot both be 'semihard'.")
  return _mined_loss(_easy_hard_rows, embeddings, labels, margin=margin,
                     metric=metric, axis_name=axis_name, positive=positive,
                     negative=negative)


def _easy_hard_rows(dist, pos, neg, *, margin, positive, negative):
  """Easy/semi-hard/hard over anchor rows: (loss sum, loss count, triplets,
  active)."""
  closest_positive = positive == "easy"
  closest_negative = negative != "easy"
  if positive == "semihard":
    _, d_an, has_n = _pick(dist, neg, closest_negative)
    _, d_ap, has_p = _pick(dist, pos & (dist < d_an[:, None]), False)
  else:
    _, d_ap, has_p = _pick(dist, pos, closest_positive)
    extra = (dist > d_ap[:, None]) if negative == "semihard" else True
    _, d_an, has_n = _pick(dist, neg & extra, closest_negative)
  anchors = has_p & has_n
  violation = d_ap - d_an + margin
  num_anchors = jnp.sum(anchors)
  return (jnp.sum(jnp.where(anchors, jax.nn.relu(violation), 0.0)),
          num_anchors, num_anchors, jnp.sum(anchors & (violation > 0)))


def distance_weighted_triplet_loss(
    embeddings: jax.typing.ArrayLike,
    labels: jax.typing.ArrayLike,
    key: jax.Array,
    *,
    margin: float,
    metric: str = "euclidean",
    cutoff: float = 0.5,
    nonzero_loss_cutoff: float = 1.4,
    axis_name: str | None = None,
) -> tuple[jax.Array, Metrics]:
  """Triplet loss with distance-weighted sampling of the negatives.

  For every positive pair ``(a, p)`` one negative ``n`` is drawn with
  probability proportional to the inverse of the density of pairwise
  distances between points uniform on the unit sphere of ``D`` dimensions,
  ``q(d) ~ d^(D-2) (1 - d^2/4)^((D-3)/2)``, evaluated at the Euclidean
  distance clipped below at `cutoff`, and zero for negatives at
  `nonzero_loss_cutoff` or farther (Wu et al.; PyTorch Metric Learning's
  ``DistanceWeightedMiner`` defaults). The loss is the mean over those
  triplets of ``max(d_ap - d_an + margin, 0)`` in `metric`; pairs whose
  anchor has no negative of nonzero weight take no part. The weights assume
  unit-norm embeddings (the Euclidean distance is taken from `metric` as
  for unit vectors).

  The draw depends only on `key` and the global indices of anchor and
  positive, so one device and many draw the same triplets.

  Args:
    embeddings: ``[B, D]`` float embeddings, L2-normalised.
    labels: ``[B]`` integer class ids; rows with a label < 0 are padding.
    key: a `jax.random` key for the draw.
    margin: non-negative margin.
    metric: ``"euclidean"``, ``"squared_euclidean"`` or ``"cosine"``.
    cutoff, nonzero_loss_cutoff: as above.
    axis_name: as for `batch_all_triplet_loss`.

  Returns:
    ``(loss, metrics)``: scalar loss and a dict of scalars (`BATCH_METRICS`).

  References:
    Wu, Manmatha, Smola & Krähenbühl, "Sampling Matters in Deep Embedding
    Learning", ICCV 2017.
  """
  return _mined_loss(_distance_weighted_rows, embeddings, labels,
                     margin=margin, metric=metric, axis_name=axis_name,
                     with_anchor_index=True, key=key, metric_name=metric,
                     dim=jnp.shape(embeddings)[-1], cutoff=cutoff,
                     nonzero_loss_cutoff=nonzero_loss_cutoff)


def distance_weights(dist: jax.Array, neg: jax.Array, *, dim: int,
                     cutoff: float, nonzero_loss_cutoff: float) -> jax.Array:
  """Unnormalised sampling weights ``[A, C]`` of the negatives: the inverse
  of the unit sphere's distance density at Euclidean distances `dist`
  (clipped below at `cutoff`), zero beyond `nonzero_loss_cutoff` and off
  `neg`. Each row is scaled by its largest weight (which the draw ignores)."""
  d = jnp.maximum(dist, cutoff)
  log_weights = ((2.0 - dim) * jnp.log(d)
                 - (dim - 3.0) / 2.0 * jnp.log1p(-0.25 * d * d))
  keep = neg & (dist < nonzero_loss_cutoff) & jnp.isfinite(log_weights)
  log_weights = jnp.where(keep, log_weights, -jnp.inf)
  top = jnp.max(log_weights, axis=1, keepdims=True)
  return jnp.where(keep, jnp.exp(log_weights - jnp.where(
      jnp.isfinite(top), top, 0.0)), 0.0)


def _euclidean(dist: jax.Array, metric: str) -> jax.Array:
  """The Euclidean distance of unit vectors from their `metric` distance."""
  if metric == "squared_euclidean":
    return distances.safe_sqrt(dist)
  if metric == "cosine":
    return distances.safe_sqrt(2.0 * dist)
  return dist


def _draw_negatives(dist, neg, key, anchor_index, *, metric_name, dim,
                    cutoff, nonzero_loss_cutoff):
  """One negative column per (anchor row, column) ``[A, C]``, drawn by the
  distance weights, and whether each row has a negative to draw."""
  weights = distance_weights(
      _euclidean(jax.lax.stop_gradient(dist), metric_name), neg, dim=dim,
      cutoff=cutoff, nonzero_loss_cutoff=nonzero_loss_cutoff)
  cdf = jnp.cumsum(weights, axis=1)
  total = cdf[:, -1]
  # One uniform per (anchor, positive column), from the anchor's global
  # index: the same draws however the batch is split.
  u = jax.vmap(lambda i: jax.random.uniform(
      jax.random.fold_in(key, i), (dist.shape[1],)))(anchor_index)
  negative = jax.vmap(lambda c, v: jnp.searchsorted(c, v, side="right"))(
      cdf, u * total[:, None])
  return jnp.minimum(negative, dist.shape[1] - 1), total > 0


def distance_weighted_negatives(
    embeddings: jax.typing.ArrayLike, labels: jax.typing.ArrayLike,
    key: jax.Array, *, metric: str = "euclidean", cutoff: float = 0.5,
    nonzero_loss_cutoff: float = 1.4) -> tuple[jax.Array, jax.Array]:
  """The negatives `distance_weighted_triplet_loss` draws: ``[B, B]``
  column indices (entry ``(a, p)`` is the negative of pair ``(a, p)``;
  meaningful where ``(a, p)`` is a positive pair) and ``[B]`` whether each
  anchor has a negative of nonzero weight."""
  embeddings, labels = _check_batch(embeddings, labels, 0.0, metric)
  dist = distances.pairwise_distances(embeddings, metric=metric)
  index = jnp.arange(labels.shape[0])
  _, neg, _ = _pair_masks(labels, index, labels)
  return _draw_negatives(dist, neg, key, index, metric_name=metric,
                         dim=embeddings.shape[1], cutoff=cutoff,
                         nonzero_loss_cutoff=nonzero_loss_cutoff)


def _distance_weighted_rows(dist, pos, neg, *, margin, key, anchor_index,
                            **draw_settings):
  """Distance-weighted sampling over anchor rows: (loss sum, loss count,
  triplets, active)."""
  negative, drawn = _draw_negatives(dist, neg, key, anchor_index,
                                    **draw_settings)
  d_an = jnp.take_along_axis(dist, negative, axis=1)
  triplets = pos & drawn[:, None]
  violation = dist - d_an + margin
  count = jnp.sum(triplets)
  return (jnp.sum(jnp.where(triplets, jax.nn.relu(violation), 0.0)), count,
          count, jnp.sum(triplets & (violation > 0)))


def triplet_margin_loss(
    anchors: jax.typing.ArrayLike,
    positives: jax.typing.ArrayLike,
    negatives: jax.typing.ArrayLike,
    *,
    margin: float,
    metric: str = "euclidean",
) -> tuple[jax.Array, Metrics]:
  """Mean triplet loss of explicit triplets (row ``i`` of each input).

  Args:
    anchors: ``[T, D]`` float embeddings.
    positives: ``[T, D]``, same class as the anchors.
    negatives: ``[T, D]``, another class than the anchors.
    margin: non-negative margin.
    metric: ``"euclidean"``, ``"squared_euclidean"`` or ``"cosine"``.

  Returns:
    ``(loss, metrics)``: the mean of ``max(d_ap - d_an + margin, 0)`` over the
    ``T`` triplets and a dict of scalars (`BATCH_METRICS`).

  Examples:
    >>> import jax.numpy as jnp
    >>> loss, _ = triplet_margin_loss(jnp.array([[0.]]), jnp.array([[1.]]),
    ...                               jnp.array([[1.5]]), margin=1.0)
    >>> float(loss)
    0.5

  References:
    Schroff et al., CVPR 2015; `optax.losses.triplet_margin_loss` (the same
    per-triplet value, with an epsilon inside the norm).
  """
  distances.check_metric(metric)
  _check_margin(margin)
  anchors, positives, negatives = map(jnp.asarray,
                                      (anchors, positives, negatives))
  if anchors.ndim != 2 or not anchors.shape == positives.shape == negatives.shape:
    raise ValueError(
        "anchors, positives and negatives must all have shape [T, D], got "
        f"{anchors.shape}, {positives.shape} and {negatives.shape}.")
  if anchors.shape[0] == 0:
    raise ValueError("triplet_margin_loss needs at least one triplet, got 0.")
  d_ap = distances.paired_distances(anchors, positives, metric=metric)
  d_an = distances.paired_distances(anchors, negatives, metric=metric)
  per_triplet = jax.nn.relu(d_ap - d_an + margin)
  num_active = jnp.sum(per_triplet > 0).astype(jnp.float32)
  d_ap, d_an = jax.lax.stop_gradient(d_ap), jax.lax.stop_gradient(d_an)
  rows = jax.lax.stop_gradient(jnp.concatenate([anchors, positives, negatives]))
  norms = distances.safe_sqrt(jnp.sum(rows * rows, axis=1))
  metrics = {
      "num_triplets": jnp.asarray(anchors.shape[0], jnp.float32),
      "num_active_triplets": num_active,
      "fraction_active_triplets": jnp.mean(per_triplet > 0).astype(jnp.float32),
      "mean_positive_distance": jnp.mean(d_ap),
      "mean_negative_distance": jnp.mean(d_an),
      "hardest_positive_distance": jnp.max(d_ap),
      "hardest_negative_distance": jnp.min(d_an),
      "mean_embedding_norm": jnp.mean(norms),
  }
  return jnp.mean(per_triplet), metrics


# Losses that draw at random, by name; they take a key after the labels.
SAMPLING_LOSSES: dict[str, LossFn] = {
    "distance_weighted": distance_weighted_triplet_loss,
}

# Mining losses by the names used in configs and on the command line.
MINING_LOSSES: dict[str, LossFn] = {
    "batch_all": batch_all_triplet_loss,
    "batch_hard": batch_hard_triplet_loss,
    "batch_hard_soft": functools.partial(batch_hard_triplet_loss, soft=True),
    "semihard": batch_semihard_triplet_loss,
    "easy_positive_semihard": batch_easy_hard_triplet_loss,
}
