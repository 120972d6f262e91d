r"""Shows the nearest images of the reference set for query images.

Given a trained run and query images (image files, or indices into the test
split), embeds them with the run's latest checkpoint and writes a grid of
each query and its nearest reference images (the train split), framed green
or red by label when the query's label is known.

  python -m experiments.retrieve --workdir=runs/mnist --test_indices=0,1,2,3
  python -m experiments.retrieve --workdir=runs/mnist --images=a.png,b.png \
      --invert   # dark strokes on a light background, unlike MNIST

Expected: one line per query listing its 5 nearest train images with their
labels and distances (for the main job's run, the test digits' neighbours
carry their label 99 % of the time), and the grid in figures/query.png.
"""

import os

from absl import flags
import numpy as np
from PIL import Image

from experiments import common
from tripletjax import data
from tripletjax import neighbors
from tripletjax import plotting
from tripletjax import workdir as workdir_lib
from tripletjax.data import images as images_lib

_WORKDIR = common.define_trained_run_flag()
_IMAGES = flags.DEFINE_list("images", [], "Query image files (any format "
                            "Pillow reads; converted to the run's shape).")
_TEST_INDICES = flags.DEFINE_list("test_indices", [],
                                  "Query images by index in the test split.")
_INVERT = flags.DEFINE_bool("invert", False,
                            "Invert the image files' intensities.")
_K = flags.DEFINE_integer("k", 5, "Neighbours per query.")
_OUTPUT = flags.DEFINE_string(
    "output", None, "PNG to write (default: <workdir>/figures/query.png).")


def read_image(path: str, run: workdir_lib.TrainedRun, invert: bool
               ) -> np.ndarray:
  """An image file as the run's images are: photos decoded as the cache
  decodes them (shorter side to the stored size, centre crop), other images
  resized to the network's input."""
  if not os.path.exists(path):
    raise FileNotFoundError(f"No image file {path!r}.")
  height, width, channels = run.image_shape
  try:
    if run.config.is_photo_dataset:
      image = images_lib.decode_file(path, size=run.config.stored_size,
                                     channels=channels)
    else:
      with Image.open(path) as opened:
        image = np.asarray(images_lib.to_mode(opened, channels).resize(
            (width, height), Image.BILINEAR)).reshape(run.image_shape)
  except (OSError, ValueError, SyntaxError) as e:
    raise ValueError(f"Cannot read image file {path!r}: {e}") from None
  return 255 - image if invert else image


def main(argv):
  del argv  # Checked by common.run.
  if not _WORKDIR.value:
    raise ValueError("Give the trained run's directory: --workdir.")
  if not _IMAGES.value and not _TEST_INDICES.value:
    raise ValueError("Give query images: --images or --test_indices.")
  run = workdir_lib.restore(_WORKDIR.value)
  references, test = data.load_splits(run.config)
  try:
    indices = [int(i) for i in _TEST_INDICES.value]
  except ValueError:
    raise ValueError(f"test_indices must be integers, got "
                     f"{_TEST_INDICES.value}.") from None
  bad = [i for i in indices if not 0 <= i < len(test)]
  if bad:
    raise ValueError(f"test_indices {bad} outside [0, {len(test)}).")
  images = [read_image(p, run, _INVERT.value)
            for p in _IMAGES.value] + [test.images[i] for i in indices]
  labels = [-1] * len(_IMAGES.value) + [int(test.labels[i]) for i in indices]
  images = np.stack(images)
  d, index = neighbors.nearest_neighbors(
      run.embedder(images), run.embedder(references.images), k=_K.value,
      metric=run.config.metric)
  d, index = np.asarray(d), np.asarray(index)
  names = list(_IMAGES.value) + [f"test[{i}]" for i in indices]
  classes = references.class_names
  for name, row, dist in zip(names, index, d):
    print(f"{name}: " + ", ".join(
        f"train[{r}] ({classes[references.labels[r]] if classes else 'label'}"
        f"{'' if classes else ' ' + str(references.labels[r])}, d={x:.3f})"
        for r, x in zip(row, dist)))
  output = _OUTPUT.value or os.path.join(_WORKDIR.value, "figures",
                                         "query.png")
  plotting.retrieval_grid(images, np.array(labels), references.images[index],
                          references.labels[index], output,
                          neighbor_distances=d,
                          class_names=references.class_names)
  print(f"Step {run.step} of {_WORKDIR.value}; wrote {output}")


if __name__ == "__main__":
  common.run(main)
