"""Exact nearest-neighbour search over embeddings.

Nearest neighbours are computed blockwise: each block of queries scans the
references block by block with a running top-k, so memory does not grow with
the number of references.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from tripletjax import distances


def _pad_rows(x: jax.Array, multiple: int) -> jax.Array:
  pad = -x.shape[0] % multiple
  return jnp.pad(x, ((0, pad), (0, 0))) if pad else x


@functools.partial(jax.jit, static_argnames=(
    "k", "metric", "exclude_self", "query_block", "reference_block"))
def nearest_neighbors(
    queries: jax.Array,
    references: jax.Array,
    *,
    k: int,
    metric: str = "euclidean",
    exclude_self: bool = False,
    labels: tuple[jax.Array, jax.Array] | None = None,
    query_block: int = 1024,
    reference_block: int = 8192,
) -> tuple[jax.Array, jax.Array]:
  """Exact k nearest references of every query.

  Args:
    queries: ``[Q, D]``.
    references: ``[R, D]``, ``R >= k`` (``R > k`` with `exclude_self`).
    k: number of neighbours.
    metric: see `tripletjax.distances`.
    exclude_self: queries are the references themselves (leave-one-out):
      query ``i`` never has reference ``i`` as a neighbour.
    labels: ``(query_labels [Q], reference_labels [R])``: if given, a
      reference with the query's label is never its neighbour (the nearest
      negatives); missing neighbours then have distance inf and index -1.
    query_block: queries per block.
    reference_block: references per block; memory is
      ``O(query_block * (reference_block + k))``.

  Returns:
    ``(distances, indices)``, each ``[Q, k]``, nearest first; ties go to the
    lower reference index.
  """
  num_q, num_r = queries.shape[0], references.shape[0]
  if k < 1 or k > num_r - int(exclude_self):
    raise ValueError(f"k must be in [1, {num_r - int(exclude_self)}], got {k}.")
  if exclude_self and num_q != num_r:
    raise ValueError("exclude_self needs queries and references to be the "
                     f"same set, got {num_q} and {num_r} rows.")
  query_block = min(query_block, num_q)
  reference_block = min(reference_block, num_r)
  q_blocks = _pad_rows(queries, query_block).reshape(
      -1, query_block, queries.shape[1])
  r_blocks = _pad_rows(references, reference_block).reshape(
      -1, reference_block, references.shape[1])
  r_offsets = jnp.arange(r_blocks.shape[0]) * reference_block
  if labels is not None:
    q_labels = _pad_rows(labels[0][:, None], query_block).reshape(
        -1, query_block)
    r_labels = _pad_rows(labels[1][:, None], reference_block).reshape(
        -1, reference_block)
  else:
    q_labels = jnp.zeros(q_blocks.shape[:2], jnp.int32)
    r_labels = jnp.ones(r_blocks.shape[:2], jnp.int32)

  def search(args):
    q, q_offset, q_label = args
    q_index = q_offset + jnp.arange(query_block)

    def scan_references(best, block):
      best_d, best_i = best
      r, r_offset, r_label = block
      r_index = r_offset + jnp.arange(reference_block)
      d = distances.pairwise_distances(q, r, metric=metric,
                                       precise_close_pairs=False)
      invalid = (r_index >= num_r)[None, :] | (
          q_label[:, None] == r_label[None, :])
      if exclude_self:
        invalid = invalid | (q_index[:, None] == r_index[None, :])
      d = jnp.where(invalid, jnp.inf, d)
      cand_d = jnp.concatenate([best_d, d], axis=1)
      cand_i = jnp.concatenate(
          [best_i, jnp.broadcast_to(r_index, d.shape)], axis=1)
      neg_d, pos = jax.lax.top_k(-cand_d, k)
      return (-neg_d, jnp.take_along_axis(cand_i, pos, axis=1)), None

    init = (jnp.full((query_block, k), jnp.inf),
            jnp.zeros((query_block, k), jnp.int32))
    (best_d, best_i), _ = jax.lax.scan(scan_references, init,
                                       (r_blocks, r_offsets, r_labels))
    return best_d, jnp.where(jnp.isinf(best_d), -1, best_i)

  q_offsets = jnp.arange(q_blocks.shape[0]) * query_block
  best_d, best_i = jax.lax.map(search, (q_blocks, q_offsets, q_labels))
  return best_d.reshape(-1, k)[:num_q], best_i.reshape(-1, k)[:num_q]

