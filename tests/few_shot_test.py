"""Few-shot episodes: sampling invariants and accuracies by brute force."""

from absl.testing import absltest
import numpy as np

from tripletjax import few_shot


class SampleEpisodesTest(absltest.TestCase):

  def test_episodes_are_valid_and_reproducible(self):
    labels = np.repeat(np.arange(8), 7)
    labels[:3] = 99  # Class 99 has 3 examples: too few for 2 + 3.
    support, query = few_shot.sample_episodes(
        labels, ways=5, shots=2, queries_per_class=3, episodes=50, seed=1)
    self.assertEqual(support.shape, (50, 5, 2))
    self.assertEqual(query.shape, (50, 5, 3))
    for s, q in zip(support, query):
      classes = [labels[row[0]] for row in s]
      self.assertLen(set(classes), 5)
      self.assertNotIn(99, classes)
      for w in range(5):
        self.assertTrue(np.all(labels[s[w]] == classes[w]))
        self.assertTrue(np.all(labels[q[w]] == classes[w]))
      self.assertLen(set(s.ravel()) | set(q.ravel()), 25)  # No repeats.
    again = few_shot.sample_episodes(
        labels, ways=5, shots=2, queries_per_class=3, episodes=50, seed=1)
    np.testing.assert_array_equal(support, again[0])

  def test_episodes_within_groups(self):
    labels = np.repeat(np.arange(12), 4)
    # Group [8, 9] has too few classes for 3 ways, [7, 11] too few eligible
    # (class 11 has 2 examples only).
    labels[-2:] = 7
    groups = [(0, 1, 2, 3), (4, 5, 6), (8, 9), (7, 10, 11)]
    support, query = few_shot.sample_episodes(
        labels, ways=3, shots=1, queries_per_class=2, episodes=400, seed=0,
        groups=groups)
    drawn = [frozenset(labels[s[:, 0]].tolist()) for s in support]
    self.assertTrue(all(d <= {0, 1, 2, 3} or d == {4, 5, 6} for d in drawn))
    for s, q in zip(support, query):  # Each class its own examples.
      for w in range(3):
        self.assertTrue(np.all(labels[q[w]] == labels[s[w, 0]]))
    # The two groups equally often (binomial, 400 draws: +-4 sigma = 40).
    self.assertLess(abs(sum(d == {4, 5, 6} for d in drawn) - 200), 40)
    # Without groups, the episodes drawn before groups existed (recorded
    # from that code): published results keep their episodes.
    support, query = few_shot.sample_episodes(
        labels, ways=3, shots=1, queries_per_class=2, episodes=2, seed=0)
    self.assertEqual(support.tolist(), [[[27], [21], [30]],
                                        [[33], [28], [11]]])
    self.assertEqual(query.tolist(), [[[26, 24], [23, 22], [47, 31]],
                                      [[34, 32], [31, 47], [9, 8]]])
    with self.assertRaisesRegex(ValueError, "need a group of 5 classes"):
      few_shot.sample_episodes(labels, ways=5, shots=1, queries_per_class=2,
                               episodes=3, seed=0, groups=groups)

  def test_support_and_queries_from_shared_sources(self):
    # Six classes, each with sources 0-4 (class 5 lacks source 4, and has
    # two examples of source 0), shuffled.
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(6), 5)
    sources = np.tile(np.arange(5), 6)
    sources[29] = 0
    order = rng.permutation(len(labels))
    labels, sources = labels[order], sources[order]
    support, query = few_shot.sample_episodes(
        labels, ways=3, shots=1, queries_per_class=3, episodes=200, seed=0,
        sources=sources)
    for s, q in zip(support, query):
      classes = labels[s[:, 0]]
      self.assertLen(set(classes.tolist()), 3)
      np.testing.assert_array_equal(labels[q], np.repeat(classes[:, None],
                                                         3, axis=1))
      # One source for every class's support, three others for the
      # queries, in the same order for every class.
      self.assertLen(set(sources[s[:, 0]].tolist()), 1)
      self.assertTrue(np.all(sources[q] == sources[q[0]]))
      self.assertLen(set(sources[q[0]].tolist()) | {sources[s[0, 0]]}, 4)
      if 5 in classes:  # It shares sources 0-3 only.
        self.assertNotIn(4, sources[np.concatenate([s, q], axis=1)])
    with self.assertRaisesRegex(ValueError, "need 3 classes with >= 6 "
                                "sources"):
      few_shot.sample_episodes(labels, ways=3, shots=1, queries_per_class=5,
                               episodes=3, seed=0, sources=sources)

  def test_too_few_classes(self):
    with self.assertRaisesRegex(ValueError, "need 5 classes with >= 6"):
      few_shot.sample_episodes(np.repeat(np.arange(4), 10), ways=5, shots=1,
                               queries_per_class=5, episodes=3, seed=0)


class EvaluateTest(absltest.TestCase):

  def test_matches_brute_force(self):
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(6), 10)
    embeddings = rng.normal(size=(60, 4)) + 0.8 * rng.normal(size=(6, 4))[
        labels]
    got = few_shot.evaluate(embeddings, labels, ways=3, shots=2,
                            queries_per_class=4, episodes=40, seed=5)
    support, query = few_shot.sample_episodes(
        labels, ways=3, shots=2, queries_per_class=4, episodes=40, seed=5)
    proto, nearest = [], []
    for s, q in zip(support, query):
      right_p = right_n = 0
      for w in range(3):
        for i in q[w]:
          d_proto = [np.linalg.norm(embeddings[i] - embeddings[s[v]].mean(0))
                     for v in range(3)]
          right_p += int(np.argmin(d_proto) == w)
          d_all = [(np.linalg.norm(embeddings[i] - embeddings[j]), v)
                   for v in range(3) for j in s[v]]
          right_n += int(min(d_all)[1] == w)
      proto.append(right_p / 12)
      nearest.append(right_n / 12)
    self.assertAlmostEqual(got["prototype"], np.mean(proto), places=6)
    self.assertAlmostEqual(got["nearest_neighbor"], np.mean(nearest),
                           places=6)
    self.assertAlmostEqual(got["prototype_ci95"],
                           1.96 * np.std(proto, ddof=1) / np.sqrt(40),
                           places=6)

  def test_separated_classes_are_always_right(self):
    labels = np.repeat(np.arange(5), 6)
    embeddings = np.eye(5)[labels] * 10 + np.random.default_rng(0).normal(
        size=(30, 5)) * 0.01
    got = few_shot.evaluate(embeddings, labels, ways=5, shots=1,
                            queries_per_class=5, episodes=10, metric="cosine")
    self.assertEqual(got["prototype"], 1.0)
    self.assertEqual(got["nearest_neighbor"], 1.0)


if __name__ == "__main__":
  absltest.main()
