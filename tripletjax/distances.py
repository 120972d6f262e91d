"""Distances between embeddings.

Three metrics, named everywhere by the strings of `METRIC_NAMES`:

* ``"euclidean"``: ``||x - y||``. Its gradient at zero distance is defined as
  zero (the minimum-norm subgradient), with no epsilon that biases the value.
* ``"squared_euclidean"``: ``||x - y||^2``.
* ``"cosine"``: ``1 - cos(x, y)``, in ``[0, 2]``; a zero vector is at distance 1
  from everything.

Pairwise distances use the Gram-matrix expansion (one matrix product, O(B^2)
memory), computed at full float32 precision on every backend (the default
matmul precision of TPUs and of GPUs with TF32 would otherwise round the
embeddings to bfloat16/TF32 before the subtraction); pairs that are close
relative to their norms are recomputed from differences, so that small
distances are accurate too.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

METRIC_NAMES = ("euclidean", "squared_euclidean", "cosine")


def check_metric(metric: str) -> None:
  """Raises a `ValueError` naming `metric` unless in `METRIC_NAMES`."""
  if metric not in METRIC_NAMES:
    raise ValueError(f"metric must be one of {METRIC_NAMES}, got {metric!r}.")


def safe_sqrt(x: jax.Array) -> jax.Array:
  """Square root of ``max(x, 0)`` whose gradient at 0 is 0 instead of inf.

  The value is exact (no epsilon is added); only the gradient at exactly zero
  is replaced by the zero subgradient.
  """
  positive = x > 0
  return jnp.where(positive, jnp.sqrt(jnp.where(positive, x, 1.0)), 0.0)


def l2_normalize(x: jax.Array) -> jax.Array:
  """Rows of `x` scaled to unit norm; zero rows stay zero (finite gradient)."""
  sq_norm = jnp.sum(x * x, axis=-1, keepdims=True)
  nonzero = sq_norm > 0
  inv_norm = lax.rsqrt(jnp.where(nonzero, sq_norm, 1.0))
  return jnp.where(nonzero, x * inv_norm, 0.0)


def _gram(x: jax.Array, y: jax.Array) -> jax.Array:
  return jnp.matmul(x, y.T, precision=lax.Precision.HIGHEST)


# Entries whose Gram-matrix estimate lies below this fraction of
# |x|^2 + |y|^2 are recomputed from differences: there the expansion's
# rounding error (a few float32 ulps of |x|^2 + |y|^2) would be a large part
# of the result, and the square root magnifies it further.
_NEAR = 1.0 / 16
# Close pairs recomputed one by one, per row; where a row has more, all
# pairs are recomputed block by block.
_CLOSE_PAIRS_PER_ROW = 32
# Elements of the [N, block, D] differences of one block of that pass.
_BLOCK_ELEMENTS = 2**22


def _gram_estimate(x: jax.Array, y: jax.Array
                   ) -> tuple[jax.Array, jax.Array]:
  """``[N, M]`` squared distances by the Gram-matrix expansion alone, and
  ``|x_i|^2 + |y_j|^2``, the scale of its rounding error."""
  scale = jnp.sum(x * x, axis=1)[:, None] + jnp.sum(y * y, axis=1)[None, :]
  return jnp.maximum(scale - 2.0 * _gram(x, y), 0.0), scale


@jax.custom_vjp
def _squared_euclidean(x: jax.Array, y: jax.Array) -> jax.Array:
  """``[N, M]`` squared distances, accurate to float32 rounding everywhere.

  The Gram-matrix expansion ``|x|^2 + |y|^2 - 2 x.y`` (one matrix product)
  gives the distances of pairs that are not close relative to their norms.
  Close pairs (duplicated or near-duplicated rows) are recomputed from
  their differences: gathered one by one while no row has more than
  ``_CLOSE_PAIRS_PER_ROW`` of them, else all pairs block by block; the
  memory stays O(N M) either way.
  """
  sq, scale = _gram_estimate(x, y)
  close = sq <= _NEAR * scale
  per_row = min(sq.shape[1], _CLOSE_PAIRS_PER_ROW)

  def by_row(sq):
    # Each row's closest columns by the estimate hold all its close pairs.
    _, cols = lax.top_k(-sq, per_row)  # [N, per_row]
    exact = jnp.sum(jnp.square(x[:, None, :] - y[cols]), axis=-1)
    rows = jnp.broadcast_to(jnp.arange(sq.shape[0])[:, None], cols.shape)
    return sq.at[rows, cols].set(
        jnp.where(close[rows, cols], exact, sq[rows, cols]))

  def blockwise(sq):
    return jnp.where(close, _from_differences(x, y), sq)

  most = jnp.max(jnp.sum(close, axis=1))
  return lax.cond(most <= per_row, by_row, blockwise, sq)


def _from_differences(x: jax.Array, y: jax.Array) -> jax.Array:
  """``sum_d (x_id - y_jd)^2`` for blocks of columns, so that the
  ``[N, block, D]`` differences stay within ``_BLOCK_ELEMENTS``."""
  n, dim = x.shape
  block = max(1, min(y.shape[0], _BLOCK_ELEMENTS // max(1, n * dim)))
  pad = -y.shape[0] % block
  blocks = jnp.pad(y, ((0, pad), (0, 0))).reshape(-1, block, dim)
  out = lax.map(lambda b: jnp.sum(jnp.square(x[:, None, :] - b[None]),
                                  axis=-1), blocks)  # [blocks, N, block]
  return out.transpose(1, 0, 2).reshape(n, -1)[:, :y.shape[0]]


def _squared_euclidean_fwd(x, y):
  return _squared_euclidean(x, y), (x, y)


def _squared_euclidean_bwd(residuals, g):
  # d/dx_i sum_j g_ij |x_i - y_j|^2 = 2 (sum_j g_ij) x_i - 2 (g y)_i: two
  # matrix products, where differentiating the difference form would be a
  # slow [N, M, D] reduction.
  x, y = residuals
  grad_x = 2.0 * (jnp.sum(g, axis=1)[:, None] * x - _gram(g, y.T))
  grad_y = 2.0 * (jnp.sum(g, axis=0)[:, None] * y - _gram(g.T, x.T))
  return grad_x, grad_y


_squared_euclidean.defvjp(_squared_euclidean_fwd, _squared_euclidean_bwd)


def pairwise_distances(
    x: jax.typing.ArrayLike,
    y: jax.typing.ArrayLike | None = None,
    *,
    metric: str = "euclidean",
    precise_close_pairs: bool = True,
) -> jax.Array:
  """Distances between every row of `x` and every row of `y`.

  Accurate to float32 rounding of the true distances, small ones included:
  duplicated rows are at distance exactly 0 and near-duplicates at their
  true distance (the plain Gram-matrix expansion would give them about
  ``sqrt(eps) * |x|``, 1e-3 for embeddings of norm 3). Memory is O(N M).

  Args:
    x: embeddings, shape ``[N, D]``.
    y: embeddings, shape ``[M, D]``; ``None`` means ``x`` itself, in which case
      the diagonal is exactly zero.
    metric: one of ``"euclidean"``, ``"squared_euclidean"``, ``"cosine"``.
    precise_close_pairs: recompute pairs that are close relative to their
      norms from their differences (the default). False keeps the Gram
      expansion alone, one matrix product: the nearest-neighbour search of
      evaluation takes it, where every query has many close references and
      the recomputation would cost several times the search.

  Returns:
    float array of shape ``[N, M]``, non-negative.

  Examples:
    >>> import jax.numpy as jnp
    >>> x = jnp.array([[0., 0.], [3., 4.]])
    >>> pairwise_distances(x, metric="euclidean")
    Array([[0., 5.],
           [5., 0.]], dtype=float32)
  """
  check_metric(metric)
  x = jnp.asarray(x)
  same = y is None
  y = x if same else jnp.asarray(y)
  if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
    raise ValueError(
        "x and y must have shapes [N, D] and [M, D], got "
        f"{x.shape} and {y.shape}.")
  squared = (_squared_euclidean if precise_close_pairs else
             lambda x, y: _gram_estimate(x, y)[0])
  if metric == "cosine":
    # For unit vectors 1 - cos = |x - y|^2 / 2, which keeps small cosine
    # distances accurate too; a zero vector is at distance 1.
    xu = l2_normalize(x)
    yu = xu if same else l2_normalize(y)
    zero = (jnp.all(xu == 0, axis=1)[:, None] |
            jnp.all(yu == 0, axis=1)[None, :])
    dist = jnp.where(zero, 1.0,
                     jnp.clip(0.5 * squared(xu, yu), 0.0, 2.0))
  else:
    sq = squared(x, y)
    dist = sq if metric == "squared_euclidean" else safe_sqrt(sq)
  if same:
    dist = jnp.where(jnp.eye(x.shape[0], dtype=bool), 0.0, dist)
  return dist


def paired_distances(
    x: jax.typing.ArrayLike,
    y: jax.typing.ArrayLike,
    *,
    metric: str = "euclidean",
) -> jax.Array:
  """Distance between row ``i`` of `x` and row ``i`` of `y`, for every ``i``.

  Args:
    x: embeddings, shape ``[N, D]``.
    y: embeddings, shape ``[N, D]``.
    metric: one of ``"euclidean"``, ``"squared_euclidean"``, ``"cosine"``.

  Returns:
    float array of shape ``[N]``.

  Examples:
    >>> import jax.numpy as jnp
    >>> paired_distances(jnp.array([[0., 0.]]), jnp.array([[3., 4.]]))
    Array([5.], dtype=float32)
  """
  check_metric(metric)
  x, y = jnp.asarray(x), jnp.asarray(y)
  if x.ndim != 2 or x.shape != y.shape:
    raise ValueError(
        f"x and y must both have shape [N, D], got {x.shape} and {y.shape}.")
  if metric == "cosine":
    # As in pairwise_distances: half the squared distance of unit vectors.
    xu, yu = l2_normalize(x), l2_normalize(y)
    zero = jnp.all(xu == 0, axis=1) | jnp.all(yu == 0, axis=1)
    return jnp.where(zero, 1.0, jnp.clip(
        0.5 * jnp.sum(jnp.square(xu - yu), axis=1), 0.0, 2.0))
  diff = x - y
  sq = jnp.sum(diff * diff, axis=1)
  return sq if metric == "squared_euclidean" else safe_sqrt(sq)
