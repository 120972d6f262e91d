"""Batch norm whose statistics are those of the global batch's counted rows.

`flax.nnx.BatchNorm` averages each device's masked mean across ``axis_name``
(a mean of means): with padding rows spread unevenly over the devices, that
is not the mean of the rows that count, and 8 devices under `jax.pmap`
would not match one device. `BatchNorm` adds up sums and counts across the
devices instead (``psum``), and takes the variance about that mean in a
second pass (no cancellation of ``E[x^2] - E[x]^2``). Its variables and
settings are `flax.nnx.BatchNorm`'s, so weights load alike.
"""

from __future__ import annotations

from flax import nnx
import jax
import jax.numpy as jnp


class BatchNorm(nnx.BatchNorm):
  """`flax.nnx.BatchNorm` with exact masked statistics across devices."""

  def __call__(self, x: jax.Array, use_running_average: bool | None = None,
               *, mask: jax.Array | None = None) -> jax.Array:
    """Normalises `x` ``[..., C]`` over every axis but the last.

    Args:
      x: the input.
      use_running_average: overrides the module's setting.
      mask: broadcastable to `x`: the rows that count in the statistics.
    """
    if use_running_average is None:
      use_running_average = self.use_running_average
    axes = tuple(range(x.ndim - 1))
    dtype = self.dtype or x.dtype
    if use_running_average:
      mean, var = self.mean[...], self.var[...]
    else:
      x32 = x.astype(jnp.float32)
      weight = (jnp.ones_like(x32) if mask is None
                else jnp.broadcast_to(mask, x.shape).astype(jnp.float32))
      count = self._sum(jnp.sum(weight, axis=axes))
      mean = self._sum(jnp.sum(x32 * weight, axis=axes)) / jnp.maximum(
          count, 1.0)
      var = self._sum(jnp.sum(jnp.square(x32 - mean) * weight,
                              axis=axes)) / jnp.maximum(count, 1.0)
      self.mean[...] = jax.lax.stop_gradient(
          self.momentum * self.mean[...] + (1 - self.momentum) * mean)
      self.var[...] = jax.lax.stop_gradient(
          self.momentum * self.var[...] + (1 - self.momentum) * var)
    y = (x.astype(jnp.float32) - mean) * jax.lax.rsqrt(var + self.epsilon)
    if self.scale is not None:
      y = y * self.scale[...]
    if self.bias is not None:
      y = y + self.bias[...]
    return y.astype(dtype)

  def _sum(self, value: jax.Array) -> jax.Array:
    """`value` added up over the devices of ``axis_name``, if any."""
    return value if self.axis_name is None else jax.lax.psum(value,
                                                             self.axis_name)
