"""Retrieval metrics against a brute-force ranking of every reference."""

from absl.testing import absltest
from absl.testing import parameterized
import numpy as np

from tests import reference
from tripletjax import retrieval

RECALL_KS = (1, 2, 4, 8)
KNN_KS = (1, 3, 4)


def _check(test, queries, query_labels, references, reference_labels, *,
           metric="euclidean", **settings):
  leave_one_out = references is None
  got = retrieval.retrieval_metrics(
      queries, query_labels, references, reference_labels, metric=metric,
      recall_ks=RECALL_KS, knn_ks=KNN_KS, **settings)
  if leave_one_out:
    references, reference_labels = queries, query_labels
  want, lone = reference.retrieval_metrics(
      queries, query_labels, references, reference_labels, metric,
      RECALL_KS, KNN_KS, leave_one_out=leave_one_out)
  test.assertEqual(got["lone_queries"], lone)
  for name, value in want.items():
    test.assertAlmostEqual(got[name], value, places=6, msg=name)
  return got


class RetrievalMetricsTest(parameterized.TestCase):

  @parameterized.product(
      metric=("euclidean", "cosine", "squared_euclidean"),
      leave_one_out=(False, True),
      negatives_k=(1, 3, 64),  # Small values take the deeper passes.
      seed=(0, 1))
  def test_random_embeddings(self, metric, leave_one_out, negatives_k, seed):
    rng = np.random.default_rng(seed)
    classes = 5
    queries = rng.normal(size=(40, 3)).astype(np.float32)
    query_labels = rng.integers(0, classes, 40)
    queries += 1.5 * np.eye(3, dtype=np.float32)[query_labels % 3]
    references = rng.normal(size=(70, 3)).astype(np.float32)
    reference_labels = rng.integers(0, classes, 70)
    references += 1.5 * np.eye(3, dtype=np.float32)[reference_labels % 3]
    if leave_one_out:
      references = reference_labels = None
    _check(self, queries, query_labels, references, reference_labels,
           metric=metric, negatives_k=negatives_k,
           memory_budget=4096)  # A few rows at a time.

  @parameterized.product(
      path=("merged", "deeper", "full"), leave_one_out=(False, True),
      metric=("euclidean", "cosine"))
  def test_each_ranking_path(self, path, leave_one_out, metric):
    """Each way a query's ranking is made: its positives merged with its
    `negatives_k` nearest negatives, with 8 times as many, or against every
    reference; the test asserts the path it reached."""
    rng = np.random.default_rng(7)
    # Separated classes need few negatives; overlapping ones need most.
    spread = 0.05 if path == "merged" else 1.0
    def points(n):
      labels = rng.integers(0, 5, n)
      x = np.eye(5, dtype=np.float32)[labels] + spread * rng.normal(
          size=(n, 5)).astype(np.float32)
      return x, labels
    queries, query_labels = points(120)
    references, reference_labels = (None, None) if leave_one_out else points(
        150)
    negatives_k = {"merged": 64, "deeper": 16, "full": 1}[path]
    got = _check(self, queries, query_labels, references, reference_labels,
                 metric=metric, negatives_k=negatives_k, memory_budget=8192)
    deeper, full = got["deeper_ranked_queries"], got["fully_ranked_queries"]
    if path == "merged":
      self.assertEqual((deeper, full), (0, 0))
    elif path == "deeper":
      self.assertGreater(deeper, 0)
      self.assertEqual(full, 0)
    else:
      self.assertGreater(full, 0)

  def test_hand_computed(self):
    # Query of label 0; references ranked by distance: 0, 1, 0, 1, 0.
    refs = np.array([[1.0], [2.0], [3.0], [4.0], [5.0]], np.float32)
    got = retrieval.retrieval_metrics(
        np.zeros((1, 1), np.float32), [0], refs, [0, 1, 0, 1, 0],
        recall_ks=(1, 2), knn_ks=(1, 2, 3, 5))
    # R = 3; relevant at ranks 1 and 3 within R.
    self.assertAlmostEqual(got["precision_at_1"], 1.0)
    self.assertAlmostEqual(got["r_precision"], 2 / 3)
    self.assertAlmostEqual(got["map_at_r"], (1 / 1 + 2 / 3) / 3)
    self.assertAlmostEqual(got["knn_accuracy_at_2"], 1.0)  # Tie: first wins.
    self.assertAlmostEqual(got["knn_accuracy_at_3"], 1.0)
    self.assertAlmostEqual(got["knn_accuracy_at_5"], 1.0)

  def test_ties_go_to_the_lower_index(self):
    # Two references at the same distance: the lower index ranks first.
    refs = np.array([[1.0], [1.0], [-1.0]], np.float32)
    got = retrieval.retrieval_metrics(np.zeros((1, 1), np.float32), [7],
                                      refs, [3, 7, 7], recall_ks=(1,),
                                      knn_ks=(1,))
    self.assertEqual(got["precision_at_1"], 0.0)
    self.assertAlmostEqual(got["map_at_r"], (1 / 2) / 2)
    _check(self, np.zeros((1, 2), np.float32), np.array([7]),
           np.zeros((9, 2), np.float32), np.array([3, 7, 7, 3, 3, 7, 3, 3, 3]),
           negatives_k=2)

  def test_leave_one_out_with_classes_of_one(self):
    # Labels 2 and 3 have one element: those queries are lone.
    rng = np.random.default_rng(3)
    points = rng.normal(size=(12, 2)).astype(np.float32)
    labels = np.array([0, 0, 0, 1, 1, 1, 1, 0, 2, 3, 1, 0])
    got = _check(self, points, labels, None, None, negatives_k=2)
    self.assertEqual(got["lone_queries"], 2)
    # Duplicates: each point's twin ranks first, never the point itself.
    twins = np.repeat(np.arange(6, dtype=np.float32)[:, None] * 10, 2, 0)
    got = _check(self, twins, np.repeat(np.arange(6), 2), None, None)
    self.assertEqual(got["map_at_r"], 1.0)

  def test_query_labels_absent_from_references(self):
    refs = np.array([[0.0], [1.0], [2.0], [3.0], [4.0], [5.0], [6.0], [7.0]],
                    np.float32)
    got = _check(self, np.array([[0.5], [6.5]], np.float32), np.array([0, 9]),
                 refs, np.array([0, 0, 1, 1, 0, 1, 0, 1]))
    self.assertEqual(got["lone_queries"], 1)

  def test_bad_input(self):
    x = np.zeros((4, 2), np.float32)
    with self.assertRaisesRegex(ValueError, "same D"):
      retrieval.retrieval_metrics(x, [0] * 4, np.zeros((4, 3)), [0] * 4)
    with self.assertRaisesRegex(ValueError, "one entry per row"):
      retrieval.retrieval_metrics(x, [0] * 3, x, [0] * 4)
    with self.assertRaisesRegex(ValueError, "too few"):
      retrieval.retrieval_metrics(x, [0] * 4, recall_ks=(8,))
    with self.assertRaisesRegex(ValueError, "metric"):
      retrieval.retrieval_metrics(x, [0] * 4, metric="l1")


if __name__ == "__main__":
  absltest.main()
