"""tripletjax: deep metric learning with the triplet loss in JAX.

Words used with one meaning throughout: a *metric* is the distance between
embeddings (``"euclidean"``, ``"squared_euclidean"``, ``"cosine"``);
*metrics* are measured values (a batch's loss statistics, retrieval and
few-shot results), as written to ``metrics.jsonl``.
"""

from tripletjax.distances import METRIC_NAMES
from tripletjax.distances import paired_distances
from tripletjax.distances import pairwise_distances
from tripletjax.losses import BATCH_METRICS
from tripletjax.losses import batch_all_triplet_loss
from tripletjax.losses import batch_hard_triplet_loss
from tripletjax.losses import batch_easy_hard_triplet_loss
from tripletjax.losses import batch_semihard_triplet_loss
from tripletjax.losses import distance_weighted_triplet_loss
from tripletjax.losses import MINING_LOSSES
from tripletjax.losses import SAMPLING_LOSSES
from tripletjax.losses import triplet_margin_loss

__all__ = [
    "BATCH_METRICS",
    "METRIC_NAMES",
    "MINING_LOSSES",
    "SAMPLING_LOSSES",
    "batch_all_triplet_loss",
    "batch_hard_triplet_loss",
    "batch_easy_hard_triplet_loss",
    "batch_semihard_triplet_loss",
    "distance_weighted_triplet_loss",
    "paired_distances",
    "pairwise_distances",
    "triplet_margin_loss",
]
