r"""Shows the nearest images of the reference set for query images.

Given a trained run and query images (image files, or indices into the test
split), embeds them with the run's latest checkpoint and writes a grid of
each query and its nearest reference images (the train split, or with
--index a gallery index built by `experiments.index`: then only the queries
are embedded), framed green or red by label when the query's label is known.

  python -m experiments.retrieve --workdir=runs/mnist --test_indices=0,1,2,3
  python -m experiments.retrieve --workdir=runs/mnist --images=a.png,b.png \
      --invert   # dark strokes on a light background, unlike MNIST
  python -m experiments.retrieve --index=INDEX --images=a.png
  python -m experiments.retrieve --workdir=runs/mnist --misses

With --misses the queries are the test images the run gets wrong: those of
a class the train split has whose nearest train image has another label
(the misses that the run's precision_at_1 counts, up to float32 ties).

Expected: one line per query listing its 5 nearest train images with their
labels and distances (for the main job's run, the test digits' neighbours
carry their label 99 % of the time), and the grid in figures/query.png;
with --misses first a line naming every miss (about 70 test images for
the main job's run), then the first 64 as above.
"""

import json
import os

from absl import flags
import numpy as np

from experiments import common
from tripletjax import data
from tripletjax import gallery as gallery_lib
from tripletjax import neighbors
from tripletjax import plotting
from tripletjax import workdir as workdir_lib
from tripletjax.data import augment

_WORKDIR = common.define_trained_run_flag()
_IMAGES = flags.DEFINE_list("images", [], "Query image files (any format "
                            "Pillow reads; converted to the run's shape).")
_TEST_INDICES = flags.DEFINE_list("test_indices", [],
                                  "Query images by index in the test split.")
_INVERT = flags.DEFINE_bool("invert", False,
                            "Invert the image files' intensities.")
_K = flags.DEFINE_integer("k", 5, "Neighbours per query.")
_INDEX = flags.DEFINE_string(
    "index", None, "Search this gallery index (experiments.index) instead of "
    "embedding the train split; the run defaults to the index's.")
_BACKEND = flags.DEFINE_enum(
    "backend", "exact", ["exact", "faiss"], "With --index: exact search, or "
    "approximate through the index's faiss graph (index build "
    "--approximate).")
_MISSES = flags.DEFINE_bool(
    "misses", False, "Query the test images whose nearest train image has "
    "another label (the run's 1-NN errors) instead of --images and "
    "--test_indices.")
_OUTPUT = flags.DEFINE_string(
    "output", None, "PNG to write (default: <workdir>/figures/query.png).")
_SHOWN_MISSES = 64  # Misses listed with their neighbours and drawn.


def _gallery_images(index: gallery_lib.Gallery, items: np.ndarray,
                    run: workdir_lib.TrainedRun) -> np.ndarray:
  """The images of gallery `items` ``[Q, k]``, for the grid: files read as
  the run reads them, dataset items from their split."""
  splits = {}
  images = []
  for reference in index.references[items.ravel()]:
    name, split, i = (reference.split(":") + ["", ""])[:3]
    if split in ("train", "test") and i.isdigit():
      if name not in splits:
        config = run.config.replace(dataset=name, train_classes=())
        splits[name] = dict(zip(("train", "test"), data.load_splits(config)))
      images.append(splits[name][split].images[int(i)])
    else:
      images.append(run.read_image(reference))
  images = np.stack([augment.center_crop(im[None], run.image_shape[0])[0]
                     for im in images])
  return images.reshape(*items.shape, *images.shape[1:])


def _misses(queries: np.ndarray, query_labels: np.ndarray,
            references: np.ndarray, reference_labels: np.ndarray,
            metric: str) -> np.ndarray:
  """``bool [Q]``: whether each query's nearest reference has another
  label (`queries` ``[Q, D]``, `references` ``[R, D]``)."""
  _, nearest = neighbors.nearest_neighbors(queries, references, k=1,
                                           metric=metric)
  return reference_labels[np.asarray(nearest)[:, 0]] != query_labels


def main(argv):
  del argv  # Checked by common.run.
  if not _WORKDIR.value and not _INDEX.value:
    raise ValueError("Give the trained run's directory (--workdir) or an "
                     "index (--index).")
  if _MISSES.value and (_IMAGES.value or _TEST_INDICES.value
                        or _INDEX.value):
    raise ValueError("--misses chooses the queries from the test split and "
                     "searches the train split: leave out --images, "
                     "--test_indices and --index.")
  if not (_IMAGES.value or _TEST_INDICES.value or _MISSES.value):
    raise ValueError("Give query images: --images, --test_indices or "
                     "--misses.")
  index = gallery_lib.load(_INDEX.value) if _INDEX.value else None
  workdir = _WORKDIR.value or index.info["workdir"]
  run = workdir_lib.restore(workdir)
  if index is not None:
    index.check_run(workdir, run.step, json.loads(run.config.to_json()))
  test = None
  if _TEST_INDICES.value or index is None:
    references, test = data.load_splits(run.config)
  try:
    indices = [int(i) for i in _TEST_INDICES.value]
  except ValueError:
    raise ValueError(f"test_indices must be integers, got "
                     f"{_TEST_INDICES.value}.") from None
  bad = [i for i in indices if not 0 <= i < len(test)]
  if bad:
    raise ValueError(f"test_indices {bad} outside [0, {len(test)}).")
  if index is None:
    reference_embeddings = run.embedder(references.images)
  if _MISSES.value:
    seen = np.flatnonzero(np.isin(test.labels, references.labels))
    misses = seen[_misses(run.embedder(test.images[seen]), test.labels[seen],
                          reference_embeddings, references.labels,
                          run.config.metric)]
    print(f"{len(misses)} misses among the {len(seen)} test images of the "
          "train split's classes: "
          + ", ".join(f"test[{i}]" for i in misses))
    indices = misses[:_SHOWN_MISSES].tolist()
    if not indices:
      print(f"Step {run.step} of {workdir}; nothing to draw.")
      return
  images = [run.read_image(p, invert=_INVERT.value)
            for p in _IMAGES.value] + [test.images[i] for i in indices]
  labels = [-1] * len(_IMAGES.value) + [int(test.labels[i]) for i in indices]
  images = np.stack(images)
  queries = run.embedder(images)
  if index is None:
    d, items = neighbors.nearest_neighbors(
        queries, reference_embeddings, k=_K.value,
        metric=run.config.metric)
    d, items = np.asarray(d), np.asarray(items)
    names = np.array([f"train[{r}]" for r in range(len(references.labels))])
    item_labels, classes = references.labels, references.class_names
    neighbor_images = references.images[items]
  else:
    d, items = index.search(queries, _K.value, backend=_BACKEND.value)
    names, item_labels = index.references, index.labels
    classes = index.info.get("class_names")
    neighbor_images = _gallery_images(index, items, run)
  query_names = list(_IMAGES.value) + [f"test[{i}]" for i in indices]

  def label_of(item):
    label = int(item_labels[item])
    if label < 0:
      return ""
    return f"{classes[label] if classes else f'label {label}'}, "

  for name, row, dist in zip(query_names, items, d):
    print(f"{name}: " + ", ".join(f"{names[r]} ({label_of(r)}d={x:.3f})"
                                  for r, x in zip(row, dist)))
  output = _OUTPUT.value or os.path.join(workdir, "figures", "query.png")
  plotting.retrieval_grid(images, np.array(labels), neighbor_images,
                          np.asarray(item_labels)[items], output,
                          neighbor_distances=d, class_names=classes)
  print(f"Step {run.step} of {workdir}; wrote {output}")


if __name__ == "__main__":
  common.run(main)
