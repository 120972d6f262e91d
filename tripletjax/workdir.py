"""A run's directory: its recorded settings, its input, its trained network.

A workdir holds ``config.json`` (the settings; a relaunch with other
settings is refused unless allowed), ``inputs.json`` (the shape of the
images the network takes, so that the network can be rebuilt without its
training data) and the checkpoints, metrics, results and figures that
`tripletjax.train.train_and_evaluate` writes.
"""

from __future__ import annotations

import dataclasses
import json
import os

from absl import logging
from flax import nnx
import jax
import numpy as np
from PIL import Image

from tripletjax import checkpointing
from tripletjax import config as config_lib
from tripletjax import models
from tripletjax.data import images as images_lib
from tripletjax.evaluation import Embedder

CONFIG_FILE = "config.json"
CHECKPOINTS_DIR = "checkpoints"
INPUTS_FILE = "inputs.json"


def prepare(workdir: str, config: config_lib.Config, *,
            allow_config_change: bool = False) -> None:
  """Creates `workdir` and records `config`; refuses a different one (where
  the data is read from, `config_lib.LOCATION_FIELDS`, aside) if the run has
  a checkpoint to resume.

  Raises:
    ValueError: `workdir` cannot be created or written, or holds a run with
      other settings (listed) and `allow_config_change` is False.
  """
  try:
    os.makedirs(workdir, exist_ok=True)
  except OSError as e:
    raise ValueError(f"workdir {workdir!r} cannot be created: {e}") from None
  if not os.access(workdir, os.W_OK):
    raise ValueError(f"workdir {workdir!r} is not writable.")
  path = os.path.join(workdir, CONFIG_FILE)
  if os.path.exists(path):
    # Settings added since the run was recorded have the values that were
    # in force then.
    with open(path, encoding="utf-8") as f:
      saved = {**json.loads(config_lib.Config().to_json()),
               **config_lib.EARLIER_VALUES, **json.load(f)}
    current = json.loads(config.to_json())
    changed = sorted(k for k in set(saved) | set(current)
                     if saved.get(k) != current.get(k)
                     and k not in config_lib.LOCATION_FIELDS)
    if not changed:
      return
    details = "; ".join(f"{k}: {saved.get(k)!r} -> {current.get(k)!r}"
                        for k in changed)
    if not checkpointing.saved_steps(os.path.join(workdir, CHECKPOINTS_DIR)):
      # A run that stopped before its first checkpoint (its data failed to
      # load, say): nothing to resume, so the corrected settings replace it.
      logging.warning("%s holds settings but no checkpoint: recording the "
                      "new settings (%s).", workdir, details)
    elif not allow_config_change:
      raise ValueError(
          f"workdir {workdir!r} holds a run with different settings "
          f"({details}). Use another workdir, or allow the change "
          "(--allow_config_change) to resume with the new settings.")
    else:
      logging.warning("Resuming %s with changed settings: %s.", workdir,
                      details)
  if jax.process_index() == 0:
    with open(path, "w", encoding="utf-8") as f:
      f.write(config.to_json())


def record_inputs(workdir: str, image_shape: tuple[int, int, int]) -> None:
  """Records the network's input shape ``(H, W, C)`` (process 0 writes)."""
  if jax.process_index() == 0:
    with open(os.path.join(workdir, INPUTS_FILE), "w", encoding="utf-8") as f:
      json.dump({"image_shape": list(image_shape)}, f)


def read_config(workdir: str) -> config_lib.Config:
  """The settings recorded in `workdir`.

  Raises:
    FileNotFoundError: `workdir` holds no run.
  """
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.exists(path):
    raise FileNotFoundError(f"{workdir!r} holds no run (no {CONFIG_FILE}).")
  with open(path, encoding="utf-8") as f:
    return config_lib.Config.from_dict(json.load(f))


def check_image_file(path: str) -> None:
  """Raises FileNotFoundError if there is no file `path`."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f"No image file {path!r}.")


@dataclasses.dataclass(frozen=True)
class TrainedRun:
  """The network of a run's newest checkpoint, ready to embed images.

  Attributes:
    workdir: the run's directory.
    config: its settings.
    step: the step of the checkpoint.
    image_shape: ``(H, W, C)`` of the images the network takes.
    graphdef, params, batch_stats: the network (`nnx.split` of it; the
      moving average of the weights where the run keeps one).
  """
  workdir: str
  config: config_lib.Config
  step: int
  image_shape: tuple[int, int, int]
  graphdef: nnx.GraphDef
  params: nnx.State
  batch_stats: nnx.State

  @property
  def embedder(self) -> Embedder:
    """``uint8 [N, H, W, C]`` host images -> ``[N, D]`` host embeddings."""
    return Embedder(self.graphdef, self.params, self.batch_stats,
                    self.config.eval_batch_size, self.image_shape[0],
                    flip=self.config.test_time_flip,
                    shift=self.config.test_time_shift)

  def read_image(self, path: str, *, invert: bool = False) -> np.ndarray:
    """Image file `path` as the run's images are: photos decoded as the
    cache decodes them (shorter side to the stored size, centre crop; the
    embedder crops the centre to the input), other images resized to the
    network's input. ``uint8 [H, W, C]``; `invert`: 255 minus it.

    Raises:
      FileNotFoundError: no such file.
      ValueError: the file is not an image Pillow reads.
    """
    check_image_file(path)
    height, width, channels = self.image_shape
    try:
      if self.config.is_photo_dataset:
        image = images_lib.decode_file(path, size=self.config.stored_size,
                                       channels=channels)
      else:
        with Image.open(path) as opened:
          image = np.asarray(images_lib.to_mode(opened, channels).resize(
              (width, height), Image.BILINEAR)).reshape(self.image_shape)
    except (OSError, ValueError, SyntaxError) as e:
      raise ValueError(f"Cannot read image file {path!r}: {e}") from None
    return 255 - image if invert else image


def restore(workdir: str) -> TrainedRun:
  """The trained network of `workdir`, without its training data.

  Raises:
    FileNotFoundError: `workdir` holds no run, no record of its input or no
      readable checkpoint.
  """
  config = read_config(workdir)
  path = os.path.join(workdir, INPUTS_FILE)
  if not os.path.exists(path):
    raise FileNotFoundError(
        f"{workdir!r} has no {INPUTS_FILE} (it was trained before runs "
        "recorded their input); relaunch its training command once to "
        "record it.")
  with open(path, encoding="utf-8") as f:
    image_shape = tuple(json.load(f)["image_shape"])
  graphdef, params, batch_stats = nnx.split(models.create(
      config.model, image_shape=image_shape, seed=config.seed,
      **config.model_settings()), nnx.Param, nnx.BatchStat)
  # The moving average of the weights, where the run keeps one.
  entry = "ema_params" if config.ema_decay else "params"
  step, restored = checkpointing.restore_entries(
      os.path.join(workdir, CHECKPOINTS_DIR),
      {entry: params, "batch_stats": batch_stats})
  return TrainedRun(workdir=workdir, config=config, step=step,
                    image_shape=image_shape, graphdef=graphdef,
                    params=restored[entry],
                    batch_stats=restored["batch_stats"])
