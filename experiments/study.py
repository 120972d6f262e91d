"""What the research scripts share: training a list of runs and reporting
them as a CSV file, a markdown table of mean ± std over seeds, and plots.

Each run has its own workdir under the study's output directory, so an
interrupted study resumes: finished runs are read back from their
``results.json``, unfinished ones resume from their checkpoints.
"""

from __future__ import annotations

import csv
import json
import os
from typing import Any, Iterable, Sequence

from absl import flags
import numpy as np
from scipy import stats

from experiments import common
from tripletjax import config as config_lib
from tripletjax import train
from tripletjax import writers

common.define_config_flags()  # The main job's settings, its defaults.
QUICK = flags.DEFINE_bool(
    "quick", False, "A smoke test: a slice of the data, a tiny network, a few "
    "steps, one seed.")
SEEDS = flags.DEFINE_integer(
    "seeds", 3, "Seeds per setting (--quick: 1); an ensemble's members "
    "(--quick too).")
OUTPUT_DIR = flags.DEFINE_string(
    "output_dir", None, "Where the runs, tables and plots go (default: "
    "runs/<script>-<dataset>[-quick]).")

# Per-run numbers in the tables: (column, key in results.json).
COLUMNS = (("precision@1", "test_precision_at_1"),
           ("MAP@R", "test_map_at_r"),
           ("1-NN acc", "test_knn_accuracy_at_1"),
           ("5-NN acc", "test_knn_accuracy_at_5"))


def base_config(**changes: Any) -> config_lib.Config:
  """The study's starting point: the settings the flags give (the main
  job's by default), or with --quick a tiny run on slices of the data."""
  config = common.config_from_flags()
  if QUICK.value:
    # One step per compiled call: the CPU traces a call's steps one after
    # the other (`train.train_steps`), and a tiny run's time is compiling.
    config = config.replace(
        train_split="train[:2000]", test_split="test[:500]", widths=(4,),
        hidden_dim=16, embedding_dim=8, classes_per_batch=5,
        examples_per_class=4, triplets_per_batch=8, steps=10, warmup_steps=2,
        eval_every=0, checkpoint_every=0, eval_batch_size=500,
        write_figures=False, steps_per_call=1)
  return config.replace(**changes)


def seeds() -> range:
  return range(1 if QUICK.value else SEEDS.value)


def output_dir(script: str) -> str:
  """The study's output directory (--output_dir, or one named after the
  script and dataset), created."""
  out = OUTPUT_DIR.value or os.path.join(
      "runs", f"{script}-{flags.FLAGS.dataset}" +
      ("-quick" if QUICK.value else ""))
  os.makedirs(out, exist_ok=True)
  return out


def workdir(out: str, name: str, config: config_lib.Config) -> str:
  """``out/<name>-<digest of the settings>``: a study relaunched with other
  settings (more steps, say) trains new runs beside the old ones."""
  return os.path.join(out, f"{name}-{common.settings_digest(config)}")


def run(config: config_lib.Config, workdir: str) -> dict[str, Any]:
  """Trains `config` in `workdir` (or reads back its finished results)."""
  path = os.path.join(workdir, "results.json")
  if os.path.exists(path):
    with open(path, encoding="utf-8") as f:
      results = json.load(f)
    if (config_lib.Config.from_dict(results["config"]).without_locations()
        == config.without_locations()):
      return results
  return train.train_and_evaluate(config_lib.validate(config), workdir)


def final_metric(workdir: str, key: str) -> float:
  """The last value of `key` in the run's ``metrics.jsonl``."""
  values = [r[key] for r in writers.read_metrics(
      os.path.join(workdir, "metrics.jsonl")) if key in r]
  return values[-1] if values else float("nan")


def curve(workdir: str, key: str) -> tuple[np.ndarray, np.ndarray]:
  """``(steps, values)`` of `key` in the run's ``metrics.jsonl`` (a resumed
  run's later record of a step replaces the earlier one)."""
  points = {r["step"]: r[key] for r in writers.read_metrics(
      os.path.join(workdir, "metrics.jsonl")) if key in r}
  steps = np.array(sorted(points))
  return steps, np.array([points[s] for s in steps])


def write_csv(rows: Sequence[dict[str, Any]], path: str) -> str:
  columns = list(dict.fromkeys(k for row in rows for k in row))
  with open(path, "w", newline="", encoding="utf-8") as f:
    writer = csv.DictWriter(f, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
  return path


def summarize(rows: Sequence[dict[str, Any]], group: str,
              columns: Iterable[str]) -> list[dict[str, str]]:
  """Mean ± std (over seeds) of `columns`, one row per value of `group`."""
  out = []
  for value in dict.fromkeys(row[group] for row in rows):
    mine = [row for row in rows if row[group] == value]
    summary = {group: str(value), "runs": str(len(mine))}
    for column in columns:
      values = np.array([row[column] for row in mine], np.float64)
      summary[column] = (f"{values.mean():.4f}" if len(values) == 1 else
                         f"{values.mean():.4f} ± {values.std(ddof=1):.4f}")
    out.append(summary)
  return out


def mean_interval(values: Sequence[float], level: float = 0.95
                  ) -> tuple[float, float]:
  """The mean of `values` and the half-width of its Student-t confidence
  interval at `level` (NaN for fewer than two values)."""
  values = np.asarray(values, np.float64)
  if len(values) < 2:
    return float(values.mean()), float("nan")
  t = stats.t.ppf((1 + level) / 2, len(values) - 1)
  return float(values.mean()), float(
      t * values.std(ddof=1) / np.sqrt(len(values)))


def difference_interval(a: Sequence[float], b: Sequence[float],
                        level: float = 0.95) -> tuple[float, float, float]:
  """``mean(a) - mean(b)``, the half-width of Welch's confidence interval
  at `level` for it (unequal variances; the runs of `a` and `b` are
  independent) and Welch's two-sided p-value."""
  result = stats.ttest_ind(np.asarray(a, np.float64),
                           np.asarray(b, np.float64), equal_var=False)
  low, high = result.confidence_interval(level)
  return float((high + low) / 2), float((high - low) / 2), float(
      result.pvalue)


def markdown_table(rows: Sequence[dict[str, str]]) -> str:
  columns = list(rows[0])
  lines = ["| " + " | ".join(columns) + " |",
           "|" + "---|" * len(columns)]
  lines += ["| " + " | ".join(row[c] for c in columns) + " |" for row in rows]
  return "\n".join(lines) + "\n"


def write_report(directory: str, rows: Sequence[dict[str, Any]], group: str,
                 columns: Sequence[str], title: str) -> str:
  """Writes ``results.csv`` and ``results.md``; returns the markdown."""
  write_csv(rows, os.path.join(directory, "results.csv"))
  table = markdown_table(summarize(rows, group, columns))
  text = f"# {title}\n\n{table}"
  with open(os.path.join(directory, "results.md"), "w",
            encoding="utf-8") as f:
    f.write(text)
  return text

