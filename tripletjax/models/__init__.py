"""Embedding networks (Flax NNX), chosen by name, and the embedding function.

* `cnn`: the CNN and the tanh MLP for digits (``cnn``, ``mlp``);
* `resnet`: torchvision's ResNet-18/34/50 (``resnet18``, ...), and their
  ``_small`` variants for 28-64 pixel inputs;
* `weights`: torchvision / timm weights from a safetensors file.

Each network maps images ``[B, H, W, C]`` (``float32`` in [0, 1], as
`preprocess` makes them) and an optional mask of the rows that count in
batch statistics to embeddings ``[B, embedding_dim]``, L2-normalised unless
told otherwise. Its input normalisation (``input_norm``) is part of it.
`embed` is the whole function from ``uint8`` images to embeddings in
evaluation mode, the one that evaluation and export use.
"""

from __future__ import annotations

import functools

from flax import nnx
import jax
import jax.numpy as jnp

from tripletjax import distances
from tripletjax.models.cnn import CNN
from tripletjax.models.cnn import MLP
from tripletjax.models.cnn import NORMS
from tripletjax.models.resnet import ARCHITECTURES
from tripletjax.models.resnet import ResNet

__all__ = ["CNN", "DTYPES", "INPUT_NORMS", "MLP", "MODELS", "NORMS",
           "Network", "ResNet", "create", "embed", "preprocess",
           "test_time_views"]

MODELS = {
    "cnn": CNN,
    "mlp": MLP,
    **{name: functools.partial(ResNet, name) for name in ARCHITECTURES},
    **{f"{name}_small": functools.partial(ResNet, name, small=True)
       for name in ARCHITECTURES},
}
# Mean and standard deviation per channel of the inputs in [0, 1].
INPUT_NORMS = {"unit": None,
               "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))}
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def preprocess(images: jax.Array) -> jax.Array:
  """``uint8`` images to ``float32`` in ``[0, 1]``."""
  return images.astype(jnp.float32) / 255.0


class Network(nnx.Module):
  """A network of `MODELS` behind its input normalisation."""

  def __init__(self, network: nnx.Module, input_norm: str):
    self.network = network
    self.input_norm = input_norm

  def normalize_input(self, x: jax.Array) -> jax.Array:
    stats = INPUT_NORMS[self.input_norm]
    if stats is None:
      return x
    mean, std = (jnp.asarray(v, x.dtype) for v in stats)
    return (x - mean) / std

  def __call__(self, x: jax.Array, mask: jax.Array | None = None
               ) -> jax.Array:
    return self.network(self.normalize_input(x), mask)

  def backbone(self, x: jax.Array) -> jax.Array:
    """A ResNet's pooled features before the embedding head."""
    if not isinstance(self.network, ResNet):
      raise ValueError("Backbone features are a ResNet's; this network is a "
                       f"{type(self.network).__name__}.")
    return self.network.backbone(self.normalize_input(x))


def test_time_views(x: jax.Array, flip: bool = False, shift: int = 0
                    ) -> list[jax.Array]:
  """The views of images ``x`` ``[B, H, W, C]`` that test-time augmentation
  averages: with `shift`, ``x`` translated by every whole-pixel ``(dy, dx)``
  with ``|dy|, |dx| <= shift`` (``(2 shift + 1)^2`` views, ``x`` itself
  among them; the vacated border zero, as training's
  `data.augment.random_shift` fills it), else ``x`` alone; with `flip`,
  also the left-right mirror of each. Each view ``[B, H, W, C]``."""
  height, width = x.shape[1:3]
  padded = jnp.pad(x, ((0, 0), (shift, shift), (shift, shift), (0, 0)))
  views = [padded[:, top:top + height, left:left + width]
           for top in range(2 * shift + 1) for left in range(2 * shift + 1)]
  if flip:
    views += [jnp.flip(v, axis=2) for v in views]
  return views


@functools.partial(jax.jit, static_argnums=(0, 4, 5, 6))
def embed(graphdef: nnx.GraphDef, params: nnx.State, batch_stats: nnx.State,
          images: jax.Array, backbone: bool = False,
          flip: bool = False, shift: int = 0) -> jax.Array:
  """``uint8 [B, H, W, C]`` images to ``[B, D]`` embeddings, in evaluation
  mode (batch norm with its running averages).

  Args:
    graphdef: the network's structure (`create`, then `nnx.split`); equal
      structures share one compilation.
    params: its parameters.
    batch_stats: its batch statistics (empty for networks without).
    images: ``uint8 [B, H, W, C]``.
    backbone: a ResNet's pooled features instead (``[B, features]``).
    flip, shift: test-time augmentation: the mean embedding over each
      image's `test_time_views`, L2-normalised again where the network's
      embeddings are.
  """
  model = nnx.merge(graphdef, params, batch_stats)
  model.eval()
  network = model.backbone if backbone else model
  views = test_time_views(preprocess(images), flip, shift)
  if len(views) == 1:
    return network(views[0])
  # One view at a time: peak memory stays that of one batch.
  mean = sum(network(v) for v in views) / len(views)
  normalized = not backbone and model.network.normalize
  return distances.l2_normalize(mean) if normalized else mean


def create(name: str, *, image_shape: tuple[int, int, int], seed: int,
           input_norm: str = "unit", dtype: str = "float32",
           **settings) -> Network:
  """Builds network `name` for images of `image_shape` ``(H, W, C)``.

  Args:
    name: a key of `MODELS`.
    image_shape: ``(height, width, channels)`` of the input images.
    seed: seed of the parameter initialisation.
    input_norm: a key of `INPUT_NORMS`.
    dtype: a key of `DTYPES`: what convolutions and matrix products compute
      in (parameters, the embedding and the loss stay ``float32``).
    **settings: the network's keyword arguments (widths, embedding_dim,
      norm, freeze_bn, axis_name, ...).

  Returns:
    The initialised network, in training mode.
  """
  if name not in MODELS:
    raise ValueError(f"model must be one of {tuple(MODELS)}, got {name!r}.")
  if input_norm not in INPUT_NORMS:
    raise ValueError(f"input_norm must be one of {tuple(INPUT_NORMS)}, got "
                     f"{input_norm!r}.")
  height, width, channels = image_shape
  if input_norm == "imagenet" and channels != 3:
    raise ValueError(f"input_norm 'imagenet' needs 3 channels, the images "
                     f"have {channels}.")
  return _initialised(jax.random.key(seed), name=name,
                      image_shape=(height, width, channels),
                      input_norm=input_norm,
                      dtype=dtype, settings=tuple(sorted(settings.items())))


# Initialised in one compiled program, not op by op: eagerly every parameter
# shape compiled its own random draw (creating the main job's CNN took up to
# twice as long; docs/performance.md). The same numbers bit for bit. The key
# is an argument and the rest static: a network made again with the same
# settings (the runs of a study, say) reuses the program.
@functools.partial(nnx.jit, static_argnames=("name", "image_shape",
                                             "input_norm", "dtype",
                                             "settings"))
def _initialised(key: jax.Array, *, name: str,
                 image_shape: tuple[int, int, int], input_norm: str,
                 dtype: str, settings: tuple[tuple[str, object], ...]
                 ) -> Network:
  height, width, channels = image_shape
  return Network(MODELS[name](in_channels=channels, image_size=(height, width),
                              dtype=DTYPES[dtype], rngs=nnx.Rngs(key),
                              **dict(settings)), input_norm)
