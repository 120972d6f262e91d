r"""tripletjax against PyTorch Metric Learning, side by side in one process.

Retrieval metrics (the default), exact:
`tripletjax.retrieval.retrieval_metrics` and PyTorch Metric Learning's `AccuracyCalculator` (``k="max_bin_count"``, the depth
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

With --train_step, the train step of the reference CNN instead (conv 3x3
32 -> pool -> conv 3x3 64 -> pool -> dense 256 -> dense 64, L2-normalised;
`experiments.benchmark_train`'s ``reference``), batch-hard mining with
margin 0.5, Adam at 1e-3, on one synthetic P x K batch (16 images per
class) of 28 x 28 grey images already in memory: tripletjax's compiled
step against PyTorch with PyTorch Metric Learning's `BatchHardMiner` and `TripletMarginLoss` (its
defaults: Euclidean distance of L2-normalised embeddings), each in its
framework's own layout (NHWC, NCHW). Each side runs --steps_per_round steps
once untimed, then the two alternate for --rounds rounds of that many steps;
the table gives each round's images/s, the last line the median ratio.

  python -m experiments.benchmark_peer --train_step
  python -m experiments.benchmark_peer --train_step --batch_size=512
"""

import functools
import os
import statistics
import time
import types
from typing import Any, Callable

from absl import flags

from experiments import common
from experiments import timed_step
from tripletjax import config as config_lib
from tripletjax import retrieval
from tripletjax import sorting

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
_TRAIN_STEP = flags.DEFINE_bool(
    "train_step", False, "Time the reference CNN's train step instead of the "
    "retrieval metrics.")
_BATCH_SIZE = flags.DEFINE_integer(
    "batch_size", 256, "--train_step: images per step (16 per class).")
_STEPS_PER_ROUND = flags.DEFINE_integer(
    "steps_per_round", 20, "--train_step: steps of each side per round.")

_OURS, _PEER = "tripletjax", "PyTorch Metric Learning"
_COMPARED = (("map_at_r", "mean_average_precision_at_r"),
             ("r_precision", "r_precision"),
             ("precision_at_1", "precision_at_1"))


def _peer() -> types.SimpleNamespace:
  """torch (on every usable CPU) and the parts of PyTorch Metric Learning
  used here."""
  # torch's OpenMP threads otherwise spin after each of its calls, on the
  # CPUs tripletjax's turn then runs on (+10 % on its retrieval time);
  # waiting passively changed neither side's train step nor the peer's
  # retrieval time (docs/performance.md).
  os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
  # pylint: disable=g-import-not-at-top
  try:
    import torch
    from pytorch_metric_learning import distances, losses, miners
    from pytorch_metric_learning.utils import accuracy_calculator, inference
  except ImportError as e:
    raise SystemExit(
        f"benchmark_peer needs torch and pytorch-metric-learning ({e}); see "
        "BUILD.md, \"Peer benchmarks\".") from None
  # pylint: enable=g-import-not-at-top
  torch.set_num_threads(sorting.usable_cpus())
  return types.SimpleNamespace(
      torch=torch, distances=distances, losses=losses, miners=miners,
      accuracy_calculator=accuracy_calculator, inference=inference)


def _peer_metrics(batch_size: int):
  """PyTorch Metric Learning's exact retrieval metrics, as a function."""
  pml = _peer()
  calculator = pml.accuracy_calculator.AccuracyCalculator(
      include=tuple(peer for _, peer in _COMPARED), k="max_bin_count",
      knn_func=pml.inference.CustomKNN(
          pml.distances.LpDistance(normalize_embeddings=False),
          batch_size=batch_size))
  return lambda q, ql, r, rl: calculator.get_accuracy(q, ql, r, rl)


def _peer_step(config: config_lib.Config) -> Callable[[int], float]:
  """PyTorch's train step of the reference CNN with PyTorch Metric
  Learning's batch-hard mining, on one fixed batch of `config`'s shape:
  a function of a number of steps, returning their seconds."""
  pml = _peer()
  torch, nn = pml.torch, pml.torch.nn
  torch.manual_seed(0)
  model = nn.Sequential(
      nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
      nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
      nn.Flatten(), nn.Linear(7 * 7 * 64, 256), nn.ReLU(), nn.Linear(256, 64))
  miner = pml.miners.BatchHardMiner()
  loss_fn = pml.losses.TripletMarginLoss(margin=config.margin)
  optimizer = torch.optim.Adam(model.parameters(), lr=config.learning_rate)
  images = torch.randint(0, 256, (config.batch_size, 1, 28, 28),
                         dtype=torch.uint8)
  labels = torch.arange(config.classes_per_batch).repeat_interleave(
      config.examples_per_class)

  def run(steps: int) -> float:
    start = time.perf_counter()
    for _ in range(steps):
      embeddings = model(images.float() / 255.0)
      loss = loss_fn(embeddings, labels, miner(embeddings, labels))
      optimizer.zero_grad()
      loss.backward()
      optimizer.step()
    return time.perf_counter() - start
  return run


def main_train_step():
  """--train_step: the two train steps, alternating."""
  config = timed_step.config(_BATCH_SIZE.value, **timed_step.REFERENCE)
  steps = _STEPS_PER_ROUND.value
  ours = timed_step.TimedStep(config, (28, 28, 1))
  sides = {_OURS: ours.run, _PEER: _peer_step(config)}
  for run in sides.values():  # Untimed: warm-up.
    run(steps)
  print(f"Reference CNN, batch-hard, batch {config.batch_size} "
        f"({config.classes_per_batch} x {config.examples_per_class}), "
        f"{steps} steps per round; tripletjax compiled in "
        f"{ours.compile_seconds:.1f} s.")
  _alternate({name: functools.partial(run, steps)
              for name, run in sides.items()},
             images=steps * config.batch_size)


def _alternate(sides: dict[str, Callable[[], float]],
               images: int | None = None) -> None:
  """Runs the two `sides` (each returns its seconds) one after the other
  for --rounds rounds: a table of each round's seconds, or images/s where
  `images` is given, and the median ratio of the peer's time to ours."""
  unit, spec = ("(s)", ".2f") if images is None else ("img/s", ".0f")
  table = common.Table([("round", "round", "d"),
                        (f"tripletjax {unit}", _OURS, spec),
                        (f"PML {unit}", _PEER, spec),
                        ("ratio", "ratio", ".2f")], _JSON.value)
  for i in range(_ROUNDS.value):
    seconds = {name: run() for name, run in sides.items()}
    table.add({"round": i + 1, "ratio": seconds[_PEER] / seconds[_OURS],
               **{name: t if images is None else images / t
                  for name, t in seconds.items()}})
  table.close()
  print(f"median: tripletjax "
        f"{statistics.median(r['ratio'] for r in table.rows):.2f}x as fast")


def _seconds(function: Callable[[], Any]) -> float:
  start = time.perf_counter()
  function()
  return time.perf_counter() - start


def main(argv):
  del argv  # Checked by common.run.
  if _TRAIN_STEP.value:
    main_train_step()
    return
  peer = _peer_metrics(_PEER_BATCH_SIZE.value)
  q, ql, r, rl, metric = common.retrieval_embeddings(
      _QUERIES.value, _REFERENCES.value, _DIM.value, _CLASSES.value,
      _NOISE.value, _WORKDIR.value, _SEED.value)
  if metric != "euclidean":
    raise SystemExit(f"--workdir: the run's metric is {metric}; the peer "
                     "side here is Euclidean.")
  sides = {_OURS: lambda: retrieval.retrieval_metrics(q, ql, r, rl),
           _PEER: lambda: peer(q, ql, r, rl)}
  results = {name: run() for name, run in sides.items()}  # Untimed.
  ours, theirs = results[_OURS], results[_PEER]
  for name, peer_name in _COMPARED:
    if abs(ours[name] - theirs[peer_name]) > 1e-6:
      raise SystemExit(f"The two disagree on {name}: {ours[name]} against "
                       f"{theirs[peer_name]}.")
  print(f"{len(q)} queries x {len(r)} references, D = {q.shape[1]}: MAP@R "
        f"{ours['map_at_r']:.4f} (both), R-precision "
        f"{ours['r_precision']:.4f}, precision@1 {ours['precision_at_1']:.4f}")
  _alternate({name: functools.partial(_seconds, run)
              for name, run in sides.items()})


if __name__ == "__main__":
  common.run(main)
