"""The row-wise argsort against NumPy's stable argsort, on both paths."""

from unittest import mock

from absl.testing import absltest
from absl.testing import parameterized
import jax
import jax.numpy as jnp
import numpy as np

from tripletjax import sorting


class ArgsortRowsTest(parameterized.TestCase):

  @parameterized.product(implementation=sorting.IMPLEMENTATIONS,
                         shape=((1, 1), (5, 17), (3, 4, 64)))
  def test_matches_stable_argsort(self, implementation, shape):
    rng = np.random.default_rng(0)
    # Few distinct values, so that ties (broken by position) are common; the
    # extremes of the range included.
    keys = rng.choice(np.array([0, 1, 7, 2**31, 2**32 - 1], np.uint32),
                      size=shape)
    got = jax.jit(lambda k: sorting.argsort_rows(
        k, implementation=implementation))(keys)
    np.testing.assert_array_equal(got, np.argsort(keys, axis=-1,
                                                  kind="stable"))

  def test_under_vmap(self):
    keys = np.random.default_rng(1).integers(0, 9, size=(4, 6, 10),
                                              dtype=np.uint32)
    got = jax.vmap(sorting.argsort_rows)(keys)
    np.testing.assert_array_equal(got, np.argsort(keys, axis=-1,
                                                  kind="stable"))

  @parameterized.parameters("auto", "numpy")
  def test_single_cpu_process_sorts_in_xla(self, implementation):
    # A callback would hang there (see the module docstring): no callback
    # may be traced into the program of a one-CPU process.
    trace = lambda: str(jax.make_jaxpr(lambda k: sorting.argsort_rows(
        k, implementation=implementation))(np.zeros((3, 4), np.uint32)))
    with mock.patch.object(sorting, "usable_cpus", return_value=2):
      self.assertIn("pure_callback", trace())
    with mock.patch.object(sorting, "usable_cpus", return_value=1):
      self.assertNotIn("pure_callback", trace())

  def test_bad_input(self):
    with self.assertRaisesRegex(ValueError, "uint32"):
      sorting.argsort_rows(jnp.zeros((2, 2)))
    with self.assertRaisesRegex(ValueError, "implementation"):
      sorting.argsort_rows(jnp.zeros((2, 2), jnp.uint32),
                           implementation="cuda")


if __name__ == "__main__":
  absltest.main()
