"""P x K and random-triplet sampling: balance, determinism, errors."""

from absl.testing import absltest
import numpy as np

from tripletjax import sampling


def labels_with_counts(counts):
  labels = np.repeat(np.arange(len(counts)), counts)
  return np.random.default_rng(0).permutation(labels)


class PKSamplerTest(absltest.TestCase):

  def test_balanced_distinct_and_deterministic(self):
    labels = labels_with_counts([30, 7, 12, 50, 9, 8])
    sampler = sampling.PKSampler(labels, classes_per_batch=4,
                                 examples_per_class=7, seed=3)
    for step in range(50):
      batch = sampler(step)
      self.assertLen(batch, 28)
      self.assertLen(set(batch), 28)  # No example twice.
      classes = labels[batch].reshape(4, 7)
      self.assertTrue(np.all(classes == classes[:, :1]))  # K of each class.
      self.assertLen(set(classes[:, 0]), 4)  # P different classes.
      np.testing.assert_array_equal(batch, sampler(step))
    again = sampling.PKSampler(labels, classes_per_batch=4,
                               examples_per_class=7, seed=3)
    np.testing.assert_array_equal(again(17), sampler(17))
    other_seed = sampling.PKSampler(labels, classes_per_batch=4,
                                    examples_per_class=7, seed=4)
    self.assertFalse(np.array_equal(other_seed(17), sampler(17)))

  def test_draws_cover_classes_and_members_uniformly(self):
    labels = labels_with_counts([10, 10, 10, 10])
    sampler = sampling.PKSampler(labels, classes_per_batch=2,
                                 examples_per_class=5, seed=0)
    counts = np.bincount(np.concatenate([sampler(s) for s in range(4000)]),
                         minlength=40)
    # Each example is drawn with probability 1/2 * 1/2 per step.
    np.testing.assert_allclose(counts / 4000, 0.25, atol=0.04)

  def test_small_classes_are_skipped_and_too_few_classes_refused(self):
    labels = labels_with_counts([10, 2, 10])
    sampler = sampling.PKSampler(labels, classes_per_batch=2,
                                 examples_per_class=3, seed=0)
    for step in range(20):
      self.assertNotIn(1, labels[sampler(step)])
    with self.assertRaisesRegex(ValueError, r"classes_per_batch \(P\) = 3.*"
                                r"mnist has 3 classes, 2 of them"):
      sampling.PKSampler(labels, classes_per_batch=3, examples_per_class=3,
                         seed=0, dataset_name="mnist")


class TripletSamplerTest(absltest.TestCase):

  def test_valid_triplets(self):
    labels = labels_with_counts([5, 1, 8, 3])
    sampler = sampling.TripletSampler(labels, triplets_per_batch=200, seed=0)
    a, p, n = sampler(0).reshape(200, 3).T
    self.assertTrue(np.all(a != p))
    self.assertTrue(np.all(labels[a] == labels[p]))
    self.assertTrue(np.all(labels[a] != labels[n]))
    self.assertNotIn(1, labels[a])  # A class of one example has no positive.
    np.testing.assert_array_equal(sampler(5), sampler(5))

  def test_positive_and_negative_are_uniform(self):
    labels = np.array([0, 0, 0, 1, 1, 2])
    sampler = sampling.TripletSampler(labels, triplets_per_batch=3000, seed=1)
    a, p, n = sampler(0).reshape(3000, 3).T
    mask = a == 0
    np.testing.assert_allclose(np.bincount(p[mask], minlength=6)[[1, 2]]
                               / mask.sum(), 0.5, atol=0.05)
    np.testing.assert_allclose(np.bincount(n[mask], minlength=6)[[3, 4, 5]]
                               / mask.sum(), 1 / 3, atol=0.05)

  def test_refuses_a_single_class(self):
    with self.assertRaisesRegex(ValueError, "two classes"):
      sampling.TripletSampler(np.zeros(5, int), triplets_per_batch=2, seed=0)


class ViewsSamplerTest(absltest.TestCase):

  def test_each_image_k_times_labelled_by_its_place(self):
    sampler = sampling.ViewsSampler(50, images_per_batch=6, views=3, seed=0)
    indices = sampler(4)
    self.assertEqual(len(set(indices.tolist())), 6)
    np.testing.assert_array_equal(indices.reshape(6, 3),
                                  np.repeat(indices[::3, None], 3, axis=1))
    labels = sampler.batch_labels(indices, np.zeros(50, np.int32))
    np.testing.assert_array_equal(labels, np.repeat(np.arange(6), 3))
    np.testing.assert_array_equal(sampler(4), indices)  # (seed, step) only.
    self.assertFalse(np.array_equal(sampler(5), indices))
    with self.assertRaisesRegex(ValueError, "need that many"):
      sampling.ViewsSampler(5, images_per_batch=6, views=3, seed=0)


if __name__ == "__main__":
  absltest.main()
