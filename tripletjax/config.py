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
# Datasets of photos, decoded once into a disk cache and read from it: a
# user's folder (FOLDER_PREFIX + its path) and the metric-learning
# benchmarks, by the names of PHOTO_BENCHMARKS.
FOLDER_PREFIX = "folder:"
PHOTO_BENCHMARKS = ("cub200", "cars196", "sop")
AUGMENTATIONS = ("auto", "digits", "photo", "none")
SMALL_CLASSES = ("drop", "error")
POSITIVES = ("labels", "augmented")
SAMPLINGS = ("auto", "device", "host")
# Settings added since runs were first recorded, with the value that a run
# recorded without them had in force (where that is not the default).
EARLIER_VALUES = {"sampling": "host", "steps_per_call": 1}
# Settings added since, whose value here changes nothing that came before:
# at it they are left out of the digest that names a run's workdir, so a
# run named before they existed keeps its name (and resumes).
NEUTRAL_VALUES = {"ema_decay": 0.0, "augment_flip": False,
                  "test_time_flip": False, "augment_erase": 0.0,
                  "rotated_classes": False, "test_time_shift": 0}
# Where the data is read from, not what the run is: a run resumes with them
# changed (its data moved, or a path spelt another way).
LOCATION_FIELDS = ("data_dir", "manual_dir")
TUPLE_FIELDS = ("widths", "train_classes", "test_classes", "knn_ks",
                "few_shot_shots")
LOSS_NAMES = (*losses.MINING_LOSSES, *losses.SAMPLING_LOSSES, RANDOM_TRIPLETS)


def _setting(default: Any, help_text: str) -> Any:
  """A `Config` field with its default and its help text (the flag's)."""
  return dataclasses.field(default=default, metadata={"help": help_text})


@dataclasses.dataclass(frozen=True)
class Config:
  """Everything that defines a training run.

  The defaults are the main job: a small CNN trained with batch-all mining on
  MNIST, evaluated by 1-NN accuracy of the test split against the train split.
  Each field's help text (`help_text`) is the help of its command-line flag.
  """
  # Data.
  dataset: str = _setting(
      "mnist", "A tensorflow-datasets name (mnist, fashion_mnist, "
      "omniglot_lake, ...), a folder of photos (folder:PATH, one sub-folder "
      "per class) or a metric-learning benchmark (cub200, cars196, sop).")
  train_split: str = _setting(
      "train", "tensorflow-datasets: the split to train on (and the "
      "references of the test queries).")
  test_split: str = _setting(
      "test", "tensorflow-datasets: the split whose images are evaluated.")
  data_dir: str | None = _setting(
      None, "Where tensorflow-datasets keeps prepared data (default: its "
      "own, ~/tensorflow_datasets).")
  manual_dir: str | None = _setting(
      None, "Original download files for offline use: the directory itself "
      "or one with a sub-directory per dataset (default: "
      "$TRIPLETJAX_MANUAL_DIR).")
  image_size: int = _setting(
      0, "The network's input, this many pixels square (0: the images' own "
      "size; photo datasets need one, e.g. 224).")
  resize_size: int = _setting(
      0, "Photo datasets: the shorter side is resized to this and the centre "
      "cropped square, once, into the cache; training crops image_size from "
      "it, evaluation its centre (0: image_size * 8 / 7, 256 for 224).")
  channels: int = _setting(
      0, "Image channels: 1 (grey) or 3 (RGB); 0: 3 for photo datasets, the "
      "dataset's own otherwise.")
  test_fraction: float = _setting(
      0.2, "A folder without train/ and test/ sub-folders: each class's share "
      "of test images, chosen by a hash of each file's path.")
  small_classes: str = _setting(
      "drop", "A class with fewer training images than examples_per_class: "
      "drop it with a warning, or stop with an error naming it (error).")
  train_classes: tuple[int, ...] = _setting(
      (), "Train on these class ids only (empty: all); test images of the "
      "others are evaluated as unseen classes (leave-one-out retrieval, "
      "few-shot episodes).")
  test_classes: tuple[int, ...] = _setting(
      (), "Evaluate only the test images of these class ids (empty: all); "
      "with the train split as test_split, images of training classes held "
      "out by train_classes become a validation set.")
  # Model.
  model: str = _setting(
      "cnn", f"Embedding network: {', '.join(models.MODELS)} (the _small "
      "ResNets: a 3x3 stem without max-pool, for 28-64 pixel inputs).")
  init_from: str = _setting(
      "", "A safetensors file of torchvision or timm ResNet weights (conv1."
      "weight, layer1.0.bn1.running_mean, ...) to start the backbone from; "
      "the embedding head starts fresh.")
  input_norm: str = _setting(
      "unit", "Input normalisation: unit (pixels in [0, 1]) or imagenet "
      "(ImageNet's mean and standard deviation, for pretrained weights).")
  norm: str = _setting(
      "none", "CNN: a normalisation layer after each convolution: none, "
      "batch, group or layer. (The ResNets have batch norm.)")
  freeze_bn: bool = _setting(
      False, "Keep batch norm's running statistics, scale and bias fixed "
      "(the usual choice when fine-tuning pretrained weights with small "
      "P x K batches).")
  dtype: str = _setting(
      "float32", "What convolutions and matrix products compute in: float32 "
      "or bfloat16 (parameters, optimiser, embeddings and the loss stay "
      "float32).")
  embedding_dim: int = _setting(64, "Size of the embedding.")
  widths: tuple[int, ...] = _setting(
      (32, 64), "CNN: conv widths (one 2x2 pooling each); MLP: hidden "
      "widths.")
  hidden_dim: int = _setting(
      256, "CNN: width of the dense layer before the embedding.")
  normalize_embeddings: bool = _setting(True, "L2-normalise the embeddings.")
  # Loss and mining.
  loss: str = _setting(
      "batch_all", f"Loss and mining: {', '.join(LOSS_NAMES)}.")
  margin: float = _setting(0.5, "Triplet margin.")
  metric: str = _setting(
      "euclidean", f"Distance: {', '.join(distances.METRIC_NAMES)}.")
  positives: str = _setting(
      "labels", "What makes a positive pair: the class labels, or (augmented) "
      "two augmented views of one image: each of P images drawn gives K "
      "views that share a label of their own, and no labels are needed to "
      "train.")
  classes_per_batch: int = _setting(
      10, "P: classes (with --positives=augmented: images) in each P x K "
      "batch.")
  examples_per_class: int = _setting(
      25, "K: examples of each class in a P x K batch.")
  triplets_per_batch: int = _setting(
      85, "Triplets per batch of the random_triplets loss.")
  # Optimisation.
  steps: int = _setting(3000, "Training steps.")
  learning_rate: float = _setting(
      1e-3, "Peak learning rate (Adam, warm-up then cosine decay).")
  warmup_steps: int = _setting(100, "Linear warm-up steps.")
  weight_decay: float = _setting(0.0, "AdamW weight decay (0: Adam).")
  ema_decay: float = _setting(
      0.0, "Keep an exponential moving average of the weights with this "
      "decay (e.g. 0.999; its first steps average over fewer) and evaluate, "
      "embed and export with it instead of the weights (0: none).")
  augment: str = _setting(
      "auto", "Augmentation of training images: digits (the augment_shift, "
      "augment_rotation, augment_scale and augment_flip below), photo "
      "(random resized crop, "
      "horizontal flip, augment_color jitter) or none; auto: photo for photo "
      "datasets, digits otherwise.")
  augment_shift: int = _setting(
      2, "Random translation of training images, in pixels.")
  augment_rotation: float = _setting(
      0.0, "Random rotation of training images, up to this many degrees "
      "either way.")
  augment_scale: float = _setting(
      0.0, "Random scaling of training images by a factor in "
      "[1 - s, 1 + s].")
  augment_flip: bool = _setting(
      False, "Digits augmentation: flip each training image left-right with "
      "probability 1/2 (for clothes, not for digits or characters).")
  rotated_classes: bool = _setting(
      False, "Train on each class and its rotations by 90, 180 and 270 "
      "degrees as three more classes: 4x the training classes (Omniglot's "
      "usual few-shot augmentation; square images held in memory, not "
      "photo datasets). Evaluation sees the splits as they are.")
  augment_color: float = _setting(
      0.0, "Photo augmentation: brightness, contrast and saturation each "
      "scaled by a random factor in [1 - s, 1 + s].")
  augment_erase: float = _setting(
      0.0, "Random erasing (Zhong et al.), after the digits or photo "
      "augmentation: with this probability a rectangle of 2-40 % of a "
      "training image's area (aspect ratio 0.3-3.3) becomes uniform noise "
      "(0: none).")
  seed: int = _setting(
      0, "Seed of initialisation, sampling and augmentation.")
  # Devices.
  parallelism: str = _setting(
      "jit", "jit (one program over a mesh of all devices) or pmap (the step "
      "under jax.pmap).")
  mining_scope: str = _setting(
      "global", "global: mine the whole batch across devices; local: each "
      "device mines its own shard.")
  sampling: str = _setting(
      "auto", "Where the batches are drawn: device (the training images kept "
      "in device memory, each batch drawn inside the compiled step from "
      "(seed, step) with jax.random), host (NumPy draws, each batch copied "
      "to the devices while the previous call runs), or auto: device on GPUs "
      "and TPUs when the training images take at most 1 GiB (a photo "
      "cache's are then read into memory), host otherwise and on the CPU, "
      "where it measured faster.")
  steps_per_call: int = _setting(
      0, "Train steps per compiled call (a lax.scan; on the CPU unrolled); "
      "metrics are read back, and checkpoints, evaluations and stop "
      "requests honoured, between calls. 0: the backend's default, 10 on "
      "the CPU (measured, docs/performance.md), 100 on GPUs and TPUs (not "
      "yet measured).")
  # Evaluation, checkpoints, logging.
  eval_every: int = _setting(
      1000, "Evaluate every this many steps (0: only at the end).")
  eval_batch_size: int = _setting(
      1024, "Images per embedding call in evaluation.")
  test_time_flip: bool = _setting(
      False, "Embed each image and its left-right mirror and take the mean "
      "of the two embeddings (L2-normalised again where the network "
      "normalises): test-time augmentation for data whose classes are "
      "mirror-symmetric (clothes, photos), in evaluation and in every use "
      "of the trained run.")
  test_time_shift: int = _setting(
      0, "Embed each image translated by every whole-pixel shift of at "
      "most this many pixels along each axis (the border filled with "
      "zeros, as augment_shift fills it; 1: nine views) and take the mean "
      "of the embeddings (over the mirrors too with test_time_flip), "
      "L2-normalised again where the network normalises: test-time "
      "augmentation for data trained with shifts (digits), in evaluation "
      "and in every use of the trained run. 0: none.")
  knn_ks: tuple[int, ...] = _setting(
      (1, 5), "k of the k-NN (majority vote) accuracies reported.")
  few_shot_ways: int = _setting(
      5, "Classes per few-shot episode (unseen classes).")
  few_shot_shots: tuple[int, ...] = _setting(
      (1, 5), "Support examples per class: one evaluation each.")
  few_shot_episodes: int = _setting(
      1000, "Few-shot episodes per evaluation.")
  write_figures: bool = _setting(
      True, "Write PNG figures into <workdir>/figures at the end.")
  checkpoint_every: int = _setting(
      500, "Checkpoint every this many steps (0: only at the end).")
  keep_checkpoints: int = _setting(3, "Checkpoints to keep.")
  log_every_seconds: float = _setting(
      10.0, "Seconds between progress lines.")

  @classmethod
  def help_text(cls, name: str) -> str:
    """The help of setting `name` (its command-line flag's)."""
    return next(f for f in dataclasses.fields(cls)
                if f.name == name).metadata["help"]

  @property
  def is_photo_dataset(self) -> bool:
    """Photos from a folder or a benchmark (decoded into the disk cache)."""
    return (self.dataset.startswith(FOLDER_PREFIX)
            or self.dataset in PHOTO_BENCHMARKS)

  @property
  def augmentation(self) -> str:
    """The augmentation family in force: digits, photo or none."""
    if self.augment != "auto":
      return self.augment
    return "photo" if self.is_photo_dataset else "digits"

  @property
  def stored_size(self) -> int:
    """Photo datasets: the side of the cached images."""
    return self.resize_size or round(self.image_size * 8 / 7)

  @property
  def batch_size(self) -> int:
    """Images per training step."""
    if self.loss == RANDOM_TRIPLETS:
      return 3 * self.triplets_per_batch
    return self.classes_per_batch * self.examples_per_class

  def model_settings(self) -> dict[str, Any]:
    """The keyword arguments of `tripletjax.models.create` for this run."""
    return dict(widths=self.widths, hidden_dim=self.hidden_dim,
                embedding_dim=self.embedding_dim,
                normalize=self.normalize_embeddings, norm=self.norm,
                freeze_bn=self.freeze_bn, input_norm=self.input_norm,
                dtype=self.dtype)

  def replace(self, **changes: Any) -> Config:
    return dataclasses.replace(self, **changes)

  def without_locations(self) -> Config:
    """What the run is: its settings with `LOCATION_FIELDS` unset."""
    return self.replace(**dict.fromkeys(LOCATION_FIELDS))

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


def _require_choice(config: Config, name: str, choices) -> None:
  """Setting `name` of `config` is one of `choices`."""
  value = getattr(config, name)
  _require(value in choices, f"{name} must be one of {tuple(choices)}, got "
           f"{value!r}.")


def validate_for_devices(config: Config, num_devices: int) -> None:
  """Checks what depends on the number of devices: random triplets are
  never split across devices, so they must divide evenly."""
  _require(config.loss != RANDOM_TRIPLETS or
           config.triplets_per_batch % num_devices == 0,
           f"triplets_per_batch ({config.triplets_per_batch}) must be a "
           f"multiple of the number of devices ({num_devices}).")


def validate(config: Config) -> Config:
  """Checks every setting; returns `config` or raises a `ValueError`.

  Dataset-dependent checks (P against the number of classes) happen when the
  data is loaded, in `tripletjax.sampling`.
  """
  c = config
  _require_choice(c, "loss", LOSS_NAMES)
  _require_choice(c, "metric", distances.METRIC_NAMES)
  _require_choice(c, "parallelism", parallel.PARALLELISMS)
  _require_choice(c, "mining_scope", parallel.MINING_SCOPES)
  _require_choice(c, "model", models.MODELS)
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
  for name in ("train_classes", "test_classes"):
    values = getattr(c, name)
    _require(all(isinstance(v, int) and v >= 0 for v in values)
             and len(set(values)) == len(values),
             f"{name} must be distinct class ids >= 0, got {values!r}.")
  _require(isinstance(c.image_size, int) and c.image_size >= 0,
           f"image_size must be >= 0 (0: keep), got {c.image_size!r}.")
  _require(c.dataset != FOLDER_PREFIX,
           f"dataset {c.dataset!r} names no folder: give folder:PATH.")
  _require(not c.is_photo_dataset or c.image_size > 0,
           f"image_size must be set for the photo dataset {c.dataset!r} "
           "(e.g. --image_size=224 or 64).")
  _require(isinstance(c.resize_size, int) and (
      c.resize_size == 0 or c.resize_size >= c.image_size),
           f"resize_size must be 0 or >= image_size ({c.image_size}), got "
           f"{c.resize_size!r}.")
  _require(c.channels in (0, 1, 3),
           f"channels must be 0, 1 or 3, got {c.channels!r}.")
  _require(0 < c.test_fraction < 1,
           f"test_fraction must be in (0, 1), got {c.test_fraction!r}.")
  _require_choice(c, "small_classes", SMALL_CLASSES)
  _require_choice(c, "augment", AUGMENTATIONS)
  _require_choice(c, "norm", models.NORMS)
  _require_choice(c, "input_norm", models.INPUT_NORMS)
  _require_choice(c, "dtype", models.DTYPES)
  _require(not c.init_from or c.model.startswith("resnet"),
           f"init_from loads ResNet weights; model is {c.model!r}.")
  _require(not c.init_from or os.path.isfile(c.init_from),
           f"init_from {c.init_from!r} is not a file.")
  _require_choice(c, "positives", POSITIVES)
  _require_choice(c, "sampling", SAMPLINGS)
  _require(isinstance(c.steps_per_call, int) and c.steps_per_call >= 0,
           f"steps_per_call must be >= 0 (0: the backend's default), got "
           f"{c.steps_per_call!r}.")
  _require(c.positives == "labels" or (
      c.loss != RANDOM_TRIPLETS and c.augmentation != "none"),
           "positives=augmented needs a mining loss and an augmentation "
           f"(got loss {c.loss!r}, augment {c.augment!r}): the views of an "
           "image differ by their augmentation alone.")
  _require(not c.augment_flip or c.augmentation == "digits",
           f"augment_flip belongs to the digits augmentation, not to "
           f"augment={c.augmentation!r} (photo flips already).")
  _require(not c.rotated_classes or not c.is_photo_dataset,
           f"rotated_classes is not for the photo dataset {c.dataset!r}: "
           "its images are read from the disk cache, and a turned photo "
           "shows the same thing.")
  _require(0 <= c.augment_color < 1,
           f"augment_color must be in [0, 1), got {c.augment_color!r}.")
  _require(0 <= c.augment_erase <= 1 and (
      not c.augment_erase or c.augmentation != "none"),
           f"augment_erase must be in [0, 1] and needs an augmentation, got "
           f"{c.augment_erase!r} with augment={c.augmentation!r}.")
  _require(c.margin > 0 or (c.margin == 0 and c.loss == "batch_hard_soft"),
           f"margin must be > 0 (0 is allowed for batch_hard_soft), got "
           f"{c.margin!r}.")
  _require(c.learning_rate > 0,
           f"learning_rate must be > 0, got {c.learning_rate!r}.")
  _require(c.weight_decay >= 0,
           f"weight_decay must be >= 0, got {c.weight_decay!r}.")
  _require(0 <= c.ema_decay < 1,
           f"ema_decay must be in [0, 1) (0: none), got {c.ema_decay!r}.")
  _require(isinstance(c.warmup_steps, int) and 0 <= c.warmup_steps < c.steps,
           f"warmup_steps must be in [0, steps={c.steps}), got "
           f"{c.warmup_steps!r}.")
  _require(isinstance(c.augment_shift, int) and 0 <= c.augment_shift <= 8,
           f"augment_shift must be an integer in [0, 8], got "
           f"{c.augment_shift!r}.")
  _require(isinstance(c.test_time_shift, int) and
           0 <= c.test_time_shift <= 8,
           f"test_time_shift must be an integer in [0, 8], got "
           f"{c.test_time_shift!r}.")
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
