"""Property tests of the losses: any labels, duplicates, extreme scales.

Every example has the same shapes (unused rows are padding, label -1), so
each loss compiles once.
"""

import functools

import hypothesis
from hypothesis import strategies as st
import jax
import numpy as np

from tripletjax import losses

ROWS, DIM = 10, 3


@st.composite
def batches(draw):
  """Embeddings drawn from a small pool of rows (so duplicates are common),
  scaled by a power of ten in [1e-8, 1e8], and labels in [-1, 3]."""
  pool = draw(st.integers(1, ROWS))
  rows = np.array(draw(st.lists(
      st.lists(st.floats(-1, 1, width=32), min_size=DIM, max_size=DIM),
      min_size=pool, max_size=pool)), np.float32)
  picks = draw(st.lists(st.integers(0, pool - 1), min_size=ROWS,
                        max_size=ROWS))
  scale = np.float32(10.0 ** draw(st.integers(-8, 8)))
  labels = np.array(draw(st.lists(st.integers(-1, 3), min_size=ROWS,
                                  max_size=ROWS)), np.int32)
  return rows[picks] * scale, labels


@functools.cache
def loss_and_grad(name, metric):
  fn = functools.partial(losses.MINING_LOSSES[name], margin=0.3,
                         metric=metric)
  return jax.jit(jax.value_and_grad(lambda e, y: fn(e, y)[0]))


SETTINGS = hypothesis.settings(max_examples=60, deadline=None,
                               derandomize=True)


@SETTINGS
@hypothesis.given(batch=batches(),
                  name=st.sampled_from(sorted(losses.MINING_LOSSES)),
                  metric=st.sampled_from(["euclidean", "squared_euclidean",
                                          "cosine"]))
def test_loss_and_gradients_are_finite(batch, name, metric):
  embeddings, labels = batch
  loss, grad = loss_and_grad(name, metric)(embeddings, labels)
  assert np.isfinite(loss) and loss >= 0
  assert np.all(np.isfinite(grad))
  # Padding rows take part in nothing.
  np.testing.assert_array_equal(grad[labels < 0], 0.0)


@SETTINGS
@hypothesis.given(batch=batches(), seed=st.integers(0, 2**31 - 1),
                  name=st.sampled_from(sorted(losses.MINING_LOSSES)))
def test_invariant_to_batch_permutation(batch, seed, name):
  """The loss, with duplicates and ties. (Its gradient picks one of tied
  candidates by position, so it permutes with the rows only without ties:
  the next test.)"""
  embeddings, labels = batch
  perm = np.random.default_rng(seed).permutation(ROWS)
  fn = loss_and_grad(name, "euclidean")
  loss, _ = fn(embeddings, labels)
  loss_perm, _ = fn(embeddings[perm], labels[perm])
  np.testing.assert_allclose(loss_perm, loss, rtol=1e-4, atol=1e-6)


@SETTINGS
@hypothesis.given(
    embeddings=st.lists(st.floats(-10, 10, width=32), min_size=ROWS * DIM,
                        max_size=ROWS * DIM),
    labels=st.lists(st.integers(-1, 3), min_size=ROWS, max_size=ROWS),
    seed=st.integers(0, 2**31 - 1),
    name=st.sampled_from(sorted(losses.MINING_LOSSES)))
def test_gradients_permute_with_rows(embeddings, labels, seed, name):
  """Without tied distances the mined triplets are unique, so gradients
  permute with the rows. (At ties the miners pick one of the equal
  candidates by position, a valid subgradient.)"""
  embeddings = np.array(embeddings, np.float32).reshape(ROWS, DIM)
  x = embeddings.astype(np.float64)
  dist = np.sqrt(((x[:, None] - x[None]) ** 2).sum(-1))[np.triu_indices(ROWS, 1)]
  gaps = np.diff(np.sort(dist))
  hypothesis.assume(dist.min() > 1e-2 and gaps.min() > 1e-3)
  labels = np.array(labels, np.int32)
  perm = np.random.default_rng(seed).permutation(ROWS)
  fn = loss_and_grad(name, "euclidean")
  _, grad = fn(embeddings, labels)
  _, grad_perm = fn(embeddings[perm], labels[perm])
  np.testing.assert_allclose(grad_perm, grad[perm], rtol=1e-3,
                             atol=1e-5 * float(np.abs(grad).max() + 1))
