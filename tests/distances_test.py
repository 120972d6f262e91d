"""Pairwise and paired distances against NumPy computed from differences."""

from unittest import mock

from absl.testing import absltest
from absl.testing import parameterized
import jax
import jax.numpy as jnp
import numpy as np

from tests import reference
from tripletjax import distances


class DistancesTest(parameterized.TestCase):

  @parameterized.parameters(*distances.METRIC_NAMES)
  def test_pairwise_matches_reference(self, metric):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(13, 6)).astype(np.float32)
    got = jax.jit(lambda v: distances.pairwise_distances(v, metric=metric))(x)
    np.testing.assert_allclose(got, reference.pairwise_distances(x, metric),
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(np.diag(got), 0.0)

  @parameterized.parameters(*distances.METRIC_NAMES)
  def test_cross_distances_and_paired_agree(self, metric):
    rng = np.random.default_rng(1)
    x, y = (rng.normal(size=(7, 3)).astype(np.float32) for _ in range(2))
    cross = distances.pairwise_distances(x, y, metric=metric)
    both = reference.pairwise_distances(np.concatenate([x, y]), metric)
    np.testing.assert_allclose(cross, both[:7, 7:], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(distances.paired_distances(x, y, metric=metric),
                               np.diag(both[:7, 7:]), rtol=1e-5, atol=1e-5)

  def test_hand_computed(self):
    x = jnp.array([[0.0, 0.0], [3.0, 4.0], [0.0, 2.0]])
    np.testing.assert_allclose(
        distances.pairwise_distances(x, metric="euclidean")[0], [0, 5, 2])
    np.testing.assert_allclose(
        distances.pairwise_distances(x, metric="squared_euclidean")[1],
        [25, 0, 13])
    # A zero vector is at cosine distance 1 from everything else.
    np.testing.assert_allclose(
        distances.pairwise_distances(x, metric="cosine")[:, 0], [0, 1, 1])
    np.testing.assert_allclose(
        distances.pairwise_distances(x, metric="cosine")[1, 2], 1 - 4 / 5,
        rtol=1e-6)

  @parameterized.parameters(*distances.METRIC_NAMES)
  def test_gradient_at_zero_distance_is_finite_and_zero(self, metric):
    x = jnp.array([[1.0, 2.0], [1.0, 2.0]])
    for fn in (lambda v: distances.pairwise_distances(v, metric=metric).sum(),
               lambda v: distances.paired_distances(v[:1], v[1:],
                                                    metric=metric).sum()):
      grad = jax.grad(fn)(x)
      np.testing.assert_array_equal(grad, np.zeros_like(grad))

  def test_euclidean_value_is_not_biased(self):
    x = jnp.array([[0.0], [1e-3]])
    np.testing.assert_allclose(
        distances.paired_distances(x[:1], x[1:], metric="euclidean"), [1e-3],
        rtol=1e-6)

  @parameterized.product(metric=distances.METRIC_NAMES,
                         normalized=(False, True), cross=(False, True),
                         pairs_per_row=(32, 2))
  def test_duplicated_and_near_duplicated_rows(self, metric, normalized,
                                               cross, pairs_per_row):
    """Close pairs are as accurate as float32 rounding of the true
    distances allows: duplicates at exactly 0, near-duplicates to a few
    ulps (the Gram-matrix expansion alone gives sqrt(eps) * |x|). With 2
    close pairs allowed per row, rows have more, and every pair is
    recomputed block by block."""
    self.enter_context(mock.patch.object(distances, "_CLOSE_PAIRS_PER_ROW",
                                         pairs_per_row))
    self.enter_context(mock.patch.object(distances, "_BLOCK_ELEMENTS", 1000))
    rng = np.random.default_rng(2)
    x = rng.normal(size=(24, 64)).astype(np.float32)
    x *= (2.76 / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    if normalized:
      x /= np.linalg.norm(x, axis=1, keepdims=True).astype(np.float32)
    x[5] = x[3]  # Duplicates, within and across what would be classes.
    x[17] = x[3]
    for row, size in ((7, 1e-2), (9, 1e-4), (11, 1e-6)):  # Near-duplicates.
      x[row] = x[2] + np.float32(size) * rng.normal(size=64).astype(
          np.float32)
    want = reference.pairwise_distances(x, metric)
    if cross:  # Rows against a shuffled copy: no diagonal to rely on.
      perm = rng.permutation(len(x))
      got = np.asarray(distances.pairwise_distances(x, x[perm],
                                                    metric=metric))
      want = want[:, perm]
    else:
      got = np.asarray(distances.pairwise_distances(x, metric=metric))
    self.assertEqual(got[3, 5 if not cross else np.flatnonzero(perm == 5)[0]],
                     0.0)
    eps = np.finfo(np.float32).eps
    # A distance from float32 differences of D = 64 components carries a
    # relative error of a few eps; a cosine distance also inherits the
    # rounding of the normalised rows, eps absolute on each component, so
    # sqrt(2 c) (the distance of the unit vectors) is off by a few eps.
    tolerance = 16 * eps * want
    if metric == "cosine":
      tolerance += 16 * eps * np.sqrt(2 * want)
    np.testing.assert_array_less(np.abs(got - want), tolerance + 1e-30)

  def test_bad_input(self):
    with self.assertRaisesRegex(ValueError, "metric"):
      distances.pairwise_distances(jnp.zeros((2, 2)), metric="l1")
    with self.assertRaisesRegex(ValueError, r"\[N, D\]"):
      distances.pairwise_distances(jnp.zeros((2,)))
    with self.assertRaisesRegex(ValueError, r"\[N, D\]"):
      distances.pairwise_distances(jnp.zeros((2, 2)), jnp.zeros((2, 3)))
    with self.assertRaisesRegex(ValueError, r"\[N, D\]"):
      distances.paired_distances(jnp.zeros((2, 2)), jnp.zeros((3, 2)))


if __name__ == "__main__":
  absltest.main()
