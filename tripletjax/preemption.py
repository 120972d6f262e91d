"""Stopping cleanly on a preemption notice (SIGTERM) or Ctrl-C (SIGINT).

    with preemption.StopOnSignal() as stop:
      train.train_and_evaluate(config, workdir, should_stop=stop)

The first signal asks the run to stop: it finishes the step in flight, writes
a checkpoint of the current step and returns. A second SIGINT interrupts at
once, as usual.
"""

from __future__ import annotations

import signal
import types

from absl import logging


class StopOnSignal:
  """A context manager whose instance, called with a step, says whether a
  stop was requested."""

  def __init__(self, signals: tuple[int, ...] = (signal.SIGTERM,
                                                 signal.SIGINT)):
    self._signals = signals
    self._previous: dict[int, object] = {}
    self.requested: int | None = None  # The signal received, if any.

  def _handle(self, signum: int, frame: types.FrameType | None) -> None:
    del frame
    if self.requested is not None and signum == signal.SIGINT:
      raise KeyboardInterrupt
    self.requested = signum
    logging.warning("Received %s: stopping after this step with a checkpoint.",
                    signal.Signals(signum).name)

  def __enter__(self) -> StopOnSignal:
    for signum in self._signals:
      self._previous[signum] = signal.signal(signum, self._handle)
    return self

  def __exit__(self, *exc_info) -> None:
    for signum, handler in self._previous.items():
      signal.signal(signum, handler)

  def __call__(self, step: int) -> bool:
    del step
    return self.requested is not None
