r"""Checks the ResNets against torchvision's: the same weights, the same
images, the same pooled features.

For each model, torchvision builds the network (random weights, seeded,
with random affine parameters in every batch norm and running statistics
measured on other random images, so that they all take part; or the weights
of --weights), saves its state dict with ``safetensors.torch``,
tripletjax loads that file the way ``--init_from`` does, and both embed the
same random ``uint8`` images in evaluation mode with ImageNet's input
normalisation. Prints, per model, the largest absolute difference of the
pooled features (the backbone's output, before the embedding head), that
difference relative to the features' largest magnitude, and how far each of
the two float32 computations is from torchvision's in float64 (the rounding
of float32 alone).

Needs PyTorch and torchvision beside tripletjax's requirements: a separate
environment, never a dependency of the project (BUILD.md, "Checking against
torchvision"); nothing is downloaded.

  python -m experiments.check_torchvision --models=resnet18,resnet50

Expected: "ok", a difference of at most 1e-4 for every model (about 5e-6 for
resnet18 and 9e-5 for resnet50 at 224 pixels on the CPU, features of
magnitude about 2), and the two float32 computations about equally far from
float64: what differs is float32's rounding, not the network.
"""

import os
import tempfile

from absl import flags
from flax import nnx
import numpy as np

from experiments import common
from tripletjax import models
from tripletjax.models import resnet
from tripletjax.models import weights

_MODELS = flags.DEFINE_list("models", ["resnet18", "resnet50"],
                            "torchvision ResNets to compare.")
_WEIGHTS = flags.DEFINE_string(
    "weights", None, "A safetensors state dict to compare with instead of "
    "random weights (one model only).")
_IMAGE_SIZE = flags.DEFINE_integer("image_size", 224, "Input pixels.")
_IMAGES = flags.DEFINE_integer("images", 8, "Random images per model.")
_TOLERANCE = flags.DEFINE_float("tolerance", 1e-4,
                                "Largest absolute difference accepted.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of weights and images.")


def torch_features(name: str, state_path: str | None, images: np.ndarray,
                   seed: int) -> tuple[np.ndarray, np.ndarray, str]:
  """torchvision's pooled features of `images` ``uint8 [N, H, W, 3]`` in
  float32 and in float64, and the safetensors file of the weights it
  used."""
  import safetensors.torch  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  import torchvision  # pylint: disable=g-import-not-at-top

  torch.manual_seed(seed)
  network = getattr(torchvision.models, name)(weights=None)
  if state_path:
    network.load_state_dict(safetensors.torch.load_file(state_path))
  else:
    # Random affine parameters, and running statistics measured on other
    # random images (a cumulative average, as a trained network's describe
    # its data), so that every part of batch norm takes part and the
    # features keep a trained network's scale.
    norms = [m for m in network.modules()
             if isinstance(m, torch.nn.BatchNorm2d)]
    with torch.no_grad():
      for module in norms:
        module.weight.uniform_(0.5, 1.5)
        module.bias.normal_(0.0, 0.1)
        module.momentum = None
      network.train()
      network(_normalized(torch, np.random.default_rng(seed + 1).integers(
          0, 256, images.shape, np.uint8)))
    state_path = os.path.join(tempfile.mkdtemp(), f"{name}.safetensors")
    safetensors.torch.save_file(network.state_dict(), state_path)
  network.fc = torch.nn.Identity()
  network.eval()
  with torch.no_grad():
    features = network(_normalized(torch, images)).numpy()
    exact = network.double()(_normalized(torch, images).double()).numpy()
  return features, exact, state_path


def _normalized(torch, images: np.ndarray):
  """``uint8 [N, H, W, 3]`` to torch's ``[N, 3, H, W]`` input, normalised
  with ImageNet's statistics as ``--input_norm=imagenet`` does."""
  mean, std = models.INPUT_NORMS["imagenet"]
  x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
  return ((x - torch.tensor(mean)[:, None, None])
          / torch.tensor(std)[:, None, None])


def tripletjax_features(name: str, state_path: str,
                        images: np.ndarray) -> np.ndarray:
  """tripletjax's pooled features of the same images from the same file."""
  size = images.shape[1]
  model = models.create(name, image_shape=(size, size, 3), seed=0,
                        input_norm="imagenet")
  weights.load_torchvision(model, state_path)
  graphdef, params, batch_stats = nnx.split(model, nnx.Param, nnx.BatchStat)
  return np.asarray(models.embed(graphdef, params, batch_stats, images, True))


def main(argv):
  del argv  # Checked by common.run.
  unknown = [m for m in _MODELS.value if m not in resnet.ARCHITECTURES]
  if unknown:
    raise ValueError(f"models must be among {tuple(resnet.ARCHITECTURES)}, "
                     f"got {unknown}.")
  if _WEIGHTS.value and len(_MODELS.value) != 1:
    raise ValueError("--weights compares one model: give one in --models.")
  if _WEIGHTS.value and not os.path.isfile(_WEIGHTS.value):
    raise ValueError(f"weights {_WEIGHTS.value!r} is not a file.")
  rng = np.random.default_rng(_SEED.value)
  size = _IMAGE_SIZE.value
  images = rng.integers(0, 256, (_IMAGES.value, size, size, 3), np.uint8)
  print(f"{'model':<10} {'features':>8} {'max |torch|':>12} "
        f"{'max |diff|':>11} {'relative':>9} {'tripletjax-f64':>15} "
        f"{'torch-f64':>10}")
  worst = 0.0
  for name in _MODELS.value:
    expected, exact, state_path = torch_features(name, _WEIGHTS.value,
                                                 images, _SEED.value)
    got = tripletjax_features(name, state_path, images)
    diff = float(np.max(np.abs(got - expected)))
    scale = float(np.max(np.abs(expected)))
    worst = max(worst, diff)
    print(f"{name:<10} {expected.shape[1]:>8} {scale:>12.4g} {diff:>11.2e} "
          f"{diff / scale:>9.1e} {np.max(np.abs(got - exact)):>15.2e} "
          f"{np.max(np.abs(expected - exact)):>10.2e}")
  if worst > _TOLERANCE.value:
    raise SystemExit(f"Largest difference {worst:.2e} exceeds "
                     f"--tolerance={_TOLERANCE.value:g}.")
  print(f"ok: every difference <= {_TOLERANCE.value:g} "
        f"({size} x {size} pixels, {_IMAGES.value} images)")


if __name__ == "__main__":
  common.run(main)
