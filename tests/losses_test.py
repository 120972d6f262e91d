"""Triplet losses against brute-force enumeration of every triplet."""

import functools

from absl.testing import absltest
from absl.testing import parameterized
import jax
import jax.test_util
import jax.numpy as jnp
import numpy as np
import optax

from tests import reference
from tripletjax import losses

METRICS = ("euclidean", "squared_euclidean", "cosine")

REFERENCES = {
    "batch_all": reference.batch_all,
    "batch_hard": reference.batch_hard,
    "batch_hard_soft": functools.partial(reference.batch_hard, soft=True),
    "semihard": reference.semihard,
    "easy_positive_semihard": reference.easy_hard,
}
# The easy/semi-hard/hard miner's strategy pairs (not both semi-hard).
STRATEGY_PAIRS = tuple((p, n) for p in losses.STRATEGIES
                       for n in losses.STRATEGIES
                       if (p, n) != ("semihard", "semihard"))
SORTING_LOSSES = ("batch_all", "semihard")


@functools.cache
def jitted_loss(name, sort_implementation=None):
  """One compiled loss per (name, sort); the margin is traced, not static."""
  loss_fn = losses.MINING_LOSSES[name]
  if sort_implementation:
    loss_fn = functools.partial(loss_fn,
                                sort_implementation=sort_implementation)
  return jax.jit(loss_fn, static_argnames="metric")


def random_batch(seed, *, batch, dim, classes, duplicates=0, padding=0,
                 integer=False):
  """Embeddings and labels; `duplicates` rows copy another row and its label;
  `integer` embeddings make distances tie, and triplets sit exactly at
  integer margins."""
  rng = np.random.default_rng(seed)
  x = (rng.integers(-2, 3, size=(batch, dim)) if integer else
       rng.normal(size=(batch, dim))).astype(np.float32)
  labels = rng.integers(0, classes, size=batch).astype(np.int32)
  for _ in range(duplicates):
    src, dst = rng.choice(batch, size=2, replace=False)
    x[dst], labels[dst] = x[src], labels[src]
  labels[rng.choice(batch, size=padding, replace=False)] = -1
  return x, labels


# Batches that cover the edge cases of mining: (name, kwargs of random_batch).
CASES = (
    ("few_classes", dict(batch=12, dim=4, classes=3)),
    ("many_classes", dict(batch=16, dim=8, classes=7)),
    ("single_class", dict(batch=8, dim=3, classes=1)),
    ("all_distinct", dict(batch=6, dim=3, classes=1000)),
    ("duplicates", dict(batch=14, dim=4, classes=3, duplicates=5)),
    ("exact_ties", dict(batch=12, dim=2, classes=3, integer=True)),
    ("padding", dict(batch=15, dim=5, classes=4, padding=4)),
    ("all_padding", dict(batch=5, dim=2, classes=2, padding=5)),
)
# Every case in the Euclidean metric; in the others, whose distances are
# distances_test's, the cases of ties, duplicates and padding (each case
# compiles anew). Not exact ties in the cosine metric: cosine distances of
# integer vectors tie in exact arithmetic only, not in float32 nor float64.
BRUTE_FORCE_CASES = tuple(
    dict(name=name, metric=metric, case=case)
    for name in REFERENCES for metric in METRICS for case in CASES
    if metric == "euclidean" or case[0] in ("few_classes", "duplicates",
                                            "padding")
    or (case[0] == "exact_ties" and metric == "squared_euclidean"))


def padded_batch(seed, case, batch=16, dim=8):
  """`random_batch(seed, **case[1])` and the same embeddings in a `[batch,
  dim]` batch: zero columns appended (no distance changes) and padding rows
  (label -1, random embeddings) after the case's rows, so that every case
  runs through one compiled program."""
  x, labels = random_batch(seed, **case[1])
  rng = np.random.default_rng(seed + 100)
  padded = rng.normal(size=(batch, dim)).astype(np.float32)
  padded[:len(x)] = np.pad(x, ((0, 0), (0, dim - x.shape[1])))
  return x, labels, padded, np.pad(labels, (0, batch - len(labels)),
                                   constant_values=-1)


class MiningLossTest(parameterized.TestCase):

  def _check_against_reference(self, name, x, labels, margin, metric,
                               dist_ref):
    loss, metrics = jitted_loss(name)(x, labels, margin=margin, metric=metric)
    want, num_triplets, num_active = REFERENCES[name](dist_ref, labels, margin)
    np.testing.assert_allclose(loss, want, rtol=2e-4, atol=2e-5)
    self.assertEqual(int(metrics["num_triplets"]), num_triplets)
    self.assertEqual(int(metrics["num_active_triplets"]), num_active)
    np.testing.assert_allclose(metrics["fraction_active_triplets"],
                               num_active / num_triplets if num_triplets else 0,
                               rtol=1e-6)
    for key, value in reference.pair_statistics(dist_ref, labels, x).items():
      np.testing.assert_allclose(metrics[key], value, rtol=2e-4, atol=2e-5,
                                 err_msg=key)
    self.assertEqual(set(metrics), set(losses.BATCH_METRICS))

  @parameterized.parameters(*BRUTE_FORCE_CASES)
  def test_matches_brute_force(self, name, metric, case):
    for seed in range(3):
      x, labels = random_batch(seed, **case[1])
      dist = reference.pairwise_distances(x, metric)
      for margin in (0.0, 0.2, 1.0):
        with self.subTest(seed=seed, margin=margin):
          self._check_against_reference(name, x, labels, margin, metric, dist)

  @parameterized.parameters(*SORTING_LOSSES)
  def test_both_sorts_give_the_same_numbers(self, name):
    """In every case (padded to one shape: each sort compiles once, and
    sorts what it is given whatever the metric)."""
    for case in CASES:
      for seed in range(3):
        _, _, x, labels = padded_batch(seed, case)
        for margin in (0.0, 0.2, 1.0):
          loss, _ = jitted_loss(name)(x, labels, margin=margin,
                                      metric="euclidean")
          for implementation in ("numpy", "xla"):
            other, _ = jitted_loss(name, implementation)(
                x, labels, margin=margin, metric="euclidean")
            np.testing.assert_array_equal(
                other, loss, err_msg=f"{implementation} {case[0]} {seed}")

  @parameterized.product(name=tuple(REFERENCES), metric=METRICS)
  def test_duplicated_images_against_float64(self, name, metric):
    """Duplicated and near-duplicated rows of norm about 3, as a batch of
    real images with repeats gives them: the losses match float64
    enumeration to float32 rounding, and a duplicate filed under another
    class is a negative at distance exactly 0."""
    rng = np.random.default_rng(5)
    x = rng.normal(size=(24, 64)).astype(np.float32)
    x *= (2.76 / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    labels = np.repeat(np.arange(6), 4).astype(np.int32)
    x[1] = x[0]  # The same image twice in its class,
    x[9] = x[4]  # and once under another class.
    x[13] = x[12] + np.float32(1e-4) * rng.normal(size=64).astype(np.float32)
    for margin in (0.2, 1.0):
      loss, metrics = jitted_loss(name)(x, labels, margin=margin,
                                        metric=metric)
      want, _, num_active = REFERENCES[name](
          reference.pairwise_distances(x, metric), labels, margin)
      np.testing.assert_allclose(loss, want, rtol=1e-5)
      self.assertEqual(int(metrics["num_active_triplets"]), num_active)
      self.assertEqual(float(metrics["hardest_negative_distance"]), 0.0)

  @parameterized.parameters(*REFERENCES)
  def test_hand_computed_values(self, name):
    # 1-D points: class 0 at 0 and 1, class 1 at 1.5 and 3; margin 1.
    x = jnp.array([[0.0], [1.0], [1.5], [3.0]])
    labels = jnp.array([0, 0, 1, 1])
    want = {
        # Triplets (a,p,n): (0,1,2) 0.5, (0,1,3) 0, (1,0,2) 1.5, (1,0,3) 0,
        # (2,3,0) 1, (2,3,1) 2, (3,2,0) 0, (3,2,1) 0.5: mean of 5 active.
        "batch_all": (0.5 + 1.5 + 1.0 + 2.0 + 0.5) / 5,
        # Anchors: 0 -> 1 - 1.5 + 1; 1 -> 1 - 0.5 + 1; 2 -> 1.5 - 0.5 + 1;
        # 3 -> 1.5 - 2 + 1.
        "batch_hard": (0.5 + 1.5 + 2.0 + 0.5) / 4,
        "batch_hard_soft": np.mean(np.logaddexp(0, [0.5, 1.5, 2.0, 0.5])),
        # Pairs: (0,1) n=1.5 -> 0.5; (1,0) n=1.5 -> 0; (2,3) none farther
        # than 1.5, farthest n=0 at 1.5 -> 1; (3,2) n=1 at 2 -> 0.5.
        "semihard": (0.5 + 0.0 + 1.0 + 0.5) / 4,
        # Anchors' closest positive and the closest negative beyond it:
        # 0 -> 1 - 1.5 + 1; 1 -> 1 - 2 + 1; 2 (at 1.5 from its positive) has
        # no negative beyond 1.5; 3 -> 1.5 - 2 + 1. Mean over 3 anchors.
        "easy_positive_semihard": (0.5 + 0.0 + 0.5) / 3,
    }[name]
    loss, _ = losses.MINING_LOSSES[name](x, labels, margin=1.0)
    np.testing.assert_allclose(loss, want, rtol=1e-6)

  @parameterized.parameters(*STRATEGY_PAIRS)
  def test_easy_hard_strategies_match_brute_force(self, positive, negative):
    """Every strategy pair in the Euclidean metric (the metrics' handling is
    shared with every miner, and tested through easy_positive_semihard in
    `test_matches_brute_force`), every case padded to one shape (one
    compilation per pair; the cases' own shapes are
    `test_matches_brute_force`'s)."""
    metric = "euclidean"
    loss_fn = jax.jit(functools.partial(
        losses.batch_easy_hard_triplet_loss, positive=positive,
        negative=negative, metric=metric))
    for case in CASES:
      for seed in range(2):
        x, labels, padded, padded_labels = padded_batch(seed, case)
        dist = reference.pairwise_distances(x, metric)
        for margin in (0.0, 0.5):
          with self.subTest(case=case[0], seed=seed, margin=margin):
            loss, metrics = loss_fn(padded, padded_labels, margin=margin)
            want, num_anchors, num_active = reference.easy_hard(
                dist, labels, margin, positive, negative)
            np.testing.assert_allclose(loss, want, rtol=2e-4, atol=2e-5)
            self.assertEqual(int(metrics["num_triplets"]), num_anchors)
            self.assertEqual(int(metrics["num_active_triplets"]),
                             num_active)

  def test_easy_hard_hard_is_batch_hard_and_bad_strategies_are_refused(self):
    x, labels = random_batch(7, batch=16, dim=4, classes=4, padding=2)
    hard, _ = losses.batch_easy_hard_triplet_loss(
        x, labels, margin=0.3, positive="hard", negative="hard")
    np.testing.assert_allclose(
        hard, losses.batch_hard_triplet_loss(x, labels, margin=0.3)[0],
        rtol=1e-6)
    with self.assertRaisesRegex(ValueError, "cannot both be 'semihard'"):
      losses.batch_easy_hard_triplet_loss(x, labels, margin=0.3,
                                          positive="semihard")
    with self.assertRaisesRegex(ValueError, "positive must be one of"):
      losses.batch_easy_hard_triplet_loss(x, labels, margin=0.3,
                                          positive="medium")

  @parameterized.product(name=tuple(REFERENCES), metric=METRICS)
  def test_invariant_to_batch_permutation(self, name, metric):
    x, labels = random_batch(3, batch=20, dim=6, classes=4, padding=2)
    perm = np.random.default_rng(0).permutation(len(labels))
    loss_fn = jax.jit(functools.partial(losses.MINING_LOSSES[name],
                                          margin=0.3, metric=metric))
    loss, metrics = loss_fn(x, labels)
    loss_perm, metrics_perm = loss_fn(x[perm], labels[perm])
    np.testing.assert_allclose(loss_perm, loss, rtol=1e-5)
    for key in metrics:
      np.testing.assert_allclose(metrics_perm[key], metrics[key], rtol=1e-5,
                                 err_msg=key)

  @parameterized.product(name=tuple(REFERENCES), metric=METRICS)
  def test_gradients_match_finite_differences(self, name, metric):
    x, labels = random_batch(4, batch=10, dim=3, classes=3)
    with jax.enable_x64(True):
      loss_fn = functools.partial(losses.MINING_LOSSES[name], margin=0.5,
                                  metric=metric)
      jax.test_util.check_grads(lambda e: loss_fn(e, labels)[0],
                                (x.astype(np.float64),), order=1,
                                modes=("rev",), eps=1e-5, atol=1e-5, rtol=1e-4)

  @parameterized.product(name=tuple(REFERENCES), metric=METRICS)
  def test_finite_gradients_when_embeddings_coincide(self, name, metric):
    labels = jnp.array([0, 0, 1, 1, 2, 2, 0, 1])
    grad_fn = jax.jit(jax.grad(lambda e: losses.MINING_LOSSES[name](
        e, labels, margin=0.2, metric=metric)[0]))
    for value in (0.0, 1.0):
      grad = grad_fn(jnp.full((8, 4), value))
      self.assertTrue(np.all(np.isfinite(grad)), value)

  @parameterized.parameters(*REFERENCES)
  def test_no_valid_triplet_gives_zero_loss_and_gradient(self, name):
    x = jnp.asarray(np.random.default_rng(0).normal(size=(4, 3)), jnp.float32)
    loss_and_grad = jax.jit(jax.value_and_grad(
        lambda e, y: losses.MINING_LOSSES[name](e, y, margin=0.2),
        has_aux=True))
    for labels in ((0, 0, 0, 0), (0, 1, 2, 3), (-1, -1, -1, -1),
                   (0, -1, 1, -1)):
      with self.subTest(labels=labels):
        (loss, metrics), grad = loss_and_grad(x, jnp.array(labels))
        self.assertEqual(float(loss), 0.0)
        self.assertEqual(float(metrics["num_triplets"]), 0.0)
        np.testing.assert_array_equal(grad, np.zeros_like(grad))
        for key, value in metrics.items():
          self.assertTrue(np.isfinite(value), key)

  @parameterized.parameters(*REFERENCES)
  def test_vmap_over_batches_equals_each_batch(self, name):
    batches = [random_batch(s, batch=12, dim=4, classes=3) for s in range(3)]
    xs = np.stack([b[0] for b in batches])
    ys = np.stack([b[1] for b in batches])
    loss_fn = functools.partial(losses.MINING_LOSSES[name], margin=0.2)
    vmapped, _ = jax.jit(jax.vmap(loss_fn))(xs, ys)
    for i, (x, y) in enumerate(batches):
      np.testing.assert_allclose(vmapped[i], jax.jit(loss_fn)(x, y)[0],
                                 rtol=1e-6)

  def test_batch_all_builds_no_cubic_tensor(self):
    b = 64
    x, labels = random_batch(0, batch=b, dim=4, classes=8)
    jaxpr = jax.make_jaxpr(jax.grad(lambda e: losses.batch_all_triplet_loss(
        e, labels, margin=0.2)[0]))(x)
    sizes = [np.prod(v.aval.shape) for eqn in jaxpr.eqns for v in eqn.outvars]
    self.assertLess(max(sizes), b * b * 4)


class HardestTripletsTest(absltest.TestCase):

  def test_hardest_triplets_by_brute_force(self):
    rng = np.random.default_rng(0)
    embeddings = rng.normal(size=(12, 3)).astype(np.float32)
    labels = np.array([0, 0, 1, 1, 1, 2, 2, 0, 3, -1, 1, 2])
    positive, negative, d_ap, d_an, anchors = (
        np.asarray(v) for v in losses.hardest_triplets(
            embeddings, labels, metric="euclidean"))
    dist = reference.pairwise_distances(embeddings, "euclidean")
    # Class 3 has no positive; the padding row (-1) is no anchor.
    np.testing.assert_array_equal(np.flatnonzero(anchors),
                                  [0, 1, 2, 3, 4, 5, 6, 7, 10, 11])
    for a in np.flatnonzero(anchors):
      positives = [j for j in range(12) if j != a and labels[j] == labels[a]]
      negatives = [j for j in range(12)
                   if labels[j] >= 0 and labels[j] != labels[a]]
      self.assertEqual(positive[a], max(positives, key=lambda j: dist[a, j]))
      self.assertEqual(negative[a], min(negatives, key=lambda j: dist[a, j]))
      self.assertAlmostEqual(d_ap[a], dist[a, positive[a]], places=5)
      self.assertAlmostEqual(d_an[a], dist[a, negative[a]], places=5)


class BadInputTest(parameterized.TestCase):

  @parameterized.parameters(*REFERENCES)
  def test_errors_name_the_argument(self, name):
    loss_fn = losses.MINING_LOSSES[name]
    x = jnp.zeros((4, 2))
    labels = jnp.array([0, 0, 1, 1])
    cases = (
        (dict(embeddings=jnp.zeros((4,)), labels=labels, margin=0.2),
         "embeddings"),
        (dict(embeddings=jnp.zeros((2, 2, 2)), labels=labels[:2], margin=0.2),
         "embeddings"),
        (dict(embeddings=x, labels=labels[:3], margin=0.2), "labels"),
        (dict(embeddings=x, labels=labels[:, None], margin=0.2), "labels"),
        (dict(embeddings=x, labels=labels.astype(jnp.float32), margin=0.2),
         "labels"),
        (dict(embeddings=x, labels=labels, margin=-0.1), "margin"),
        (dict(embeddings=x, labels=labels, margin=float("nan")), "margin"),
        (dict(embeddings=x, labels=labels, margin=0.2, metric="manhattan"),
         "metric"),
    )
    for kwargs, argument in cases:
      with self.assertRaisesRegex(ValueError, argument):
        loss_fn(**kwargs)


class TripletMarginLossTest(parameterized.TestCase):

  @parameterized.product(metric=METRICS, margin=(0.0, 0.5))
  def test_matches_enumeration(self, metric, margin):
    rng = np.random.default_rng(0)
    a, p, n = (rng.normal(size=(9, 5)).astype(np.float32) for _ in range(3))
    loss, metrics = jax.jit(functools.partial(
        losses.triplet_margin_loss, margin=margin, metric=metric))(a, p, n)
    d_ap = [reference.pairwise_distances(np.stack([a[i], p[i]]), metric)[0, 1]
            for i in range(9)]
    d_an = [reference.pairwise_distances(np.stack([a[i], n[i]]), metric)[0, 1]
            for i in range(9)]
    per = np.maximum(np.array(d_ap) - np.array(d_an) + margin, 0)
    np.testing.assert_allclose(loss, per.mean(), rtol=1e-5)
    self.assertEqual(int(metrics["num_active_triplets"]), int((per > 0).sum()))
    np.testing.assert_allclose(metrics["hardest_positive_distance"],
                               max(d_ap), rtol=1e-5)
    np.testing.assert_allclose(metrics["hardest_negative_distance"],
                               min(d_an), rtol=1e-5)

  def test_matches_optax(self):
    rng = np.random.default_rng(1)
    a, p, n = (rng.normal(size=(16, 8)).astype(np.float32) for _ in range(3))
    loss, _ = losses.triplet_margin_loss(a, p, n, margin=1.0)
    want = optax.losses.triplet_margin_loss(a, p, n, margin=1.0, eps=0.0)
    np.testing.assert_allclose(loss, jnp.mean(want), rtol=1e-5)

  def test_finite_gradient_for_identical_rows(self):
    x = jnp.ones((3, 4))
    grad = jax.grad(lambda e: losses.triplet_margin_loss(
        e, e, e, margin=0.5)[0])(x)
    self.assertTrue(np.all(np.isfinite(grad)))

  def test_errors(self):
    x = jnp.zeros((3, 2))
    with self.assertRaisesRegex(ValueError, "shape"):
      losses.triplet_margin_loss(x, x[:2], x, margin=0.1)
    with self.assertRaisesRegex(ValueError, "margin"):
      losses.triplet_margin_loss(x, x, x, margin=-1.0)
    with self.assertRaisesRegex(ValueError, "metric"):
      losses.triplet_margin_loss(x, x, x, margin=0.1, metric="l1")
    with self.assertRaisesRegex(ValueError, "at least one"):
      losses.triplet_margin_loss(x[:0], x[:0], x[:0], margin=0.1)


class DistanceWeightedTest(parameterized.TestCase):
  """Distance-weighted sampling: the draw's distribution against the
  formula, the loss exactly given the drawn negatives."""

  def unit_batch(self, seed=0, batch=12, dim=8, classes=3):
    x, labels = random_batch(seed, batch=batch, dim=dim, classes=classes)
    return x / np.linalg.norm(x, axis=1, keepdims=True), labels

  def test_draws_follow_the_inverse_distance_density(self):
    x, labels = self.unit_batch()
    dim, a = x.shape[1], 0
    # Two negatives near the anchor, at about 0.2 and 0.4: below the cutoff.
    rng = np.random.default_rng(3)
    for row, scale in zip(np.flatnonzero(labels != labels[a])[:2], (0.07, 0.14)):
      near = x[a] + scale * rng.normal(size=dim).astype(np.float32)
      x[row] = near / np.linalg.norm(near)
    p = int(np.flatnonzero((labels == labels[a]) & (np.arange(12) != a))[0])
    # The formula in float64: weight ~ 1 / q(max(d, 0.5)) for negatives
    # closer than 1.4, q(d) = d^(D-2) (1 - d^2/4)^((D-3)/2).
    d = np.linalg.norm(x[a].astype(float) - x, axis=1)
    c = np.maximum(d, 0.5)
    weights = np.where((labels != labels[a]) & (d < 1.4),
                       c ** (2.0 - dim) * (1 - c * c / 4) ** (-(dim - 3) / 2),
                       0.0)
    want = weights / weights.sum()
    draw = jax.jit(lambda k: losses.distance_weighted_negatives(
        x, labels, k)[0][a, p])
    n = 4000
    counts = np.bincount([int(draw(jax.random.key(i))) for i in range(n)],
                         minlength=12)
    self.assertEqual(counts[want == 0].sum(), 0)
    # Every frequency within 4.5 standard deviations of its probability.
    sd = np.sqrt(want * (1 - want) / n)
    np.testing.assert_array_less(np.abs(counts / n - want), 4.5 * sd + 1e-9)
    # And a chi-square statistic below its 0.999 quantile (df <= 8: 26.1).
    seen = want > 0
    chi2 = np.sum((counts[seen] - n * want[seen]) ** 2 / (n * want[seen]))
    self.assertLess(chi2, 26.1)

  @parameterized.parameters(*METRICS)
  def test_loss_is_exact_given_the_draws(self, metric):
    x, labels = self.unit_batch(seed=1, batch=16, classes=4)
    labels[[2, 9]] = -1  # Padding.
    key = jax.random.key(7)
    negative, drawn = losses.distance_weighted_negatives(x, labels, key,
                                                         metric=metric)
    loss, metrics = losses.distance_weighted_triplet_loss(
        x, labels, key, margin=0.2, metric=metric)
    dist = reference.pairwise_distances(x, metric)
    values = [max(dist[a, p] - dist[a, negative[a, p]] + 0.2, 0.0)
              for a in range(16) for p in range(16)
              if a != p and labels[a] >= 0 and labels[a] == labels[p]
              and drawn[a]]
    for a in range(16):  # Drawn negatives are negatives.
      for p in range(16):
        if labels[a] >= 0 and labels[a] == labels[p] and a != p and drawn[a]:
          self.assertNotEqual(labels[negative[a, p]], labels[a])
          self.assertGreaterEqual(labels[negative[a, p]], 0)
    np.testing.assert_allclose(loss, np.mean(values), rtol=1e-5)
    self.assertEqual(int(metrics["num_triplets"]), len(values))
    self.assertEqual(int(metrics["num_active_triplets"]),
                     sum(v > 0 for v in values))

  def test_no_negative_to_draw_gives_zero_loss_and_gradient(self):
    x, _ = self.unit_batch(batch=4)
    for labels in ((0, 0, 0, 0), (0, 1, 2, 3), (-1, -1, -1, -1)):
      (loss, metrics), grad = jax.value_and_grad(
          lambda e: losses.distance_weighted_triplet_loss(
              e, jnp.array(labels), jax.random.key(0), margin=0.2),
          has_aux=True)(jnp.asarray(x))
      self.assertEqual(float(loss), 0.0)
      self.assertEqual(float(metrics["num_triplets"]), 0.0)
      np.testing.assert_array_equal(grad, np.zeros_like(grad))


if __name__ == "__main__":
  absltest.main()
