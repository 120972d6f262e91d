r"""Time and memory of all retrieval metrics, after embedding.

With --workdir: the test split of a trained run queried against its train
split (embedded first, not timed). Otherwise synthetic embeddings: unit
vectors around one random centre per class, `--noise` setting how much
classes overlap; at 0.12 MAP@R is about the default MNIST model's, but
negatives crowd the positives more than in a trained model's embedding, so
queries rank more references each. Each measurement runs in a fresh
process, so the peak resident memory it reports is its own; --profile adds
the seconds of each phase.

  python -m experiments.benchmark_retrieval --workdir=runs/mnist-default
  python -m experiments.benchmark_retrieval --workdir=runs/mnist-default \
      --leave_one_out                       # the test split against itself
  python -m experiments.benchmark_retrieval --references=60000,120000,240000
  python -m experiments.benchmark_retrieval --references=60000 --profile
  python -m experiments.benchmark_retrieval --leave_one_out \
      --references=4861 --classes=5 --noise=0.15 --verification
  python -m experiments.benchmark_retrieval --leave_one_out \
      --references=60000 --classes=11316   # SOP's size
  python -m experiments.benchmark_retrieval --leave_one_out \
      --references=13180 --classes=659 --noise=0.15 --few_shot
      # Omniglot's evaluation set
  python -m experiments.benchmark_retrieval --leave_one_out \
      --references=4861 --classes=5 --noise=0.002 --collapsed

Expected on two CPU cores (docs/performance.md): the main job's 10,000 test
embeddings against its 60,000 train embeddings in about 2.3 s, MAP@R 0.991
(its test split leave-one-out in under a second, MAP@R 0.986); the
synthetic 10,000 x 60,000 in about 2.7 s, MAP@R 0.986; SOP's size in about
9 s; peak memory bounded by the budget, not by the number of references.
"""

import multiprocessing
import resource
import time

from absl import flags

from experiments import common

_QUERIES = flags.DEFINE_integer("queries", 10_000, "Number of queries.")
_REFERENCES = flags.DEFINE_list("references", ["60000", "120000"],
                                "Numbers of references, one run each.")
_DIM = flags.DEFINE_integer("dim", 64, "Embedding dimension D.")
_CLASSES = flags.DEFINE_integer("classes", 10, "Number of classes.")
_WORKDIR = common.define_trained_run_flag()  # Its embeddings, if given.
_NOISE = flags.DEFINE_float("noise", 0.12, "Spread of each class around its "
                            "centre, per dimension, before normalising.")
_METRIC = flags.DEFINE_string("metric", "euclidean", "Distance metric.")
_JSON = flags.DEFINE_string("json", None, "Also write the rows to this file.")
_LEAVE_ONE_OUT = flags.DEFINE_bool(
    "leave_one_out", False, "Rank the references against each other (each "
    "query leaves itself out); with --workdir, the test split's.")
_VERIFICATION = flags.DEFINE_bool(
    "verification", False, "With --leave_one_out: also time the verification "
    "metrics of all pairs of the same embeddings (second call).")
_COLLAPSED = flags.DEFINE_bool(
    "collapsed", False, "Synthetic: every class around one centre, as a "
    "collapsed network embeds (its similarities tie in float32).")
_FEW_SHOT = flags.DEFINE_bool(
    "few_shot", False, "With --leave_one_out: also time the few-shot "
    "episodes of the same embeddings, as evaluation runs them on unseen "
    "classes (1,000 20-way episodes of 1 and of 5 shots; second call).")
_PROFILE = flags.DEFINE_bool(
    "profile", False, "Also print the seconds of each phase of the timed "
    "call (device phases include waiting for the device; summed over the "
    "two threads that rank blocks at once).")


def _measure(num_q, num_r, dim, classes, noise, metric, workdir,
             leave_one_out, profile, verification, few_shot,
             collapsed) -> dict:
  """Runs in a child process: one call of `retrieval_metrics`, timed twice
  (the first includes compilation), and with `verification` one of
  `verification_metrics`, with `few_shot` the few-shot episodes."""
  # pylint: disable=g-import-not-at-top
  from tripletjax import few_shot as few_shot_lib
  from tripletjax import retrieval
  from tripletjax import verification as verification_lib
  # pylint: enable=g-import-not-at-top
  queries, query_labels, references, reference_labels, run_metric = (
      common.retrieval_embeddings(num_q, num_r, dim, classes, noise,
                                  workdir, collapsed=collapsed))
  if workdir:
    num_q, num_r, dim, metric = (len(queries), len(references),
                                 queries.shape[1], run_metric)
  if leave_one_out:  # The test split's (or the synthetic references').
    if not workdir:
      queries, query_labels = references, reference_labels
    references = reference_labels = None
    num_r = num_q = len(queries)
  rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
  times = []
  for _ in range(2):
    start = time.perf_counter()
    result = retrieval.retrieval_metrics(
        queries, query_labels, references, reference_labels, metric=metric,
        profile=profile)
    times.append(time.perf_counter() - start)
  if verification and leave_one_out:
    for _ in range(2):
      start = time.perf_counter()
      verification_lib.verification_metrics(queries, query_labels,
                                            metric=metric)
      result["verification_seconds"] = time.perf_counter() - start
  for shots in (1, 5) if few_shot and leave_one_out else ():
    for _ in range(2):
      start = time.perf_counter()
      few_shot_lib.evaluate(queries, query_labels, ways=20, shots=shots,
                            metric=metric)
      result[f"{shots}shot_seconds"] = time.perf_counter() - start
  return {"queries": num_q, "references": num_r, "dim": dim,
          "first_call_seconds": times[0], "seconds": times[1],
          "rss_before_mib": rss_before,
          "peak_rss_mib": resource.getrusage(
              resource.RUSAGE_SELF).ru_maxrss / 1024,
          **result}


def main(argv):
  del argv  # Checked by common.run.
  context = multiprocessing.get_context("spawn")
  table = common.Table([
      ("queries", "queries", "d"), ("refs", "references", "d"),
      ("time (s)", "seconds", ".2f"), ("1st call (s)", "first_call_seconds",
                                       ".2f"),
      ("RSS in (MiB)", "rss_before_mib", ".0f"),
      ("peak RSS", "peak_rss_mib", ".0f"), ("MAP@R", "map_at_r", ".3f"),
      ("P@1", "precision_at_1", ".3f"),
      ("ranked/query", "ranked_per_query", ".0f"),
      ("fully ranked", "fully_ranked_queries", "d"),
      ("verification (s)", "verification_seconds", ".2f"),
      ("1-shot (s)", "1shot_seconds", ".2f"),
      ("5-shot (s)", "5shot_seconds", ".2f")], _JSON.value)
  sizes = [0] if _WORKDIR.value else map(int, _REFERENCES.value)
  for num_r in sizes:
    with context.Pool(1) as pool:
      table.add(pool.apply(_measure, (
          _QUERIES.value, num_r, _DIM.value, _CLASSES.value, _NOISE.value,
          _METRIC.value, _WORKDIR.value, _LEAVE_ONE_OUT.value,
          _PROFILE.value, _VERIFICATION.value, _FEW_SHOT.value,
          _COLLAPSED.value)))
    for name, seconds in table.rows[-1].items():
      if name.startswith("seconds "):
        print(f"  {name[len('seconds '):]:<40}{seconds:8.2f} s")
  table.close()


if __name__ == "__main__":
  common.run(main)
