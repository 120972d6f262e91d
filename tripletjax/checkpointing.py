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
    """The state saved at `step`, with the structure and dtypes of `like`.

    Parts of `like` without arrays need not be in the checkpoint: a run
    saved before the train state had them (batch statistics) resumes.
    """
    return _restore(self.directory, step, like)

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


def saved_steps(directory: str) -> list[int]:
  """The steps of the finalised checkpoints in `directory` (none if there is
  no such directory), ascending."""
  if not os.path.isdir(directory):
    return []
  manager = ocp.CheckpointManager(
      directory, options=ocp.CheckpointManagerOptions(read_only=True))
  try:
    return sorted(manager.all_steps())
  finally:
    manager.close()


def _restore(directory: str, step: int, like: Any) -> Any:
  """Restores the part of checkpoint `step` that `like` describes (as NumPy
  arrays), through Orbax's partial restore."""
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
  args = ocp.args.PyTreeRestore(
      abstract, restore_args=jax.tree.map(
          lambda _: ocp.RestoreArgs(restore_type=np.ndarray), abstract),
      partial_restore=True)
  reader = ocp.CheckpointManager(directory,
                                 item_handlers=ocp.PyTreeCheckpointHandler())
  try:
    return reader.restore(step, args=args)
  finally:
    reader.close()


def restore_entries(directory: str, like: dict[str, Any]
                    ) -> tuple[int, dict[str, Any]]:
  """Entries of the newest readable checkpoint in `directory` alone (the
  network's parameters and batch statistics, none of the optimiser's state),
  with the structure and dtypes of ``like`` (``{entry: tree}``). A
  checkpoint that cannot be read is skipped with a warning (and left where
  it is).

  Returns:
    ``(step, {entry: tree})``.

  Raises:
    FileNotFoundError: `directory` holds no readable checkpoint.
  """
  directory = os.path.abspath(directory)
  steps = ocp.utils.checkpoint_steps(directory) if os.path.isdir(
      directory) else []
  for step in sorted(steps, reverse=True):
    try:
      return step, _restore(directory, step, like)
    except Exception as e:  # Orbax and TensorStore raise many types.
      logging.warning("The checkpoint of step %d in %s cannot be read "
                      "(%s); trying the previous one.", step, directory,
                      type(e).__name__)
  raise FileNotFoundError(f"{directory!r} holds no readable checkpoint.")
