"""Brute-force NumPy references for the tests: every triplet enumerated.

Written for clarity, not speed, and independently of the library: plain
Python loops over (anchor, positive, negative) in float64.
"""

import numpy as np


def pairwise_distances(x: np.ndarray, metric: str) -> np.ndarray:
  """[N, D] -> [N, N] distances, computed from explicit differences."""
  x = np.asarray(x, np.float64)
  if metric == "cosine":
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    unit = np.divide(x, norms, out=np.zeros_like(x), where=norms > 0)
    dist = 1.0 - unit @ unit.T
    np.fill_diagonal(dist, 0.0)
    return np.clip(dist, 0.0, 2.0)
  sq = ((x[:, None, :] - x[None, :, :]) ** 2).sum(-1)
  return sq if metric == "squared_euclidean" else np.sqrt(sq)


def _is_triplet(labels, a, p, n) -> bool:
  return (a != p and labels[a] >= 0 and labels[p] >= 0 and labels[n] >= 0
          and labels[a] == labels[p] and labels[a] != labels[n])


def _positives(labels, a):
  return [p for p in range(len(labels))
          if p != a and labels[a] >= 0 and labels[p] == labels[a]]


def _negatives(labels, a):
  return [n for n in range(len(labels))
          if labels[a] >= 0 and labels[n] >= 0 and labels[n] != labels[a]]


def batch_all(dist, labels, margin):
  """Returns (loss, num_triplets, num_active)."""
  b = len(labels)
  losses = [max(dist[a, p] - dist[a, n] + margin, 0.0)
            for a in range(b) for p in range(b) for n in range(b)
            if _is_triplet(labels, a, p, n)]
  active = [v for v in losses if v > 0]
  return (sum(active) / len(active) if active else 0.0), len(losses), len(active)


def batch_hard(dist, labels, margin, soft=False):
  """Returns (loss, num_anchors, num_active)."""
  losses, active = [], 0
  for a in range(len(labels)):
    pos, neg = _positives(labels, a), _negatives(labels, a)
    if not pos or not neg:
      continue
    violation = max(dist[a, pos]) - min(dist[a, neg]) + margin
    losses.append(np.logaddexp(0.0, violation) if soft else max(violation, 0.0))
    active += violation > 0
  return (float(np.mean(losses)) if losses else 0.0), len(losses), active


def semihard(dist, labels, margin):
  """Returns (loss, num_pairs, num_active)."""
  losses = []
  for a in range(len(labels)):
    neg = _negatives(labels, a)
    if not neg:
      continue
    for p in _positives(labels, a):
      outside = [dist[a, n] for n in neg if dist[a, n] > dist[a, p]]
      d_an = min(outside) if outside else max(dist[a, n] for n in neg)
      losses.append(max(dist[a, p] - d_an + margin, 0.0))
  active = sum(v > 0 for v in losses)
  return (float(np.mean(losses)) if losses else 0.0), len(losses), active


def easy_hard(dist, labels, margin, positive="easy", negative="semihard"):
  """Returns (loss, num_anchors, num_active) of one positive and one
  negative per anchor chosen by the strategies (PyTorch Metric Learning's
  BatchEasyHardMiner), the semi-hard side chosen after the other."""
  def pick(a, candidates, closest):
    values = [dist[a, c] for c in candidates]
    return (min if closest else max)(values) if values else None

  losses = []
  for a in range(len(labels)):
    pos, neg = _positives(labels, a), _negatives(labels, a)
    if positive == "semihard":
      d_an = pick(a, neg, negative == "hard")
      d_ap = None if d_an is None else pick(
          a, [p for p in pos if dist[a, p] < d_an], False)
    else:
      d_ap = pick(a, pos, positive == "easy")
      d_an = None if d_ap is None else pick(
          a, [n for n in neg if negative != "semihard" or dist[a, n] > d_ap],
          negative != "easy")
    if d_ap is not None and d_an is not None:
      losses.append(max(d_ap - d_an + margin, 0.0))
  active = sum(v > 0 for v in losses)
  return (float(np.mean(losses)) if losses else 0.0), len(losses), active


def pair_statistics(dist, labels, embeddings):
  """Mean / hardest positive and negative distances, mean embedding norm."""
  b = len(labels)
  pos = [dist[a, p] for a in range(b) for p in _positives(labels, a)]
  neg = [dist[a, n] for a in range(b) for n in _negatives(labels, a)]
  valid = np.asarray(labels) >= 0
  norms = np.linalg.norm(np.asarray(embeddings, np.float64)[valid], axis=1)
  return {
      "mean_positive_distance": np.mean(pos) if pos else 0.0,
      "mean_negative_distance": np.mean(neg) if neg else 0.0,
      "hardest_positive_distance": max(pos) if pos else 0.0,
      "hardest_negative_distance": min(neg) if neg else 0.0,
      "mean_embedding_norm": norms.mean() if norms.size else 0.0,
  }


def retrieval_metrics(queries, query_labels, references, reference_labels,
                      metric, recall_ks, knn_ks, leave_one_out=False):
  """Every metric of one query at a time, from its full ranking.

  References are ranked by float64 distance, ties by index (a stable sort).
  Queries with no relevant reference are skipped.
  """
  points = np.concatenate([queries, references])
  n = len(queries)
  dist = pairwise_distances(points, metric)[:n, n:]
  values = {}
  lone = 0
  for q in range(n):
    order = [r for r in np.argsort(dist[q], kind="stable")
             if not (leave_one_out and r == q)]
    ranked = [reference_labels[r] for r in order]
    rel = [label == query_labels[q] for label in ranked]
    big_r = sum(rel)
    if big_r == 0:
      lone += 1
      continue
    hits, average_precision = 0, 0.0
    for i in range(big_r):
      if rel[i]:
        hits += 1
        average_precision += hits / (i + 1)
    row = {"precision_at_1": float(rel[0]),
           "r_precision": sum(rel[:big_r]) / big_r,
           "map_at_r": average_precision / big_r}
    for k in recall_ks:
      row[f"recall_at_{k}"] = float(any(rel[:k]))
    for k in knn_ks:
      votes = {}
      for label in ranked[:k]:
        votes[label] = votes.get(label, 0) + 1
      best = max(votes.values())
      winner = next(label for label in ranked[:k] if votes[label] == best)
      row[f"knn_accuracy_at_{k}"] = float(winner == query_labels[q])
    for name, value in row.items():
      values.setdefault(name, []).append(value)
  return {name: float(np.mean(v)) for name, v in values.items()}, lone
