"""Global mining across 8 simulated devices equals mining on one device.

Runs in its own process: the device count must be set before JAX starts.
"""

import os
import subprocess
import sys
import textwrap

from tripletjax import losses

SCRIPT = textwrap.dedent("""
    import functools
    import os
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                               " --xla_force_host_platform_device_count=8")
    import jax
    import numpy as np
    from jax.sharding import PartitionSpec as P
    from tripletjax import losses

    mesh = jax.make_mesh((8,), ("data",),
                         axis_types=(jax.sharding.AxisType.Auto,))
    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, 4)).astype(np.float32)
    y = rng.integers(0, 4, 32).astype(np.int32)
    y[[5, 17]] = -1
    sampling = {name: functools.partial(fn, key=jax.random.key(3))
                for name, fn in losses.SAMPLING_LOSSES.items()}
    for name, fn in {**losses.MINING_LOSSES, **sampling}.items():
      one = lambda e: fn(e, y, margin=0.3)
      (ref_loss, ref_metrics), ref_grad = jax.value_and_grad(
          one, has_aux=True)(x)
      local = lambda e, l: fn(e, l, margin=0.3, axis_name="data")
      sharded = jax.shard_map(local, mesh=mesh, in_specs=(P("data"),) * 2,
                              out_specs=P())
      (loss, metrics), grad = jax.jit(jax.value_and_grad(
          sharded, has_aux=True))(x, y)
      np.testing.assert_allclose(loss, ref_loss, rtol=1e-6)
      np.testing.assert_allclose(grad, ref_grad, rtol=1e-5, atol=1e-7)
      for key in ref_metrics:
        np.testing.assert_allclose(metrics[key], ref_metrics[key], rtol=1e-5,
                                   err_msg=key)
      # pmap: each device holds the global loss; the mean of the devices'
      # gradients is the exact gradient.
      (p_loss, _), p_grad = jax.pmap(
          jax.value_and_grad(local, has_aux=True), axis_name="data")(
              x.reshape(8, 4, 4), y.reshape(8, 4))
      np.testing.assert_allclose(p_loss, np.full(8, ref_loss), rtol=1e-6)
      np.testing.assert_allclose(np.asarray(p_grad).reshape(32, 4) / 8,
                                 ref_grad, rtol=1e-5, atol=1e-7)
      print(name, "ok")
""")


def test_global_mining_on_eight_devices_equals_one_device():
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  result = subprocess.run([sys.executable, "-c", SCRIPT], cwd=repo,
                          capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONPATH": repo})
  assert result.returncode == 0, result.stderr[-4000:]
  assert result.stdout.count(" ok") == (
      len(losses.MINING_LOSSES) + len(losses.SAMPLING_LOSSES)), result.stdout
