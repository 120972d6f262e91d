"""An ensemble's embeddings against float64 distances of its members'."""

from absl.testing import absltest
from absl.testing import parameterized
import numpy as np

from tripletjax import ensemble
from tripletjax import retrieval


def _members(rng, n=40, dims=(3, 5, 8)):
  return [rng.normal(size=(n, d)) for d in dims]


def _squared_distances(x):
  x = np.asarray(x, np.float64)
  return ((x[:, None] - x[None]) ** 2).sum(-1)


def _cosines(x):
  x = np.asarray(x, np.float64)
  x = x / np.linalg.norm(x, axis=1, keepdims=True)
  return x @ x.T


class CombineTest(parameterized.TestCase):

  @parameterized.parameters("euclidean", "squared_euclidean")
  def test_squared_distance_is_the_members_mean(self, metric):
    members = _members(np.random.default_rng(0))
    combined = ensemble.combine(members, metric)
    self.assertEqual(combined.shape, (40, 16))
    self.assertEqual(combined.dtype, np.float32)
    np.testing.assert_allclose(
        _squared_distances(combined),
        np.mean([_squared_distances(m) for m in members], axis=0),
        rtol=1e-5, atol=1e-5)

  def test_cosine_is_the_members_mean_and_unit_norm(self):
    members = _members(np.random.default_rng(1))  # Not unit vectors.
    combined = ensemble.combine(members, "cosine")
    np.testing.assert_allclose(np.linalg.norm(combined, axis=1), 1,
                               rtol=1e-6)
    np.testing.assert_allclose(
        np.asarray(combined, np.float64) @ combined.T,
        np.mean([_cosines(m) for m in members], axis=0), atol=1e-6)

  def test_unit_members_make_unit_embeddings(self):
    members = [m / np.linalg.norm(m, axis=1, keepdims=True)
               for m in _members(np.random.default_rng(2))]
    np.testing.assert_allclose(
        np.linalg.norm(ensemble.combine(members, "euclidean"), axis=1), 1,
        rtol=1e-6)

  @parameterized.parameters("euclidean", "cosine")
  def test_a_network_twice_retrieves_as_the_network(self, metric):
    rng = np.random.default_rng(3)
    embeddings = rng.normal(size=(60, 6))
    embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)
    labels = rng.integers(0, 4, size=60)
    queries, references = slice(0, 20), slice(20, 60)

    def metrics(x):
      return retrieval.retrieval_metrics(
          x[queries], labels[queries], x[references], labels[references],
          metric=metric, knn_ks=(1, 3))

    alone = metrics(embeddings)
    twice = metrics(ensemble.combine([embeddings, embeddings], metric))
    self.assertEqual(alone.keys(), twice.keys())
    for name, value in alone.items():
      self.assertAlmostEqual(twice[name], value, places=6, msg=name)

  @parameterized.named_parameters(
      ("no_members", [], "euclidean", "at least one member"),
      ("counts", [np.zeros((3, 2)), np.zeros((4, 2))], "euclidean",
       "different numbers of images: [3, 4]"),
      ("metric", [np.zeros((3, 2))], "manhattan", "metric must be one of"))
  def test_bad_input(self, members, metric, message):
    with self.assertRaisesRegex(ValueError, message.replace("[", r"\[")):
      ensemble.combine(members, metric)


class EnsembleTest(absltest.TestCase):

  def test_embeds_with_every_member_in_order(self):
    images = np.arange(2 * 4 * 4, dtype=np.uint8).reshape(2, 4, 4, 1)
    first = lambda x: x.reshape(len(x), -1)[:, :2].astype(np.float32)
    second = lambda x: -x.reshape(len(x), -1)[:, -3:].astype(np.float32)
    got = ensemble.Ensemble((first, second), "euclidean")(images)
    np.testing.assert_allclose(
        got, np.concatenate([first(images), second(images)], 1) / np.sqrt(2),
        rtol=1e-6)


if __name__ == "__main__":
  absltest.main()
