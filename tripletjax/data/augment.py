"""Random geometric augmentation of training images, on the device.

Pure functions of a batch and a PRNG key, run inside the compiled train step
(each image its own draw), so they cost no host time and no transfer.

An image's draw depends on the key and on its row in the global batch, not
on the device the row is on: a device holding rows ``first_row ..
first_row + b - 1`` of a global batch of ``batch_size`` rows draws for the
whole batch (a few numbers per image) and keeps its own rows. So 1 device, a
mesh under `jax.jit` and `jax.pmap` augment every image alike.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def _own_rows(drawn: jax.Array, first_row: int | jax.Array, count: int
              ) -> jax.Array:
  """Rows ``first_row .. first_row + count - 1`` of a global draw."""
  if drawn.shape[0] == count:
    return drawn
  return jax.lax.dynamic_slice_in_dim(drawn, first_row, count)


def random_shift(images: jax.Array, key: jax.Array, max_shift: int, *,
                 first_row: int | jax.Array = 0,
                 batch_size: int | None = None) -> jax.Array:
  """Translates each image by a whole number of pixels, filling with zeros.

  Args:
    images: ``[B, H, W, C]``.
    key: PRNG key.
    max_shift: largest shift along each axis; each axis draws uniformly from
      ``-max_shift..max_shift``.
    first_row: the global row of ``images[0]`` (see the module doc).
    batch_size: rows of the global batch (default: ``B``).

  Returns:
    ``[B, H, W, C]``.
  """
  b, h, w, _ = images.shape
  padded = jnp.pad(images, ((0, 0), (max_shift, max_shift),
                            (max_shift, max_shift), (0, 0)))
  offsets = _own_rows(jax.random.randint(
      key, (batch_size or b, 2), 0, 2 * max_shift + 1), first_row, b)
  crop = lambda image, o: jax.lax.dynamic_slice(
      image, (o[0], o[1], 0), (h, w, image.shape[-1]))
  return jax.vmap(crop)(padded, offsets)


def random_affine(images: jax.Array, key: jax.Array, *, max_shift: int,
                  max_rotation: float, max_scale: float,
                  first_row: int | jax.Array = 0,
                  batch_size: int | None = None) -> jax.Array:
  """Rotates, scales and translates each image by a random draw
  (`affine_warp`). With ``max_rotation == max_scale == 0`` this equals
  `random_shift` for the same key.

  Args:
    images: ``[B, H, W, C]`` float.
    key: PRNG key.
    max_shift: whole-pixel translation along each axis, uniform in
      ``-max_shift..max_shift`` (the draw of `random_shift`).
    max_rotation: the angle is uniform in ``[-max_rotation, max_rotation]``
      degrees.
    max_scale: the scale is uniform in ``[1 - max_scale, 1 + max_scale]``.
    first_row: the global row of ``images[0]`` (see the module doc).
    batch_size: rows of the global batch (default: ``B``).

  Returns:
    ``[B, H, W, C]``.
  """
  b = images.shape[0]
  n = batch_size or b
  # The same draw as random_shift (whose crop offset o is the translation
  # max_shift - o), then the angle and scale from a key of their own.
  shifts = max_shift - jax.random.randint(key, (n, 2), 0, 2 * max_shift + 1)
  rotation_key, scale_key = jax.random.split(jax.random.fold_in(key, 1))
  angles = jnp.deg2rad(jax.random.uniform(
      rotation_key, (n,), minval=-max_rotation, maxval=max_rotation))
  scales = 1 + jax.random.uniform(scale_key, (n,), minval=-max_scale,
                                  maxval=max_scale)
  shifts, angles, scales = (_own_rows(v, first_row, b)
                            for v in (shifts, angles, scales))
  return affine_warp(images, shifts.astype(images.dtype), angles, scales)


def affine_warp(images: jax.Array, shifts: jax.Array, angles: jax.Array,
                scales: jax.Array) -> jax.Array:
  """Rotates, scales and translates each image about its centre.

  Output pixel ``p`` (row, column) takes the bilinear interpolation of the
  input at ``c + R(-angle) (p - c - shift) / scale``, ``c`` the centre, zero
  outside. A positive angle turns the image counter-clockwise as displayed
  (90 degrees is ``np.rot90``).

  Args:
    images: ``[B, H, W, C]`` float.
    shifts: ``[B, 2]`` translations (rows, columns), in pixels.
    angles: ``[B]`` in radians.
    scales: ``[B]`` positive factors (> 1 enlarges).

  Returns:
    ``[B, H, W, C]``.
  """
  _, h, w, _ = images.shape
  centre = jnp.array([(h - 1) / 2, (w - 1) / 2], images.dtype)
  grid = jnp.stack(jnp.meshgrid(jnp.arange(h), jnp.arange(w), indexing="ij"),
                   axis=-1).astype(images.dtype)  # [H, W, 2]

  def warp(image, shift, angle, scale):
    cos, sin = jnp.cos(angle), jnp.sin(angle)
    inverse = jnp.array([[cos, sin], [-sin, cos]]) / scale  # R(-angle) / s.
    source = (grid - centre - shift) @ inverse.T + centre  # [H, W, 2]
    sample = lambda channel: jax.scipy.ndimage.map_coordinates(
        channel, (source[..., 0], source[..., 1]), order=1, mode="constant")
    return jax.vmap(sample, in_axes=-1, out_axes=-1)(image)

  return jax.vmap(warp)(images, shifts, angles, scales)


def augment(images: jax.Array, key: jax.Array, *, max_shift: int = 0,
            max_rotation: float = 0.0, max_scale: float = 0.0,
            first_row: int | jax.Array = 0,
            batch_size: int | None = None) -> jax.Array:
  """The cheapest of `random_shift` and `random_affine` that does the job.

  Args:
    images: ``[B, H, W, C]`` float.
    key: PRNG key.
    max_shift, max_rotation, max_scale: as in `random_affine`; all zero
      returns `images` unchanged.
    first_row: the global row of ``images[0]`` (see the module doc).
    batch_size: rows of the global batch (default: ``B``).

  Returns:
    ``[B, H, W, C]``.
  """
  rows = dict(first_row=first_row, batch_size=batch_size)
  if max_rotation or max_scale:
    return random_affine(images, key, max_shift=max_shift,
                         max_rotation=max_rotation, max_scale=max_scale,
                         **rows)
  if max_shift:
    return random_shift(images, key, max_shift, **rows)
  return images
