"""P x K, random-triplet and views sampling, drawn on the host (NumPy) and
on the device (`jax.random`): balance, uniformity, determinism, errors."""

from absl.testing import absltest
from absl.testing import parameterized
import jax
import numpy as np

from tripletjax import sampling

WHERE = ("host", "device")


def labels_with_counts(counts):
  labels = np.repeat(np.arange(len(counts)), counts)
  return np.random.default_rng(0).permutation(labels)


def draws(sampler, labels, steps, where):
  """Batches `steps` drawn `where`: indices and their labels, ``[S, B]``."""
  steps = np.asarray(steps, np.int32)
  if where == "host":
    indices = np.stack([sampler(step) for step in steps])
    return indices, np.stack([sampler.batch_labels(i, labels)
                              for i in indices])
  draw = jax.jit(jax.vmap(sampler.on_device(labels).draw))
  indices, batch_labels = jax.device_get(draw(steps))
  if not isinstance(sampler, sampling.ViewsSampler):
    np.testing.assert_array_equal(batch_labels, labels[indices])
  return indices, batch_labels


class PKSamplerTest(parameterized.TestCase):

  @parameterized.parameters(*WHERE)
  def test_balanced_distinct_and_deterministic(self, where):
    labels = labels_with_counts([30, 7, 12, 50, 9, 8])
    sampler = sampling.PKSampler(labels, classes_per_batch=4,
                                 examples_per_class=7, seed=3)
    batches, _ = draws(sampler, labels, range(50), where)
    for batch in batches:
      self.assertLen(batch, 28)
      self.assertLen(set(batch), 28)  # No example twice.
      classes = labels[batch].reshape(4, 7)
      self.assertTrue(np.all(classes == classes[:, :1]))  # K of each class.
      self.assertLen(set(classes[:, 0]), 4)  # P different classes.
    np.testing.assert_array_equal(
        draws(sampler, labels, [17, 3], where)[0], batches[[17, 3]])
    again = sampling.PKSampler(labels, classes_per_batch=4,
                               examples_per_class=7, seed=3)
    np.testing.assert_array_equal(draws(again, labels, [17], where)[0][0],
                                  batches[17])
    other_seed = sampling.PKSampler(labels, classes_per_batch=4,
                                    examples_per_class=7, seed=4)
    self.assertFalse(np.array_equal(
        draws(other_seed, labels, [17], where)[0][0], batches[17]))

  @parameterized.parameters(*WHERE)
  def test_draws_cover_classes_and_members_uniformly(self, where):
    labels = labels_with_counts([10, 10, 10, 10])
    sampler = sampling.PKSampler(labels, classes_per_batch=2,
                                 examples_per_class=5, seed=0)
    counts = np.bincount(draws(sampler, labels, range(4000), where)[0].ravel(),
                         minlength=40)
    # Each example is drawn with probability 1/2 * 1/2 per step.
    np.testing.assert_allclose(counts / 4000, 0.25, atol=0.04)

  @parameterized.parameters(*WHERE)
  def test_classes_of_other_sizes_uniformly(self, where):
    # Classes of 3 to 40 examples, K = 3: every class drawn 2/5 of the
    # steps, each example of class c 2/5 * 3 / size(c).
    sizes = np.array([3, 5, 8, 13, 40])
    labels = labels_with_counts(sizes)
    sampler = sampling.PKSampler(labels, classes_per_batch=2,
                                 examples_per_class=3, seed=5)
    steps = 6000
    counts = np.bincount(draws(sampler, labels, range(steps), where)[0].ravel(),
                         minlength=len(labels))
    expected = steps * 2 / 5 * 3 / sizes[labels]
    # Within 5 binomial standard deviations of each example's expectation.
    p = expected / steps
    np.testing.assert_array_less(np.abs(counts - expected),
                                 5 * np.sqrt(steps * p * (1 - p)))

  @parameterized.parameters(*WHERE)
  def test_small_classes_are_skipped_and_too_few_classes_refused(self, where):
    labels = labels_with_counts([10, 2, 10])
    sampler = sampling.PKSampler(labels, classes_per_batch=2,
                                 examples_per_class=3, seed=0)
    for batch in draws(sampler, labels, range(20), where)[0]:
      self.assertNotIn(1, labels[batch])
    with self.assertRaisesRegex(ValueError, r"classes_per_batch \(P\) = 3.*"
                                r"mnist has 3 classes, 2 of them"):
      sampling.PKSampler(labels, classes_per_batch=3, examples_per_class=3,
                         seed=0, dataset_name="mnist")


class TripletSamplerTest(parameterized.TestCase):

  @parameterized.parameters(*WHERE)
  def test_valid_triplets(self, where):
    labels = labels_with_counts([5, 1, 8, 3])
    sampler = sampling.TripletSampler(labels, triplets_per_batch=200, seed=0)
    batches, _ = draws(sampler, labels, [0, 5, 5], where)
    a, p, n = batches[0].reshape(200, 3).T
    self.assertTrue(np.all(a != p))
    self.assertTrue(np.all(labels[a] == labels[p]))
    self.assertTrue(np.all(labels[a] != labels[n]))
    self.assertNotIn(1, labels[a])  # A class of one example has no positive.
    np.testing.assert_array_equal(batches[1], batches[2])

  @parameterized.parameters(*WHERE)
  def test_anchor_positive_and_negative_are_uniform(self, where):
    labels = np.array([0, 0, 0, 1, 1, 2])
    sampler = sampling.TripletSampler(labels, triplets_per_batch=3000, seed=1)
    a, p, n = draws(sampler, labels, [0], where)[0][0].reshape(3000, 3).T
    # Anchors: the five examples of classes with a positive.
    np.testing.assert_allclose(np.bincount(a, minlength=6) / 3000,
                               [.2, .2, .2, .2, .2, 0], atol=0.03)
    mask = a == 0
    np.testing.assert_allclose(np.bincount(p[mask], minlength=6)[[1, 2]]
                               / mask.sum(), 0.5, atol=0.05)
    np.testing.assert_allclose(np.bincount(n[mask], minlength=6)[[3, 4, 5]]
                               / mask.sum(), 1 / 3, atol=0.05)

  def test_refuses_a_single_class(self):
    with self.assertRaisesRegex(ValueError, "two classes"):
      sampling.TripletSampler(np.zeros(5, int), triplets_per_batch=2, seed=0)


class ViewsSamplerTest(parameterized.TestCase):

  @parameterized.parameters(*WHERE)
  def test_each_image_k_times_labelled_by_its_place(self, where):
    sampler = sampling.ViewsSampler(50, images_per_batch=6, views=3, seed=0)
    batches, labels = draws(sampler, np.zeros(50, np.int32), [4, 4, 5],
                            where)
    indices = batches[0]
    self.assertEqual(len(set(indices.tolist())), 6)
    np.testing.assert_array_equal(indices.reshape(6, 3),
                                  np.repeat(indices[::3, None], 3, axis=1))
    np.testing.assert_array_equal(labels[0], np.repeat(np.arange(6), 3))
    np.testing.assert_array_equal(batches[1], indices)  # (seed, step) only.
    self.assertFalse(np.array_equal(batches[2], indices))
    # Every image equally often.
    counts = np.bincount(draws(sampler, np.zeros(50, np.int32), range(2000),
                               where)[0][:, ::3].ravel(), minlength=50)
    np.testing.assert_allclose(counts / 2000, 6 / 50, atol=0.03)
    with self.assertRaisesRegex(ValueError, "need that many"):
      sampling.ViewsSampler(5, images_per_batch=6, views=3, seed=0)


if __name__ == "__main__":
  absltest.main()
