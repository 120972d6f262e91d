"""NMI against a hand computation, and k-means on separated clusters."""

import math

import numpy as np

from tripletjax import clustering


def test_nmi_by_hand():
  labels = np.array([0, 0, 0, 1, 1, 1])
  clusters = np.array([0, 0, 1, 1, 1, 1])
  # Joint: (0,0) 2/6, (0,1) 1/6, (1,1) 3/6; H(Y) = ln 2;
  # H(C) = -(1/3 ln 1/3 + 2/3 ln 2/3).
  h_y = math.log(2)
  h_c = -(1 / 3 * math.log(1 / 3) + 2 / 3 * math.log(2 / 3))
  mutual = (2 / 6 * math.log((2 / 6) / (1 / 2 * 1 / 3))
            + 1 / 6 * math.log((1 / 6) / (1 / 2 * 2 / 3))
            + 3 / 6 * math.log((3 / 6) / (1 / 2 * 2 / 3)))
  assert math.isclose(clustering.nmi(labels, clusters),
                      2 * mutual / (h_y + h_c), rel_tol=1e-12)
  # Symmetric, and blind to the ids.
  assert math.isclose(clustering.nmi(clusters, labels),
                      clustering.nmi(labels, clusters), rel_tol=1e-12)
  assert math.isclose(clustering.nmi(labels + 7, 3 - clusters),
                      clustering.nmi(labels, clusters), rel_tol=1e-12)


def test_kmeans_finds_separated_clusters():
  rng = np.random.default_rng(0)
  centres = rng.normal(size=(6, 8)) * 10
  labels = np.repeat(np.arange(6), 30)
  points = centres[labels] + rng.normal(size=(180, 8))
  perm = rng.permutation(180)
  clusters = clustering.kmeans(points[perm], 6, seed=1)
  assert clustering.nmi(labels[perm], clusters) == 1.0
  # A clustering that ignores the classes scores about 0.
  assert clustering.nmi(labels, rng.integers(0, 6, 180)) < 0.1
