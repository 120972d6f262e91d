r"""Query latency and throughput of the gallery index, exact and approximate.

Random unit vectors (no cluster structure: the hardest case for an
approximate index) of each gallery size, or with --workdir a trained run's
train split (its test images the queries), searched with batches of queries of
each size for the k nearest items (`tripletjax.gallery.Gallery.search`):
exactly, and through faiss's HNSW graph (its build time reported) with its
recall@k against the exact neighbours. Each row is the median over
--repeats calls after a first call (which compiles the exact search); the
queries' own embedding is not timed.

  python -m experiments.benchmark_search --gallery_sizes=60000,1000000 \
      --query_counts=1,1000
  python -m experiments.benchmark_search --workdir=runs/mnist-batch_all-312dc519

Expected (docs/performance.md): exact search of one query in milliseconds
against 60,000 items and tens to hundreds against 1,000,000 on two CPU
cores; the HNSW graph answers faster, with a recall@10 below 1 that falls
with the gallery's size on these structureless vectors.
"""

import statistics
import time

from absl import flags
import numpy as np

from experiments import common
from tripletjax import data
from tripletjax import gallery as gallery_lib
from tripletjax import workdir as workdir_lib

_GALLERY_SIZES = flags.DEFINE_list("gallery_sizes", ["60000", "1000000"],
                                   "Items in the gallery, one row each.")
_QUERY_COUNTS = flags.DEFINE_list("query_counts", ["1", "1000"],
                                  "Queries per call, one row each.")
_DIM = flags.DEFINE_integer("dim", 64, "Embedding dimension D.")
_K = flags.DEFINE_integer("k", 10, "Neighbours per query.")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed calls per row.")
_WORKDIR = common.define_trained_run_flag()  # Its embeddings, if given.
_BACKENDS = flags.DEFINE_list("backends", ["exact", "faiss"],
                              "Search backends to time.")
_JSON = flags.DEFINE_string("json", None, "Also write the rows to this file.")


def unit_vectors(rng, n: int, dim: int) -> np.ndarray:
  x = rng.normal(size=(n, dim)).astype(np.float32)
  return x / np.linalg.norm(x, axis=1, keepdims=True)


def main(argv):
  del argv  # Checked by common.run.
  rng = np.random.default_rng(0)
  table = common.Table([
      ("backend", "backend", ""), ("gallery", "gallery_size", "d"),
      ("queries", "queries", "d"),
      ("latency (ms)", "latency_ms", ".1f"),
      ("queries/s", "queries_per_second", ".0f"),
      ("first call (s)", "first_call_seconds", ".2f"),
      ("recall@k", "recall", ".3f"),
      ("graph build (s)", "build_seconds", ".1f")], _JSON.value)
  if _WORKDIR.value:  # A trained run's train split; its test split asks.
    run = workdir_lib.restore(_WORKDIR.value)
    train, test = data.load_splits(run.config)
    galleries = [(run.embedder(train.images), run.embedder(test.images))]
  else:
    galleries = [(unit_vectors(rng, n, _DIM.value),
                  unit_vectors(rng, max(map(int, _QUERY_COUNTS.value)),
                               _DIM.value))
                 for n in map(int, _GALLERY_SIZES.value)]
  for embeddings, all_queries in galleries:
    size = len(embeddings)
    index = gallery_lib.Gallery(
        embeddings, np.zeros(size, np.int64), np.array([""] * size),
        {"workdir": "", "step": 0, "settings": {}, "metric": "euclidean",
         "embedding_dim": embeddings.shape[1], "class_names": None})
    build_seconds = None
    if "faiss" in _BACKENDS.value:
      start = time.perf_counter()
      index = index.with_approximate()
      build_seconds = time.perf_counter() - start
    for count in map(int, _QUERY_COUNTS.value):
      queries = all_queries[:count]
      exact = None
      for backend in _BACKENDS.value:
        start = time.perf_counter()
        _, found = index.search(queries, _K.value, backend=backend)
        first = time.perf_counter() - start
        if backend == "exact":
          exact = found
        times = []
        for _ in range(_REPEATS.value):
          start = time.perf_counter()
          index.search(queries, _K.value, backend=backend)
          times.append(time.perf_counter() - start)
        latency = statistics.median(times)
        recall = None
        if backend != "exact" and exact is not None:
          recall = np.mean([len(set(a) & set(b)) / _K.value
                            for a, b in zip(found, exact)])
        table.add({"gallery_size": size, "queries": count,
                   "backend": backend, "latency_ms": 1e3 * latency,
                   "queries_per_second": count / latency,
                   "first_call_seconds": first, "recall": recall,
                   "build_seconds": None if backend == "exact"
                   else build_seconds, "k": _K.value, "dim": _DIM.value})
  table.close()


if __name__ == "__main__":
  common.run(main)
