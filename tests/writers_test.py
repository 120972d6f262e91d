"""Metric writers and the progress reporter (with a fake clock)."""

import json
import os
import subprocess
import sys
import tempfile

from absl.testing import absltest

from tripletjax import writers


def _write_events(logdir):
  writer = writers.TensorBoardWriter(logdir)
  writer.write_scalars(1, {"loss": 0.5, "grad_norm": 2.0})
  writer.write_scalars(2, {"loss": 0.25})
  writer.close()


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

  def test_jsonl_lines_reach_the_file_on_flush(self):
    path = os.path.join(tempfile.mkdtemp(), "metrics.jsonl")
    writer = writers.JsonlWriter(path)
    for step in (1, 2):
      writer.write_scalars(step, {"loss": 0.5})
    writer.flush()
    self.assertEqual([json.loads(l)["step"] for l in open(path)], [1, 2])
    writer.close()

  def test_tensorboard_events_hold_the_scalars(self):
    logdir = tempfile.mkdtemp()
    _write_events(logdir)
    self._check_events(logdir)

  def test_tensorboard_events_without_tensorflow(self):
    # A process that has not imported TensorFlow writes through
    # TensorBoard's stub, and must not import TensorFlow to do so.
    logdir = tempfile.mkdtemp()
    script = ("import sys; from tests import writers_test; "
              "writers_test._write_events(sys.argv[1]); "
              "assert 'tensorflow' not in sys.modules, 'tensorflow imported'")
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    run = subprocess.run([sys.executable, "-c", script, logdir], cwd=repo,
                         capture_output=True, text=True, timeout=300,
                         check=False)
    self.assertEqual(run.returncode, 0, run.stderr[-2000:])
    self._check_events(logdir)

  def _check_events(self, logdir):
    # pylint: disable=g-import-not-at-top
    from tensorboard.backend.event_processing import event_file_loader
    from tensorboard.compat.proto import event_pb2
    from tensorboard.plugins.scalar import summary_v2
    from tensorboard.util import tensor_util
    # pylint: enable=g-import-not-at-top
    (name,) = os.listdir(logdir)
    got = [(event.step, value.tag, float(tensor_util.make_ndarray(
        value.tensor)), value.metadata.plugin_data.plugin_name)
           for event in event_file_loader.EventFileLoader(
               os.path.join(logdir, name)).Load()
           for value in event.summary.value]
    self.assertEqual(got, [(1, "loss", 0.5, "scalars"),
                           (1, "grad_norm", 2.0, "scalars"),
                           (2, "loss", 0.25, "scalars")])
    # The very protos of TensorBoard's own scalar summaries.
    events = [event_pb2.Event.FromString(record) for record in
              event_file_loader.RawEventFileLoader(
                  os.path.join(logdir, name)).Load()]
    self.assertEqual(events[1].summary.value[0],
                     summary_v2.scalar_pb("loss", 0.5).value[0])

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
