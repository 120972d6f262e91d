r"""Embeds every image file of a folder with a backbone, into an .npz file.

The network is built by name (--model) and starts from published weights
(--init_from, a safetensors file with torchvision / timm names); files are
read in name order (nested folders included), decoded as the photo cache
decodes them (shorter side to --image_size, centre crop; an image already
that size is used as it is), and embedded in batches, so memory stays
bounded whatever the number of images. Writes ``embeddings`` (float32
[N, F]: with --features=backbone the pooled features before the head) and
``paths`` (relative to --images).

  python -m experiments.embed --model=resnet50 --init_from=r50.safetensors \
      --features=backbone --images=photos/ --output=photos.npz

Expected: one line with the number of images and the embedding size (2,048
for a ResNet-50's backbone, 512 for a ResNet-18's).
"""

import os

from absl import flags
from flax import nnx
import numpy as np

from experiments import common
from tripletjax import models
from tripletjax.data import folders
from tripletjax.data import images as images_lib
from tripletjax.models import weights

_MODEL = flags.DEFINE_string("model", "resnet50", "The network, by name.")
_INIT_FROM = flags.DEFINE_string(
    "init_from", None, "Its weights: a safetensors file (torchvision / timm "
    "names).")
_FEATURES = flags.DEFINE_enum(
    "features", "backbone", ["backbone", "embedding"],
    "backbone: pooled features before the head; embedding: the head's output "
    "(random unless trained).")
_IMAGES = flags.DEFINE_string("images", None, "A folder of image files.")
_OUTPUT = flags.DEFINE_string("output", None, "The .npz file to write.")
_IMAGE_SIZE = flags.DEFINE_integer("image_size", 224, "The network's input.")
_INPUT_NORM = flags.DEFINE_string("input_norm", "imagenet",
                                  "Input normalisation: unit or imagenet.")
_EMBEDDING_DIM = flags.DEFINE_integer("embedding_dim", 64,
                                      "Size of the head's output.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 64, "Images per call.")


def image_files(folder: str) -> list[str]:
  """Image files under `folder`, by relative path, in name order."""
  found = []
  for directory, subdirs, names in os.walk(folder):
    subdirs.sort()
    found += [os.path.relpath(os.path.join(directory, n), folder)
              for n in sorted(names) if not n.startswith(".")
              and n.lower().endswith(folders.EXTENSIONS)]
  return sorted(found)


def main(argv):
  del argv  # Checked by common.run.
  for flag in (_IMAGES, _OUTPUT):
    if not flag.value:
      raise ValueError(f"Give --{flag.name}.")
  if not os.path.isdir(_IMAGES.value):
    raise ValueError(f"images {_IMAGES.value!r} is not a folder.")
  paths = image_files(_IMAGES.value)
  if not paths:
    raise ValueError(f"images {_IMAGES.value!r} holds no image files.")
  size = _IMAGE_SIZE.value
  model = models.create(_MODEL.value, image_shape=(size, size, 3), seed=0,
                        embedding_dim=_EMBEDDING_DIM.value,
                        input_norm=_INPUT_NORM.value)
  if _INIT_FROM.value:
    weights.load_torchvision(model, _INIT_FROM.value)
  graphdef, params, batch_stats = nnx.split(model, nnx.Param, nnx.BatchStat)
  backbone = _FEATURES.value == "backbone"
  out = []
  for start in range(0, len(paths), _BATCH_SIZE.value):
    chunk = paths[start:start + _BATCH_SIZE.value]
    batch = []
    for path in chunk:
      try:
        batch.append(images_lib.decode_file(
            os.path.join(_IMAGES.value, path), size=size, channels=3))
      except (OSError, ValueError, SyntaxError) as e:
        raise ValueError(f"Cannot read image file {path!r}: {e}") from None
    padded = np.zeros((_BATCH_SIZE.value, size, size, 3), np.uint8)
    padded[:len(batch)] = np.stack(batch)  # One shape, one compilation.
    out.append(np.asarray(models.embed(graphdef, params, batch_stats, padded,
                                       backbone))[:len(batch)])
  embeddings = np.concatenate(out).astype(np.float32)
  np.savez(_OUTPUT.value, embeddings=embeddings, paths=np.array(paths))
  print(f"Embedded {len(paths)} images of {_IMAGES.value} into "
        f"{embeddings.shape[1]}-d {_FEATURES.value} features: "
        f"{_OUTPUT.value}")


if __name__ == "__main__":
  common.run(main)
