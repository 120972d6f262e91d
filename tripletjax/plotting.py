"""Figures of a run, as PNG files (matplotlib, no display needed).

Each function takes arrays, draws one figure, writes it to `path` and
returns `path`.
"""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np

_RIGHT, _WRONG = "#2ca02c", "#d62728"


def _pyplot():
  """matplotlib's pyplot on the Agg backend, imported on first use: the
  import takes most of a second, and the commands that draw nothing
  (embedding, search, verification, export, runs without figures) skip it."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  from matplotlib import pyplot  # pylint: disable=g-import-not-at-top
  return pyplot


def _save(fig, path: str) -> str:
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.savefig(path, dpi=100, bbox_inches="tight")
  _pyplot().close(fig)
  return path


def _show_image(ax, image: np.ndarray, border: str | None = None,
                title: str | None = None, caption: str | None = None
                ) -> None:
  image = np.asarray(image)
  ax.imshow(image[..., 0] if image.shape[-1] == 1 else image,
            cmap="gray" if image.shape[-1] == 1 else None, vmin=0, vmax=255)
  ax.set_xticks([])
  ax.set_yticks([])
  for spine in ax.spines.values():
    spine.set_visible(border is not None)
    if border is not None:
      spine.set_color(border)
      spine.set_linewidth(3)
  if title:
    ax.set_title(title, fontsize=8)
  if caption:
    ax.set_xlabel(caption, fontsize=8)


def training_curves(records: Sequence[dict], path: str, *,
                    accuracy_keys: Sequence[str] = ()) -> str:
  """Loss, fraction of active triplets and accuracies against the step.

  Args:
    records: the rows of ``metrics.jsonl`` (dicts with ``step``).
    path: the PNG to write.
    accuracy_keys: metrics for the third panel (those present are drawn).
  """
  panels = [("loss", ["loss"]),
            ("fraction of active triplets", ["fraction_active_triplets"]),
            ("evaluation", list(accuracy_keys))]
  fig, axes = _pyplot().subplots(1, 3, figsize=(15, 3.8))
  for ax, (title, keys) in zip(axes, panels):
    for key in keys:
      points = [(r["step"], r[key]) for r in records if key in r]
      if points:
        steps, values = zip(*points)
        ax.plot(steps, values, marker="o" if len(points) < 30 else None,
                label=key)
    ax.set_title(title)
    ax.set_xlabel("step")
    ax.grid(alpha=0.3)
    if len(keys) > 1 or title == "evaluation":
      ax.legend(fontsize=8)
  if any("fraction_active_triplets" in r for r in records):
    axes[1].set_yscale("log")
  return _save(fig, path)


def project_2d(embeddings: np.ndarray) -> np.ndarray:
  """``[N, D]`` -> ``[N, 2]``: the first two principal components."""
  centred = np.asarray(embeddings, np.float64)
  centred = centred - centred.mean(axis=0)
  _, _, vt = np.linalg.svd(centred, full_matrices=False)
  return centred @ vt[:2].T


def class_name(label: int, class_names: Sequence[str] | None) -> str:
  """How a figure names class `label`: its name where known; ``?`` for an
  unknown label (< 0)."""
  if label < 0:
    return "?"
  return class_names[label] if class_names is not None else str(label)


def embedding_projection(embeddings: np.ndarray, labels: np.ndarray,
                         path: str, *, title: str = "",
                         class_names: Sequence[str] | None = None) -> str:
  """The embeddings' first two principal components, coloured by class."""
  points = project_2d(embeddings)
  labels = np.asarray(labels)
  classes = np.unique(labels)
  plt = _pyplot()
  fig, ax = plt.subplots(figsize=(7, 6))
  cmap = plt.get_cmap("tab10" if len(classes) <= 10 else "tab20")
  for i, c in enumerate(classes):
    mine = labels == c
    ax.scatter(points[mine, 0], points[mine, 1], s=3, alpha=0.6,
               color=cmap(i % cmap.N), label=class_name(c, class_names))
  if len(classes) <= 20:
    ax.legend(markerscale=4, fontsize=8, loc="best", title="class")
  ax.set_title(title or "test embeddings, first two principal components")
  ax.set_xlabel("PC 1")
  ax.set_ylabel("PC 2")
  return _save(fig, path)


def triplet_grid(anchors: np.ndarray, positives: np.ndarray,
                 negatives: np.ndarray, path: str, *,
                 positive_distances: np.ndarray | None = None,
                 negative_distances: np.ndarray | None = None) -> str:
  """One row per triplet: anchor, positive, negative images.

  Args:
    anchors, positives, negatives: ``uint8 [T, H, W, C]``.
    path: the PNG to write.
    positive_distances, negative_distances: ``[T]``, shown as titles.
  """
  rows = len(anchors)
  fig, axes = _pyplot().subplots(rows, 3, figsize=(4.5, 1.6 * rows),
                                 squeeze=False)
  for t in range(rows):
    d_ap = (f"d={positive_distances[t]:.2f}"
            if positive_distances is not None else None)
    d_an = (f"d={negative_distances[t]:.2f}"
            if negative_distances is not None else None)
    _show_image(axes[t, 0], anchors[t], title="anchor" if t == 0 else None)
    _show_image(axes[t, 1], positives[t], _RIGHT,
                "hardest positive" if t == 0 else None, d_ap)
    _show_image(axes[t, 2], negatives[t], _WRONG,
                "hardest negative" if t == 0 else None, d_an)
  return _save(fig, path)


def retrieval_grid(query_images: np.ndarray, query_labels: np.ndarray,
                   neighbor_images: np.ndarray, neighbor_labels: np.ndarray,
                   path: str, *, neighbor_distances: np.ndarray | None = None,
                   class_names: Sequence[str] | None = None) -> str:
  """One row per query: the query, then its nearest references, framed
  green where the label matches the query's and red where it does not
  (unframed where the query's label is unknown, < 0).

  Args:
    query_images: ``uint8 [Q, H, W, C]``.
    query_labels: ``[Q]``.
    neighbor_images: ``uint8 [Q, k, H, W, C]``, nearest first.
    neighbor_labels: ``[Q, k]``.
    path: the PNG to write.
    neighbor_distances: ``[Q, k]``, shown as titles.
    class_names: the name of each label, shown instead of the label.
  """
  num_q, k = neighbor_labels.shape
  fig, axes = _pyplot().subplots(num_q, k + 1,
                                 figsize=(1.4 * (k + 1), 1.5 * num_q),
                                 squeeze=False)
  for q in range(num_q):
    _show_image(axes[q, 0], query_images[q],
                title=f"query ({class_name(query_labels[q], class_names)})")
    for j in range(k):
      right = neighbor_labels[q, j] == query_labels[q]
      title = class_name(neighbor_labels[q, j], class_names)
      if neighbor_distances is not None:
        title += f", d={neighbor_distances[q, j]:.2f}"
      border = None if query_labels[q] < 0 else _RIGHT if right else _WRONG
      _show_image(axes[q, j + 1], neighbor_images[q, j], border, title)
  return _save(fig, path)


def lines(series: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray | None]],
          path: str, *, xlabel: str, ylabel: str, title: str = "",
          log_x: bool = False, log_base: int = 2, joined: bool = True,
          marked: dict[str, float] | None = None) -> str:
  """One line per entry of `series`: ``{label: (x, y, y_std or None)}``,
  with a shaded band of one standard deviation where given; points alone
  unless `joined`; a dashed vertical line at each x of `marked`
  (``{label: x}``)."""
  fig, ax = _pyplot().subplots(figsize=(7, 4.5))
  for label, (x, y, std) in series.items():
    line, = ax.plot(x, y, marker="o", markersize=3 if joined else 5,
                    linestyle="-" if joined else "", label=label)
    if std is not None:
      ax.fill_between(x, np.asarray(y) - std, np.asarray(y) + std,
                      color=line.get_color(), alpha=0.2)
  for (label, x), color in zip((marked or {}).items(), ("C3", "C2", "C4")):
    ax.axvline(x, color=color, linestyle="--", label=label)
  if log_x:
    ax.set_xscale("log", base=log_base)
  ax.set_xlabel(xlabel)
  ax.set_ylabel(ylabel)
  ax.set_title(title)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  return _save(fig, path)
