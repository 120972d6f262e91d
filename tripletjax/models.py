"""Embedding networks (Flax NNX), chosen by name, and the embedding function.

Each network maps a batch of images ``[B, H, W, C]`` (float, already
`preprocess`-ed) to embeddings ``[B, embedding_dim]``, L2-normalised unless
told otherwise. `embed` is the whole function from ``uint8`` images to
embeddings, the one that evaluation and export use.
"""

from __future__ import annotations

import functools
from typing import Sequence

from flax import nnx
import jax
import jax.numpy as jnp

from tripletjax import distances


def max_pool_2x2(x: jax.Array) -> jax.Array:
  """2x2 max-pooling with stride 2 ("VALID": an odd last row or column is
  dropped), written as a reshape and a max.

  Same values as ``nnx.max_pool(x, (2, 2), strides=(2, 2))``. Its gradient
  is a cheap elementwise select, where XLA's CPU backend lowers the
  gradient of `lax.reduce_window` to ``select_and_scatter``, the slowest
  part of the reference CNN's train step on a CPU.
  At tied maxima the gradient is shared among the tied inputs instead of
  going to the first one.

  Args:
    x: ``[B, H, W, C]``.

  Returns:
    ``[B, H // 2, W // 2, C]``.
  """
  b, h, w, c = x.shape
  x = x[:, :h // 2 * 2, :w // 2 * 2]
  return x.reshape(b, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


class CNN(nnx.Module):
  """3x3 convolutions with ReLU and 2x2 max-pooling, then two dense layers.

  With the defaults this is the reference network of the benchmarks:
  conv 32 -> pool -> conv 64 -> pool -> dense 256 -> dense 64.
  """

  def __init__(self, *, in_channels: int, image_size: tuple[int, int],
               widths: Sequence[int] = (32, 64), hidden_dim: int = 256,
               embedding_dim: int = 64, normalize: bool = True,
               rngs: nnx.Rngs):
    channels = (in_channels, *widths)
    self.convs = nnx.List([
        nnx.Conv(c_in, c_out, kernel_size=(3, 3), padding="SAME", rngs=rngs)
        for c_in, c_out in zip(channels[:-1], channels[1:])])
    height, width = image_size
    for _ in widths:
      height, width = height // 2, width // 2
    if height < 1 or width < 1:
      raise ValueError(
          f"{len(widths)} pooling stages reduce images of size {image_size} "
          "to nothing; use fewer widths.")
    self.hidden = nnx.Linear(height * width * widths[-1], hidden_dim,
                             rngs=rngs)
    self.out = nnx.Linear(hidden_dim, embedding_dim, rngs=rngs)
    self.normalize = normalize

  def __call__(self, x: jax.Array) -> jax.Array:
    for conv in self.convs:
      x = max_pool_2x2(nnx.relu(conv(x)))
    x = nnx.relu(self.hidden(x.reshape(x.shape[0], -1)))
    x = self.out(x)
    return distances.l2_normalize(x) if self.normalize else x


class MLP(nnx.Module):
  """Flattened pixels -> tanh hidden layers -> linear embedding."""

  def __init__(self, *, in_channels: int, image_size: tuple[int, int],
               widths: Sequence[int] = (256,), embedding_dim: int = 64,
               normalize: bool = True, rngs: nnx.Rngs, **unused):
    del unused  # CNN-only settings (hidden_dim).
    sizes = (image_size[0] * image_size[1] * in_channels, *widths)
    self.layers = nnx.List([nnx.Linear(a, b, rngs=rngs)
                            for a, b in zip(sizes[:-1], sizes[1:])])
    self.out = nnx.Linear(sizes[-1], embedding_dim, rngs=rngs)
    self.normalize = normalize

  def __call__(self, x: jax.Array) -> jax.Array:
    x = x.reshape(x.shape[0], -1)
    for layer in self.layers:
      x = jnp.tanh(layer(x))
    x = self.out(x)
    return distances.l2_normalize(x) if self.normalize else x


MODELS = {"cnn": CNN, "mlp": MLP}


def preprocess(images: jax.Array) -> jax.Array:
  """``uint8`` images to the networks' input: ``float32`` in ``[0, 1]``."""
  return images.astype(jnp.float32) / 255.0


@functools.partial(jax.jit, static_argnums=0)
def embed(graphdef: nnx.GraphDef, params: nnx.State, images: jax.Array
          ) -> jax.Array:
  """``uint8 [B, H, W, C]`` images to ``[B, D]`` embeddings.

  Args:
    graphdef: the network's structure (from `nnx.split`); equal structures
      share one compilation.
    params: its parameters.
    images: ``uint8 [B, H, W, C]``.
  """
  return nnx.merge(graphdef, params)(preprocess(images))


def create(name: str, *, image_shape: tuple[int, int, int], seed: int,
           **settings) -> nnx.Module:
  """Builds the model `name` for images of `image_shape` ``(H, W, C)``.

  Args:
    name: a key of `MODELS`.
    image_shape: ``(height, width, channels)`` of the input images.
    seed: seed of the parameter initialisation.
    **settings: the model's keyword arguments (widths, embedding_dim, ...).

  Returns:
    The initialised module.
  """
  if name not in MODELS:
    raise ValueError(f"model must be one of {tuple(MODELS)}, got {name!r}.")
  height, width, channels = image_shape
  return MODELS[name](in_channels=channels, image_size=(height, width),
                      rngs=nnx.Rngs(seed), **settings)
