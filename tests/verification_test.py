"""Verification metrics against a brute-force enumeration of pairs and
thresholds, in float64."""

import itertools

from absl.testing import absltest
from absl.testing import parameterized
import numpy as np

from tripletjax import verification


def brute_force(d_same, d_diff, far_targets=(1e-3, 1e-2)):
  """Every threshold among all distances (and below them all), every pair
  compared with every other."""
  d_same, d_diff = np.asarray(d_same, float), np.asarray(d_diff, float)
  auc = np.mean([1.0 if n > p else 0.5 if n == p else 0.0
                 for p in d_same for n in d_diff])
  best, rows = None, []
  for t in [-np.inf] + sorted(set(d_same) | set(d_diff)):
    tar, far = np.mean(d_same <= t), np.mean(d_diff <= t)
    correct = np.sum(d_same <= t) + np.sum(d_diff > t)
    rows.append((tar, far))
    if best is None or correct > best[0]:
      best = (correct, t, tar, far)
  return {
      "roc_auc": auc,
      "eer": min(max(far, 1 - tar) for tar, far in rows),
      **{f"tar_at_far_{f:g}": max(tar for tar, far in rows if far <= f)
         for f in far_targets},
      "threshold": best[1],
      "accuracy": best[0] / (len(d_same) + len(d_diff)),
      "threshold_tar": best[2],
      "threshold_far": best[3],
      "positive_pairs": len(d_same),
      "negative_pairs": len(d_diff),
  }


def all_pairs(x, labels):
  same, diff = [], []
  for i, j in itertools.combinations(range(len(x)), 2):
    d = float(np.sqrt(np.sum((x[i].astype(float) - x[j]) ** 2)))
    (same if labels[i] == labels[j] else diff).append(d)
  return same, diff


class VerificationTest(parameterized.TestCase):

  @parameterized.named_parameters(
      ("ties", 0, 40, 4, True), ("classes_of_one", 1, 30, 12, True),
      ("spread", 2, 50, 5, False), ("two_classes", 3, 25, 2, True))
  def test_all_pairs_match_brute_force(self, seed, n, classes, integer):
    """Integer coordinates make many distances equal, exactly, in float32
    and float64 alike; small memory budgets force many blocks."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, n)
    x = (rng.integers(-2, 3, (n, 3)) if integer
         else rng.normal(size=(n, 3)) + labels[:, None]).astype(np.float32)
    want = brute_force(*all_pairs(x, labels), far_targets=(0.05, 0.2))
    for budget in (1, 2**10, 2**26):
      got = verification.verification_metrics(
          x, labels, far_targets=(0.05, 0.2), memory_budget=budget)
      self.assertEqual(set(got), set(want))
      for key in want:
        np.testing.assert_allclose(got[key], want[key], rtol=1e-6,
                                   err_msg=key)

  def test_explicit_pairs_match_brute_force(self):
    rng = np.random.default_rng(4)
    x = rng.integers(-2, 3, (20, 3)).astype(np.float32)
    pairs = np.c_[rng.integers(0, 20, (60, 2)), rng.integers(0, 2, 60)]
    d = np.sqrt(np.sum((x[pairs[:, 0]].astype(float) - x[pairs[:, 1]]) ** 2,
                       axis=1))
    want = brute_force(d[pairs[:, 2] == 1], d[pairs[:, 2] == 0])
    got = verification.verification_metrics(x, np.zeros(20), pairs=pairs)
    for key in want:
      np.testing.assert_allclose(got[key], want[key], rtol=1e-6, err_msg=key)

  def test_hand_computed(self):
    """Points 0, 1 (class a) and 3, 10 (class b) on a line: same-class
    distances 1 and 7, different-class 2, 3, 9, 10."""
    x = np.array([[0.], [1.], [3.], [10.]], np.float32)
    got = verification.verification_metrics(x, np.array([0, 0, 1, 1]),
                                            far_targets=(0.0, 0.5))
    # AUC: distance 1 is below all four, 7 below two of them: 6 / 8.
    self.assertAlmostEqual(got["roc_auc"], 0.75)
    # Threshold 1: TAR 1/2, FAR 0 -> accuracy 5/6, the best.
    self.assertEqual(got["threshold"], 1.0)
    self.assertAlmostEqual(got["accuracy"], 5 / 6)
    self.assertEqual(got["tar_at_far_0"], 0.5)
    self.assertEqual(got["tar_at_far_0.5"], 1.0)  # Threshold 7: FAR 2/4.
    self.assertEqual(got["eer"], 0.5)

  def test_one_class_and_bad_input_are_refused(self):
    x = np.zeros((4, 2), np.float32)
    with self.assertRaisesRegex(ValueError, "pairs of different classes"):
      verification.verification_metrics(x, np.zeros(4))
    with self.assertRaisesRegex(ValueError, "pairs of one class"):
      verification.verification_metrics(x, np.arange(4))
    with self.assertRaisesRegex(ValueError, r"labels must be \[N\]"):
      verification.verification_metrics(x, np.zeros(3))
    with self.assertRaisesRegex(ValueError, "pairs index images"):
      verification.verification_metrics(x, np.zeros(4), pairs=[(0, 4, 1)])


if __name__ == "__main__":
  absltest.main()
