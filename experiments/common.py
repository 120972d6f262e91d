"""Flags shared by the experiment scripts: one flag per `Config` setting.

The flags take their names and defaults from `tripletjax.config.Config`, so
a setting has one name and one default everywhere.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging as std_logging
import os
import sys
from typing import Any, Callable

from absl import app
from absl import flags
from absl import logging

from tripletjax import config as config_lib
from tripletjax import data
from tripletjax import xla_cpu

_HELP = {
    "dataset": "tensorflow-datasets name (mnist, fashion_mnist, ...).",
    "train_split": "Split to train on (and the kNN references).",
    "test_split": "Split whose images query the train split.",
    "data_dir": "Where tensorflow-datasets keeps prepared data "
                "(default: its own, ~/tensorflow_datasets).",
    "manual_dir": "Original download files for offline use: the directory "
                  "itself or one with a sub-directory per dataset "
                  f"(default: ${data.MANUAL_DIR_ENV}).",
    "image_size": "Resize images to this many pixels square (0: keep).",
    "train_classes": "Train on these class ids only (empty: all); test "
                     "images of the others are evaluated as unseen classes "
                     "(leave-one-out retrieval, few-shot episodes).",
    "model": "Embedding network: cnn or mlp.",
    "embedding_dim": "Size of the embedding.",
    "widths": "CNN: conv widths (one 2x2 pooling each); MLP: hidden widths.",
    "hidden_dim": "CNN: width of the dense layer before the embedding.",
    "normalize_embeddings": "L2-normalise the embeddings.",
    "loss": f"One of {', '.join(config_lib.LOSS_NAMES)}.",
    "margin": "Triplet margin.",
    "metric": "Distance: euclidean, squared_euclidean or cosine.",
    "classes_per_batch": "P: classes in each P x K batch.",
    "examples_per_class": "K: examples of each class in a P x K batch.",
    "triplets_per_batch": "Triplets per batch of the random_triplets loss.",
    "steps": "Training steps.",
    "learning_rate": "Peak learning rate (Adam, warm-up then cosine decay).",
    "warmup_steps": "Linear warm-up steps.",
    "weight_decay": "AdamW weight decay (0: Adam).",
    "augment_shift": "Random translation of training images, in pixels.",
    "augment_rotation": "Random rotation of training images, up to this "
                        "many degrees either way.",
    "augment_scale": "Random scaling of training images by a factor in "
                     "[1 - s, 1 + s].",
    "seed": "Seed of initialisation, sampling and augmentation.",
    "parallelism": "jit (one program over a mesh of all devices) or pmap.",
    "mining_scope": "global: mine the whole batch across devices; local: "
                    "each device mines its own shard.",
    "eval_every": "Evaluate every this many steps (0: only at the end).",
    "eval_batch_size": "Images per embedding call in evaluation.",
    "knn_ks": "k of the k-NN (majority vote) accuracies reported.",
    "few_shot_ways": "Classes per few-shot episode (unseen classes).",
    "few_shot_shots": "Support examples per class: one evaluation each.",
    "few_shot_episodes": "Few-shot episodes per evaluation.",
    "write_figures": "Write PNG figures into <workdir>/figures at the end.",
    "checkpoint_every": "Checkpoint every this many steps (0: at the end).",
    "keep_checkpoints": "Checkpoints to keep.",
    "log_every_seconds": "Seconds between progress lines.",
}

WORKDIR = flags.DEFINE_string(
    "workdir", None,
    "Run directory: checkpoints, metrics, results. A relaunch with the same "
    "workdir resumes. Default: runs/<dataset>-<loss>-<hash of the settings>.")


def define_config_flags(defaults: config_lib.Config = config_lib.Config()
                       ) -> None:
  """Defines one flag per `Config` field, with the field's default."""
  for field in dataclasses.fields(config_lib.Config):
    default = getattr(defaults, field.name)
    help_text = _HELP[field.name]
    if isinstance(default, bool):
      flags.DEFINE_bool(field.name, default, help_text)
    elif isinstance(default, int):
      flags.DEFINE_integer(field.name, default, help_text)
    elif isinstance(default, float):
      flags.DEFINE_float(field.name, default, help_text)
    elif isinstance(default, tuple):
      flags.DEFINE_list(field.name, [str(v) for v in default], help_text)
    else:
      flags.DEFINE_string(field.name, default, help_text)


def config_from_flags() -> config_lib.Config:
  """The `Config` the command line describes."""
  values: dict[str, Any] = {}
  for field in dataclasses.fields(config_lib.Config):
    value = flags.FLAGS[field.name].value
    if field.name in config_lib.TUPLE_FIELDS:
      try:
        value = tuple(int(v) for v in value)
      except ValueError:
        raise ValueError(f"{field.name} must be integers, got "
                         f"{','.join(value)!r}.") from None
    values[field.name] = value
  return config_lib.Config(**values)


def settings_digest(config: config_lib.Config) -> str:
  """Eight hex digits that name `config`'s settings."""
  return hashlib.sha256(config.to_json().encode()).hexdigest()[:8]


def default_workdir(config: config_lib.Config) -> str:
  """``runs/<dataset>-<loss>-<digest>``: the same settings, the same run."""
  return os.path.join(
      "runs", f"{config.dataset}-{config.loss}-{settings_digest(config)}")


def format_metrics(results: dict[str, Any]) -> str:
  """The evaluation metrics of `results`, one line per group (``test``,
  ``unseen``, ...)."""
  groups: dict[str, list[str]] = {}
  for key, value in results.items():
    prefix, _, name = key.partition("_")
    if prefix in ("test", "unseen") and isinstance(value, float):
      groups.setdefault(prefix, []).append(f"{name} {value:.4f}")
  return "\n".join(f"{prefix}: {', '.join(items)}"
                   for prefix, items in groups.items())


def _quiet_orbax(record) -> bool:
  """Orbax narrates every save at INFO; keep its warnings and errors."""
  return "orbax" not in record.pathname or record.levelno >= std_logging.WARNING


def run(main: Callable[[list[str]], Any]) -> None:
  """`app.run`, with the fast XLA CPU flags (`tripletjax.xla_cpu`) and bad
  settings reported in one line instead of a trace."""
  def guarded(argv):
    logging.get_absl_handler().addFilter(_quiet_orbax)
    xla_cpu.use_fast_cpu_flags()  # Before `main` starts JAX; logs from here.
    try:
      return main(argv)
    except (ValueError, FileNotFoundError) as e:
      print(f"Error: {e}", file=sys.stderr)
      sys.exit(2)
  app.run(guarded)
