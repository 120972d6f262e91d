r"""Accuracy and training time against batch size, for a fixed number of
epochs.

Batch sizes 8, 16, ..., 4096 with P x K batches (P = min(classes, B / 4)
classes, K = B / P images each; the batch size reported is P x K), the main
job's network and mining, the same number of epochs, so smaller batches take
more steps. The learning rate is the same for every batch size. Writes
``results.csv``, ``results.md`` and ``batch_size.png`` (accuracy and time).

  python -m experiments.batch_size_sweep --seeds=1 --epochs=1
  python -m experiments.batch_size_sweep --dataset=fashion_mnist --epochs=5
  python -m experiments.batch_size_sweep --quick

Expected with --seeds=1 --epochs=1 on MNIST (about 8 minutes on two CPU
cores; docs/results.md): 1-NN 0.987-0.990 from batch 8 to 250, falling to
0.948 at 4,090 (15 updates), MAP@R highest (0.976) at 32.
"""

import os

from absl import flags
import numpy as np

from experiments import common
from experiments import study
from tripletjax import data
from tripletjax import plotting

_BATCH_SIZES = flags.DEFINE_list(
    "batch_sizes", [str(2 ** i) for i in range(3, 13)], "Batch sizes.")
_EPOCHS = flags.DEFINE_float("epochs", 2.0, "Epochs of the train split.")


def pk(batch_size: int, num_classes: int) -> tuple[int, int]:
  """(P, K) of a P x K batch of about `batch_size` images, K >= 2."""
  classes = max(2, min(num_classes, batch_size // 4))
  return classes, max(2, batch_size // classes)


def main(argv):
  del argv  # Checked by common.run.
  out = study.output_dir("batch_size_sweep")
  base = study.base_config()
  train_split, _ = data.load_splits(base)
  train_size = len(train_split)
  num_classes = len(np.unique(train_split.labels))
  rows = []
  for requested in map(int, _BATCH_SIZES.value):
    p, k = pk(requested, num_classes)
    steps = max(2, round(_EPOCHS.value * train_size / (p * k)))
    if study.QUICK.value:
      steps = min(steps, 10)
    for seed in study.seeds():
      config = base.replace(classes_per_batch=p, examples_per_class=k,
                            steps=steps, warmup_steps=min(100, steps // 10),
                            checkpoint_every=max(steps // 4, 1), seed=seed)
      workdir = study.workdir(out, f"batch{p * k}-seed{seed}", config)
      results = study.run(config, workdir)
      rows.append({"batch size": p * k, "P": p, "K": k, "steps": steps,
                   "seed": seed,
                   **{column: results[key] for column, key in study.COLUMNS},
                   "train time (s)": results["train_seconds_this_run"],
                   "images/s": results["images_per_second"]})
      print(f"batch {p * k} seed {seed}: 1-NN "
            f"{results['test_knn_accuracy_at_1']:.4f}, "
            f"{results['train_seconds_this_run']:.0f} s", flush=True)
  columns = [c for c, _ in study.COLUMNS] + ["train time (s)", "images/s"]
  print(study.write_report(
      out, rows, "batch size", columns,
      f"Batch size on {base.dataset}: {_EPOCHS.value:g} epochs, "
      f"{base.loss}, learning rate {base.learning_rate:g}"))
  sizes = sorted({row["batch size"] for row in rows})

  def by_size(column):
    values = [[r[column] for r in rows if r["batch size"] == b] for b in sizes]
    mean = np.array([np.mean(v) for v in values])
    std = (np.array([np.std(v, ddof=1) for v in values])
           if min(map(len, values)) > 1 else None)
    return np.array(sizes), mean, std

  plotting.lines({"1-NN test accuracy": by_size("1-NN acc"),
                  "MAP@R": by_size("MAP@R")},
                 os.path.join(out, "batch_size.png"), xlabel="batch size",
                 ylabel="accuracy", log_x=True,
                 title=f"{base.dataset}, {_EPOCHS.value:g} epochs")
  plotting.lines({"train time (s)": by_size("train time (s)")},
                 os.path.join(out, "batch_size_time.png"),
                 xlabel="batch size", ylabel="seconds", log_x=True,
                 title=f"{base.dataset}, {_EPOCHS.value:g} epochs")


if __name__ == "__main__":
  common.run(main)
