"""Stopping cleanly on a preemption notice (SIGTERM) or Ctrl-C (SIGINT).

    with preemption.StopOnSignal() as stop:
      train.train_and_evaluate(config, workdir, should_stop=stop)

The first signal asks the run to stop: it finishes the call in flight (one
or several steps), writes a checkpoint of the current step and returns. A
second SIGINT interrupts at once, as usual.

With several processes a signal often reaches only one of them (a scheduler
preempting one host), and a process that stopped alone would leave the
others waiting in a collective. There the processes agree on the step to
stop at through JAX's preemption service
(`jax.experimental.multihost_utils.reached_preemption_sync_point`): the
coordination service's notifier catches SIGTERM in whichever process gets
it, and every process stops at the same step, checkpoints it and exits.
The service counts the calls of the instance, not steps: its sync point is
one count past the latest reported, which a run of several steps per call
would step over.
Ctrl-C is passed to that notifier as a SIGTERM of the process itself.
"""

from __future__ import annotations

import os
import signal
import types

from absl import logging
import jax
from jax.experimental import multihost_utils


class StopOnSignal:
  """A context manager whose instance, called with a step, says whether a
  stop was requested; with several processes, whether every process stops
  at this step. Call it before every compiled call, in every process."""

  def __init__(self, signals: tuple[int, ...] = (signal.SIGTERM,
                                                 signal.SIGINT)):
    self._signals = signals
    self._previous: dict[int, object] = {}
    self.requested: int | None = None  # The signal received, if any.
    self._several_processes = False
    self._calls = 0

  def _handle(self, signum: int, frame: types.FrameType | None) -> None:
    del frame
    if self.requested is not None and signum == signal.SIGINT:
      raise KeyboardInterrupt
    self.requested = signum
    logging.warning("Received %s: stopping after this call with a checkpoint.",
                    signal.Signals(signum).name)
    if self._several_processes:
      # The preemption service's notifier owns SIGTERM in this process.
      os.kill(os.getpid(), signal.SIGTERM)

  def __enter__(self) -> StopOnSignal:
    self._several_processes = jax.process_count() > 1
    for signum in self._signals:
      if self._several_processes and signum == signal.SIGTERM:
        continue  # Caught by the preemption service's notifier.
      self._previous[signum] = signal.signal(signum, self._handle)
    return self

  def __exit__(self, *exc_info) -> None:
    for signum, handler in self._previous.items():
      signal.signal(signum, handler)

  def __call__(self, step: int) -> bool:
    del step  # Every process makes the same calls.
    if self._several_processes:
      self._calls += 1
      return multihost_utils.reached_preemption_sync_point(self._calls)
    return self.requested is not None
