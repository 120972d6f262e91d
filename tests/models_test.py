"""Embedding networks: shapes, normalisation, configuration errors."""

from absl.testing import absltest
from absl.testing import parameterized
from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np

from tripletjax import distances
from tripletjax import models


class ModelsTest(parameterized.TestCase):

  @parameterized.product(name=tuple(models.MODELS), normalize=(True, False))
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

  def test_reference_cnn_parameter_count(self):
    model = models.create("cnn", image_shape=(28, 28, 1), seed=0)
    count = sum(x.size for x in jax.tree.leaves(model))
    # conv 1->32, conv 32->64, dense 7*7*64->256, dense 256->64.
    self.assertEqual(count, (9 * 32 + 32) + (9 * 32 * 64 + 64)
                     + (3136 * 256 + 256) + (256 * 64 + 64))

  @parameterized.parameters((8, 8), (7, 9))
  def test_max_pool_matches_flax(self, height, width):
    x = jax.random.normal(jax.random.key(0), (3, height, width, 5))
    want_fn = lambda v: nnx.max_pool(v, window_shape=(2, 2), strides=(2, 2))
    np.testing.assert_array_equal(models.max_pool_2x2(x), want_fn(x))
    # Without ties (random normals) the gradients agree exactly.
    cotangent = jax.random.normal(jax.random.key(1), want_fn(x).shape)
    grad = lambda f: jax.grad(lambda v: jnp.sum(f(v) * cotangent))(x)
    np.testing.assert_array_equal(grad(models.max_pool_2x2), grad(want_fn))

  def test_l2_normalize_zero_row_has_finite_gradient(self):
    grad = jax.grad(lambda x: distances.l2_normalize(x).sum())(
        jnp.zeros((1, 3)))
    self.assertTrue(np.all(np.isfinite(grad)))

  def test_errors(self):
    with self.assertRaisesRegex(ValueError, "model must be"):
      models.create("vit", image_shape=(8, 8, 1), seed=0)
    with self.assertRaisesRegex(ValueError, "fewer widths"):
      models.create("cnn", image_shape=(4, 4, 1), seed=0, widths=(2, 2, 2))


if __name__ == "__main__":
  absltest.main()
