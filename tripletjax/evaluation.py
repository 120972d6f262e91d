"""Evaluating an embedding network on the splits of a run.

Composes the exact evaluations: retrieval metrics (`tripletjax.retrieval`),
few-shot episodes (`tripletjax.few_shot`) and the NMI of a k-means
clustering (`tripletjax.clustering`). `Embedder` turns host images
into host embeddings in fixed-size batches; `evaluate` scores the test
split's embeddings:

* test images of classes trained on (``test_*``) query the train split;
* those of classes never trained on (``unseen_*``: held out by
  ``train_classes``, or absent from the train split as in Omniglot and the
  photo benchmarks) query each other, leave-one-out, are clustered
  (``unseen_nmi``) and make the few-shot episodes.
"""

from __future__ import annotations

import dataclasses

from absl import logging
from flax import nnx
import jax.numpy as jnp
import numpy as np

from tripletjax import clustering
from tripletjax import config as config_lib
from tripletjax import few_shot
from tripletjax import models
from tripletjax import retrieval
from tripletjax import verification
from tripletjax.data import Split
from tripletjax.data import augment


# All pairs of at most this many images (50 million pairs) are scored for
# verification: two passes over blocks of the pair matrix.
VERIFICATION_MAX_IMAGES = 10_000


@dataclasses.dataclass(frozen=True)
class Embedder:
  """A network's embedding function for host arrays of any length.

  Called with ``uint8 [N, H, W, C]`` images, returns ``float32 [N, D]``,
  embedding `batch_size` images per call (the last batch padded, so one
  compilation serves every call). Images larger than the network's input
  (photos, stored larger for training's random crops) are cropped to their
  centre ``input_size x input_size`` first. With `backbone`, a ResNet's
  pooled features instead of the embeddings; with `flip` and `shift`, the
  mean over each image's test-time views (`models.embed`).
  """
  graphdef: nnx.GraphDef
  params: nnx.State
  batch_stats: nnx.State
  batch_size: int
  input_size: int
  backbone: bool = False
  flip: bool = False
  shift: int = 0

  def __call__(self, images: np.ndarray) -> np.ndarray:
    n = images.shape[0]
    out = []
    for start in range(0, n, self.batch_size):
      chunk = augment.center_crop(images[start:start + self.batch_size],
                                  self.input_size)
      pad = self.batch_size - chunk.shape[0]
      if pad:
        chunk = np.concatenate([chunk, np.zeros((pad, *chunk.shape[1:]),
                                                chunk.dtype)])
      out.append(models.embed(self.graphdef, self.params, self.batch_stats,
                              chunk, self.backbone, self.flip, self.shift
                              )[:self.batch_size - pad])
    return np.asarray(jnp.concatenate(out)) if out else np.zeros((0, 0))


def embed_splits(embedder: Embedder, train: Split, test: Split
                 ) -> tuple[np.ndarray | None, np.ndarray]:
  """The embeddings that `evaluate` needs: ``(train or None, test)``.

  The train split is embedded only if some test classes occur in it.
  """
  train_needed = np.isin(test.labels, train.labels).any()
  return (embedder(train.images) if train_needed else None,
          embedder(test.images))


def evaluate_network(embedder: Embedder, train: Split, test: Split,
                     config: config_lib.Config):
  """Embeds the splits and evaluates them.

  Returns:
    ``((train, test) embeddings, metrics)``: the embeddings as
    `embed_splits` gives them, the metrics as `evaluate` does.
  """
  embeddings = embed_splits(embedder, train, test)
  return embeddings, evaluate(*embeddings, train, test, config)


def evaluate(train_embeddings: np.ndarray | None, test_embeddings: np.ndarray,
             train: Split, test: Split, config: config_lib.Config
             ) -> dict[str, float]:
  """Retrieval metrics and few-shot accuracies of the test split (see the
  module doc).

  Args:
    train_embeddings, test_embeddings: as `embed_splits` gives them,
      ``[N, D]``.
    train, test: the splits.
    config: metric, k-NN and few-shot settings.

  Returns:
    ``{"test_<name>": ..., "unseen_<name>": ...,
    "unseen_<ways>way_<shots>shot_<method>": ...}``.
  """
  queries = test_embeddings
  seen = np.isin(test.labels, train.labels)
  results = {}

  def add(prefix, values):
    results.update({f"{prefix}_{k}": v for k, v in values.items()})

  if seen.any():
    add("test", retrieval.retrieval_metrics(
        queries[seen], test.labels[seen], train_embeddings, train.labels,
        metric=config.metric, knn_ks=config.knn_ks))
    add("test_verification", _verification(queries[seen], test.labels[seen],
                                           config.metric))
  if (~seen).sum() > max(config.knn_ks):
    unseen_labels = test.labels[~seen]
    add("unseen", retrieval.retrieval_metrics(
        queries[~seen], unseen_labels, metric=config.metric,
        knn_ks=config.knn_ks))
    add("unseen_verification", _verification(queries[~seen], unseen_labels,
                                             config.metric))
    results["unseen_nmi"] = clustering.nmi(unseen_labels, clustering.kmeans(
        queries[~seen], len(np.unique(unseen_labels)), seed=config.seed,
        metric=config.metric))
    _, counts = np.unique(unseen_labels, return_counts=True)
    for shots in config.few_shot_shots:
      # Episodes need `ways` classes with shots + queries examples each.
      ways = min(config.few_shot_ways, int(np.sum(
          counts >= shots + few_shot.QUERIES_PER_CLASS)))
      if ways < 2:
        logging.warning("Too few unseen images per class for %d-shot "
                        "episodes; none evaluated.", shots)
        continue
      add(f"unseen_{ways}way_{shots}shot", few_shot.evaluate(
          queries[~seen], unseen_labels, ways=ways, shots=shots,
          episodes=config.few_shot_episodes, metric=config.metric,
          seed=config.seed))
  return results


def _verification(embeddings: np.ndarray, labels: np.ndarray, metric: str
                  ) -> dict[str, float]:
  """Verification metrics over all pairs, where there are at most
  `VERIFICATION_MAX_IMAGES` images and pairs of both kinds."""
  if len(labels) > VERIFICATION_MAX_IMAGES:
    logging.info("Verification skipped: %d images, more than %d.",
                 len(labels), VERIFICATION_MAX_IMAGES)
    return {}
  try:
    return verification.verification_metrics(embeddings, labels,
                                             metric=metric)
  except ValueError as e:  # One class, or classes of one image.
    logging.info("Verification skipped: %s", e)
    return {}
