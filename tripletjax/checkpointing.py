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
import numpy as np
import orbax.checkpoint as ocp


class Checkpointer:
  """Saves train states by step and keeps the last `keep`."""

  def __init__(self, directory: str, *, keep: int):
    self.directory = os.path.abspath(directory)
    self._manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True))

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def save(self, step: int, state: Any) -> None:
    """Saves `state` as step `step` (nothing if that step is saved)."""
    if step in self._manager.all_steps():
      return
    if self._manager.save(step, args=ocp.args.StandardSave(state),
                          force=True):
      logging.info("Saving checkpoint of step %d.", step)

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


def restore_params(directory: str, like: Any) -> tuple[int, Any]:
  """The parameters of the newest readable checkpoint in `directory`.

  Reads the ``params`` entry of a saved train state alone (none of the
  optimiser state), with the structure and dtypes of `like`. A checkpoint
  that cannot be read is skipped with a warning (and left where it is).

  Returns:
    ``(step, params)``.

  Raises:
    FileNotFoundError: `directory` holds no readable checkpoint.
  """
  abstract = {"params": jax.tree.map(ocp.utils.to_shape_dtype_struct, like)}
  args = ocp.args.PyTreeRestore(
      abstract, restore_args=jax.tree.map(
          lambda _: ocp.RestoreArgs(restore_type=np.ndarray), abstract),
      partial_restore=True)
  manager = ocp.CheckpointManager(os.path.abspath(directory),
                                  item_handlers=ocp.PyTreeCheckpointHandler())
  try:
    for step in sorted(manager.all_steps(), reverse=True):
      try:
        return step, manager.restore(step, args=args)["params"]
      except Exception as e:  # Orbax and TensorStore raise many types.
        logging.warning("The checkpoint of step %d in %s cannot be read "
                        "(%s); trying the previous one.", step, directory,
                        type(e).__name__)
  finally:
    manager.close()
  raise FileNotFoundError(f"{directory!r} holds no readable checkpoint.")
