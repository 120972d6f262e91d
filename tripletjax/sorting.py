"""A stable row-wise argsort of unsigned 32-bit keys, fast on every backend.

Mining sorts every anchor's distances: B rows of B keys. On GPUs and TPUs
`lax.sort` does this well. XLA's CPU sort calls a comparator per comparison
and is several times slower than NumPy's vectorised sort (compare
``python -m experiments.benchmark_losses --sort_implementation=xla`` with the
default). On the CPU backend the sort therefore runs in NumPy through
`jax.pure_callback`;
both paths return the same permutation (ties broken by position), so results
do not depend on the backend.

A callback needs a second CPU thread: JAX hands its inputs over through the
CPU client's thread pool, whose one thread, on a process allowed a single CPU
(``taskset -c 0``, a one-CPU container or job slot), is the one running the
computation that waits for the callback. The step then hangs. There the sort
stays in XLA.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
from jax import lax
import numpy as np

IMPLEMENTATIONS = ("auto", "numpy", "xla")


def _argsort_numpy(keys: np.ndarray) -> np.ndarray:
  """Stable argsort of the last axis: sorts (key << 32 | position) in place."""
  keys = np.asarray(keys)
  packed = np.empty(keys.shape, np.uint64)
  words = packed.view(np.uint32).reshape(*keys.shape, 2)  # Little-endian.
  words[..., 0] = np.arange(keys.shape[-1], dtype=np.uint32)
  words[..., 1] = keys
  packed.sort(axis=-1)
  return np.ascontiguousarray(words[..., 0]).view(np.int32)


def _argsort_callback(keys: jax.Array) -> jax.Array:
  return jax.pure_callback(
      _argsort_numpy, jax.ShapeDtypeStruct(keys.shape, jnp.int32), keys,
      vmap_method="expand_dims")


def _argsort_xla(keys: jax.Array) -> jax.Array:
  positions = lax.broadcasted_iota(jnp.int32, keys.shape, keys.ndim - 1)
  return lax.sort((keys, positions), dimension=keys.ndim - 1, is_stable=True,
                  num_keys=1)[1]


def usable_cpus() -> int:
  """How many CPUs this process may run on (its affinity mask)."""
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:  # Not on Linux.
    return os.cpu_count() or 1


def argsort_rows(keys: jax.Array, *, implementation: str = "auto") -> jax.Array:
  """Stable argsort along the last axis.

  Not differentiable: callers gather with the permutation instead.

  Args:
    keys: ``uint32`` array of shape ``[..., N]``.
    implementation: ``"auto"`` (NumPy on the CPU backend, `lax.sort`
      elsewhere), ``"numpy"`` or ``"xla"``. Inside `jax.shard_map` or
      `jax.pmap`, and in a process allowed a single CPU, it is always
      `lax.sort`.

  Returns:
    ``int32`` array of shape ``[..., N]``: for each row, the positions of its
    keys in ascending order, equal keys in order of position.
  """
  if keys.dtype != jnp.uint32:
    raise ValueError(f"keys must be uint32, got dtype {keys.dtype}.")
  keys = lax.stop_gradient(keys)
  if implementation not in IMPLEMENTATIONS:
    raise ValueError(
        f"implementation must be one of {IMPLEMENTATIONS}, got "
        f"{implementation!r}.")
  if jax.typeof(keys).manual_axis_type.varying:
    # Inside shard_map or pmap, several CPU devices of one process calling
    # back into Python while others wait in a collective can deadlock; XLA's
    # sort is slower there but safe (and it is the fast one on GPU and TPU).
    return _argsort_xla(keys)
  if implementation == "xla" or usable_cpus() < 2:
    return _argsort_xla(keys)
  if implementation == "numpy":
    return _argsort_callback(keys)
  return lax.platform_dependent(keys, cpu=_argsort_callback,
                                default=_argsort_xla)
