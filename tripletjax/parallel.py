"""Devices: the data-parallel mesh, global batches, multi-host start-up.

Two ways to run a step on many devices, chosen by ``Config.parallelism``:

* ``"jit"`` (default): one program over a ``('data',)`` mesh of every device
  of every process; the batch is sharded along ``data``, the state
  replicated, and XLA inserts the collectives.
* ``"pmap"``: the same pure step under `jax.pmap` over this process's
  devices, gradients averaged with `lax.pmean`.

Every process draws the same global batch indices (they depend on the seed
and step only) and feeds its own contiguous slice of them, so a run gives the
same batches on one process or many.
"""

from __future__ import annotations

import functools

import jax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
import numpy as np

DATA_AXIS = "data"
PARALLELISMS = ("jit", "pmap")
MINING_SCOPES = ("global", "local")


def initialize(coordinator_address: str | None = None,
               num_processes: int | None = None,
               process_id: int | None = None) -> None:
  """Starts JAX's multi-process runtime; call before any other JAX call.

  With no arguments JAX detects the cluster (Cloud TPU pods, SLURM, Open
  MPI, Kubernetes); on other machines give all three.
  """
  # Collectives between CPU processes (tests, CPU clusters) go through gloo.
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(coordinator_address=coordinator_address,
                             num_processes=num_processes,
                             process_id=process_id)
  barrier("tripletjax: all processes started")


def barrier(name: str, timeout_seconds: int = 900) -> None:
  """Waits until every process has reached the barrier `name` (used once).

  This is the coordination service's barrier, not a collective: processes
  may arrive minutes apart (one preparing a dataset, one slowed by a busy
  machine), where the first collective of a CPU run gives up after 30 s.
  """
  if jax.process_count() == 1:
    return
  # No public API in jax 0.10; JAX's own multi-process tests use this one.
  from jax._src import distributed  # pylint: disable=g-import-not-at-top
  distributed.global_state.client.wait_at_barrier(name,
                                                  timeout_seconds * 1000)


def make_mesh() -> jax.sharding.Mesh:
  """A 1-D ``('data',)`` mesh over every device of every process.

  The axis type is Auto: pairwise mining (``labels[:, None] == labels``)
  on a batch-sharded array needs XLA's sharding propagation.
  """
  return jax.make_mesh((jax.device_count(),), (DATA_AXIS,),
                       axis_types=(jax.sharding.AxisType.Auto,))


def replicated(mesh: jax.sharding.Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharded(mesh: jax.sharding.Mesh) -> NamedSharding:
  return NamedSharding(mesh, P(DATA_AXIS))


def padded_batch_size(batch_size: int, num_devices: int) -> int:
  """The smallest multiple of `num_devices` that holds `batch_size` rows."""
  return -(-batch_size // num_devices) * num_devices


def pad_batch(indices: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
  """Pads example indices to `size`; returns them and a mask of real rows."""
  real = np.zeros(size, bool)
  real[:len(indices)] = True
  return np.concatenate([indices, np.zeros(size - len(indices),
                                           indices.dtype)]), real


def process_slice(size: int) -> slice:
  """This process's contiguous share of a global batch of `size` rows."""
  count, index = jax.process_count(), jax.process_index()
  if size % count:
    raise ValueError(f"A global batch of {size} rows does not split over "
                     f"{count} processes.")
  share = size // count
  return slice(index * share, (index + 1) * share)


def local_batch(indices: np.ndarray, labels: np.ndarray, images
                ) -> tuple[np.ndarray, np.ndarray]:
  """This process's rows of a global batch.

  The global batch is padded with rows of label -1 (they take part in no
  triplet) to a multiple of the number of devices, then split into one
  contiguous slice per process; only this process's images are read.

  Args:
    indices: ``[B]`` example indices of the global batch.
    labels: ``[B]`` the batch's labels.
    images: ``[N, H, W, C]`` the examples' images (an array or a
      `tripletjax.data.cache.ImageArray`).

  Returns:
    ``(images, labels)`` of this process's rows.
  """
  size = padded_batch_size(len(indices), jax.device_count())
  indices, real = pad_batch(indices, size)
  labels = np.concatenate([labels, np.full(size - len(labels), -1,
                                           labels.dtype)])
  mine = process_slice(size)
  return images[indices[mine]], np.where(real[mine], labels[mine], -1)


def stack_local_batches(batches: list[tuple[np.ndarray, np.ndarray]]
                        ) -> tuple[np.ndarray, np.ndarray]:
  """`local_batch` results of consecutive steps, stacked: ``[steps, ...]``."""
  return tuple(np.stack(arrays) for arrays in zip(*batches))


def global_array(mesh: jax.sharding.Mesh, local: np.ndarray,
                 stacked: bool = False) -> jax.Array:
  """The global batch-sharded array whose rows this process holds `local`
  (`stacked`: rows along axis 1, axis 0 counting steps)."""
  spec = P(None, DATA_AXIS) if stacked else P(DATA_AXIS)
  return jax.make_array_from_process_local_data(NamedSharding(mesh, spec),
                                                local)


def device_rows(batch: jax.Array, *, mesh: jax.sharding.Mesh | None = None,
                axis_name: str | None = None) -> jax.Array:
  """A global batch that every device computed, as the step takes it: this
  device's rows under pmap (`axis_name`), sharded along the mesh under jit.

  Args:
    batch: ``[B, ...]``, B a multiple of the number of devices.
  """
  if axis_name is not None:
    rows = batch.shape[0] // jax.lax.axis_size(axis_name)
    return jax.lax.dynamic_slice_in_dim(
        batch, jax.lax.axis_index(axis_name) * rows, rows)
  if mesh is not None and mesh.size > 1:
    return jax.lax.with_sharding_constraint(batch, batch_sharded(mesh))
  return batch


class JitParallel:
  """One jitted program over the mesh of all devices (the default)."""

  def __init__(self):
    self.mesh = make_mesh()

  def place_state(self, state):
    """The train state, replicated on every device."""
    return jax.device_put(jax.tree.map(np.asarray, state),
                          replicated(self.mesh))

  def host_state(self, state):
    """The state as one copy (for checkpoints and evaluation)."""
    return state

  def place_batch(self, *local_arrays: np.ndarray, stacked: bool = False):
    """This process's rows of the global batch, as global arrays
    (`stacked`: ``[steps, rows, ...]``, one batch per step)."""
    return tuple(global_array(self.mesh, a, stacked) for a in local_arrays)

  def replicate(self, tree):
    """Host arrays copied to every device once (the training images)."""
    return jax.device_put(tree, replicated(self.mesh))

  def compile(self, step_fn):
    """`step_fn(state, *batch, mesh=...)` jitted, the state donated."""
    return jax.jit(functools.partial(step_fn, mesh=self.mesh),
                   donate_argnums=0)

  def metrics(self, metrics):
    return metrics


class PmapParallel:
  """The step under `jax.pmap` over this process's devices."""

  def __init__(self):
    self.local_devices = jax.local_device_count()

  def place_state(self, state):
    return jax.tree.map(
        lambda x: np.broadcast_to(np.asarray(x),
                                  (self.local_devices, *np.shape(x))), state)

  def host_state(self, state):
    return jax.tree.map(lambda x: x[0], state)

  def place_batch(self, *local_arrays: np.ndarray, stacked: bool = False):
    if stacked:  # [steps, rows, ...] -> [devices, steps, rows / devices, ...]
      return tuple(np.moveaxis(a.reshape(a.shape[0], self.local_devices, -1,
                                         *a.shape[2:]), 1, 0)
                   for a in local_arrays)
    return tuple(a.reshape(self.local_devices, -1, *a.shape[1:])
                 for a in local_arrays)

  def replicate(self, tree):
    return jax.pmap(lambda x: x)(self.place_state(tree))

  def compile(self, step_fn):
    """`step_fn(state, *batch, axis_name=...)` pmapped, the state donated."""
    return jax.pmap(functools.partial(step_fn, axis_name=DATA_AXIS),
                    axis_name=DATA_AXIS, donate_argnums=0)

  def metrics(self, metrics):
    return jax.tree.map(lambda x: x[0], metrics)


def create(parallelism: str):
  """The execution strategy named by ``Config.parallelism``."""
  if parallelism == "jit":
    return JitParallel()
  if parallelism == "pmap":
    return PmapParallel()
  raise ValueError(f"parallelism must be one of {PARALLELISMS}, got "
                   f"{parallelism!r}.")
