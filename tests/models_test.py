"""Embedding networks: shapes, normalisation, configuration errors."""

from absl.testing import absltest
from absl.testing import parameterized
from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np

from tripletjax import distances
from tripletjax import models
from tripletjax.models import cnn
from tripletjax.models import resnet


class ModelsTest(parameterized.TestCase):

  @parameterized.product(name=("cnn", "mlp", "resnet18_small"),
                         normalize=(True, False))
  def test_shapes_and_normalisation(self, name, normalize):
    model = models.create(name, image_shape=(12, 10, 3), seed=0,
                          widths=(4, 8), hidden_dim=16, embedding_dim=5,
                          normalize=normalize)
    x = jax.random.normal(jax.random.key(0), (6, 12, 10, 3))
    out = model(x)
    self.assertEqual(out.shape, (6, 5))
    norms = np.linalg.norm(out, axis=1)
    if normalize:
      np.testing.assert_allclose(norms, 1.0, rtol=1e-5)
    else:
      self.assertFalse(np.allclose(norms, 1.0))

  @parameterized.parameters("cnn", "mlp")
  def test_initialised_as_op_by_op_bit_for_bit(self, name):
    """`create` initialises in one compiled program: the parameters are
    those drawn op by op, so runs from before it train the same. (Not the
    ResNets: their op-by-op initialisation compiles for many seconds.)"""
    settings = dict(widths=(4, 8), hidden_dim=16, embedding_dim=5)
    model = models.create(name, image_shape=(12, 10, 3), seed=3, **settings)
    eager = models.Network(models.MODELS[name](
        in_channels=3, image_size=(12, 10), dtype=jnp.float32,
        rngs=nnx.Rngs(3), **settings), "unit")
    want = jax.tree.leaves(nnx.state(eager))
    got = jax.tree.leaves(nnx.state(model))
    self.assertLen(got, len(want))
    for a, b in zip(got, want):
      np.testing.assert_array_equal(a, b)

  @parameterized.product(normalize=(True, False), backbone=(False, True))
  def test_test_time_flip_is_the_mean_over_each_image_and_its_mirror(
      self, normalize, backbone):
    name = "resnet18_small" if backbone else "cnn"
    model = models.create(name, image_shape=(8, 6, 3), seed=0, widths=(4,),
                          hidden_dim=8, embedding_dim=5, normalize=normalize)
    graphdef, params, batch_stats = nnx.split(model, nnx.Param,
                                              nnx.BatchStat)
    images = np.random.default_rng(0).integers(0, 256, (4, 8, 6, 3),
                                               dtype=np.uint8)
    mirrored = images[:, :, ::-1]
    embed = lambda x, flip: np.asarray(models.embed(
        graphdef, params, batch_stats, x, backbone, flip), np.float64)
    mean = (embed(images, False) + embed(mirrored, False)) / 2
    if normalize and not backbone:
      mean /= np.linalg.norm(mean, axis=1, keepdims=True)
    np.testing.assert_allclose(embed(images, True), mean, atol=1e-6)
    # An image and its mirror get one embedding; others not.
    np.testing.assert_allclose(embed(mirrored, True), embed(images, True),
                               atol=1e-6)
    self.assertFalse(np.allclose(embed(images[:, ::-1], True),
                                 embed(images, True), atol=1e-3))

  def test_test_time_views_are_every_shift_and_the_mirrors(self):
    images = np.random.default_rng(0).integers(1, 256, (2, 7, 5, 3)
                                               ).astype(np.float32)

    def translated(x, dy, dx):  # Content moved by (dy, dx), zeros entering.
      out = np.zeros_like(x)
      h, w = x.shape[1:3]
      out[:, max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = (
          x[:, max(-dy, 0):h - max(dy, 0), max(-dx, 0):w - max(dx, 0)])
      return out

    for flip, shift in ((False, 0), (True, 0), (False, 2), (True, 1)):
      got = [np.asarray(v) for v in models.test_time_views(
          jnp.asarray(images), flip, shift)]
      want = [translated(images, dy, dx)
              for dy in range(-shift, shift + 1)
              for dx in range(-shift, shift + 1)]
      want += [v[:, :, ::-1] for v in want] if flip else []
      # The same views, in any order.
      self.assertLen(got, len(want))
      key = lambda v: v.tobytes()
      self.assertEqual(sorted(map(key, got)), sorted(map(key, want)))

  @parameterized.product(normalize=(True, False), flip=(False, True))
  def test_test_time_shift_is_the_mean_over_the_views(self, normalize, flip):
    model = models.create("cnn", image_shape=(8, 6, 1), seed=0, widths=(4,),
                          hidden_dim=8, embedding_dim=5, normalize=normalize)
    graphdef, params, batch_stats = nnx.split(model, nnx.Param,
                                              nnx.BatchStat)
    images = np.zeros((3, 8, 6, 1), np.uint8)
    images[:, 2:6, 2:4] = np.random.default_rng(1).integers(
        1, 256, (3, 4, 2, 1))
    embed = lambda x, flip=False, shift=0: np.asarray(models.embed(
        graphdef, params, batch_stats, x, False, flip, shift), np.float64)
    # The content fits with a margin of 2: moving it is the same as moving
    # the window, so each view is a plain translation here.
    views = [np.roll(images, (dy, dx), (1, 2))
             for dy in (-1, 0, 1) for dx in (-1, 0, 1)]
    views += [v[:, :, ::-1] for v in views] if flip else []
    mean = sum(embed(v) for v in views) / len(views)
    if normalize:
      mean /= np.linalg.norm(mean, axis=1, keepdims=True)
    np.testing.assert_allclose(embed(images, flip, 1), mean, atol=1e-6)
    self.assertFalse(np.allclose(embed(images, flip, 1), embed(images, flip),
                                 atol=1e-4))

  def test_reference_cnn_parameter_count(self):
    model = models.create("cnn", image_shape=(28, 28, 1), seed=0)
    count = sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
    # conv 1->32, conv 32->64, dense 7*7*64->256, dense 256->64.
    self.assertEqual(count, (9 * 32 + 32) + (9 * 32 * 64 + 64)
                     + (3136 * 256 + 256) + (256 * 64 + 64))

  @parameterized.parameters((8, 8), (7, 9))
  def test_max_pool_matches_flax(self, height, width):
    x = jax.random.normal(jax.random.key(0), (3, height, width, 5))
    want_fn = lambda v: nnx.max_pool(v, window_shape=(2, 2), strides=(2, 2))
    np.testing.assert_array_equal(cnn.max_pool_2x2(x), want_fn(x))
    # Without ties (random normals) the gradients agree exactly.
    cotangent = jax.random.normal(jax.random.key(1), want_fn(x).shape)
    grad = lambda f: jax.grad(lambda v: jnp.sum(f(v) * cotangent))(x)
    np.testing.assert_array_equal(grad(cnn.max_pool_2x2), grad(want_fn))

  def test_l2_normalize_zero_row_has_finite_gradient(self):
    grad = jax.grad(lambda x: distances.l2_normalize(x).sum())(
        jnp.zeros((1, 3)))
    self.assertTrue(np.all(np.isfinite(grad)))

  def test_errors(self):
    with self.assertRaisesRegex(ValueError, "model must be"):
      models.create("vit", image_shape=(8, 8, 1), seed=0)
    with self.assertRaisesRegex(ValueError, "fewer widths"):
      models.create("cnn", image_shape=(4, 4, 1), seed=0, widths=(2, 2, 2))


class ResNetTest(parameterized.TestCase):

  @parameterized.parameters(("resnet18", 11_689_512), ("resnet34", 21_797_672),
                            ("resnet50", 25_557_032))
  def test_parameter_counts_match_torchvision(self, name, torchvision_count):
    """torchvision's totals, with its 1,000-class classifier in place of the
    embedding head (counted from shapes, nothing initialised)."""
    model = nnx.eval_shape(lambda: models.create(
        name, image_shape=(224, 224, 3), seed=0, embedding_dim=64))
    params = nnx.to_flat_state(nnx.state(model, nnx.Param))
    backbone = sum(v.get_value().size for path, v in params if "head" not in path)
    features = model.network.features
    self.assertEqual(backbone + features * 1000 + 1000, torchvision_count)
    # Batch norm's running statistics: a mean and a variance per scale.
    stats = nnx.to_flat_state(nnx.state(model, nnx.BatchStat))
    scales = [v for path, v in params if path[-1] == "scale"]
    self.assertEqual(len(list(stats)), 2 * len(scales))

  def test_padding_rows_take_no_part_in_batch_statistics(self):
    model = models.create("resnet18_small", image_shape=(8, 8, 3), seed=0)
    x = jax.random.uniform(jax.random.key(0), (6, 8, 8, 3))
    mask = jnp.array([1, 1, 0, 1, 0, 1], bool)[:, None, None, None]
    graphdef, params, stats = nnx.split(model, nnx.Param, nnx.BatchStat)

    def forward(images):
      model = nnx.merge(graphdef, params, stats)
      out = model(images, mask)
      return out, nnx.state(model, nnx.BatchStat)

    out, new_stats = forward(x)
    other, other_stats = forward(x.at[jnp.array([2, 4])].set(0.9))
    keep = np.asarray(mask[:, 0, 0, 0])
    np.testing.assert_allclose(other[keep], out[keep], atol=1e-6)
    for a, b in zip(jax.tree.leaves(other_stats), jax.tree.leaves(new_stats)):
      np.testing.assert_allclose(a, b, atol=1e-6)
    # Without the mask the padding rows count.
    unmasked = nnx.merge(graphdef, params, stats)(x)
    self.assertFalse(np.allclose(unmasked[keep], out[keep], atol=1e-4))

  @parameterized.parameters(((2, 2), 1), ((1, 1), 1), ((4, 4), 2), ((3, 5), 2),
                            ((8, 8), 2))
  def test_small_maps_convolve_as_patches_with_the_same_result(self, hw,
                                                               stride):
    """Where the output is smaller than the kernel the ResNets' convolution is
    a product of patches (XLA's CPU convolution is slow there): the same
    outputs and gradients as `jax.lax.conv_general_dilated`."""
    x = jax.random.normal(jax.random.key(0), (3, *hw, 5))
    w = jax.random.normal(jax.random.key(1), (3, 3, 5, 7))
    dims = ("NHWC", "HWIO", "NHWC")

    def loss(conv, x, w):
      y = conv(x, w, (stride, stride), ((1, 1), (1, 1)),
               dimension_numbers=dims)
      return jnp.sum(jnp.sin(y)), y

    grad = lambda conv: jax.grad(loss, argnums=(1, 2), has_aux=True)(
        conv, x, w)
    (gx, gw), y = grad(resnet.conv_general_dilated)
    (want_gx, want_gw), want_y = grad(jax.lax.conv_general_dilated)
    for got, want in ((y, want_y), (gx, want_gx), (gw, want_gw)):
      np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    jaxpr = str(jax.make_jaxpr(lambda x: resnet.conv_general_dilated(
        x, w, (stride, stride), ((1, 1), (1, 1)), dimension_numbers=dims))(x))
    out = [(n + 2 - 3) // stride + 1 for n in hw]
    self.assertEqual("dot_general" in jaxpr, min(out) < 3)

  def test_evaluation_uses_running_averages(self):
    """In evaluation an image's embedding does not depend on its batch."""
    model = models.create("resnet18_small", image_shape=(8, 8, 3), seed=0)
    graphdef, params, stats = nnx.split(model, nnx.Param, nnx.BatchStat)
    images = jax.random.randint(jax.random.key(1), (4, 8, 8, 3), 0, 256
                                ).astype(jnp.uint8)
    alone = models.embed(graphdef, params, stats, images[:1])
    together = models.embed(graphdef, params, stats, images)
    np.testing.assert_allclose(alone[0], together[0], atol=1e-5)

  def test_imagenet_input_normalisation(self):
    model = models.create("cnn", image_shape=(8, 8, 3), seed=0, widths=(4,),
                          hidden_dim=8, embedding_dim=4,
                          input_norm="imagenet")
    x = jax.random.uniform(jax.random.key(2), (3, 8, 8, 3))
    mean, std = (np.array(v) for v in models.INPUT_NORMS["imagenet"])
    np.testing.assert_allclose(model(x), model.network((x - mean) / std),
                               atol=1e-6)
    with self.assertRaisesRegex(ValueError, "needs 3 channels"):
      models.create("cnn", image_shape=(8, 8, 1), seed=0,
                    input_norm="imagenet")

  @parameterized.parameters("cnn", "resnet18_small")
  def test_bfloat16_stays_close_to_float32(self, name):
    """The same parameters computing in bfloat16: unit-norm embeddings within
    0.05 of float32's (bfloat16 keeps 8 bits of mantissa), float32 out."""
    settings = dict(image_shape=(16, 16, 3), seed=0, widths=(8, 16),
                    hidden_dim=32, embedding_dim=16)
    full = models.create(name, **settings)
    half = models.create(name, dtype="bfloat16", **settings)
    nnx.update(half, nnx.state(full))
    x = jax.random.uniform(jax.random.key(3), (8, 16, 16, 3))
    want, got = full(x), half(x)
    self.assertEqual(got.dtype, jnp.float32)
    self.assertLess(float(jnp.max(jnp.abs(got - want))), 0.05)



class BatchNormTest(absltest.TestCase):

  def test_masked_statistics_against_numpy(self):
    from tripletjax.models import batch_norm  # pylint: disable=g-import-not-at-top
    rng = np.random.default_rng(0)
    x = rng.normal(2.0, 3.0, (6, 4, 4, 5)).astype(np.float32)
    keep = np.array([1, 0, 1, 1, 0, 1], bool)
    norm = batch_norm.BatchNorm(5, momentum=0.9, rngs=nnx.Rngs(0))
    y = norm(jnp.asarray(x), mask=jnp.asarray(keep)[:, None, None, None])
    rows = x[keep].astype(np.float64)
    mean, var = rows.mean(axis=(0, 1, 2)), rows.var(axis=(0, 1, 2))
    np.testing.assert_allclose(y, (x - mean) / np.sqrt(var + 1e-5),
                               rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(norm.mean[...], 0.1 * mean, rtol=1e-5)
    np.testing.assert_allclose(norm.var[...], 0.9 + 0.1 * var, rtol=1e-5)


if __name__ == "__main__":
  absltest.main()
