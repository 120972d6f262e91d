"""Checkpoints of the train state, through Orbax.

Everything a resumed run needs is the train state: the parameters, the
optimiser state and the step. The batches depend only on (seed, step), so no
sampler state is saved.

Orbax writes each checkpoint to a temporary directory and renames it when
complete, so a run killed mid-save leaves no half checkpoint behind. A
finalised checkpoint that cannot be read (a truncated file) is moved aside to
``<directory>.damaged/`` and the previous one is used; an intact checkpoint is
never deleted except by the keep-the-last-N rule.
"""

from __future__ import annotations

import os
import shutil
from typing import Any

from absl import logging
import jax
import orbax.checkpoint as ocp


class Checkpointer:
  """Saves every `every` steps (and when forced), keeps the last `keep`."""

  def __init__(self, directory: str, *, every: int, keep: int):
    self.every = every
    self.directory = os.path.abspath(directory)
    self._manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True))

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def maybe_save(self, step: int, state: Any, *, force: bool = False) -> bool:
    """Saves `state` as step `step` when due (or `force`); returns if it did."""
    if not force and not (self.every and step % self.every == 0):
      return False
    if step in self._manager.all_steps():
      return False
    saved = self._manager.save(step, args=ocp.args.StandardSave(state),
                               force=True)
    if saved:
      logging.info("Saving checkpoint of step %d.", step)
    return saved

  def restore(self, step: int, like: Any) -> Any:
    """The state saved at `step`, with the structure and dtypes of `like`."""
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
    return self._manager.restore(step, args=ocp.args.StandardRestore(abstract))

  def restore_latest(self, like: Any) -> tuple[int, Any] | None:
    """The newest checkpoint that can be read, as ``(step, state)``.

    Checkpoints that fail to restore are moved to ``<directory>.damaged/``
    with a warning, and the next older one is tried. Returns None when there
    is no readable checkpoint.
    """
    for step in sorted(self._manager.all_steps(), reverse=True):
      try:
        return step, self.restore(step, like)
      except Exception as e:  # Orbax and TensorStore raise many types.
        self._set_aside(step, e)
    return None

  def _set_aside(self, step: int, error: Exception) -> None:
    quarantine = self.directory + ".damaged"
    os.makedirs(quarantine, exist_ok=True)
    target = os.path.join(quarantine, str(step))
    if os.path.exists(target):
      target += f".{len(os.listdir(quarantine))}"
    shutil.move(os.path.join(self.directory, str(step)), target)
    self._manager.reload()
    logging.warning(
        "The checkpoint of step %d cannot be read (%s: %s); moved it to %s "
        "and falling back to the previous one.", step, type(error).__name__,
        str(error).splitlines()[0][:200] if str(error) else "", target)

  def close(self) -> None:
    """Waits for saves in flight to finish."""
    self._manager.wait_until_finished()
    self._manager.close()
