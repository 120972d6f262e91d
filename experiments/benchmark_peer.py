r"""tripletjax against PyTorch Metric Learning, side by side in one process.

Retrieval metrics, exact: `tripletjax.retrieval.retrieval_metrics` and PyTorch
Metric Learning's `AccuracyCalculator` (``k="max_bin_count"``, the depth
MAP@R needs, with its exact `CustomKNN` over `LpDistance`, queried in blocks
of --peer_batch_size), on the synthetic clustered embeddings of
`experiments.benchmark_retrieval` (`common.retrieval_embeddings`; or a trained run's with --workdir). Each
side runs once untimed (compilation, allocation), then the two alternate for
--rounds rounds; the table gives each round's seconds, and the last line the
median ratio. The two must agree on MAP@R, R-precision and precision@1 to
1e-6, or the script stops with an error.

Needs torch and pytorch-metric-learning beside tripletjax's requirements: a
separate environment, never a dependency of the project (BUILD.md,
"Peer benchmarks").

  python -m experiments.benchmark_peer
  python -m experiments.benchmark_peer --references=60000 --rounds=5

Expected on two CPU cores (docs/performance.md): 10,000 x 60,000, MAP@R
0.986 on both sides, tripletjax more than twice as fast.
"""

import statistics
import time

from absl import flags

from experiments import common
from tripletjax import retrieval

_QUERIES = flags.DEFINE_integer("queries", 10_000, "Number of queries.")
_REFERENCES = flags.DEFINE_integer("references", 60_000,
                                   "Number of references.")
_DIM = flags.DEFINE_integer("dim", 64, "Embedding dimension D.")
_CLASSES = flags.DEFINE_integer("classes", 10, "Number of classes.")
_NOISE = flags.DEFINE_float("noise", 0.12, "Spread of each class around its "
                            "centre (as benchmark_retrieval).")
_WORKDIR = common.define_trained_run_flag()  # Its embeddings, if given.
_ROUNDS = flags.DEFINE_integer("rounds", 3, "Timed rounds of each side.")
_PEER_BATCH_SIZE = flags.DEFINE_integer(
    "peer_batch_size", 1000, "Queries per block of PyTorch Metric Learning's "
    "exact k-NN (bounded memory, as tripletjax's).")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the synthetic embeddings.")
_JSON = flags.DEFINE_string("json", None, "Also write the rows to this file.")

_COMPARED = (("map_at_r", "mean_average_precision_at_r"),
             ("r_precision", "r_precision"),
             ("precision_at_1", "precision_at_1"))


def _peer_metrics(batch_size: int):
  """PyTorch Metric Learning's exact retrieval metrics, as a function."""
  # pylint: disable=g-import-not-at-top
  try:
    import torch
    from pytorch_metric_learning import distances
    from pytorch_metric_learning.utils import accuracy_calculator
    from pytorch_metric_learning.utils import inference
  except ImportError as e:
    raise SystemExit(
        f"benchmark_peer needs torch and pytorch-metric-learning ({e}); see "
        "BUILD.md, \"Peer benchmarks\".") from None
  # pylint: enable=g-import-not-at-top
  from tripletjax import sorting  # pylint: disable=g-import-not-at-top
  torch.set_num_threads(sorting.usable_cpus())
  calculator = accuracy_calculator.AccuracyCalculator(
      include=tuple(peer for _, peer in _COMPARED), k="max_bin_count",
      knn_func=inference.CustomKNN(
          distances.LpDistance(normalize_embeddings=False),
          batch_size=batch_size))
  return lambda q, ql, r, rl: calculator.get_accuracy(q, ql, r, rl)


def main(argv):
  del argv  # Checked by common.run.
  peer = _peer_metrics(_PEER_BATCH_SIZE.value)
  q, ql, r, rl, metric = common.retrieval_embeddings(
      _QUERIES.value, _REFERENCES.value, _DIM.value, _CLASSES.value,
      _NOISE.value, _WORKDIR.value, _SEED.value)
  if metric != "euclidean":
    raise SystemExit(f"--workdir: the run's metric is {metric}; the peer "
                     "side here is Euclidean.")
  sides = {
      "tripletjax": lambda: retrieval.retrieval_metrics(q, ql, r, rl),
      "PyTorch Metric Learning": lambda: peer(q, ql, r, rl),
  }
  results = {name: run() for name, run in sides.items()}  # Untimed.
  ours, theirs = results["tripletjax"], results["PyTorch Metric Learning"]
  for name, peer_name in _COMPARED:
    if abs(ours[name] - theirs[peer_name]) > 1e-6:
      raise SystemExit(f"The two disagree on {name}: {ours[name]} against "
                       f"{theirs[peer_name]}.")
  print(f"{len(q)} queries x {len(r)} references, D = {q.shape[1]}: MAP@R "
        f"{ours['map_at_r']:.4f} (both), R-precision "
        f"{ours['r_precision']:.4f}, precision@1 {ours['precision_at_1']:.4f}")
  table = common.Table([("round", "round", "d"),
                        ("tripletjax (s)", "tripletjax", ".2f"),
                        ("PML (s)", "PyTorch Metric Learning", ".2f"),
                        ("ratio", "ratio", ".2f")], _JSON.value)
  for i in range(_ROUNDS.value):
    row = {"round": i + 1}
    for name, run in sides.items():
      start = time.perf_counter()
      run()
      row[name] = time.perf_counter() - start
    row["ratio"] = row["PyTorch Metric Learning"] / row["tripletjax"]
    table.add(row)
  table.close()
  print(f"median: tripletjax "
        f"{statistics.median(r['ratio'] for r in table.rows):.2f}x as fast")


if __name__ == "__main__":
  common.run(main)
