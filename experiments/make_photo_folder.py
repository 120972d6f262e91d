r"""Writes a folder of generated photo-like images, one sub-folder per class
(`experiments.shapes`: a shape and colour per class, varied sizes and
formats, some files in nested folders).

  python -m experiments.make_photo_folder --output=/tmp/shapes \
      --classes=12 --per_class=60
  python -m experiments.train --dataset=folder:/tmp/shapes --image_size=64

Expected: the folder, and one line giving the number of images written.
"""

from __future__ import annotations

from absl import flags

from experiments import common
from experiments import shapes

_OUTPUT = flags.DEFINE_string("output", None, "The folder to write.")
_CLASSES = flags.DEFINE_integer("classes", 12, "Number of classes.")
_PER_CLASS = flags.DEFINE_integer("per_class", 60, "Images per class.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the drawing.")


def main(argv):
  del argv  # Checked by common.run.
  if not _OUTPUT.value:
    raise ValueError("Give the folder to write: --output.")
  count = shapes.write_folder(_OUTPUT.value, classes=_CLASSES.value,
                              per_class=_PER_CLASS.value, seed=_SEED.value)
  print(f"Wrote {count} images of {_CLASSES.value} classes to "
        f"{_OUTPUT.value}.")


if __name__ == "__main__":
  common.run(main)
