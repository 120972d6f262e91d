r"""Trains --seeds networks of one setting and evaluates their ensemble.

The members are the settings the flags give (the main job's by default) with
seeds --seed, --seed + 1, ..., each trained in a workdir of its own under
--output_dir (an interrupted ensemble resumes; finished members are read
back). The ensemble embeds an image with every member, each with the run's
test-time views, and puts the embeddings side by side
(`tripletjax.ensemble`): its squared distance between two images is the mean
of the members'. It is scored as a run is (the same retrieval, verification
and few-shot metrics). Writes ``ensemble.json`` (its metrics, its members' workdirs and
settings) and ``results.csv`` / ``results.md`` (the members, mean ± std,
and the ensemble).

  python -m experiments.ensemble --seeds=3 --steps=12000 --margin=0.3 \
      --weight_decay=0.05 --widths=32,64,128 --augment_rotation=8 \
      --augment_scale=0.08 --eval_every=0 --output_dir=runs/ensemble-mnist
  python -m experiments.ensemble --quick --seeds=2

Expected with the first command (docs/results.md; the members took 47 to 51
minutes each on one CPU core beside another run, the ensemble's evaluation
2 minutes on two): members' 1-NN 0.9964, 0.9957 and 0.9963, the ensemble's
0.9967 (MAP@R 0.9958).
"""

import json
import os
import time

from experiments import common
from experiments import study
from tripletjax import data
from tripletjax import ensemble
from tripletjax import evaluation
from tripletjax import workdir as workdir_lib


def main(argv):
  del argv  # Checked by common.run.
  if study.SEEDS.value < 2:
    raise ValueError(f"--seeds must be at least 2 for an ensemble, got "
                     f"{study.SEEDS.value}.")
  out = study.output_dir("ensemble")
  base = study.base_config()
  rows, members = [], []

  def add(method, seeds, results):
    # Test images of the trained classes, or (Omniglot) of unseen ones.
    prefix = "test" if "test_knn_accuracy_at_1" in results else "unseen"
    scores = {column: results[key.replace("test", prefix, 1)]
              for column, key in study.COLUMNS}
    rows.append({"method": method, "seed": seeds, **scores})
    print(f"{method} (seed {seeds}): {prefix} 1-NN "
          f"{scores['1-NN acc']:.4f}", flush=True)

  seeds = range(base.seed, base.seed + study.SEEDS.value)
  for seed in seeds:
    config = base.replace(seed=seed)
    workdir = study.workdir(out, f"seed{seed}", config)
    add("member", seed, study.run(config, workdir))
    members.append(workdir)

  start = time.perf_counter()
  embedders = tuple(workdir_lib.restore(w).embedder for w in members)
  train_split, test = data.load_splits(base)
  _, results = evaluation.evaluate_network(
      ensemble.Ensemble(embedders, base.metric), train_split, test, base)
  add("ensemble", f"{seeds[0]}-{seeds[-1]}", results)
  print(common.format_metrics(results))
  print(f"Evaluated the ensemble in {time.perf_counter() - start:.0f} s.")
  with open(os.path.join(out, "ensemble.json"), "w", encoding="utf-8") as f:
    json.dump({"members": members, "config": base.to_dict(), **results}, f,
              indent=2)
  print(study.write_report(
      out, rows, "method", [c for c, _ in study.COLUMNS],
      f"An ensemble of {len(members)} networks on {base.dataset}"))


if __name__ == "__main__":
  common.run(main)
