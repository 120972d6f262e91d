"""The configuration of a training run, and its validation.

The library takes a `Config`, never flags: `experiments/` scripts map their
flags onto one. `validate` checks every value before any data is loaded or
anything compiled, and raises a `ValueError` whose message names the setting.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

from tripletjax import distances
from tripletjax import losses
from tripletjax import models
from tripletjax import parallel

RANDOM_TRIPLETS = "random_triplets"
TUPLE_FIELDS = ("widths", "train_classes", "knn_ks", "few_shot_shots")
LOSS_NAMES = (*losses.MINING_LOSSES, RANDOM_TRIPLETS)


@dataclasses.dataclass(frozen=True)
class Config:
  """Everything that defines a training run.

  The defaults are the main job: a small CNN trained with batch-all mining on
  MNIST, evaluated by 1-NN accuracy of the test split against the train split.
  """
  # Data.
  dataset: str = "mnist"
  train_split: str = "train"
  test_split: str = "test"
  data_dir: str | None = None  # Where tensorflow-datasets keeps prepared data.
  manual_dir: str | None = None  # Original download files, for offline use.
  image_size: int = 0  # Resize images to image_size^2 (0: keep their size).
  train_classes: tuple[int, ...] = ()  # Train on these only (empty: all).
  # Model.
  model: str = "cnn"
  embedding_dim: int = 64
  widths: tuple[int, ...] = (32, 64)  # CNN: conv widths; MLP: hidden widths.
  hidden_dim: int = 256  # CNN: width of the dense layer before the embedding.
  normalize_embeddings: bool = True
  # Loss and mining.
  loss: str = "batch_all"
  margin: float = 0.5
  metric: str = "euclidean"
  classes_per_batch: int = 10  # P.
  examples_per_class: int = 25  # K.
  triplets_per_batch: int = 85  # Batch of the random_triplets loss.
  # Optimisation.
  steps: int = 3000
  learning_rate: float = 1e-3
  warmup_steps: int = 100
  weight_decay: float = 0.0
  augment_shift: int = 2  # Random translation of training images, pixels.
  augment_rotation: float = 0.0  # Random rotation, up to this many degrees.
  augment_scale: float = 0.0  # Random scaling by 1 +- up to this fraction.
  seed: int = 0
  # Devices.
  parallelism: str = "jit"  # "jit" over a device mesh, or "pmap".
  mining_scope: str = "global"  # Mine the global batch, or each device's.
  # Evaluation, checkpoints, logging.
  eval_every: int = 1000
  eval_batch_size: int = 1024
  knn_ks: tuple[int, ...] = (1, 5)  # k of the k-NN accuracies reported.
  few_shot_ways: int = 5  # Episodes on classes never trained on.
  few_shot_shots: tuple[int, ...] = (1, 5)
  few_shot_episodes: int = 1000
  write_figures: bool = True  # PNG figures in workdir/figures at the end.
  checkpoint_every: int = 500
  keep_checkpoints: int = 3
  log_every_seconds: float = 10.0

  @property
  def batch_size(self) -> int:
    """Images per training step."""
    if self.loss == RANDOM_TRIPLETS:
      return 3 * self.triplets_per_batch
    return self.classes_per_batch * self.examples_per_class

  def replace(self, **changes: Any) -> Config:
    return dataclasses.replace(self, **changes)

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)

  @classmethod
  def from_dict(cls, values: dict[str, Any]) -> Config:
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
      raise ValueError(f"Unknown config settings: {', '.join(unknown)}.")
    values = dict(values)
    for name in TUPLE_FIELDS:
      if name in values:
        values[name] = tuple(values[name])
    return cls(**values)

  def to_json(self) -> str:
    return json.dumps(self.to_dict(), indent=2, sort_keys=True)


def _require(condition: bool, message: str) -> None:
  if not condition:
    raise ValueError(message)


def validate(config: Config) -> Config:
  """Checks every setting; returns `config` or raises a `ValueError`.

  Dataset-dependent checks (P against the number of classes) happen when the
  data is loaded, in `tripletjax.sampling`.
  """
  c = config
  _require(c.loss in LOSS_NAMES,
           f"loss must be one of {LOSS_NAMES}, got {c.loss!r}.")
  _require(c.metric in distances.METRICS,
           f"metric must be one of {distances.METRICS}, got {c.metric!r}.")
  _require(c.parallelism in parallel.PARALLELISMS,
           f"parallelism must be one of {parallel.PARALLELISMS}, got "
           f"{c.parallelism!r}.")
  _require(c.mining_scope in parallel.MINING_SCOPES,
           f"mining_scope must be one of {parallel.MINING_SCOPES}, got "
           f"{c.mining_scope!r}.")
  _require(c.model in models.MODELS,
           f"model must be one of {tuple(models.MODELS)}, got {c.model!r}.")
  _require(isinstance(c.dataset, str) and c.dataset,
           "dataset must be a tensorflow-datasets name, got "
           f"{c.dataset!r}.")
  for name in ("embedding_dim", "hidden_dim", "classes_per_batch",
               "triplets_per_batch", "steps", "eval_batch_size",
               "keep_checkpoints", "few_shot_ways", "few_shot_episodes"):
    value = getattr(c, name)
    _require(isinstance(value, int) and value > 0,
             f"{name} must be a positive integer, got {value!r}.")
  _require(c.classes_per_batch >= 2,
           f"classes_per_batch (P) must be >= 2 so that every anchor has "
           f"negatives, got {c.classes_per_batch}.")
  _require(isinstance(c.examples_per_class, int) and c.examples_per_class >= 2,
           f"examples_per_class (K) must be >= 2 so that every anchor has a "
           f"positive, got {c.examples_per_class!r}.")
  _require(len(c.widths) > 0 and all(
      isinstance(w, int) and w > 0 for w in c.widths),
           f"widths must be positive integers, got {c.widths!r}.")
  for name in ("knn_ks", "few_shot_shots"):
    values = getattr(c, name)
    _require(len(values) > 0 and all(
        isinstance(v, int) and v > 0 for v in values),
             f"{name} must be positive integers, got {values!r}.")
  _require(all(isinstance(v, int) and v >= 0 for v in c.train_classes)
           and len(set(c.train_classes)) == len(c.train_classes),
           f"train_classes must be distinct class ids >= 0, got "
           f"{c.train_classes!r}.")
  _require(isinstance(c.image_size, int) and c.image_size >= 0,
           f"image_size must be >= 0 (0: keep), got {c.image_size!r}.")
  _require(c.margin > 0 or (c.margin == 0 and c.loss == "batch_hard_soft"),
           f"margin must be > 0 (0 is allowed for batch_hard_soft), got "
           f"{c.margin!r}.")
  _require(c.learning_rate > 0,
           f"learning_rate must be > 0, got {c.learning_rate!r}.")
  _require(c.weight_decay >= 0,
           f"weight_decay must be >= 0, got {c.weight_decay!r}.")
  _require(isinstance(c.warmup_steps, int) and 0 <= c.warmup_steps < c.steps,
           f"warmup_steps must be in [0, steps={c.steps}), got "
           f"{c.warmup_steps!r}.")
  _require(isinstance(c.augment_shift, int) and 0 <= c.augment_shift <= 8,
           f"augment_shift must be an integer in [0, 8], got "
           f"{c.augment_shift!r}.")
  _require(0 <= c.augment_rotation <= 180,
           f"augment_rotation must be in [0, 180] degrees, got "
           f"{c.augment_rotation!r}.")
  _require(0 <= c.augment_scale < 1,
           f"augment_scale must be in [0, 1), got {c.augment_scale!r}.")
  for name in ("eval_every", "checkpoint_every"):
    value = getattr(c, name)
    _require(isinstance(value, int) and value >= 0,
             f"{name} must be >= 0 (0: only at the end), got {value!r}.")
  _require(c.log_every_seconds > 0,
           f"log_every_seconds must be > 0, got {c.log_every_seconds!r}.")
  for name in ("data_dir", "manual_dir"):
    path = getattr(c, name)
    _require(path is None or os.path.isdir(os.path.expanduser(path)) or (
        name == "data_dir" and not os.path.exists(path)),
             f"{name} {path!r} is not a directory.")
  return config
