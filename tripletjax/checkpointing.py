"""Checkpoints of the train state, through Orbax.

Everything a resumed run needs is the train state: the parameters, the
optimiser state and the step. The batches depend only on (seed, step), so no
sampler state is saved.
"""

from __future__ import annotations

from typing import Any

from absl import logging
import jax
import orbax.checkpoint as ocp


class Checkpointer:
  """Saves every `every` steps (and when forced), keeps the last `keep`."""

  def __init__(self, directory: str, *, every: int, keep: int):
    self.every = every
    self._manager = ocp.CheckpointManager(
        directory, options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True))

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

  def close(self) -> None:
    """Waits for saves in flight to finish."""
    self._manager.wait_until_finished()
    self._manager.close()
