r"""Compares the mining strategies with the same network, budget and seeds.

Random triplets, batch-all, batch-hard, soft-margin batch-hard and semi-hard,
each trained --seeds times with the settings of the flags (the main job's by
default; random triplets with as many images per batch: 83 triplets, 249
images), one margin for all. Writes ``results.csv`` (one row per run),
``results.md`` (mean ± std over seeds) and ``accuracy_vs_steps.png`` into
the output directory.

  python -m experiments.compare_mining --steps=1000 --eval_every=250
  python -m experiments.compare_mining --quick          # a smoke test

Expected (MNIST, 1,000 steps, 3 seeds, about 10 minutes per strategy on two
CPU cores): batch-all and semi-hard 1-NN 0.992-0.993, MAP@R 0.986; random
triplets 0.988 / 0.965; batch-hard with margin 0.5 0.975 / 0.78
(docs/results.md).
"""

import os

from absl import flags
import numpy as np

from experiments import common
from experiments import study
from tripletjax import config as config_lib
from tripletjax import plotting

_STRATEGIES = flags.DEFINE_list(
    "strategies", ["random_triplets", "batch_all", "batch_hard",
                   "batch_hard_soft", "semihard"], "Losses to compare.")

_ACCURACY = "test_knn_accuracy_at_1"


def main(argv):
  del argv  # Checked by common.run.
  for name in _STRATEGIES.value:
    if name not in config_lib.LOSS_NAMES:
      raise ValueError(f"strategies must be among {config_lib.LOSS_NAMES}, "
                       f"got {name!r}.")
  out = study.output_dir("compare_mining")
  base = study.base_config()
  if study.QUICK.value:
    base = base.replace(eval_every=5)
  else:  # Random triplets see as many images per batch as P x K.
    base = base.replace(triplets_per_batch=base.batch_size // 3)
  rows, curves = [], {}
  for strategy in _STRATEGIES.value:
    for seed in study.seeds():
      config = base.replace(loss=strategy, seed=seed)
      workdir = study.workdir(out, f"{strategy}-seed{seed}", config)
      results = study.run(config, workdir)
      rows.append({
          "strategy": strategy, "seed": seed,
          **{column: results[key] for column, key in study.COLUMNS},
          "wall time (s)": results["train_seconds_this_run"],
          "active triplets at end": study.final_metric(
              workdir, "fraction_active_triplets")})
      curves.setdefault(strategy, []).append(study.curve(workdir, _ACCURACY))
      print(f"{strategy} seed {seed}: 1-NN {results[_ACCURACY]:.4f}",
            flush=True)
  columns = [c for c, _ in study.COLUMNS] + ["wall time (s)",
                                            "active triplets at end"]
  print(study.write_report(
      out, rows, "strategy", columns,
      f"Mining strategies on {base.dataset}: {base.steps} steps, batch "
      f"{base.batch_size}, margin {base.margin}"))
  series = {}
  for strategy, runs in curves.items():
    steps = runs[0][0]
    values = np.stack([v for _, v in runs])
    series[strategy] = (steps, values.mean(0),
                        values.std(0) if len(runs) > 1 else None)
  plotting.lines(series, os.path.join(out, "accuracy_vs_steps.png"),
                 xlabel="step", ylabel="1-NN test accuracy",
                 title=f"{base.dataset}: accuracy against steps "
                       f"(mean ± std over {len(study.seeds())} seeds)")


if __name__ == "__main__":
  common.run(main)
