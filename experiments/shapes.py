"""Generated photo-like images, one class per shape and colour.

Each class is a shape (disc, square, triangle, ring, cross, stripes, star,
diamond) in a colour of its own, drawn at a random position and size over a
textured background of random colour, at a random image size (60-160 pixels
a side), saved in turn as JPEG, PNG, WebP and BMP, every fifth in a nested
folder. They need no download, and stand in for a user's own photos in the
examples of docs/results.md and in the tests (`write_folder`).
"""

from __future__ import annotations

import os

import numpy as np
from PIL import Image
from PIL import ImageDraw

SHAPES = ("disc", "square", "triangle", "ring", "cross", "stripes", "star",
          "diamond")
FORMATS = ("jpg", "png", "webp", "bmp")


def draw(rng: np.random.Generator, shape: str, colour, width: int,
         height: int) -> Image.Image:
  """One image: `shape` in `colour` over a textured random background."""
  background = rng.integers(0, 256, 3)
  noise = rng.normal(0, 25, (height, width, 1)) + rng.normal(
      0, 10, (height, width, 3))
  image = Image.fromarray(np.clip(background + noise, 0, 255).astype(np.uint8))
  pen = ImageDraw.Draw(image)
  r = min(width, height) * rng.uniform(0.2, 0.4)
  cx, cy = rng.uniform(r, width - r), rng.uniform(r, height - r)
  box = (cx - r, cy - r, cx + r, cy + r)
  colour = tuple(int(c) for c in np.clip(colour + rng.normal(0, 12, 3), 0,
                                         255))
  angle = rng.uniform(0, 360)
  if shape == "disc":
    pen.ellipse(box, fill=colour)
  elif shape == "ring":
    pen.ellipse(box, outline=colour, width=max(2, int(r / 3)))
  elif shape == "stripes":
    for k in range(-3, 4):
      pen.line((cx + k * r / 3 - r, cy - r, cx + k * r / 3 + r, cy + r),
               fill=colour, width=max(2, int(r / 6)))
  elif shape == "cross":
    pen.line((cx - r, cy, cx + r, cy), fill=colour, width=max(2, int(r / 3)))
    pen.line((cx, cy - r, cx, cy + r), fill=colour, width=max(2, int(r / 3)))
  else:
    corners = {"square": 4, "triangle": 3, "diamond": 4, "star": 10}[shape]
    radii = np.where(np.arange(corners) % 2, r / 2.2, r) if shape == "star" \
        else np.full(corners, r)
    offset = np.deg2rad(angle) + (np.pi / 4 if shape == "diamond" else 0)
    t = offset + 2 * np.pi * np.arange(corners) / corners
    pen.polygon([(cx + a * np.cos(b), cy + a * np.sin(b))
                 for a, b in zip(radii, t)], fill=colour)
  return image


def write_folder(root: str, *, classes: int, per_class: int, seed: int = 0,
                 sides: tuple[int, int] = (60, 160),
                 formats: tuple[str, ...] = FORMATS, nested_every: int = 5
                 ) -> int:
  """Writes ``root/class_NN_<shape>/[nested/]<i>.<format>``; returns the
  number of images written.

  Args:
    root: the folder to write.
    classes, per_class: how many classes, and images of each.
    seed: the drawing's seed.
    sides: the range of the images' sides, in pixels.
    formats: file formats, in turn.
    nested_every: every this many images goes into a nested folder (0:
      none).
  """
  rng = np.random.default_rng(seed)
  colours = rng.integers(30, 226, (classes, 3))
  written = 0
  for c in range(classes):
    name = f"class_{c:02d}_{SHAPES[c % len(SHAPES)]}"
    for i in range(per_class):
      nested = nested_every and i % nested_every == nested_every - 1
      folder = os.path.join(root, name, "nested" if nested else "")
      os.makedirs(folder, exist_ok=True)
      width, height = rng.integers(sides[0], sides[1] + 1, 2)
      image = draw(rng, SHAPES[c % len(SHAPES)], colours[c], int(width),
                   int(height))
      image.save(os.path.join(folder, f"{i:04d}.{formats[i % len(formats)]}"))
      written += 1
  return written
