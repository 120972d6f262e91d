"""ResNets (Flax NNX) with torchvision's architecture and parameter names.

``resnet18``, ``resnet34`` and ``resnet50`` are torchvision's ResNets
exactly: a 7 x 7 stride-2 stem convolution and a 3 x 3 stride-2 max-pool,
four stages of basic blocks (18, 34) or bottlenecks (50) whose stride sits
on the 3 x 3 convolution (torchvision's "v1.5"), a 1 x 1 convolution with
batch norm on the shortcut where the shape changes, and global average
pooling; then the embedding head, a linear layer to ``embedding_dim``
(L2-normalised unless told otherwise) in place of the classifier. The
``_small`` variants swap the stem for a 3 x 3 stride-1 convolution without
max-pool, for 28-64 pixel inputs.

Attributes carry torchvision's names (``conv1``, ``bn1``,
``layer1[0].conv2``, ``layer2[0].downsample[1]``), so
`tripletjax.models.weights` maps a torchvision or timm state dict onto them
one to one.

Batch norm: statistics of the batch in training (rows masked out, padding,
take no part), running averages in evaluation (``model.eval()``); under
`jax.pmap` the statistics are reduced across ``axis_name``, under `jax.jit`
over a sharded batch they are the global batch's already. With
``freeze_bn`` the layers always use their running averages. (The running
variance is updated with the batch's biased variance, where PyTorch uses the
unbiased one: the same in evaluation, slightly different in training.)
"""

from __future__ import annotations

from flax import nnx
import jax
import jax.numpy as jnp

from tripletjax import distances
from tripletjax.models.batch_norm import BatchNorm

# Blocks per stage, and whether they are bottlenecks.
ARCHITECTURES = {
    "resnet18": ((2, 2, 2, 2), False),
    "resnet34": ((3, 4, 6, 3), False),
    "resnet50": ((3, 4, 6, 3), True),
}
WIDTHS = (64, 128, 256, 512)
EXPANSION = 4  # A bottleneck's output channels per width.


def conv_general_dilated(lhs: jax.Array, rhs: jax.Array, window_strides,
                         padding, lhs_dilation=None, rhs_dilation=None,
                         dimension_numbers=None, feature_group_count=1,
                         precision=None, **kwargs) -> jax.Array:
  """`jax.lax.conv_general_dilated` for NHWC inputs and HWIO kernels; where
  the output map is smaller than the kernel, as image patches times the
  kernel's matrix, the same numbers. There XLA's CPU convolution, or its
  gradient, takes 10 to 40 times longer (32 maps of 2 x 2 x 512 through a
  3 x 3 convolution, a ResNet's last stage at 64 pixels: 181 ms against
  5.1 ms forward, 366 against 13 ms for the gradients; 4 x 4 x 512 with stride
  2: 240 against 23 ms for the gradients, on two Zen 5 cores); elsewhere the
  patches are the slower way."""
  kh, kw = rhs.shape[:2]
  small = not isinstance(padding, str) and any(
      (size + lo + hi - k) // stride + 1 < k
      for size, (lo, hi), k, stride in zip(lhs.shape[1:3], padding, (kh, kw),
                                           window_strides))
  plain = (not small or feature_group_count != 1
           or any(d != 1 for d in (lhs_dilation or ()) + (rhs_dilation or ())))
  if plain:
    return jax.lax.conv_general_dilated(
        lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation,
        dimension_numbers, feature_group_count, precision=precision,
        **kwargs)
  kwargs.pop("out_sharding", None)
  # Patch features are ordered (input channel, kernel row, kernel column).
  patches = jax.lax.conv_general_dilated_patches(
      lhs, (kh, kw), window_strides, padding,
      dimension_numbers=dimension_numbers, precision=precision)
  matrix = jnp.transpose(rhs, (2, 0, 1, 3)).reshape(-1, rhs.shape[3])
  return jnp.dot(patches, matrix, precision=precision, **kwargs)


class _Layers:
  """Builds the convolutions and batch norms of one network alike."""

  def __init__(self, *, freeze_bn: bool, axis_name: str | None, dtype,
               rngs: nnx.Rngs):
    self.freeze_bn, self.axis_name = freeze_bn, axis_name
    self.dtype, self.rngs = dtype, rngs

  def conv(self, c_in: int, c_out: int, kernel: int, stride: int = 1
           ) -> nnx.Conv:
    pad = kernel // 2
    return nnx.Conv(c_in, c_out, (kernel, kernel), strides=(stride, stride),
                    padding=((pad, pad), (pad, pad)), use_bias=False,
                    dtype=self.dtype, rngs=self.rngs,
                    conv_general_dilated=conv_general_dilated)

  def norm(self, features: int) -> BatchNorm:
    # PyTorch's momentum 0.1 weighs the new batch; Flax's weighs the old.
    return BatchNorm(features, momentum=0.9, epsilon=1e-5,
                     use_running_average=self.freeze_bn,
                     axis_name=self.axis_name, dtype=self.dtype,
                     rngs=self.rngs)


class BasicBlock(nnx.Module):
  """Two 3 x 3 convolutions (the first with the stride) and a shortcut."""

  def __init__(self, c_in: int, width: int, stride: int, layers: _Layers):
    self.conv1 = layers.conv(c_in, width, 3, stride)
    self.bn1 = layers.norm(width)
    self.conv2 = layers.conv(width, width, 3)
    self.bn2 = layers.norm(width)
    self.downsample = (nnx.List([layers.conv(c_in, width, 1, stride),
                                 layers.norm(width)])
                       if stride != 1 or c_in != width else None)

  def __call__(self, x: jax.Array, mask: jax.Array | None) -> jax.Array:
    y = nnx.relu(self.bn1(self.conv1(x), mask=mask))
    y = self.bn2(self.conv2(y), mask=mask)
    return nnx.relu(y + _shortcut(self.downsample, x, mask))


class Bottleneck(nnx.Module):
  """1 x 1, 3 x 3 (with the stride), 1 x 1 to 4 x width, and a shortcut."""

  def __init__(self, c_in: int, width: int, stride: int, layers: _Layers):
    c_out = width * EXPANSION
    self.conv1 = layers.conv(c_in, width, 1)
    self.bn1 = layers.norm(width)
    self.conv2 = layers.conv(width, width, 3, stride)
    self.bn2 = layers.norm(width)
    self.conv3 = layers.conv(width, c_out, 1)
    self.bn3 = layers.norm(c_out)
    self.downsample = (nnx.List([layers.conv(c_in, c_out, 1, stride),
                                 layers.norm(c_out)])
                       if stride != 1 or c_in != c_out else None)

  def __call__(self, x: jax.Array, mask: jax.Array | None) -> jax.Array:
    y = nnx.relu(self.bn1(self.conv1(x), mask=mask))
    y = nnx.relu(self.bn2(self.conv2(y), mask=mask))
    y = self.bn3(self.conv3(y), mask=mask)
    return nnx.relu(y + _shortcut(self.downsample, x, mask))


def _shortcut(downsample, x, mask):
  if downsample is None:
    return x
  conv, norm = downsample
  return norm(conv(x), mask=mask)


class ResNet(nnx.Module):
  """A ResNet backbone and the embedding head (see the module doc)."""

  def __init__(self, name: str, *, in_channels: int, embedding_dim: int = 64,
               normalize: bool = True, small: bool = False,
               freeze_bn: bool = False, axis_name: str | None = None,
               dtype=None, rngs: nnx.Rngs, **unused):
    del unused  # The CNN's settings (widths, hidden_dim).
    if name not in ARCHITECTURES:
      raise ValueError(f"ResNets: {tuple(ARCHITECTURES)}, got {name!r}.")
    blocks, bottleneck = ARCHITECTURES[name]
    layers = _Layers(freeze_bn=freeze_bn, axis_name=axis_name, dtype=dtype,
                     rngs=rngs)
    self.small = small
    self.conv1 = layers.conv(in_channels, 64, 3 if small else 7,
                             1 if small else 2)
    self.bn1 = layers.norm(64)
    block = Bottleneck if bottleneck else BasicBlock
    c_in = 64
    for stage, (count, width) in enumerate(zip(blocks, WIDTHS)):
      stage_blocks = []
      for i in range(count):
        stride = 2 if stage > 0 and i == 0 else 1
        stage_blocks.append(block(c_in, width, stride, layers))
        c_in = width * (EXPANSION if bottleneck else 1)
      setattr(self, f"layer{stage + 1}", nnx.List(stage_blocks))
    self.features = c_in
    self.head = nnx.Linear(c_in, embedding_dim, rngs=rngs)
    self.normalize = normalize

  def backbone(self, x: jax.Array, mask: jax.Array | None = None
               ) -> jax.Array:
    """``[B, H, W, C]`` images to ``[B, features]`` pooled features
    (float32)."""
    x = nnx.relu(self.bn1(self.conv1(x), mask=mask))
    if not self.small:
      x = nnx.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    for stage in (self.layer1, self.layer2, self.layer3, self.layer4):
      for block in stage:
        x = block(x, mask)
    return jnp.mean(x.astype(jnp.float32), axis=(1, 2))

  def __call__(self, x: jax.Array, mask: jax.Array | None = None
               ) -> jax.Array:
    x = self.head(self.backbone(x, mask))
    return distances.l2_normalize(x) if self.normalize else x
