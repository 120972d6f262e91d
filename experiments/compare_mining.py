r"""Compares the mining strategies the way "A Metric Learning Reality Check"
(Musgrave, Belongie, Lim, 2020) asks: each strategy tuned with the same
budget on validation classes, then measured on test classes it never saw.

Three class-disjoint sets per dataset:

* mnist, fashion_mnist: digits (garments) 0-4 train, 5-9 test; while
  tuning, 0-2 train and the images of 3-4 among the train split's first
  10,000 validate. Ten
  classes make these weak: two validation classes, five test classes.
* omniglot_lake: the background set trains; while tuning, six of its 30
  alphabets (every fifth, sorted by name) are held out to validate; the
  evaluation set's 20 alphabets (659 characters) test.

Tuning: --trials settings per strategy, drawn once log-uniformly from
--margins and --learning_rates by a Latin hypercube (the same draws for
every strategy; the soft
margin has no margin and uses the draws' learning rates), each trained with
seed 0 on the tuning classes and scored by leave-one-out MAP@R of the
validation classes. The best trial's settings are trained again with
--seeds other seeds (1, 2, ...) on all training classes and measured once,
leave-one-out on the test classes: MAP@R, R-precision and precision@1, mean
and 95 % Student-t interval; the best strategy against each other by
Welch's interval and p-value.

Writes into the output directory ``results.csv`` (every run: phase,
strategy, settings, seed, split, metrics), ``results.md`` (the final table),
``validation_vs_margin.png`` and ``test_vs_steps.png``. Every run has its
own workdir: an interrupted comparison resumes where it stopped.

  python -m experiments.compare_mining --dataset=mnist
  python -m experiments.compare_mining --dataset=fashion_mnist
  python -m experiments.compare_mining --dataset=omniglot_lake
  python -m experiments.compare_mining --budget=gpu ...  # 10 trials, 10 seeds
  python -m experiments.compare_mining --quick          # a smoke test

--budget=cpu (the default: 5 trials, 5 seeds, 600 steps of P x K = 3 x 32
on MNIST and Fashion-MNIST, of 32 x 4 on Omniglot) takes about an hour and
a half per digit dataset on two CPU cores, about 70 minutes on Omniglot.
--trials, --seeds and --steps given on the command line replace the
budget's. Results: docs/results.md (MAP@R on the test classes: on
Omniglot, distance-weighted sampling 0.378 and semi-hard 0.365 ahead,
batch-hard collapsed at 0.088).
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any

from absl import flags
import numpy as np
from scipy import stats

from experiments import common
from experiments import study
from tripletjax import config as config_lib
from tripletjax import data
from tripletjax import plotting
from tripletjax.data import omniglot

_STRATEGIES = flags.DEFINE_list(
    "strategies", list(config_lib.LOSS_NAMES), "Losses to compare.")
_BUDGET = flags.DEFINE_enum(
    "budget", "cpu", ["cpu", "gpu"], "cpu: 5 trials and 5 seeds per "
    "strategy, the dataset's steps; gpu: 10 trials, 10 seeds, 4x the steps.")
_TRIALS = flags.DEFINE_integer(
    "trials", None, "Tuning trials per strategy (default: the budget's).")
_MARGINS = flags.DEFINE_list(
    "margins", ["0.02", "1.0"], "The range margins are drawn from "
    "(log-uniform).")
_LEARNING_RATES = flags.DEFINE_list(
    "learning_rates", ["3e-4", "3e-3"], "The range learning rates are drawn "
    "from (log-uniform).")

# (trials, seeds, multiple of the dataset's steps).
_BUDGETS = {"cpu": (5, 5, 1), "gpu": (10, 10, 4), "quick": (2, 2, None)}
# Batch shape and steps per dataset (P is at most the tuning classes).
_SETTINGS = {
    "mnist": dict(classes_per_batch=3, examples_per_class=32, steps=600),
    # K = 4, as "In Defense of the Triplet Loss": more classes per batch
    # for the images a CPU budget affords.
    "omniglot_lake": dict(image_size=28, classes_per_batch=32,
                          examples_per_class=4, few_shot_ways=20, steps=600),
}
_SETTINGS["fashion_mnist"] = _SETTINGS["mnist"]
MAP_AT_R = "unseen_map_at_r"  # Of the validation or the test classes.
# Final columns: (column, key in results.json).
TEST_COLUMNS = (("MAP@R", "unseen_map_at_r"),
                ("R-precision", "unseen_r_precision"),
                ("precision@1", "unseen_precision_at_1"))


@dataclasses.dataclass(frozen=True)
class Classes:
  """Class-disjoint sets of a dataset (``()``: every class of the split)."""
  tuning: tuple[int, ...]  # Train split: trained on while tuning.
  validation: tuple[int, ...]  # Validation split: scored while tuning.
  validation_split: str  # Of the train split's images.
  training: tuple[int, ...]  # Train split: the final runs train on.
  test: tuple[int, ...]  # Test split: the final runs are scored on.


def class_sets(config: config_lib.Config) -> Classes:
  """The protocol's class sets of ``config.dataset``.

  Raises:
    ValueError: a dataset whose class sets the protocol does not know.
  """
  if config.dataset in ("mnist", "fashion_mnist"):
    # Two classes of 6,000 images: every query would rank 12,000 (R is
    # 6,000), which took 46 s per trial; 2,000 images rank in seconds.
    return Classes(tuning=(0, 1, 2), validation=(3, 4),
                   validation_split="train[:10000]",
                   training=(0, 1, 2, 3, 4), test=(5, 6, 7, 8, 9))
  if config.dataset == omniglot.NAME:
    alphabets = omniglot.alphabets(
        data.resolve_manual_dir(omniglot.NAME, config.manual_dir) or "",
        "train")
    held_out = list(alphabets)[4::5]
    if not held_out:
      raise ValueError(f"{omniglot.NAME}'s background set has "
                       f"{len(alphabets)} alphabets; validation holds out "
                       "every fifth, so it needs at least 5.")
    return Classes(
        tuning=tuple(sorted(label for name, labels in alphabets.items()
                            if name not in held_out for label in labels)),
        validation=tuple(sorted(label for name in held_out
                                for label in alphabets[name])),
        validation_split=config.train_split, training=(), test=())
  raise ValueError(f"compare_mining knows the class sets of mnist, "
                   f"fashion_mnist and {omniglot.NAME}, not "
                   f"{config.dataset!r}.")


def draws(trials: int, margins: tuple[float, float],
          learning_rates: tuple[float, float]) -> list[tuple[float, float]]:
  """``trials`` ``(margin, learning_rate)`` pairs, log-uniform in the
  ranges, the same for every strategy (a fixed seed): a Latin hypercube,
  so that even a few trials spread over each range (one draw in each of
  `trials` equal slices of it)."""
  unit = stats.qmc.LatinHypercube(d=2, rng=np.random.default_rng(0)).random(
      trials)
  low, high = np.log([margins, learning_rates]).T
  values = np.exp(low + unit * (high - low))
  return [(float(f"{m:.3g}"), float(f"{lr:.3g}")) for m, lr in values]


def _range(flag: flags.FlagHolder) -> tuple[float, float]:
  try:
    low, high = (float(v) for v in flag.value)
  except ValueError:
    raise ValueError(f"--{flag.name} must be two numbers, low,high; got "
                     f"{','.join(flag.value)!r}.") from None
  if not 0 < low <= high:
    raise ValueError(f"--{flag.name} must satisfy 0 < low <= high, got "
                     f"{low}, {high}.")
  return low, high


def _given(name: str) -> bool:
  return flags.FLAGS[name].present


def _settings(base: config_lib.Config) -> config_lib.Config:
  """`base` with the dataset's batch shape and the budget's steps, where the
  command line does not give them."""
  budget = "quick" if study.QUICK.value else _BUDGET.value
  changes = dict(_SETTINGS.get(base.dataset, {}))
  steps = changes.pop("steps", base.steps)
  if _BUDGETS[budget][2] is not None:
    changes["steps"] = steps * _BUDGETS[budget][2]
  config = base.replace(**{k: v for k, v in changes.items()
                            if not _given(k)})
  if _given("triplets_per_batch"):
    return config
  # Random triplets see as many images per batch as P x K.
  return config.replace(triplets_per_batch=(
      config.classes_per_batch * config.examples_per_class // 3))


def _record(results: dict[str, Any], keys) -> dict[str, float]:
  return {column: results[key] for column, key in keys}


def main(argv):
  del argv  # Checked by common.run.
  for name in _STRATEGIES.value:
    if name not in config_lib.LOSS_NAMES:
      raise ValueError(f"strategies must be among {config_lib.LOSS_NAMES}, "
                       f"got {name!r}.")
  margins, learning_rates = _range(_MARGINS), _range(_LEARNING_RATES)
  budget = "quick" if study.QUICK.value else _BUDGET.value
  trials = _TRIALS.value if _given("trials") else _BUDGETS[budget][0]
  seeds = study.SEEDS.value if _given("seeds") else _BUDGETS[budget][1]
  if trials < 1 or seeds < 2:
    raise ValueError(f"--trials must be >= 1 and --seeds >= 2 (an interval "
                     f"needs two runs), got {trials} and {seeds}.")
  out = study.output_dir("compare_mining")
  base = _settings(study.base_config(write_figures=False))
  classes = class_sets(base)
  tuning = base.replace(
      test_split=classes.validation_split, train_classes=classes.tuning,
      test_classes=classes.validation, eval_every=0, seed=0)
  final = base.replace(
      train_classes=classes.training, test_classes=classes.test,
      eval_every=base.eval_every if _given("eval_every") else max(
          1, base.steps // 4))
  rows, finals, validation, curves = [], {}, {}, {}
  for strategy in _STRATEGIES.value:
    scored = []
    for trial, (margin, rate) in enumerate(
        draws(trials, margins, learning_rates)):
      if strategy == "batch_hard_soft":
        margin = 0.0  # Hermans et al.'s soft margin: softplus(d_ap - d_an).
      config = tuning.replace(loss=strategy, margin=margin,
                              learning_rate=rate)
      results = study.run(config, study.workdir(
          out, f"{strategy}-trial{trial}", config))
      scored.append((results[MAP_AT_R], config))
      rows.append({"phase": "tuning", "strategy": strategy, "trial": trial,
                   "margin": margin, "learning_rate": rate, "seed": 0,
                   "split": "validation",
                   **_record(results, TEST_COLUMNS),
                   "wall time (s)": results["train_seconds_this_run"]})
      print(f"{strategy} trial {trial} (margin {margin}, learning rate "
            f"{rate}): validation MAP@R {results[MAP_AT_R]:.4f}",
            flush=True)
    validation[strategy] = scored
    best_score, best = max(scored, key=lambda pair: pair[0])
    for seed in range(1, seeds + 1):
      config = final.replace(loss=strategy, margin=best.margin,
                             learning_rate=best.learning_rate, seed=seed)
      workdir = study.workdir(out, f"{strategy}-seed{seed}", config)
      results = study.run(config, workdir)
      finals.setdefault(strategy, (best, best_score, []))[2].append(
          _record(results, TEST_COLUMNS))
      rows.append({"phase": "final", "strategy": strategy, "trial": "",
                   "margin": best.margin,
                   "learning_rate": best.learning_rate, "seed": seed,
                   "split": "test", **_record(results, TEST_COLUMNS),
                   "wall time (s)": results["train_seconds_this_run"]})
      curves.setdefault(strategy, []).append(study.curve(workdir, MAP_AT_R))
      print(f"{strategy} seed {seed}: test MAP@R "
            f"{results[MAP_AT_R]:.4f}", flush=True)
  study.write_csv(rows, os.path.join(out, "results.csv"))
  text = _report(base, finals, trials, seeds)
  with open(os.path.join(out, "results.md"), "w", encoding="utf-8") as f:
    f.write(text)
  print(text)
  _plots(out, base, validation, curves)


def _report(base: config_lib.Config, finals, trials: int, seeds: int) -> str:
  """The final table and the best strategy against each other."""
  table = []
  for strategy, (best, score, runs) in finals.items():
    row = {"strategy": strategy,
           "margin": "-" if strategy == "batch_hard_soft" else
                     f"{best.margin:g}",
           "learning rate": f"{best.learning_rate:g}",
           "validation MAP@R": f"{score:.4f}"}
    for column, _ in TEST_COLUMNS:
      mean, half = study.mean_interval([r[column] for r in runs])
      row[f"test {column}"] = f"{mean:.4f} ± {half:.4f}"
    table.append(row)
  maps = {s: [r["MAP@R"] for r in runs] for s, (_, _, runs) in finals.items()}
  winner = max(maps, key=lambda s: np.mean(maps[s]))
  lines = []
  for strategy, values in maps.items():
    if strategy != winner:
      diff, half, p = study.difference_interval(maps[winner], values)
      lines.append(f"- {winner} − {strategy}: {diff:+.4f} ± {half:.4f} "
                   f"(p = {p:.2g})")
  return (f"# Mining strategies on {base.dataset}, unseen test classes\n\n"
          f"{trials} tuning trials per strategy, then {seeds} seeds of the "
          f"best; {base.steps} steps, batch {base.batch_size} "
          f"({base.classes_per_batch} x {base.examples_per_class}), model "
          f"{base.model}. Test columns: mean ± half-width of the 95 % "
          f"Student-t interval over seeds.\n\n"
          + study.markdown_table(table)
          + f"\nMAP@R of the best, {winner}, against each other (Welch's "
          f"95 % interval of the difference, two-sided p):\n\n"
          + "\n".join(lines) + "\n")


def _plots(out: str, base: config_lib.Config, validation, curves) -> None:
  series = {}
  for strategy, scored in validation.items():
    if strategy != "batch_hard_soft":
      pairs = sorted((c.margin, score) for score, c in scored)
      series[strategy] = (np.array([m for m, _ in pairs]),
                          np.array([s for _, s in pairs]), None)
  if series:
    plotting.lines(series, os.path.join(out, "validation_vs_margin.png"),
                   xlabel="margin", ylabel="validation MAP@R", log_x=True,
                   joined=False, title=f"{base.dataset}: tuning trials "
                   "(learning rates differ between points)")
  lines = {}
  for strategy, runs in curves.items():
    # The steps every seed evaluated (a run whose metrics were lost, or
    # that evaluated at other steps, has fewer).
    steps = functools.reduce(np.intersect1d, (s for s, _ in runs))
    if len(steps):
      values = np.stack([v[np.isin(s, steps)] for s, v in runs])
      lines[strategy] = (steps, values.mean(0), values.std(0))
  plotting.lines(lines, os.path.join(out, "test_vs_steps.png"),
                 xlabel="step", ylabel="test MAP@R (unseen classes)",
                 title=f"{base.dataset}: the final runs (mean ± std over "
                       f"{len(next(iter(curves.values())))} seeds)")


if __name__ == "__main__":
  common.run(main)
