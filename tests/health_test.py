"""Non-finite values, collapse warnings and the stop-on-signal hook."""

import os
import signal

from absl.testing import absltest

from tripletjax import health
from tripletjax import preemption


def metrics(loss, negative=0.5, positive=0.3):
  return {"loss": loss, "grad_norm": 1.0, "num_triplets": 10.0,
          "mean_negative_distance": negative,
          "mean_positive_distance": positive}


class HealthTest(absltest.TestCase):

  def test_check_finite_names_step_and_quantity(self):
    health.check_finite(3, metrics(0.1))
    with self.assertRaisesRegex(FloatingPointError, "Step 7: grad_norm is inf"):
      health.check_finite(7, {**metrics(0.1), "grad_norm": float("inf")})

  def test_stall_at_margin_is_reported_once_per_episode(self):
    warnings = []
    detector = health.CollapseDetector(margin=0.2, patience=5,
                                       warn=warnings.append)
    for step in range(1, 5):
      detector(step, metrics(0.2))
    self.assertEqual(warnings, [])
    for step in range(5, 20):
      detector(step, metrics(0.2005))
    self.assertLen(warnings, 1)
    self.assertIn("Step 5: the loss has been within 1% of the margin (0.2) "
                  "for 5 steps", warnings[0])
    detector(20, metrics(0.1))  # Recovers ...
    for step in range(21, 26):
      detector(step, metrics(0.2))  # ... and stalls again.
    self.assertLen(warnings, 2)

  def test_collapse_of_distances(self):
    warnings = []
    detector = health.CollapseDetector(margin=0.2, warn=warnings.append)
    detector(1, metrics(0.3, negative=0.4))
    detector(2, metrics(0.3, negative=1e-5, positive=1e-5))
    detector(3, metrics(0.3, negative=1e-5, positive=1e-5))
    self.assertLen(warnings, 1)
    self.assertIn("Step 2: embedding collapse", warnings[0])


class StopOnSignalTest(absltest.TestCase):

  def test_sigterm_requests_a_stop_and_handlers_are_restored(self):
    before = signal.getsignal(signal.SIGTERM)
    with preemption.StopOnSignal() as stop:
      self.assertFalse(stop(0))
      os.kill(os.getpid(), signal.SIGTERM)
      self.assertTrue(stop(1))
      self.assertEqual(stop.requested, signal.SIGTERM)
    self.assertIs(signal.getsignal(signal.SIGTERM), before)


if __name__ == "__main__":
  absltest.main()
