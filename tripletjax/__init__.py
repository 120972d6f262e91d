"""tripletjax: deep metric learning with the triplet loss in JAX."""

from tripletjax.distances import METRICS
from tripletjax.distances import paired_distances
from tripletjax.distances import pairwise_distances
from tripletjax.losses import batch_all_triplet_loss
from tripletjax.losses import batch_hard_triplet_loss
from tripletjax.losses import batch_semihard_triplet_loss
from tripletjax.losses import METRIC_NAMES
from tripletjax.losses import MINING_LOSSES
from tripletjax.losses import triplet_margin_loss

__all__ = [
    "METRICS",
    "METRIC_NAMES",
    "MINING_LOSSES",
    "batch_all_triplet_loss",
    "batch_hard_triplet_loss",
    "batch_semihard_triplet_loss",
    "paired_distances",
    "pairwise_distances",
    "triplet_margin_loss",
]
