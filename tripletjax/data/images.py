"""Decoding photos to fixed-size ``uint8`` arrays, with Pillow.

Every format Pillow reads (JPEG, PNG, BMP, GIF's first frame, WebP, TIFF),
any size and mode: EXIF orientation is applied, transparency is laid over
white, and the image is converted to 1 (grey) or 3 (RGB) channels, its
shorter side resized to `size` and its centre cropped to ``size x size``
(the usual "resize 256, crop" of the metric-learning benchmarks, done once
when the cache is built).
"""

from __future__ import annotations

import numpy as np
from PIL import Image
from PIL import ImageOps

MODES = {1: "L", 3: "RGB"}


def resize_and_crop(image: Image.Image, size: int) -> Image.Image:
  """The shorter side resized to `size` (antialiased), then the centre
  ``size x size``."""
  width, height = image.size
  scale = size / min(width, height)
  new = (max(size, round(width * scale)), max(size, round(height * scale)))
  if new != image.size:
    image = image.resize(new, Image.BILINEAR, reducing_gap=3.0)
  left, top = (new[0] - size) // 2, (new[1] - size) // 2
  return image.crop((left, top, left + size, top + size))


def to_mode(image: Image.Image, channels: int) -> Image.Image:
  """`image` in the mode of `channels` (1: ``L``, 3: ``RGB``); transparent
  pixels become white."""
  if image.mode in ("RGBA", "LA", "PA") or (
      image.mode == "P" and "transparency" in image.info):
    rgba = image.convert("RGBA")
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    image = Image.alpha_composite(white, rgba)
  return image.convert(MODES[channels])


def decode_file(path: str, *, size: int, channels: int) -> np.ndarray:
  """The image file at `path` as ``uint8 [size, size, channels]``.

  Raises:
    OSError, ValueError: Pillow cannot read it (Pillow's own errors).
  """
  with Image.open(path) as image:
    # JPEGs decode at a reduced scale when that still covers `size`.
    image.draft(MODES[channels], (size, size))
    image = ImageOps.exif_transpose(image)
    image = to_mode(image, channels)
    return np.asarray(resize_and_crop(image, size)).reshape(
        size, size, channels)


def from_array(array: np.ndarray, *, size: int, channels: int) -> np.ndarray:
  """A decoded ``uint8 [H, W, C]`` image (C in 1, 3, 4) as ``uint8 [size,
  size, channels]``."""
  array = np.asarray(array, np.uint8)
  if array.ndim == 3 and array.shape[-1] == 1:
    array = array[..., 0]
  image = to_mode(Image.fromarray(array), channels)
  return np.asarray(resize_and_crop(image, size)).reshape(size, size,
                                                          channels)
