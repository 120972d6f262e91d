"""Retrieval metrics against a brute-force ranking of every reference."""

import threading
from unittest import mock

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
  settings.setdefault("rank_directly_below", 0)  # Through the groups.
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
      # Small groups and few of them take the full ranking more often;
      # None: every query ranked directly, as small problems are.
      groups=((1, 1), (3, 2), (8, 512), None),
      seed=(0, 1))
  def test_random_embeddings(self, metric, leave_one_out, groups, seed):
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
           metric=metric, memory_budget=4096,  # A few rows at a time.
           **(dict(group_size=groups[0], max_groups=groups[1]) if groups
              else dict(rank_directly_below=10**9)))

  @parameterized.product(
      path=("ladder", "groups", "full"), leave_one_out=(False, True),
      metric=("euclidean", "cosine"))
  def test_each_ranking_path(self, path, leave_one_out, metric):
    """Each way a query's ranking is made: from its negatives above a rung
    of its ladder (R at least the depth needed: 5 classes), from the
    members of its best groups (R below it: 40 classes of about 4), or
    against every reference (too many negatives above every rung, or too
    many groups needed); the test asserts the path it reached."""
    rng = np.random.default_rng(7)
    classes = 40 if path == "groups" else 5
    # Separated classes need few candidates; overlapping ones need most.
    spread = 1.0 if path == "full" else 0.05
    def points(n):
      labels = rng.integers(0, classes, n)
      x = np.eye(classes, dtype=np.float32)[labels] + spread * rng.normal(
          size=(n, classes)).astype(np.float32)
      return x, labels
    queries, query_labels = points(120)
    references, reference_labels = (None, None) if leave_one_out else points(
        150)
    calls = {}
    def counted(name):
      calls[name] = 0
      original = getattr(retrieval._Ranker, name)
      def wrapper(*args, **kwargs):
        calls[name] += 1
        return original(*args, **kwargs)
      return mock.patch.object(retrieval._Ranker, name, wrapper)
    with counted("negatives_above"), counted("best_groups"):
      got = _check(self, queries, query_labels, references, reference_labels,
                   metric=metric, group_size=4, memory_budget=8192,
                   **(dict(max_groups=3, max_candidates=3) if path == "full"
                      else dict(max_groups=16, max_candidates=64)))
    full = got["fully_ranked_queries"]
    if path == "full":
      self.assertGreater(full, 0)
      return
    self.assertEqual(full, 0)
    self.assertLess(got["ranked_per_query"], 150 / 2)
    if path == "ladder":
      self.assertGreater(calls["negatives_above"], 0)
      self.assertEqual(calls["best_groups"], 0)
    else:  # (A few classes have 8 references or more.)
      self.assertGreater(calls["best_groups"], 0)

  def test_two_threads_give_what_one_gives(self):
    """Where two CPUs are usable, two blocks of queries are ranked at once;
    every result, the counts included, is that of one thread, block after
    block (32 blocks here, through every path: classes large and small, few
    candidates and groups allowed), and the count of fully ranked queries
    is that of the queries ranked against every reference."""
    rng = np.random.default_rng(3)
    labels = np.concatenate([rng.integers(0, 3, 240),
                             rng.integers(3, 60, 160)])
    x = np.eye(5, dtype=np.float32)[labels % 5] + 0.3 * rng.normal(
        size=(400, 5)).astype(np.float32)
    order = rng.permutation(400)
    labels, x = labels[order], x[order]
    threads, fully = set(), []
    positive_keys = retrieval._Ranker.positive_keys
    def recorded_thread(*args):
      threads.add(threading.get_ident())
      return positive_keys(*args)
    all_candidates = retrieval._Ranker.all_candidates
    def recorded_rows(ranker, rows):
      fully.append(len(rows))
      return all_candidates(ranker, rows)
    results = []
    for cpus in (1, 2):
      threads.clear()
      fully.clear()
      with mock.patch.object(retrieval.sorting, "usable_cpus",
                             return_value=cpus), mock.patch.object(
                                 retrieval._Ranker, "positive_keys",
                                 recorded_thread), mock.patch.object(
                                     retrieval._Ranker, "all_candidates",
                                     recorded_rows):
        results.append(_check(
            self, x[:150], labels[:150], x[150:], labels[150:],
            group_size=4, max_groups=6, max_candidates=60,
            memory_budget=4096))
      self.assertLen(threads, cpus)
      self.assertEqual(results[-1]["fully_ranked_queries"], sum(fully))
    self.assertBetween(results[0]["fully_ranked_queries"], 10, 140)
    self.assertEqual(results[0], results[1])

  @parameterized.parameters(0, retrieval._RUNGS - 1)
  def test_any_first_rung_gives_the_same_metrics(self, first):
    """Whatever rung a query starts from, the metrics are exact: a rung too
    high leaves negatives out and is lowered (two rungs at a time) until
    the ranking is exact deep enough; rung 0, the R-th positive, always is.
    """
    rng = np.random.default_rng(11)
    labels = rng.integers(0, 4, 400)
    x = np.eye(4, dtype=np.float32)[labels] + 0.5 * rng.normal(
        size=(400, 4)).astype(np.float32)
    calls = []
    original = retrieval._Ranker.negatives_above
    def recorded(ranker, chunk, part, rung, max_candidates):
      calls.append(rung.copy())
      return original(ranker, chunk, part, rung, max_candidates)
    with mock.patch.object(
        retrieval._Ranker, "rungs",
        lambda ranker, chunk, part: np.full(len(part), first)), (
            mock.patch.object(retrieval._Ranker, "negatives_above",
                              recorded)):
      got = _check(self, x[:100], labels[:100], x[100:], labels[100:])
    self.assertEqual(got["fully_ranked_queries"], 0)
    if first == 0:
      self.assertLen(calls, 1)
    else:  # Lowered until exact: some queries passed through lower rungs.
      self.assertGreater(len(calls), 1)
      self.assertLess(calls[-1].max(), first)

  def test_fewest_groups_that_suffice(self):
    """With room for every group, no query falls back to the full ranking:
    the number of groups each takes suffices (its ranking is exact deep
    enough). One group fewer for every query does not, for some: those are
    ranked against every reference, and the metrics stay exact."""
    rng = np.random.default_rng(5)
    labels = rng.integers(0, 60, 300)  # R of about 3: through the groups.
    x = np.eye(6, dtype=np.float32)[labels % 6] + 0.6 * rng.normal(
        size=(300, 6)).astype(np.float32)
    got = _check(self, x[:100], labels[:100], x[100:], labels[100:],
                 group_size=4, max_groups=1000)
    self.assertEqual(got["fully_ranked_queries"], 0)
    chosen = retrieval._Ranker.groups_needed
    def one_fewer(ranker, chunk, part, maxima):
      take, _ = chosen(ranker, chunk, part, maxima)
      take = np.maximum(take - 1, 0)
      theta = maxima[np.arange(len(take)), take].astype(np.float64)
      bound = np.asarray(retrieval._order_keys_jit(np.nextafter(
          (theta + ranker.tolerance[chunk.rows[part]]).astype(np.float32),
          np.float32(np.inf))))
      return take, bound
    with mock.patch.object(retrieval._Ranker, "groups_needed", one_fewer):
      got = _check(self, x[:100], labels[:100], x[100:], labels[100:],
                   group_size=4, max_groups=1000)
    self.assertGreater(got["fully_ranked_queries"], 0)

  @parameterized.product(group_size=(1, 3, 8), leave_one_out=(False, True),
                         classes=(4, 30))
  def test_ties_everywhere(self, group_size, leave_one_out, classes):
    """Integer points, each repeated under several labels: group maxima,
    rungs, positives and negatives tie exactly; ties go to the lower index.
    4 classes of about 22 go through the ladders, 30 of about 3 through
    the groups."""
    rng = np.random.default_rng(group_size)
    points = rng.integers(-2, 3, size=(6, 2)).astype(np.float32)
    pick = rng.integers(0, 6, 90)
    references, reference_labels = points[pick], rng.integers(0, classes, 90)
    queries, query_labels = (None, None)
    if leave_one_out:
      queries, query_labels = references, reference_labels
      references = reference_labels = None
    else:
      queries, query_labels = points[rng.integers(0, 6, 30)], rng.integers(
          0, classes, 30)
    _check(self, queries, query_labels, references, reference_labels,
           group_size=group_size, max_groups=2)

  @parameterized.parameters(False, True)
  def test_ties_among_hundreds_of_negatives(self, leave_one_out):
    """Ranked against every reference, with more negatives per query than
    `_KEYS_PER_ROW_SEARCH` (their places are then found row by row) and
    exact ties between positives and negatives."""
    rng = np.random.default_rng(3)
    points = rng.integers(-2, 3, size=(6, 2)).astype(np.float32)
    references = points[rng.integers(0, 6, 700)]
    reference_labels = rng.integers(0, 4, 700)
    queries, query_labels = points[rng.integers(0, 6, 60)], rng.integers(
        0, 4, 60)
    if leave_one_out:
      queries, query_labels = references, reference_labels
      references = reference_labels = None
    self.assertGreater(700 * 3 / 4, 2 * retrieval._KEYS_PER_ROW_SEARCH)
    _check(self, queries, query_labels, references, reference_labels,
           rank_directly_below=10**9)

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
           group_size=1, max_groups=1)

  def test_tied_negatives_of_groups_ranked_by_index(self):
    """Through the groups, candidates come group by group, best group
    first: here the group of label 1 (its member at 0.5 is nearest) before
    that of label 2. Its member 1 ties with member 0 of label 2 at 1.0;
    the lower index ranks first, so the 3 nearest are labels 0, 1, 2 (a
    tie in votes, won by the nearest: right), not 0, 1, 1 (wrong). Far
    references of label 3 make room for recall@8."""
    refs = np.array([[1.0], [1.0], [0.2], [3.0], [0.5], [5.0]] + [[9.0]] * 4,
                    np.float32)
    labels = np.array([2, 1, 0, 0, 1, 2, 3, 3, 3, 3])
    got = _check(self, np.zeros((1, 1), np.float32), np.array([0]), refs,
                 labels, group_size=2, max_groups=5)
    self.assertEqual(got["fully_ranked_queries"], 0)
    self.assertEqual(got["knn_accuracy_at_3"], 1.0)

  @parameterized.parameters(0.01, 0.5, 1.0)
  def test_both_orderings_of_candidates_rank_by_key_then_index(self, fill):
    """Each row's negatives in rank order, sorted along the rows (dense)
    and by a lexsort of the negatives alone (sparse; which one runs depends
    on how many candidates are negatives), against Python's sort of
    (key, index) pairs; keys tie by the dozen."""
    rng = np.random.default_rng(int(fill * 100))
    keys = rng.integers(0, 40, (30, 200)).astype(np.uint32)
    index = np.stack([rng.permutation(1000)[:200] for _ in range(30)])
    negative = rng.random((30, 200)) < fill
    count = negative.sum(axis=1)
    want = [sorted(zip(keys[r][negative[r]], index[r][negative[r]]))
            for r in range(30)]
    for dense in (False, True):
      row, rank, key, ref = retrieval._in_rank_order(
          negative, count, max(1, int(count.max())), keys, index, dense)
      got = [[] for _ in range(30)]
      for r, k, i in zip(row, key, ref):
        got[r].append((k, i))
      self.assertEqual(got, want, dense)
      np.testing.assert_array_equal(
          rank, np.concatenate([np.arange(c) for c in count]))

  def test_leave_one_out_with_classes_of_one(self):
    # Labels 2 and 3 have one element: those queries are lone.
    rng = np.random.default_rng(3)
    points = rng.normal(size=(12, 2)).astype(np.float32)
    labels = np.array([0, 0, 0, 1, 1, 1, 1, 0, 2, 3, 1, 0])
    got = _check(self, points, labels, None, None, group_size=1,
                 max_groups=1)
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
    with self.assertRaisesRegex(ValueError, "queries contain NaN"):
      retrieval.retrieval_metrics(np.full((4, 2), np.nan), [0] * 4)
    with self.assertRaisesRegex(ValueError, "group_size"):
      retrieval.retrieval_metrics(x, [0] * 4, group_size=0)


if __name__ == "__main__":
  absltest.main()
