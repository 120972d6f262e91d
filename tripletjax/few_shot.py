"""N-way K-shot episodes on embeddings of classes never seen in training.

An episode draws `ways` classes, `shots` support and `queries_per_class`
query examples of each, and classifies every query by

* ``prototype``: the nearest class mean of the support embeddings
  (prototypical networks, Snell et al. 2017), and
* ``nearest_neighbor``: the label of the nearest support example.

Accuracy is averaged over episodes, with a 95% confidence interval of the
mean (1.96 standard errors), the convention of the few-shot literature.

Episodes may keep to one group of classes each and take their support and
queries from different sources (`sample_episodes`'s ``groups`` and
``sources``): with Omniglot's alphabets and drawers, the kind of episode of
the official task.

Lake et al.'s official Omniglot task (20 runs of 20-way one-shot
classification, the ``one_shot`` split of ``omniglot_lake``) is scored by
`omniglot_one_shot_accuracy`.
"""

from __future__ import annotations

from collections.abc import Sequence
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from tripletjax import distances

METHODS = ("prototype", "nearest_neighbor")
QUERIES_PER_CLASS = 15  # Query examples per class and episode, by default.


def sample_episodes(labels: np.ndarray, *, ways: int, shots: int,
                    queries_per_class: int, episodes: int, seed: int,
                    groups: Sequence[Sequence[int]] | None = None,
                    sources: np.ndarray | None = None
                    ) -> tuple[np.ndarray, np.ndarray]:
  """Indices of the support and query examples of each episode.

  Args:
    labels: ``int [N]``.
    ways: classes per episode.
    shots: support examples per class.
    queries_per_class: query examples per class.
    episodes: number of episodes.
    seed: the same seed draws the same episodes.
    groups: classes that belong together (Omniglot's alphabets): each
      episode then draws one group, uniformly among those with `ways`
      classes enough, and all its classes from it. None: any classes.
    sources: ``int [N]``, where each example comes from (Omniglot's
      drawers): each episode then draws `shots` sources for the support
      and `queries_per_class` others for the queries, the same for all its
      classes, and each class's examples of those sources (a class counts
      the sources it has, not its examples). None: any examples.

  With both, an episode is of the kind of Lake et al.'s official runs: one
  alphabet, the support drawn by one person and the queries by others.

  Returns:
    ``(support [E, ways, shots], query [E, ways, queries_per_class])``:
    indices into `labels`; class ``w`` of an episode is the one of
    ``support[e, w]``.
  """
  labels = np.asarray(labels)
  needed = shots + queries_per_class
  if sources is None:
    classes, counts = np.unique(labels, return_counts=True)
  else:  # Distinct (class, source) pairs.
    sources = np.asarray(sources)
    pairs = np.unique(np.stack([labels, sources], axis=1), axis=0)
    classes, counts = np.unique(pairs[:, 0], return_counts=True)
  eligible = classes[counts >= needed]
  unit = "examples" if sources is None else "sources"
  if min(ways, shots, queries_per_class, episodes) < 1:
    raise ValueError(
        f"ways, shots, queries_per_class and episodes must be >= 1, got "
        f"{ways}, {shots}, {queries_per_class}, {episodes}.")
  if len(eligible) < ways:
    raise ValueError(
        f"{ways}-way episodes with {shots} shots and {queries_per_class} "
        f"queries per class need {ways} classes with >= {needed} {unit}; "
        f"these labels have {len(eligible)} (of {len(classes)} classes).")
  pools = [eligible] if groups is None else [
      p for p in (np.intersect1d(eligible, g) for g in groups)
      if len(p) >= ways]
  if not pools:
    raise ValueError(
        f"{ways}-way episodes within a group need a group of {ways} classes "
        f"with >= {needed} {unit}; none of the {len(groups)} groups has "
        "that many.")
  members = {c: np.flatnonzero(labels == c) for c in eligible}
  rng = np.random.default_rng(seed)
  support = np.empty((episodes, ways, shots), np.int64)
  query = np.empty((episodes, ways, queries_per_class), np.int64)
  for e in range(episodes):
    # Drawn only with groups (sources): the episodes without stay those of
    # before.
    pool = pools[rng.integers(len(pools))] if groups is not None \
        else eligible
    drawn = rng.choice(pool, ways, replace=False)
    if sources is not None:
      shared = functools.reduce(np.intersect1d, (
          sources[members[c]] for c in drawn))
      if len(shared) < needed:
        raise ValueError(
            f"Classes {sorted(drawn.tolist())} share {len(shared)} sources; "
            f"an episode of {shots} shots and {queries_per_class} queries "
            f"needs {needed}.")
      picked = rng.choice(shared, needed, replace=False)
    for w, c in enumerate(drawn):
      if sources is None:
        chosen = rng.choice(members[c], needed, replace=False)
      else:
        chosen = [rng.choice(members[c][sources[members[c]] == source])
                  for source in picked]
      support[e, w], query[e, w] = chosen[:shots], chosen[shots:]
  return support, query


@functools.partial(jax.jit, static_argnames="metric")
def episode_accuracies(support: jax.Array, query: jax.Array, *, metric: str
                       ) -> dict[str, jax.Array]:
  """Accuracy of each episode by each method of `METHODS`.

  Args:
    support: ``[E, ways, shots, D]`` embeddings.
    query: ``[E, ways, queries_per_class, D]`` embeddings; the true class of
      ``query[e, w]`` is ``w``.
    metric: a name of `tripletjax.distances.METRIC_NAMES`.

  Returns:
    ``{method: [E]}`` accuracies.
  """
  _, ways, shots, dim = support.shape
  truth = jnp.repeat(jnp.arange(ways), query.shape[2])

  # The Gram expansion alone, as evaluation's nearest-neighbour search:
  # under vmap the exact recomputation of close pairs runs both of its
  # branches for every pair (about 10x the time and memory of 5-shot
  # episodes, docs/performance.md); it could change only near-ties.
  pairwise = functools.partial(distances.pairwise_distances, metric=metric,
                               precise_close_pairs=False)

  def one(support, query):
    q = query.reshape(-1, dim)
    prototypes = support.mean(axis=1)
    to_prototype = pairwise(q, prototypes)
    to_support = pairwise(q, support.reshape(-1, dim))
    nearest = jnp.argmin(to_support, axis=1) // shots
    return {"prototype": jnp.mean(jnp.argmin(to_prototype, axis=1) == truth),
            "nearest_neighbor": jnp.mean(nearest == truth)}

  return jax.vmap(one)(support, query)


def evaluate(embeddings: np.ndarray, labels: np.ndarray, *, ways: int,
             shots: int, queries_per_class: int = QUERIES_PER_CLASS,
             episodes: int = 1000,
             metric: str = "euclidean", seed: int = 0,
             groups: Sequence[Sequence[int]] | None = None,
             sources: np.ndarray | None = None
             ) -> dict[str, float]:
  """Mean N-way K-shot accuracy over episodes, with 95% intervals.

  Args:
    embeddings: ``[N, D]`` embeddings of the evaluation classes.
    labels: ``[N]`` their labels.
    ways, shots, queries_per_class, episodes, seed, groups, sources: see
      `sample_episodes`.
    metric: a name of `tripletjax.distances.METRIC_NAMES`.

  Returns:
    ``{"<method>": mean accuracy, "<method>_ci95": half-width}`` for each
    method of `METHODS`.
  """
  distances.check_metric(metric)
  embeddings = np.asarray(embeddings, np.float32)
  support, query = sample_episodes(
      labels, ways=ways, shots=shots, queries_per_class=queries_per_class,
      episodes=episodes, seed=seed, groups=groups, sources=sources)
  accuracies = episode_accuracies(
      jnp.asarray(embeddings[support]), jnp.asarray(embeddings[query]),
      metric=metric)
  results = {}
  for method in METHODS:
    values = np.asarray(accuracies[method], np.float64)
    results[method] = float(values.mean())
    results[f"{method}_ci95"] = float(
        1.96 * values.std(ddof=1) / math.sqrt(len(values))
        if len(values) > 1 else float("nan"))
  return results


def omniglot_one_shot_accuracy(embeddings: np.ndarray, labels: np.ndarray,
                               run: np.ndarray, is_query: np.ndarray, *,
                               metric: str = "euclidean") -> float:
  """Accuracy on Lake et al.'s official one-shot task: each test image of a
  run takes the label of the nearest of that run's 20 training images (Lake
  et al. report the error rate, 1 minus this).

  Args:
    embeddings: ``[N, D]`` embeddings of the ``one_shot`` split's images.
    labels, run, is_query: ``[N]``, the split's features of those names.
    metric: a name of `tripletjax.distances.METRIC_NAMES`.

  Returns:
    The fraction of the test images classified correctly.
  """
  right = total = 0
  for r in np.unique(run):
    train = (run == r) & ~is_query
    test = (run == r) & is_query
    d = distances.pairwise_distances(jnp.asarray(embeddings[test]),
                                     jnp.asarray(embeddings[train]),
                                     metric=metric)
    predicted = labels[train][np.argmin(np.asarray(d), axis=1)]
    right += int(np.sum(predicted == labels[test]))
    total += int(test.sum())
  return right / total
