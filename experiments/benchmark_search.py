r"""Query latency and throughput of the gallery index's exact search.

Synthetic unit-vector embeddings (as `benchmark_retrieval` makes them) of
each gallery size, searched with batches of queries of each size for the k
nearest items (`tripletjax.gallery.Gallery.search`). Each row is the median
over --repeats calls after a first call that compiles; the query's own
embedding is not timed.

  python -m experiments.benchmark_search --gallery_sizes=60000,1000000 \
      --query_counts=1,1000

Expected (docs/performance.md): tens of milliseconds for one query against
60,000 items on two CPU cores, about a second for 1,000 queries against
1,000,000.
"""

import statistics
import time

from absl import flags
import numpy as np

from experiments import common
from tripletjax import gallery as gallery_lib

_GALLERY_SIZES = flags.DEFINE_list("gallery_sizes", ["60000", "1000000"],
                                   "Items in the gallery, one row each.")
_QUERY_COUNTS = flags.DEFINE_list("query_counts", ["1", "1000"],
                                  "Queries per call, one row each.")
_DIM = flags.DEFINE_integer("dim", 64, "Embedding dimension D.")
_K = flags.DEFINE_integer("k", 10, "Neighbours per query.")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed calls per row.")
_JSON = flags.DEFINE_string("json", None, "Also write the rows to this file.")


def unit_vectors(rng, n: int, dim: int) -> np.ndarray:
  x = rng.normal(size=(n, dim)).astype(np.float32)
  return x / np.linalg.norm(x, axis=1, keepdims=True)


def main(argv):
  del argv  # Checked by common.run.
  rng = np.random.default_rng(0)
  table = common.Table([
      ("gallery", "gallery_size", "d"), ("queries", "queries", "d"),
      ("latency (ms)", "latency_ms", ".1f"),
      ("queries/s", "queries_per_second", ".0f"),
      ("first call (s)", "first_call_seconds", ".2f")], _JSON.value)
  for size in map(int, _GALLERY_SIZES.value):
    index = gallery_lib.Gallery(
        unit_vectors(rng, size, _DIM.value), np.zeros(size, np.int64),
        np.array([""] * size),
        {"workdir": "", "step": 0, "settings": {}, "metric": "euclidean",
         "embedding_dim": _DIM.value, "class_names": None})
    for count in map(int, _QUERY_COUNTS.value):
      queries = unit_vectors(rng, count, _DIM.value)
      start = time.perf_counter()
      index.search(queries, _K.value)
      first = time.perf_counter() - start
      times = []
      for _ in range(_REPEATS.value):
        start = time.perf_counter()
        index.search(queries, _K.value)
        times.append(time.perf_counter() - start)
      latency = statistics.median(times)
      table.add({"gallery_size": size, "queries": count,
                 "latency_ms": 1e3 * latency,
                 "queries_per_second": count / latency,
                 "first_call_seconds": first, "k": _K.value,
                 "dim": _DIM.value})
  table.close()


if __name__ == "__main__":
  common.run(main)
