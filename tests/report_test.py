"""Figures of a run: what they show is computed right, and they are written."""

import json
import os

from absl.testing import absltest
import numpy as np
from PIL import Image

from tripletjax import data
from tripletjax import plotting
from tripletjax import report


class ReportTest(absltest.TestCase):

  def test_projection_keeps_the_main_directions(self):
    t = np.linspace(-1, 1, 50)
    points = np.stack([3 * t, t ** 2, np.zeros(50), 0.01 * t], axis=1)
    projected = plotting.project_2d(points)
    self.assertAlmostEqual(abs(np.corrcoef(projected[:, 0], t)[0, 1]), 1.0,
                           places=6)


def test_write_figures(tmp_path):
  rng = np.random.default_rng(0)
  def split(n):
    labels = rng.integers(0, 4, n).astype(np.int32)
    images = rng.integers(0, 255, (n, 8, 8, 1)).astype(np.uint8)
    return data.Split(images=images, labels=labels, num_classes=4)
  train, test = split(60), split(30)
  workdir = str(tmp_path)
  with open(os.path.join(workdir, "metrics.jsonl"), "w") as f:
    for step in range(1, 5):
      f.write(json.dumps({"step": step, "loss": 1 / step,
                          "fraction_active_triplets": 0.5 / step}) + "\n")
    f.write(json.dumps({"step": 4, "test_map_at_r": 0.5}) + "\n")
  embed = lambda x: x.reshape(len(x), -1)[:, :6].astype(np.float32)
  paths = report.write_figures(workdir, embed, train, test,
                               np.arange(16), train.labels[:16],
                               metric="euclidean", rows=4)
  assert sorted(os.path.basename(p) for p in paths) == [
      "embeddings_2d.png", "mined_triplets.png", "retrieval.png",
      "training_curves.png"]
  for path in paths:
    with Image.open(path) as image:
      assert min(image.size) > 100
  # Unseen classes: queries search the other test images.
  unseen = data.Split(images=test.images, labels=test.labels + 10,
                      num_classes=14)
  report.write_figures(workdir, embed, train, unseen, np.arange(16),
                       train.labels[:16], metric="cosine", rows=3)
  # Embeddings computed already (as evaluation has them) are used as they
  # are: the same figures, and nothing embedded again.
  report.write_figures(workdir, embed, train, test, np.arange(16),
                       train.labels[:16], metric="euclidean", rows=4)
  with open(os.path.join(workdir, "figures", "retrieval.png"), "rb") as f:
    embedded = f.read()
  def refuse(images):
    raise AssertionError(f"embedded {len(images)} images again")
  report.write_figures(workdir, refuse, train, test, np.arange(16),
                       train.labels[:16], metric="euclidean", rows=4,
                       train_embeddings=embed(train.images),
                       test_embeddings=embed(test.images))
  with open(os.path.join(workdir, "figures", "retrieval.png"), "rb") as f:
    assert f.read() == embedded


if __name__ == "__main__":
  absltest.main()
