"""Augmentation: the shift's bounds, the affine warp against hand-made
images, the photo crops against ramps, and draws by global row."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tripletjax import config as config_lib
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


def test_flips_leave_the_other_draws_alone():
  """With --augment_flip each image is the unflipped augmentation or its
  mirror, half of them mirrored on average, and rows of a global batch
  draw as in the whole batch."""
  images = jax.random.uniform(jax.random.key(7), (64, 6, 6, 1))
  config = config_lib.Config(augment_rotation=10.0, augment_shift=1)
  flipped = config.replace(augment_flip=True)
  key = jax.random.key(8)
  plain = np.asarray(augment.apply(images, key, config))
  got = np.asarray(augment.apply(images, key, flipped))
  same = np.all(got == plain, axis=(1, 2, 3))
  mirrored = np.all(got == plain[:, :, ::-1], axis=(1, 2, 3))
  assert np.all(same | mirrored)
  assert 16 <= mirrored.sum() <= 48 and 16 <= same.sum() <= 48
  part = augment.apply(images[8:16], key, flipped, first_row=8,
                       batch_size=64)
  np.testing.assert_array_equal(part, got[8:16])
  with pytest.raises(ValueError, match="augment_flip"):
    config_lib.validate(config_lib.Config(augment="photo", augment_flip=True))


def test_erasing_replaces_one_rectangle_by_noise():
  """--augment_erase: each image is the augmentation as before, or it with
  one axis-aligned rectangle of the drawn size replaced by noise in [0, 1];
  about the given fraction are erased; rows of a global batch draw as in
  the whole batch; the draws of the other augmentations are unchanged."""
  images = jnp.full((400, 10, 12, 2), 2.0)  # Outside the noise's range.
  key = jax.random.key(3)
  got = np.asarray(augment.random_erasing(images, key, 0.3))
  changed = got != 2.0
  erased = changed.any(axis=(1, 2, 3))
  assert 84 <= erased.sum() <= 156  # Binomial(400, 0.3): +-4 sd.
  fractions, aspects = [], []
  for image, mask in zip(got[erased], changed[erased]):
    rows, cols = np.flatnonzero(mask.any(axis=(1, 2))), np.flatnonzero(
        mask.any(axis=(0, 2)))
    box = np.zeros_like(mask)
    box[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1] = True
    np.testing.assert_array_equal(mask, box)  # One whole rectangle.
    assert np.all((image[box] >= 0) & (image[box] < 1))
    height, width = rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1
    fractions.append(height * width / 120)
    aspects.append(height / width)
  # Whole pixels: the area within half a pixel per side of 2-40 %, and the
  # sides cut to the image.
  assert min(fractions) >= 0.02 * 0.5 and max(fractions) <= 0.4 * 1.6
  assert np.median(fractions) > 0.1 and min(aspects) < 0.5 < 2 < max(aspects)
  noise = got[erased][changed[erased]]
  assert 0.45 < noise.mean() < 0.55 and len(np.unique(noise)) > 0.9 * len(
      noise)
  part = augment.random_erasing(images[40:48], key, 0.3, first_row=40,
                                batch_size=400)
  np.testing.assert_array_equal(part, got[40:48])
  # After shifts and flips: the same shifted and flipped pixels outside the
  # rectangle, and global rows again.
  digits = config_lib.Config(augment_shift=1, augment_flip=True)
  varied = jax.random.uniform(jax.random.key(4), (64, 8, 8, 1)) + 2.0
  before = np.asarray(augment.apply(varied, key, digits))
  erasing = digits.replace(augment_erase=1.0)
  after = np.asarray(augment.apply(varied, key, erasing))
  kept = after >= 2.0
  np.testing.assert_array_equal(after[kept], before[kept])
  assert not kept.all(axis=(1, 2, 3)).any()  # Probability 1: all erased.
  np.testing.assert_array_equal(
      augment.apply(varied[8:16], key, erasing, first_row=8, batch_size=64),
      after[8:16])
  for bad in (dict(augment_erase=1.5), dict(augment_erase=0.5,
                                            augment="none")):
    with pytest.raises(ValueError, match="augment_erase"):
      config_lib.validate(config_lib.Config(**bad))


def test_whole_image_crop_is_the_identity_or_its_mirror():
  images = jax.random.uniform(jax.random.key(7), (6, 9, 9, 2))
  same = augment.random_resized_crop(images, jax.random.key(8), 9,
                                     scale=(1.0, 1.0), ratio=(1.0, 1.0),
                                     flip=False)
  np.testing.assert_allclose(same, images, atol=1e-6)
  flipped = augment.random_resized_crop(images, jax.random.key(8), 9,
                                        scale=(1.0, 1.0), ratio=(1.0, 1.0))
  mirrors = [np.allclose(f, i[:, ::-1], atol=1e-6) for f, i in
             zip(np.asarray(flipped), np.asarray(images))]
  kept = [np.allclose(f, i, atol=1e-6) for f, i in
          zip(np.asarray(flipped), np.asarray(images))]
  assert all(m or k for m, k in zip(mirrors, kept)) and any(mirrors)


def test_crops_of_a_ramp_are_ramps_inside_the_image():
  """Bilinear sampling of a linear ramp is exact: each output row is a ramp
  whose slope is the crop's width over the output's, within the image."""
  ramp = jnp.broadcast_to(jnp.arange(32.0)[None, None, :, None],
                          (64, 32, 32, 1))
  out = np.asarray(augment.random_resized_crop(ramp, jax.random.key(9), 8,
                                               flip=False))[..., 0]
  slopes = np.diff(out, axis=2)
  np.testing.assert_allclose(slopes, np.broadcast_to(slopes[:, :, :1],
                                                     slopes.shape), atol=1e-4)
  widths = slopes[:, 0, 0] * 8
  areas = widths ** 2  # Upper bound on crop area / 32**2 when square-ish.
  assert np.all(widths > 0) and np.all(widths <= 32 + 1e-4)
  assert out.min() >= -0.5 and out.max() <= 31.5
  assert areas.max() / 32 ** 2 > 0.5 and areas.min() / 32 ** 2 < 0.5


def test_color_jitter():
  images = jax.random.uniform(jax.random.key(10), (4, 5, 5, 3))
  np.testing.assert_allclose(augment.color_jitter(images, jax.random.key(1),
                                                  0.0), images, atol=1e-6)
  jittered = augment.color_jitter(images, jax.random.key(1), 0.5)
  assert not np.allclose(jittered, images)
  assert float(jittered.min()) >= 0.0 and float(jittered.max()) <= 1.0


def test_photo_rows_draw_as_in_the_whole_batch():
  images = jax.random.uniform(jax.random.key(11), (8, 12, 12, 3))
  config = config_lib.Config(image_size=8, augment="photo",
                             augment_color=0.4)
  whole = augment.apply(images, jax.random.key(12), config)
  assert whole.shape == (8, 8, 8, 3)
  for first in (0, 4):
    part = augment.apply(images[first:first + 4], jax.random.key(12), config,
                         first_row=first, batch_size=8)
    np.testing.assert_allclose(part, whole[first:first + 4], atol=1e-6)
  none = augment.apply(images, jax.random.key(12),
                       config.replace(augment="none"))
  np.testing.assert_array_equal(none, images[:, 2:10, 2:10])
