"""Where metrics go: JSON lines and TensorBoard; and progress lines.

One small interface (`MetricWriter`) with implementations that compose
(`MultiWriter`), after CLU's metric writers.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
import types
from typing import Callable, Mapping, Protocol, Sequence

from absl import logging

Scalars = Mapping[str, float]


class MetricWriter(Protocol):
  """Writes scalars by step; they reach the files by `flush` (the train
  loop flushes once per compiled call: per step, the writing cost more
  than a small model's step) or `close`."""

  def write_scalars(self, step: int, scalars: Scalars) -> None:
    ...

  def flush(self) -> None:
    ...

  def close(self) -> None:
    ...


class JsonlWriter:
  """Appends ``{"step": ..., <name>: <value>, ...}`` lines to a file.

  A resumed run appends to the same file; steps after the last checkpoint of
  the interrupted run then appear twice, the later line being the resumed
  run's.
  """

  def __init__(self, path: str):
    self._file = open(path, "a", encoding="utf-8")

  def write_scalars(self, step: int, scalars: Scalars) -> None:
    record = {"step": int(step), **{k: float(v) for k, v in scalars.items()}}
    self._file.write(json.dumps(record) + "\n")

  def flush(self) -> None:
    self._file.flush()

  def close(self) -> None:
    self._file.close()


def read_metrics(path: str) -> list[dict[str, float]]:
  """The records of a `JsonlWriter` file, in order (none if it is absent)."""
  if not os.path.exists(path):
    return []
  with open(path, encoding="utf-8") as f:
    return [json.loads(line) for line in f if line.strip()]


class TensorBoardWriter:
  """TensorBoard event files, through TensorBoard's own event writer.

  The scalars are the protos `tf.summary.scalar` writes, without running
  TensorFlow ops: eagerly, those cost milliseconds per step, more than a
  small model's step.
  """

  def __init__(self, logdir: str):
    # TensorBoard writes through TensorFlow's file API when TensorFlow is
    # installed, and importing it costs each process seconds. Its own stub
    # serves local files (all a workdir is); TensorBoard's marker module
    # `tensorboard.compat.notf` selects the stub. Where TensorFlow is loaded
    # already, TensorBoard may as well use it.
    if "tensorflow" not in sys.modules:
      sys.modules.setdefault("tensorboard.compat.notf",
                             types.ModuleType("tensorboard.compat.notf"))
    # pylint: disable=g-import-not-at-top
    from tensorboard.compat.proto import event_pb2
    from tensorboard.compat.proto import summary_pb2
    from tensorboard.compat.proto import tensor_pb2
    from tensorboard.compat.proto import tensor_shape_pb2
    from tensorboard.compat.proto import types_pb2
    from tensorboard.plugins.scalar import metadata
    from tensorboard.summary.writer import event_file_writer
    # pylint: enable=g-import-not-at-top
    self._event, self._value = event_pb2.Event, summary_pb2.Summary.Value
    self._summary = summary_pb2.Summary
    # A float32 scalar tensor and the scalar plugin's metadata, as
    # `tensorboard.plugins.scalar.summary_v2.scalar_pb` makes them.
    scalar_shape = tensor_shape_pb2.TensorShapeProto()
    self._tensor = lambda x: tensor_pb2.TensorProto(
        dtype=types_pb2.DT_FLOAT, tensor_shape=scalar_shape, float_val=[x])
    self._metadata = metadata.create_summary_metadata(display_name=None,
                                                      description=None)
    self._writer = event_file_writer.EventFileWriter(logdir)

  def write_scalars(self, step: int, scalars: Scalars) -> None:
    values = [self._value(tag=name, tensor=self._tensor(float(x)),
                          metadata=self._metadata)
              for name, x in scalars.items()]
    self._writer.add_event(self._event(wall_time=time.time(), step=int(step),
                                       summary=self._summary(value=values)))

  def flush(self) -> None:
    self._writer.flush()

  def close(self) -> None:
    self._writer.close()


class MultiWriter:
  """Writes to several writers."""

  def __init__(self, writers: Sequence[MetricWriter]):
    self._writers = list(writers)

  def write_scalars(self, step: int, scalars: Scalars) -> None:
    for writer in self._writers:
      writer.write_scalars(step, scalars)

  def flush(self) -> None:
    for writer in self._writers:
      writer.flush()

  def close(self) -> None:
    for writer in self._writers:
      writer.close()


def create_default_writer(workdir: str, *, enabled: bool = True
                         ) -> MetricWriter:
  """JSON lines in ``workdir/metrics.jsonl`` and TensorBoard events in
  ``workdir/tensorboard``; nothing when not `enabled` (processes other than
  the first in a multi-host run)."""
  if not enabled:
    return MultiWriter([])
  return MultiWriter([
      JsonlWriter(os.path.join(workdir, "metrics.jsonl")),
      TensorBoardWriter(os.path.join(workdir, "tensorboard")),
  ])


def _format(value: float) -> str:
  value = float(value)
  if value == int(value) and abs(value) < 1e9:
    return str(int(value))
  return f"{value:.4g}"


class ProgressReporter:
  """Logs step, chosen metrics, steps/s and ETA at most every `every_seconds`.

  Call it after every step with that step's metrics (host values); it returns
  whether it reported. The clock is injectable for tests.
  """

  def __init__(self, *, total_steps: int, every_seconds: float,
               show: Sequence[str] = (), clock: Callable[[], float] =
               time.monotonic, log: Callable[[str], None] = logging.info):
    self.total_steps = total_steps
    self.every_seconds = every_seconds
    self.show = tuple(show)
    self._clock, self._log = clock, log
    self._last_time = None
    self._last_step = None

  def __call__(self, step: int, metrics: Scalars) -> bool:
    now = self._clock()
    if self._last_time is None:  # The first step includes compilation.
      self._last_time, self._last_step = now, step
      return False
    if now - self._last_time < self.every_seconds and step < self.total_steps:
      return False
    rate = (step - self._last_step) / max(now - self._last_time, 1e-9)
    eta = (self.total_steps - step) / rate if rate > 0 else math.inf
    shown = "  ".join(f"{name} {_format(metrics[name])}"
                      for name in self.show if name in metrics)
    self._log(f"step {step}/{self.total_steps}  {shown}  "
              f"{rate:.2f} steps/s  ETA {_format_duration(eta)}")
    self._last_time, self._last_step = now, step
    return True


def _format_duration(seconds: float) -> str:
  if not math.isfinite(seconds):
    return "?"
  seconds = int(round(seconds))
  hours, rest = divmod(seconds, 3600)
  minutes, seconds = divmod(rest, 60)
  return f"{hours}:{minutes:02d}:{seconds:02d}" if hours else \
      f"{minutes}:{seconds:02d}"
