"""The small networks for digits: a CNN and a tanh MLP (Flax NNX)."""

from __future__ import annotations

from typing import Sequence

from flax import nnx
import jax
import jax.numpy as jnp

from tripletjax import distances
from tripletjax.models.batch_norm import BatchNorm


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


NORMS = ("none", "batch", "group", "layer")


def _norm_layer(kind: str, features: int, *, freeze_bn: bool,
                axis_name: str | None, rngs: nnx.Rngs) -> nnx.Module | None:
  """A normalisation layer over `features` channels, by `NORMS` name."""
  if kind == "batch":
    return BatchNorm(features, momentum=0.9, use_running_average=freeze_bn,
                     axis_name=axis_name, rngs=rngs)
  if kind == "group":  # Groups of 8 channels, at least one group.
    return nnx.GroupNorm(features, num_groups=max(1, features // 8),
                         rngs=rngs)
  if kind == "layer":
    return nnx.LayerNorm(features, rngs=rngs)
  return None


class CNN(nnx.Module):
  """3x3 convolutions with ReLU and 2x2 max-pooling, then two dense layers.

  With the defaults this is the reference network of the benchmarks:
  conv 32 -> pool -> conv 64 -> pool -> dense 256 -> dense 64. `norm` puts
  a normalisation layer after each convolution (batch norm's statistics
  leave out the rows `mask` excludes).
  """

  def __init__(self, *, in_channels: int, image_size: tuple[int, int],
               widths: Sequence[int] = (32, 64), hidden_dim: int = 256,
               embedding_dim: int = 64, normalize: bool = True,
               norm: str = "none", freeze_bn: bool = False,
               axis_name: str | None = None, dtype=None, rngs: nnx.Rngs):
    if norm not in NORMS:
      raise ValueError(f"norm must be one of {NORMS}, got {norm!r}.")
    channels = (in_channels, *widths)
    self.convs = nnx.List([
        nnx.Conv(c_in, c_out, kernel_size=(3, 3), padding="SAME", dtype=dtype,
                 rngs=rngs)
        for c_in, c_out in zip(channels[:-1], channels[1:])])
    self.norms = nnx.List([
        _norm_layer(norm, c, freeze_bn=freeze_bn, axis_name=axis_name,
                    rngs=rngs) for c in widths])
    height, width = image_size
    for _ in widths:
      height, width = height // 2, width // 2
    if height < 1 or width < 1:
      raise ValueError(
          f"{len(widths)} pooling stages reduce images of size {image_size} "
          "to nothing; use fewer widths.")
    self.hidden = nnx.Linear(height * width * widths[-1], hidden_dim,
                             dtype=dtype, rngs=rngs)
    self.out = nnx.Linear(hidden_dim, embedding_dim, rngs=rngs)
    self.normalize = normalize

  def __call__(self, x: jax.Array, mask: jax.Array | None = None
               ) -> jax.Array:
    for conv, norm in zip(self.convs, self.norms):
      x = conv(x)
      if isinstance(norm, nnx.BatchNorm):
        x = norm(x, mask=mask)
      elif norm is not None:
        x = norm(x)
      x = max_pool_2x2(nnx.relu(x))
    x = nnx.relu(self.hidden(x.reshape(x.shape[0], -1)))
    x = self.out(x.astype(jnp.float32))
    return distances.l2_normalize(x) if self.normalize else x


class MLP(nnx.Module):
  """Flattened pixels -> tanh hidden layers -> linear embedding."""

  def __init__(self, *, in_channels: int, image_size: tuple[int, int],
               widths: Sequence[int] = (256,), embedding_dim: int = 64,
               normalize: bool = True, dtype=None, rngs: nnx.Rngs, **unused):
    del unused  # The CNN's settings (hidden_dim, norm).
    sizes = (image_size[0] * image_size[1] * in_channels, *widths)
    self.layers = nnx.List([nnx.Linear(a, b, dtype=dtype, rngs=rngs)
                            for a, b in zip(sizes[:-1], sizes[1:])])
    self.out = nnx.Linear(sizes[-1], embedding_dim, rngs=rngs)
    self.normalize = normalize

  def __call__(self, x: jax.Array, mask: jax.Array | None = None
               ) -> jax.Array:
    del mask  # No batch statistics.
    x = x.reshape(x.shape[0], -1)
    for layer in self.layers:
      x = jnp.tanh(layer(x))
    x = self.out(x.astype(jnp.float32))
    return distances.l2_normalize(x) if self.normalize else x
