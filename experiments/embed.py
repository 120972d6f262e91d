r"""Embeds images with a trained run or a backbone, into an .npz file.

The network is a trained run's (--workdir; its newest checkpoint, without
its training data) or a backbone built by name (--model) from published
weights (--init_from, a safetensors file with torchvision / timm names). The
images are a folder's files (--images: read in name order, nested folders
included, decoded as the photo cache decodes them, shorter side to the
network's input size and centre crop) or a dataset's splits
(--dataset=NAME or NAME:SPLIT, any dataset that --dataset of training
takes). Images are embedded batch by batch, so memory stays bounded whatever
their number. Writes ``embeddings`` (float32 [N, D]; with
--features=backbone a ResNet's pooled features before the head), ``labels``
and ``split``/``index`` (for a dataset) or ``paths`` (relative to
--images), and ``settings`` (JSON: the run's settings and step, or the
backbone's).

  python -m experiments.embed --workdir=runs/mnist-batch_all-312dc519 \
      --dataset=mnist:test --output=mnist_test.npz
  python -m experiments.embed --model=resnet50 --init_from=r50.safetensors \
      --images=photos/ --output=photos.npz

Expected: one line with the number of images and the embedding size (64 for
the main job; 2,048 for a ResNet-50's backbone features, 512 for a
ResNet-18's).
"""

import dataclasses
import functools
import json
from typing import Callable

from absl import flags
from flax import nnx
import numpy as np

from experiments import common
from tripletjax import config as config_lib
from tripletjax import embedding
from tripletjax import models
from tripletjax import workdir as workdir_lib
from tripletjax.data import images as images_lib
from tripletjax.evaluation import Embedder
from tripletjax.models import weights

_WORKDIR = common.define_trained_run_flag()
_MODEL = flags.DEFINE_string(
    "model", None, "Instead of a trained run: a network by name (resnet50, "
    "...).")
_INIT_FROM = flags.DEFINE_string(
    "init_from", None, "Its weights: a safetensors file (torchvision / timm "
    "names).")
_FEATURES = flags.DEFINE_enum(
    "features", None, ["backbone", "embedding"],
    "backbone: a ResNet's pooled features before the head (the default with "
    "--model); embedding: the network's output (the default with "
    "--workdir).")
_IMAGES = flags.DEFINE_string("images", None, "A folder of image files.")
_DATASET = flags.DEFINE_string(
    "dataset", None, "A dataset instead: NAME (every split) or NAME:SPLIT "
    "(train or test), as --dataset of training names it.")
_OUTPUT = flags.DEFINE_string("output", None, "The .npz file to write.")
_IMAGE_SIZE = flags.DEFINE_integer("image_size", 224,
                                   "With --model: the network's input.")
_INPUT_NORM = flags.DEFINE_string(
    "input_norm", "imagenet", "With --model: input normalisation, unit or "
    "imagenet.")
_EMBEDDING_DIM = flags.DEFINE_integer(
    "embedding_dim", 64, "With --model: size of the head's output.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 64, "Images per call.")


def _network() -> tuple[Embedder, config_lib.Config, dict, Callable]:
  """The embedder, the settings that describe its input, the settings to
  record, and the reader of an image file."""
  if bool(_WORKDIR.value) == bool(_MODEL.value):
    raise ValueError("Give a trained run (--workdir) or a network "
                     "(--model), one of the two.")
  if _WORKDIR.value:
    if _FEATURES.value == "backbone":
      raise ValueError("--features=backbone goes with --model; a trained "
                       "run embeds with its head.")
    run = workdir_lib.restore(_WORKDIR.value)
    embedder = dataclasses.replace(run.embedder, batch_size=_BATCH_SIZE.value)
    size, _, channels = run.image_shape
    config = run.config.replace(image_size=size, channels=channels)
    return embedder, config, {"workdir": _WORKDIR.value, "step": run.step,
                              "settings": json.loads(run.config.to_json())
                              }, run.read_image
  size = _IMAGE_SIZE.value
  model = models.create(_MODEL.value, image_shape=(size, size, 3), seed=0,
                        embedding_dim=_EMBEDDING_DIM.value,
                        input_norm=_INPUT_NORM.value)
  if _INIT_FROM.value:
    weights.load_torchvision(model, _INIT_FROM.value)
  graphdef, params, batch_stats = nnx.split(model, nnx.Param, nnx.BatchStat)
  backbone = _FEATURES.value in (None, "backbone")
  config = config_lib.Config(model=_MODEL.value, image_size=size, channels=3,
                             input_norm=_INPUT_NORM.value)
  return (Embedder(graphdef, params, batch_stats, _BATCH_SIZE.value, size,
                   backbone),
          config, {"model": _MODEL.value, "init_from": _INIT_FROM.value,
                   "features": "backbone" if backbone else "embedding",
                   "image_size": size, "input_norm": _INPUT_NORM.value},
          functools.partial(_read_photo, size=size))


def _read_photo(path: str, size: int) -> np.ndarray:
  """An image file decoded as the photo cache decodes it."""
  try:
    return images_lib.decode_file(path, size=size, channels=3)
  except (OSError, ValueError, SyntaxError) as e:
    raise ValueError(f"Cannot read image file {path!r}: {e}") from None


def main(argv):
  del argv  # Checked by common.run.
  if bool(_IMAGES.value) == bool(_DATASET.value):
    raise ValueError("Give a folder (--images) or a dataset (--dataset), "
                     "one of the two.")
  if not _OUTPUT.value:
    raise ValueError("Give --output.")
  # The files are listed before the network loads: a wrong folder fails at
  # once.
  paths = embedding.image_files(_IMAGES.value) if _IMAGES.value else None
  embedder, config, settings, read = _network()
  if _IMAGES.value:
    arrays = {"embeddings": embedding.embed_folder(
        embedder, read, _IMAGES.value, paths), "paths": np.array(paths)}
  else:
    arrays = embedding.embed_dataset(embedder, config, _DATASET.value)
  np.savez(_OUTPUT.value, settings=np.array(json.dumps(settings)), **arrays)
  n, d = arrays["embeddings"].shape
  print(f"Embedded {n} images of {_IMAGES.value or _DATASET.value} into "
        f"{d}-d {settings.get('features', 'embedding')} features: "
        f"{_OUTPUT.value}")


if __name__ == "__main__":
  common.run(main)
