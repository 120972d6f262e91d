"""The gallery index: saved and loaded whole, searched exactly, added to only
by the run that built it."""

import dataclasses
import os
import tempfile

from absl.testing import absltest
import numpy as np

from tripletjax import gallery


def make(n, seed=0, step=10, settings=None):
  rng = np.random.default_rng(seed)
  return gallery.Gallery(
      rng.normal(size=(n, 4)).astype(np.float32),
      rng.integers(-1, 3, n).astype(np.int64),
      np.array([f"item{seed}_{i}" for i in range(n)]),
      {"workdir": "runs/a", "step": step, "settings": settings or {"x": 1},
       "metric": "euclidean", "embedding_dim": 4, "class_names": None})


class GalleryTest(absltest.TestCase):

  def test_save_load_round_trip_and_replace(self):
    path = os.path.join(tempfile.mkdtemp(), "index")
    g = make(7)
    gallery.save(g, path)
    loaded = gallery.load(path)
    for name in ("embeddings", "labels", "references"):
      np.testing.assert_array_equal(getattr(loaded, name), getattr(g, name))
    self.assertEqual(loaded.info, g.info)
    bigger = g.add(make(3, seed=1))
    gallery.save(bigger, path)
    self.assertLen(gallery.load(path), 10)
    self.assertEqual(sorted(os.listdir(os.path.dirname(path))), ["index"])

  def test_search_is_exact(self):
    g = make(300)
    queries = np.random.default_rng(5).normal(size=(9, 4)).astype(np.float32)
    d, items = g.search(queries, 6)
    want = np.sqrt(((queries[:, None].astype(float)
                     - g.embeddings[None]) ** 2).sum(-1))
    order = np.argsort(want, axis=1, kind="stable")[:, :6]
    np.testing.assert_array_equal(items, order)
    np.testing.assert_allclose(d, np.take_along_axis(want, order, 1),
                               rtol=1e-4, atol=1e-4)

  def test_faiss_graph_finds_the_exact_neighbours(self):
    """On a small gallery the HNSW graph finds (nearly) every exact
    neighbour, with distances in the metric's terms; it is saved, loaded and
    added to with the items."""
    path = os.path.join(tempfile.mkdtemp(), "index")
    for metric in ("euclidean", "cosine", "squared_euclidean"):
      g = make(400)
      g = dataclasses.replace(g, info={**g.info, "metric": metric})
      built = g.with_approximate()
      g = built.add(make(100, seed=2))
      self.assertEqual(built.approximate.ntotal, 400)  # Left as it was.
      gallery.save(g, path)
      g = gallery.load(path)
      queries = np.random.default_rng(6).normal(size=(50, 4)).astype(
          np.float32)
      exact_d, exact_i = g.search(queries, 10)
      d, items = g.search(queries, 10, backend="faiss")
      recall = np.mean([len(set(a) & set(b)) / 10
                        for a, b in zip(items, exact_i)])
      self.assertGreater(recall, 0.95, metric)
      found = items == exact_i
      np.testing.assert_allclose(d[found], exact_d[found], rtol=1e-4,
                                 atol=1e-5, err_msg=metric)
    with self.assertRaisesRegex(ValueError, "no faiss graph"):
      make(5).search(queries, 2, backend="faiss")

  def test_another_run_is_refused(self):
    with self.assertRaisesRegex(ValueError, "built by step 10"):
      make(3).add(make(2, step=11))
    with self.assertRaisesRegex(ValueError, "other settings"):
      make(3).check_run("runs/b", 10, {"x": 2})
    with self.assertRaisesRegex(ValueError, "not a gallery index"):
      gallery.load(tempfile.mkdtemp())
    with self.assertRaisesRegex(ValueError, r"queries must be \[Q, 4\]"):
      make(3).search(np.zeros((1, 5), np.float32), 2)


if __name__ == "__main__":
  absltest.main()
