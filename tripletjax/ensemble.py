"""An ensemble of embedding networks, used as one embedding network.

The ensemble's embedding of an image is its members' embeddings side by
side, each divided by the square root of their number: the squared
euclidean distance between two images is then the mean of the members'
squared distances, and where the members' embeddings are unit vectors (or
the metric is cosine, which normalises each member's first) the ensemble's
are too and its cosine similarity is the mean of theirs. Every function of
the library that takes embeddings (retrieval metrics, search, verification,
few-shot episodes) takes the ensemble's.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import numpy as np

from tripletjax import distances


def combine(embeddings: Sequence[np.ndarray], metric: str) -> np.ndarray:
  """The ensemble's embeddings from its members'.

  Args:
    embeddings: one ``[N, D_i]`` array per member, of the same N images.
    metric: the distance the ensemble is compared with
      (`distances.METRIC_NAMES`); with ``cosine`` each member's embeddings
      are L2-normalised first.

  Returns:
    ``float32 [N, sum D_i]``.

  Raises:
    ValueError: no members, an unknown metric, or members that embed
      different numbers of images.
  """
  distances.check_metric(metric)
  if not embeddings:
    raise ValueError("An ensemble needs at least one member.")
  counts = {len(e) for e in embeddings}
  if len(counts) > 1:
    raise ValueError(f"The members embed different numbers of images: "
                     f"{sorted(counts)}.")
  parts = [np.asarray(e, np.float32) for e in embeddings]
  if metric == "cosine":
    parts = [np.asarray(distances.l2_normalize(e)) for e in parts]
  return np.concatenate(parts, axis=1) / np.float32(np.sqrt(len(parts)))


@dataclasses.dataclass(frozen=True)
class Ensemble:
  """Embeds ``uint8 [N, H, W, C]`` images with every member and combines
  their embeddings (`combine`): an embedder, as `evaluation.Embedder` is."""
  members: tuple[Callable[[np.ndarray], np.ndarray], ...]
  metric: str

  def __call__(self, images: np.ndarray) -> np.ndarray:
    return combine([member(images) for member in self.members], self.metric)
