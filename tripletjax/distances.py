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


@jax.custom_vjp
def _squared_euclidean(x: jax.Array, y: jax.Array) -> jax.Array:
  """``[N, M]`` squared distances, accurate to float32 rounding everywhere.

  The Gram-matrix expansion ``|x|^2 + |y|^2 - 2 x.y`` (one matrix product)
  gives the distances of pairs that are not close to each other relative to
  their norms; close pairs (duplicated or near-duplicated rows) are
  recomputed from their differences, in the same O(N M) memory. The
  recomputation is skipped when no pair is close.
  """
  x_sq = jnp.sum(x * x, axis=1)
  y_sq = jnp.sum(y * y, axis=1)
  scale = x_sq[:, None] + y_sq[None, :]
  sq = jnp.maximum(scale - 2.0 * _gram(x, y), 0.0)
  near = sq <= _NEAR * scale
  return lax.cond(
      jnp.any(near),
      lambda: jnp.where(near, _from_differences(x, y), sq),
      lambda: sq)


def _from_differences(x: jax.Array, y: jax.Array) -> jax.Array:
  """``sum_d (x_id - y_jd)^2``; XLA fuses it into one reduction, so the
  ``[N, M, D]`` differences are never stored."""
  return jnp.sum(jnp.square(x[:, None, :] - y[None, :, :]), axis=-1)


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
  if metric == "cosine":
    # For unit vectors 1 - cos = |x - y|^2 / 2, which keeps small cosine
    # distances accurate too; a zero vector is at distance 1.
    xu = l2_normalize(x)
    yu = xu if same else l2_normalize(y)
    zero = (jnp.all(xu == 0, axis=1)[:, None] |
            jnp.all(yu == 0, axis=1)[None, :])
    dist = jnp.where(zero, 1.0,
                     jnp.clip(0.5 * _squared_euclidean(xu, yu), 0.0, 2.0))
  else:
    sq = _squared_euclidean(x, y)
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
    return jnp.clip(1.0 - jnp.sum(l2_normalize(x) * l2_normalize(y), axis=1), 0.0, 2.0)
  diff = x - y
  sq = jnp.sum(diff * diff, axis=1)
  return sq if metric == "squared_euclidean" else safe_sqrt(sq)
