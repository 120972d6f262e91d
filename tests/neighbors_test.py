"""Blockwise exact nearest neighbours against brute force."""

from absl.testing import absltest
from absl.testing import parameterized
import numpy as np

from tests import reference
from tripletjax import neighbors


class NearestNeighborsTest(parameterized.TestCase):

  @parameterized.product(metric=("euclidean", "cosine"),
                         blocks=((7, 5), (64, 1000)))
  def test_matches_brute_force(self, metric, blocks):
    rng = np.random.default_rng(0)
    queries = rng.normal(size=(23, 4)).astype(np.float32)
    refs = rng.normal(size=(31, 4)).astype(np.float32)
    dist, index = neighbors.nearest_neighbors(
        queries, refs, k=4, metric=metric, query_block=blocks[0],
        reference_block=blocks[1])
    full = reference.pairwise_distances(np.concatenate([queries, refs]),
                                        metric)[:23, 23:]
    want = np.argsort(full, axis=1, kind="stable")[:, :4]
    np.testing.assert_array_equal(index, want)
    np.testing.assert_allclose(dist, np.take_along_axis(full, want, 1),
                               rtol=1e-5, atol=1e-5)

  def test_leave_one_out_and_ties(self):
    # Duplicated points: each one's nearest is its twin, never itself.
    points = np.array([[0.0], [0.0], [5.0], [5.0], [9.0]], np.float32)
    _, index = neighbors.nearest_neighbors(points, points, k=1,
                                            exclude_self=True,
                                            reference_block=2, query_block=3)
    np.testing.assert_array_equal(index[:, 0], [1, 0, 3, 2, 2])
    # Without it, a tie between equal references goes to the lower index.
    _, index = neighbors.nearest_neighbors(points, points, k=2)
    np.testing.assert_array_equal(index[:4], [[0, 1], [0, 1], [2, 3], [2, 3]])

  def test_nearest_negatives(self):
    rng = np.random.default_rng(1)
    queries = rng.normal(size=(9, 3)).astype(np.float32)
    refs = rng.normal(size=(20, 3)).astype(np.float32)
    q_labels, r_labels = rng.integers(0, 3, 9), rng.integers(0, 3, 20)
    dist, index = neighbors.nearest_neighbors(
        queries, refs, k=10, labels=(q_labels, r_labels), reference_block=6)
    full = reference.pairwise_distances(np.concatenate([queries, refs]),
                                        "euclidean")[:9, 9:]
    for q in range(9):
      negatives = [r for r in np.argsort(full[q], kind="stable")
                   if r_labels[r] != q_labels[q]][:10]
      want = negatives + [-1] * (10 - len(negatives))
      np.testing.assert_array_equal(index[q], want)
      self.assertTrue(np.all(np.isinf(dist[q][len(negatives):])))

  def test_bad_k(self):
    x = np.zeros((3, 2), np.float32)
    with self.assertRaisesRegex(ValueError, "k must be"):
      neighbors.nearest_neighbors(x, x, k=3, exclude_self=True)


if __name__ == "__main__":
  absltest.main()
