"""Random augmentation of training images, on the device.

Pure functions of a batch and a PRNG key, run inside the compiled train step
(each image its own draw), so they cost no host time and no transfer. Two
families (`apply` picks the configured one):

* digits: whole-pixel shifts, rotations and scaling by a bilinear warp,
  and optionally horizontal flips, at the images' own size;
* photo: a random resized crop (area 16-100 % of the image, aspect ratio
  3/4-4/3) to the network's input size, a horizontal flip, and optionally
  colour jitter, as in the metric-learning benchmarks' training recipes;

and, after either, optionally random erasing of a rectangle.

An image's draw depends on the key and on its row in the global batch, not
on the device the row is on: a device holding rows ``first_row ..
first_row + b - 1`` of a global batch of ``batch_size`` rows draws for the
whole batch (a few numbers per image) and keeps its own rows. So 1 device, a
mesh under `jax.jit` and `jax.pmap` augment every image alike.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


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


def random_flip(images: jax.Array, key: jax.Array, *,
                first_row: int | jax.Array = 0,
                batch_size: int | None = None) -> jax.Array:
  """Flips each image left-right with probability 1/2.

  Args:
    images: ``[B, H, W, C]``.
    key: PRNG key.
    first_row, batch_size: see the module doc.

  Returns:
    ``[B, H, W, C]``.
  """
  b = images.shape[0]
  flips = _own_rows(jax.random.bernoulli(key, 0.5, (batch_size or b,)),
                    first_row, b)
  return jnp.where(flips[:, None, None, None], images[:, :, ::-1], images)


def center_crop(images: jax.Array | np.ndarray, size: int
                ) -> jax.Array | np.ndarray:
  """The central ``size x size`` of each ``[B, H, W, C]`` image (a JAX or a
  NumPy array)."""
  _, h, w, _ = images.shape
  top, left = (h - size) // 2, (w - size) // 2
  return images[:, top:top + size, left:left + size]


def _random_sides(area_key: jax.Array, ratio_key: jax.Array, n: int,
                  image_area: int, scale: tuple[float, float],
                  ratio: tuple[float, float]) -> tuple[jax.Array, jax.Array]:
  """``[n]`` heights and ``[n]`` widths (float) of rectangles whose area is
  uniform in `scale` times `image_area` and whose aspect ratio, width /
  height, is log-uniform in `ratio`."""
  area = jax.random.uniform(area_key, (n,), minval=scale[0],
                            maxval=scale[1]) * image_area
  aspect = jnp.exp(jax.random.uniform(
      ratio_key, (n,), minval=jnp.log(ratio[0]), maxval=jnp.log(ratio[1])))
  return jnp.sqrt(area / aspect), jnp.sqrt(area * aspect)


def random_resized_crop(images: jax.Array, key: jax.Array, size: int, *,
                        scale: tuple[float, float] = (0.16, 1.0),
                        ratio: tuple[float, float] = (3 / 4, 4 / 3),
                        flip: bool = True, first_row: int | jax.Array = 0,
                        batch_size: int | None = None) -> jax.Array:
  """A random crop of each image, resized to ``size x size`` (bilinear), and
  flipped left-right with probability 1/2.

  The crop's area is uniform in `scale` times the image's, its aspect ratio
  log-uniform in `ratio`; a side longer than the image's is cut to it.

  Args:
    images: ``[B, H, W, C]`` float.
    key: PRNG key.
    size: output side.
    scale, ratio: ranges of the crop's area fraction and width / height.
    flip: whether to flip half of the images.
    first_row, batch_size: see the module doc.

  Returns:
    ``[B, size, size, C]``.
  """
  b, h, w, _ = images.shape
  n = batch_size or b
  keys = jax.random.split(key, 5)
  crop_h, crop_w = _random_sides(keys[0], keys[1], n, h * w, scale, ratio)
  crop_w = jnp.clip(crop_w, 1.0, w)
  crop_h = jnp.clip(crop_h, 1.0, h)
  left = jax.random.uniform(keys[2], (n,)) * (w - crop_w)
  top = jax.random.uniform(keys[3], (n,)) * (h - crop_h)
  flips = (jax.random.bernoulli(keys[4], 0.5, (n,)) if flip
           else jnp.zeros((n,), bool))
  top, left, crop_h, crop_w, flips = (_own_rows(v, first_row, b) for v in
                                      (top, left, crop_h, crop_w, flips))
  steps = (jnp.arange(size) + 0.5) / size

  def crop(image, top, left, crop_h, crop_w, flip):
    rows = top + steps * crop_h - 0.5
    cols = left + jnp.where(flip, steps[::-1], steps) * crop_w - 0.5
    grid = jnp.meshgrid(rows, cols, indexing="ij")
    sample = lambda channel: jax.scipy.ndimage.map_coordinates(
        channel, grid, order=1, mode="nearest")
    return jax.vmap(sample, in_axes=-1, out_axes=-1)(image)

  return jax.vmap(crop)(images, top, left, crop_h, crop_w, flips)


def random_erasing(images: jax.Array, key: jax.Array, probability: float,
                   *, scale: tuple[float, float] = (0.02, 0.4),
                   ratio: tuple[float, float] = (0.3, 1 / 0.3),
                   first_row: int | jax.Array = 0,
                   batch_size: int | None = None) -> jax.Array:
  """Random erasing (Zhong et al., AAAI 2020): with probability
  `probability` a rectangle of each image is replaced by uniform noise.

  The rectangle's area is uniform in `scale` times the image's, its aspect
  ratio (width / height) log-uniform in `ratio`, its sides rounded to whole
  pixels and cut to the image's; its place is uniform among those inside
  the image (the paper draws again until one fits; cutting keeps the draw
  one step on the device).

  Args:
    images: ``[B, H, W, C]`` float in [0, 1].
    key: PRNG key.
    probability: the chance that an image is erased.
    scale, ratio: ranges of the rectangle's area fraction and aspect ratio.
    first_row, batch_size: see the module doc.

  Returns:
    ``[B, H, W, C]``.
  """
  b, h, w, c = images.shape
  n = batch_size or b
  keys = jax.random.split(key, 6)
  erase_h, erase_w = _random_sides(keys[0], keys[1], n, h * w, scale, ratio)
  erase_h = jnp.clip(jnp.round(erase_h), 1, h).astype(jnp.int32)
  erase_w = jnp.clip(jnp.round(erase_w), 1, w).astype(jnp.int32)
  top = jax.random.randint(keys[2], (n,), 0, h - erase_h + 1)
  left = jax.random.randint(keys[3], (n,), 0, w - erase_w + 1)
  erased = jax.random.bernoulli(keys[4], probability, (n,))
  top, left, erase_h, erase_w, erased = (
      _own_rows(v, first_row, b) for v in (top, left, erase_h, erase_w,
                                           erased))
  # The noise per image from its global row: no [global batch, H, W, C]
  # draw for large photos.
  noise = jax.vmap(lambda row: jax.random.uniform(
      jax.random.fold_in(keys[5], row), (h, w, c), images.dtype))(
          first_row + jnp.arange(b))
  rows = jnp.arange(h)[None, :, None, None]
  cols = jnp.arange(w)[None, None, :, None]
  inside = ((rows >= top[:, None, None, None]) &
            (rows < (top + erase_h)[:, None, None, None]) &
            (cols >= left[:, None, None, None]) &
            (cols < (left + erase_w)[:, None, None, None]))
  return jnp.where(inside & erased[:, None, None, None], noise, images)


def color_jitter(images: jax.Array, key: jax.Array, strength: float, *,
                 first_row: int | jax.Array = 0,
                 batch_size: int | None = None) -> jax.Array:
  """Brightness, contrast and saturation of each image scaled by factors
  uniform in ``[1 - strength, 1 + strength]``, in that order, clipped to
  [0, 1].

  Args:
    images: ``[B, H, W, C]`` float in [0, 1].
    key: PRNG key.
    strength: the factors' spread.
    first_row, batch_size: see the module doc.
  """
  b = images.shape[0]
  factors = jax.random.uniform(key, (batch_size or b, 3),
                               minval=1 - strength, maxval=1 + strength)
  factors = _own_rows(factors, first_row, b)[:, None, None, None, :]
  x = images * factors[..., 0]
  mean = jnp.mean(jnp.mean(x, axis=-1, keepdims=True), axis=(1, 2),
                  keepdims=True)
  x = mean + (x - mean) * factors[..., 1]
  grey = jnp.mean(x, axis=-1, keepdims=True)
  x = grey + (x - grey) * factors[..., 2]
  return jnp.clip(x, 0.0, 1.0)


def apply(images: jax.Array, key: jax.Array, config, *,
          first_row: int | jax.Array = 0,
          batch_size: int | None = None) -> jax.Array:
  """The augmentation ``config.augmentation`` names, to the network's input
  size (``config.image_size`` where images are stored larger).

  Args:
    images: ``[B, H, W, C]`` float in [0, 1].
    key: PRNG key.
    config: a `tripletjax.config.Config`.
    first_row, batch_size: see the module doc.
  """
  rows = dict(first_row=first_row, batch_size=batch_size)
  size = config.image_size or images.shape[1]
  if config.augmentation == "photo":
    crop_key, color_key = jax.random.split(key)
    x = random_resized_crop(images, crop_key, size, **rows)
    if config.augment_color:
      x = color_jitter(x, color_key, config.augment_color, **rows)
  else:
    x = center_crop(images, size)
    if config.augmentation == "digits":
      x = augment(x, key, max_shift=config.augment_shift,
                  max_rotation=config.augment_rotation,
                  max_scale=config.augment_scale, **rows)
      if config.augment_flip:
        # A key of its own: the other draws stay those of runs without
        # flips.
        x = random_flip(x, jax.random.fold_in(key, 2), **rows)
  if config.augment_erase:
    # Last, on what the network sees; a key of its own, as flips.
    x = random_erasing(x, jax.random.fold_in(key, 3), config.augment_erase,
                       **rows)
  return x
