r"""What deep metric learning buys over traditional methods.

One table, same retrieval metrics and test-against-train protocol for all:

* k-NN on raw pixels (scaled to [0, 1]);
* k-NN after PCA to --pca_dim dimensions (fitted on the train split);
* the MLP with one tanh hidden layer trained on random triplets;
* the CNN trained with the main job's network and settings (--loss, --steps
  and the other settings as flags).

The time column is what each method costs: fitting (PCA, training) plus
computing the metrics. Writes ``results.csv`` and ``results.md``.

  python -m experiments.baselines --seeds=1
  python -m experiments.baselines --seeds=1 --dataset=fashion_mnist
  python -m experiments.baselines --quick

Expected on MNIST (about 30 minutes on two CPU cores; docs/results.md):
precision@1 / MAP@R 0.969 / 0.30 for pixels, 0.973 / 0.31 after PCA, 0.976 /
0.94 for the MLP, 0.994 / 0.99 for the CNN; on Fashion-MNIST 0.850 / 0.30,
0.846 / 0.31, 0.828 / 0.67, 0.906 / 0.84.
"""

import time

from absl import flags
import numpy as np

from experiments import common
from experiments import study
from tripletjax import data
from tripletjax import retrieval

_PCA_DIM = flags.DEFINE_integer("pca_dim", 64, "Components kept by PCA.")
_MLP_STEPS = flags.DEFINE_integer(
    "mlp_steps", 15000,
    "Training steps of the MLP (a step costs it about a twentieth of the "
    "CNN's).")
_MLP_WIDTH = flags.DEFINE_integer("mlp_width", 256,
                                  "Width of the MLP's tanh layer.")


def pixels(images: np.ndarray) -> np.ndarray:
  return images.reshape(len(images), -1).astype(np.float32) / 255.0


def pca(train_x: np.ndarray, dim: int):
  """The projection onto the train split's first `dim` principal axes."""
  mean = train_x.mean(axis=0)
  _, _, vt = np.linalg.svd(train_x - mean, full_matrices=False)
  return lambda x: ((x - mean) @ vt[:dim].T).astype(np.float32)


def main(argv):
  del argv  # Checked by common.run.
  out = study.output_dir("baselines")
  base = study.base_config()
  train_split, test = data.load_splits(base)
  rows = []

  def add(method, seed, seconds, metrics):
    rows.append({"method": method, "seed": seed,
                 **{column: metrics[key.removeprefix("test_")]
                    for column, key in study.COLUMNS},
                 "time (s)": seconds})
    print(f"{method} (seed {seed}): 1-NN {metrics['knn_accuracy_at_1']:.4f} "
          f"in {seconds:.0f} s", flush=True)

  start = time.perf_counter()
  train_x, test_x = pixels(train_split.images), pixels(test.images)
  metrics = retrieval.retrieval_metrics(test_x, test.labels, train_x,
                                        train_split.labels, knn_ks=(1, 5))
  add("k-NN, raw pixels", 0, time.perf_counter() - start, metrics)

  start = time.perf_counter()
  project = pca(train_x, _PCA_DIM.value)
  metrics = retrieval.retrieval_metrics(project(test_x), test.labels,
                                        project(train_x), train_split.labels,
                                        knn_ks=(1, 5))
  add(f"k-NN, PCA to {_PCA_DIM.value}", 0, time.perf_counter() - start,
      metrics)

  networks = [  # (method, workdir name, settings)
      (f"MLP (tanh {_MLP_WIDTH.value}), random triplets", "mlp",
       dict(model="mlp", loss="random_triplets", widths=(_MLP_WIDTH.value,),
            triplets_per_batch=base.batch_size // 3, steps=_MLP_STEPS.value)),
      (f"CNN, {base.loss}", "cnn", {}),
  ]
  for method, name, settings in networks:
    if study.QUICK.value:
      settings.update(widths=base.widths, steps=base.steps,
                      triplets_per_batch=base.triplets_per_batch)
    for seed in study.seeds():
      config = base.replace(seed=seed, **settings)
      results = study.run(config, study.workdir(out, f"{name}-seed{seed}",
                                                config))
      add(method, seed, results["wall_seconds_this_run"],
          {key.removeprefix("test_"): value for key, value in results.items()})
  print(study.write_report(
      out, rows, "method", [c for c, _ in study.COLUMNS] + ["time (s)"],
      f"Baselines on {base.dataset} (test queries against the train split)"))


if __name__ == "__main__":
  common.run(main)
