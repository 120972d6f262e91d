"""XLA flags that make the CPU backend train these networks faster.

JAX 0.10's CPU backend hands convolutions to the YNNPACK and XNNPACK
libraries. On the reference CNN their weight gradients and forward passes
are slower than XLA's own (Eigen) convolutions: keeping YNNPACK for matrix
products only and turning XNNPACK off takes the train step from about
2,300-2,700 to about 3,400 images/s on two cores (`experiments.benchmark_train`
with and without them; the README has the table). Results agree to
floating-point rounding either way.

XLA reads ``XLA_FLAGS`` once, when the first backend starts: call
`use_fast_cpu_flags` before anything runs on a device (the scripts of
``experiments/`` do, first thing). A flag the user already set in
``XLA_FLAGS`` is left as the user set it. XLA aborts on a flag it does not
know, so the flags are only added under the jaxlib versions they were checked
with (`VERIFIED_JAXLIB`); other versions run with XLA's defaults.
"""

from __future__ import annotations

import os
from typing import MutableMapping

from absl import logging
import jaxlib

FAST_CPU_FLAGS = {
    "xla_cpu_experimental_ynn_fusion_type": "dot",
    "xla_cpu_use_xnnpack": "false",
}
VERIFIED_JAXLIB = ("0.10.",)  # Version prefixes the flags were checked with.


def use_fast_cpu_flags(environ: MutableMapping[str, str] = os.environ, *,
                       jaxlib_version: str = jaxlib.__version__) -> str:
  """Adds `FAST_CPU_FLAGS` to ``environ["XLA_FLAGS"]``, except those it
  already sets; returns the new value (unchanged under a jaxlib version not
  in `VERIFIED_JAXLIB`).

  >>> env = {"XLA_FLAGS": "--xla_cpu_use_xnnpack=true"}
  >>> use_fast_cpu_flags(env, jaxlib_version="0.10.2")
  '--xla_cpu_use_xnnpack=true --xla_cpu_experimental_ynn_fusion_type=dot'
  >>> use_fast_cpu_flags({}, jaxlib_version="0.12.0")
  ''
  """
  if not jaxlib_version.startswith(VERIFIED_JAXLIB):
    logging.info("jaxlib %s: XLA's default CPU flags (the fast ones were "
                 "checked with %s).", jaxlib_version, VERIFIED_JAXLIB)
    return environ.get("XLA_FLAGS", "")
  current = environ.get("XLA_FLAGS", "").split()
  given = {flag.lstrip("-").split("=")[0] for flag in current}
  added = [f"--{name}={value}" for name, value in FAST_CPU_FLAGS.items()
           if name not in given]
  environ["XLA_FLAGS"] = " ".join(current + added)
  return environ["XLA_FLAGS"]
