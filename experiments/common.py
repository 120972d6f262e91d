"""What every script of `experiments/` shares: one flag per `Config`
setting, and `run`, the entry point every script starts through.

The flags take their names, defaults and help texts from
`tripletjax.config.Config`, so a setting has one name, one default and one
description everywhere.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging as std_logging
import os
import sys
from typing import Any, Callable, Sequence

from absl import app
from absl import flags
from absl import logging
import numpy as np

from tripletjax import config as config_lib
from tripletjax import data
from tripletjax import xla_cpu

def define_trained_run_flag() -> flags.FlagHolder:
  """``--workdir`` of the scripts that read a trained run."""
  return flags.DEFINE_string(
      "workdir", None, "The directory of a trained run (the --workdir of "
      "experiments.train).")


def define_config_flags() -> None:
  """Defines one flag per `Config` field, with the field's default and
  help."""
  for field in dataclasses.fields(config_lib.Config):
    default = field.default
    help_text = field.metadata["help"]
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
  """Eight hex digits that name `config`'s settings (those of
  `config_lib.NEUTRAL_VALUES` at that value left out)."""
  settings = {name: value
              for name, value in config.without_locations().to_dict().items()
              if config_lib.NEUTRAL_VALUES.get(name, object()) != value}
  return hashlib.sha256(json.dumps(settings, indent=2, sort_keys=True)
                        .encode()).hexdigest()[:8]


def default_workdir(config: config_lib.Config) -> str:
  """``runs/<dataset>-<loss>-<digest>``: the same settings, the same run."""
  return os.path.join(
      "runs", f"{config.dataset}-{config.loss}-{settings_digest(config)}")


def format_metrics(results: dict[str, Any]) -> str:
  """The evaluation metrics of `results`, one line per group (``test``,
  ``unseen``, ``test verification``, ...); counts as integers."""
  groups: dict[str, list[str]] = {}
  for key, value in results.items():
    prefix, _, name = key.partition("_")
    if prefix in ("test", "unseen") and isinstance(value, float):
      if name.startswith("verification_"):
        prefix, name = f"{prefix} verification", name[len("verification_"):]
      text = (f"{value:.0f}" if name.endswith("pairs") else f"{value:.4f}")
      groups.setdefault(prefix, []).append(f"{name} {text}")
  return "\n".join(f"{prefix}: {', '.join(items)}"
                   for prefix, items in groups.items())


class Table:
  """A benchmark's table, printed row by row as results come, and its rows
  as JSON.

  Args:
    columns: ``(title, key, format)`` of each column: the title printed, the
      key of the row's value, a format spec (``".2f"``, ``".0%"``; ``""``
      for text, printed left-aligned); a missing or None value prints as
      ``-``.
    json_path: where `close` writes the rows (None: nowhere).
  """

  def __init__(self, columns: Sequence[tuple[str, str, str]],
               json_path: str | None = None):
    self._columns = columns
    self._widths = [max(len(title) + 2, 18 if not spec else 8)
                    for title, _, spec in columns]
    self._json_path = json_path
    self.rows: list[dict[str, Any]] = []
    header = "".join(f"{title:{'<' if not spec else '>'}{w}}" for
                     (title, _, spec), w in zip(columns, self._widths))
    print(header)
    print("-" * len(header), flush=True)

  def add(self, row: dict[str, Any]) -> None:
    """Prints `row` and keeps it."""
    self.rows.append(row)
    cells = []
    for (_, key, spec), width in zip(self._columns, self._widths):
      value = row.get(key)
      text = "-" if value is None else format(value, spec)
      cells.append(f"{text:{'<' if not spec else '>'}{width}}")
    print("".join(cells), flush=True)

  def close(self) -> None:
    """Writes the rows to the JSON file, if one was given."""
    if self._json_path:
      with open(self._json_path, "w", encoding="utf-8") as f:
        json.dump(self.rows, f, indent=1)


def _quiet_orbax(record) -> bool:
  """Orbax narrates every save at INFO; keep its warnings and errors."""
  return "orbax" not in record.pathname or record.levelno >= std_logging.WARNING


def run(main: Callable[[list[str]], Any], *,
        positional_args: bool = False) -> None:
  """`app.run`, with the fast XLA CPU flags (`tripletjax.xla_cpu`) and bad
  settings reported in one line instead of a trace. Every script of
  `experiments/` starts through it. Arguments other than flags are refused
  unless the script takes them (`positional_args`)."""
  def guarded(argv):
    logging.get_absl_handler().addFilter(_quiet_orbax)
    xla_cpu.use_fast_cpu_flags()  # Before `main` starts JAX; logs from here.
    try:
      if len(argv) > 1 and not positional_args:
        raise ValueError(f"Unexpected arguments: {' '.join(argv[1:])}.")
      return main(argv)
    except (ValueError, FileNotFoundError,
            data.DatasetUnavailableError) as e:
      print(f"Error: {e}", file=sys.stderr)
      sys.exit(2)
  app.run(guarded)


def _clustered(rng, n, dim, centres, noise):
  """``n`` unit vectors around `centres` ``[C, dim]`` and their labels."""
  labels = rng.integers(0, len(centres), n)
  x = centres[labels] + noise * rng.normal(size=(n, dim))
  return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(
      np.float32), labels


def retrieval_embeddings(num_q, num_r, dim, classes, noise, workdir, seed=0,
                         collapsed=False):
  """``(queries, query_labels, references, reference_labels, metric)``: a
  trained run's test split against its train split, or synthetic ones
  (`collapsed`: every class around one centre, as the embedding of a
  collapsed network, whose similarities tie in float32)."""
  # pylint: disable-next=g-import-not-at-top
  from tripletjax import workdir as workdir_lib
  if workdir:
    run = workdir_lib.restore(workdir)
    train_split, test = data.load_splits(run.config)
    return (run.embedder(test.images), test.labels,
            run.embedder(train_split.images), train_split.labels,
            run.config.metric)
  rng = np.random.default_rng(seed)
  centres = rng.normal(size=(1 if collapsed else classes, dim))
  centres = np.broadcast_to(centres / np.linalg.norm(
      centres, axis=1, keepdims=True), (classes, dim))
  return (*_clustered(rng, num_q, dim, centres, noise),
          *_clustered(rng, num_r, dim, centres, noise), "euclidean")
