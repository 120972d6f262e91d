"""Metric writers and the progress reporter (with a fake clock)."""

import json
import os
import tempfile

from absl.testing import absltest

from tripletjax import writers


class WritersTest(absltest.TestCase):

  def test_jsonl_appends(self):
    path = os.path.join(tempfile.mkdtemp(), "metrics.jsonl")
    for start in (0, 2):
      writer = writers.JsonlWriter(path)
      writer.write_scalars(start + 1, {"loss": 0.5})
      writer.close()
    with open(path) as f:
      self.assertEqual([json.loads(l) for l in f],
                       [{"step": 1, "loss": 0.5}, {"step": 3, "loss": 0.5}])

  def test_progress_reports_rate_and_eta(self):
    now = [0.0]
    lines = []
    reporter = writers.ProgressReporter(
        total_steps=100, every_seconds=10, show=("loss",),
        clock=lambda: now[0], log=lines.append)
    self.assertFalse(reporter(1, {"loss": 1.0}))  # Starts the clock.
    now[0] = 5.0
    self.assertFalse(reporter(11, {"loss": 1.0}))  # Too soon.
    now[0] = 10.0
    self.assertTrue(reporter(21, {"loss": 0.25}))
    self.assertEqual(lines, ["step 21/100  loss 0.25  2.00 steps/s  ETA 0:40"])
    now[0] = 11.0
    self.assertTrue(reporter(100, {"loss": 0.125}))  # The last step reports.


if __name__ == "__main__":
  absltest.main()
