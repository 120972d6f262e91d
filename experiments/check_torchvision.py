r"""Checks the ResNets against torchvision's: the same weights, the same
images, the same pooled features.

For each model, torchvision builds the network (random weights, seeded, with
random running statistics in every batch norm so that they take part, or the
weights of --weights), saves its state dict with ``safetensors.torch``,
tripletjax loads that file the way ``--init_from`` does, and both embed the
same random ``uint8`` images in evaluation mode with ImageNet's input
normalisation. Prints, per model, the largest absolute difference of the
pooled features (the backbone's output, before the embedding head) and that
difference relative to the features' largest magnitude.

Needs PyTorch and torchvision beside tripletjax's requirements: a separate
environment, never a dependency of the project (BUILD.md, "Checking against
torchvision"); nothing is downloaded.

  python -m experiments.check_torchvision --models=resnet18,resnet50

Expected: a difference of at most 1e-4 for every model (about 1e-6 for
resnet18 and 1e-5 for resnet50 at 224 pixels on the CPU), and "ok".
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
                   seed: int) -> tuple[np.ndarray, str]:
  """torchvision's pooled features of `images` ``uint8 [N, H, W, 3]``, and
  the safetensors file of the weights it used."""
  import safetensors.torch  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  import torchvision  # pylint: disable=g-import-not-at-top

  torch.manual_seed(seed)
  network = getattr(torchvision.models, name)(weights=None)
  if state_path:
    network.load_state_dict(safetensors.torch.load_file(state_path))
  else:
    with torch.no_grad():
      for module in network.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
          module.running_mean.normal_(0.0, 0.1)
          module.running_var.uniform_(0.5, 2.0)
          module.weight.uniform_(0.5, 1.5)
          module.bias.normal_(0.0, 0.1)
    state_path = os.path.join(tempfile.mkdtemp(), f"{name}.safetensors")
    safetensors.torch.save_file(network.state_dict(), state_path)
  network.fc = torch.nn.Identity()
  network.eval()
  mean, std = models.INPUT_NORMS["imagenet"]
  x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
  x = (x - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]
  with torch.no_grad():
    return network(x).numpy(), state_path


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
        f"{'max |diff|':>11} {'relative':>9}")
  worst = 0.0
  for name in _MODELS.value:
    expected, state_path = torch_features(name, _WEIGHTS.value, images,
                                          _SEED.value)
    got = tripletjax_features(name, state_path, images)
    diff = float(np.max(np.abs(got - expected)))
    scale = float(np.max(np.abs(expected)))
    worst = max(worst, diff)
    print(f"{name:<10} {expected.shape[1]:>8} {scale:>12.4g} {diff:>11.2e} "
          f"{diff / scale:>9.1e}")
  if worst > _TOLERANCE.value:
    raise SystemExit(f"Largest difference {worst:.2e} exceeds "
                     f"--tolerance={_TOLERANCE.value:g}.")
  print(f"ok: every difference <= {_TOLERANCE.value:g} "
        f"({size} x {size} pixels, {_IMAGES.value} images)")


if __name__ == "__main__":
  common.run(main)
