"""Augmentation: the shift's bounds, the affine warp against hand-made
images, and the agreement of the two where they overlap."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tripletjax.data import augment


def test_random_shift_moves_pixels_within_bounds():
  images = jnp.zeros((64, 5, 5, 1)).at[:, 2, 2, 0].set(1.0)
  shifted = augment.random_shift(images, jax.random.key(0), 2)
  assert shifted.shape == images.shape
  np.testing.assert_array_equal(shifted.sum(axis=(1, 2, 3)), 1.0)
  rows, cols = np.nonzero(np.asarray(shifted[..., 0]).sum(0))
  assert set(rows) == set(range(5)) and set(cols) == set(range(5))


def test_affine_without_rotation_or_scaling_is_the_shift():
  images = jax.random.uniform(jax.random.key(1), (32, 9, 7, 2))
  key = jax.random.key(2)
  np.testing.assert_array_equal(
      augment.random_affine(images, key, max_shift=3, max_rotation=0.0,
                            max_scale=0.0),
      augment.random_shift(images, key, 3))


@pytest.mark.parametrize("size", [5, 6])
def test_quarter_turns_are_rot90(size):
  images = np.random.default_rng(0).random((2, size, size, 3), np.float32)
  angles = jnp.array([np.pi / 2, -np.pi / 2])
  turned = augment.affine_warp(images, jnp.zeros((2, 2)), angles,
                               jnp.ones(2))
  np.testing.assert_allclose(turned[0], np.rot90(images[0], 1), atol=1e-5)
  np.testing.assert_allclose(turned[1], np.rot90(images[1], -1), atol=1e-5)


def test_scaling_about_the_centre_by_hand():
  # A 5x5 image with a 1 at the centre and a 1 two rows above it, enlarged
  # twice: output pixel p samples input 2 + (p - 2) / 2. The centre stays,
  # the upper pixel moves out of the image (to row -2), and the centre's
  # neighbours sample half-way towards it (1/2 beside it, 1/4 diagonally).
  image = np.zeros((1, 5, 5, 1), np.float32)
  image[0, 2, 2, 0] = 1.0
  image[0, 0, 2, 0] = 1.0
  out = np.asarray(augment.affine_warp(image, jnp.zeros((1, 2)),
                                       jnp.zeros(1), jnp.array([2.0])))
  expected = np.zeros((5, 5), np.float32)
  expected[2, 2] = 1.0
  expected[1:4, 1:4] = np.outer([0.5, 1, 0.5], [0.5, 1, 0.5])
  np.testing.assert_allclose(out[0, ..., 0], expected, atol=1e-6)


def test_random_affine_keeps_values_in_range_and_changes_every_image():
  images = jax.random.uniform(jax.random.key(3), (64, 12, 12, 1))
  out = augment.random_affine(images, jax.random.key(4), max_shift=2,
                              max_rotation=15.0, max_scale=0.1)
  assert out.shape == images.shape
  # Bilinear interpolation with zeros outside: convex combinations of the
  # input values and 0.
  assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0 + 1e-6
  # Every image changed, each differently.
  assert not np.any(np.all(np.isclose(out, images), axis=(1, 2, 3)))


def test_augment_chooses_the_transform():
  images = jax.random.uniform(jax.random.key(5), (8, 6, 6, 1))
  key = jax.random.key(6)
  assert augment.augment(images, key) is images
  np.testing.assert_array_equal(augment.augment(images, key, max_shift=1),
                                augment.random_shift(images, key, 1))
  np.testing.assert_array_equal(
      augment.augment(images, key, max_shift=1, max_rotation=5.0),
      augment.random_affine(images, key, max_shift=1, max_rotation=5.0,
                            max_scale=0.0))


def test_rows_of_a_global_batch_draw_as_in_the_whole_batch():
  """A device holding some rows of the batch augments them as one device
  holding the whole batch does."""
  images = jax.random.uniform(jax.random.key(5), (8, 10, 10, 1))
  key = jax.random.key(6)
  for settings in (dict(max_shift=2),
                   dict(max_shift=1, max_rotation=30.0, max_scale=0.2)):
    whole = augment.augment(images, key, **settings)
    for first in (0, 2, 6):
      part = augment.augment(images[first:first + 2], key, first_row=first,
                             batch_size=8, **settings)
      np.testing.assert_array_equal(part, whole[first:first + 2])
