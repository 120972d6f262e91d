"""The fast XLA CPU flags: how they are set, and the convolutions under them."""

import json
import os
import pathlib
import subprocess
import sys

import jaxlib
import numpy as np
import pytest

from tripletjax import xla_cpu

REPO = pathlib.Path(__file__).resolve().parents[1]

# Runs under the flags: a convolution, its input and weight gradients.
_CONV_UNDER_FLAGS = """
import json, os, sys
import jax, numpy as np
from tripletjax import xla_cpu
xla_cpu.use_fast_cpu_flags()
x, w, g = (np.asarray(a, np.float32) for a in json.loads(sys.stdin.read()))
conv = lambda x, w: jax.lax.conv_general_dilated(
    x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
y, vjp = jax.vjp(conv, x, w)
dx, dw = vjp(g)
print(json.dumps({"xla_flags": os.environ.get("XLA_FLAGS", ""),
                  "arrays": [np.asarray(a).tolist() for a in (y, dx, dw)]}))
"""


def conv_reference(x, w):
  """'SAME' 3x3 cross-correlation by enumeration: ``[B,H,W,C] x [3,3,C,O]``."""
  b, h, wd, _ = x.shape
  padded = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  y = np.zeros((b, h, wd, w.shape[-1]))
  for i in range(h):
    for j in range(wd):
      y[:, i, j] = np.einsum("bklc,klco->bo", padded[:, i:i + 3, j:j + 3], w)
  return y


def test_adds_the_flags_and_keeps_the_users():
  env = {}
  xla_cpu.use_fast_cpu_flags(env, jaxlib_version="0.10.2")
  assert env["XLA_FLAGS"].split() == [
      f"--{k}={v}" for k, v in xla_cpu.FAST_CPU_FLAGS.items()]
  assert xla_cpu.use_fast_cpu_flags(  # Idempotent.
      env, jaxlib_version="0.10.2") == env["XLA_FLAGS"]
  env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=4 "
                      "--xla_cpu_use_xnnpack=true"}
  flags = xla_cpu.use_fast_cpu_flags(env, jaxlib_version="0.10.2").split()
  assert flags == ["--xla_force_host_platform_device_count=4",
                   "--xla_cpu_use_xnnpack=true",
                   "--xla_cpu_experimental_ynn_fusion_type=dot"]


def test_other_jaxlib_versions_keep_xlas_defaults():
  env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
  for version in ("0.9.1", "0.11.0", "1.0.0"):
    assert xla_cpu.use_fast_cpu_flags(env, jaxlib_version=version) == (
        "--xla_force_host_platform_device_count=2")


def test_convolution_and_its_gradients_under_the_flags():
  # Under a verified jaxlib whose XLA does not know a flag, this aborts.
  if not jaxlib.__version__.startswith(xla_cpu.VERIFIED_JAXLIB):
    pytest.skip(f"NOT CHECKED: the fast XLA CPU flags are only set under "
                f"jaxlib {xla_cpu.VERIFIED_JAXLIB}, this is "
                f"{jaxlib.__version__}; check them and extend VERIFIED_JAXLIB.")
  rng = np.random.default_rng(0)
  x = rng.normal(size=(2, 5, 6, 3))
  w = rng.normal(size=(3, 3, 3, 4))
  g = rng.normal(size=(2, 5, 6, 4))
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  result = subprocess.run(
      [sys.executable, "-c", _CONV_UNDER_FLAGS], cwd=REPO, env=env,
      input=json.dumps([a.tolist() for a in (x, w, g)]), capture_output=True,
      text=True, timeout=120)
  assert result.returncode == 0, result.stderr[-3000:]
  out = json.loads(result.stdout)
  for name, value in xla_cpu.FAST_CPU_FLAGS.items():  # They were in force.
    assert f"--{name}={value}" in out["xla_flags"].split(), out["xla_flags"]
  y, dx, dw = (np.array(a) for a in out["arrays"])
  np.testing.assert_allclose(y, conv_reference(x, w), rtol=1e-4, atol=1e-4)
  # The gradients of sum(y * g), by the linearity of the convolution:
  # dw[k, l, c, o] = sum of x's shifted pixels times g; dx by the adjoint.
  basis = np.eye(w.size).reshape(w.size, *w.shape)
  dw_reference = np.array([(conv_reference(x, e) * g).sum() for e in basis])
  np.testing.assert_allclose(dw, dw_reference.reshape(w.shape), rtol=1e-4,
                             atol=1e-4)
  basis = np.eye(x.size).reshape(x.size, *x.shape)
  dx_reference = np.array([(conv_reference(e, w) * g).sum() for e in basis])
  np.testing.assert_allclose(dx, dx_reference.reshape(x.shape), rtol=1e-4,
                             atol=1e-4)
