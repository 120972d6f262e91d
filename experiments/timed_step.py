"""The train step timed on one synthetic batch already on the device: what
`benchmark_train` and `benchmark_peer` time (no flags here)."""

from __future__ import annotations

import functools
import time

import jax
import jax.numpy as jnp
import numpy as np

from tripletjax import config as config_lib
from tripletjax import train

EXAMPLES_PER_CLASS = 16  # K of the benchmarks' P x K batches.
# The reference set-up: the default CNN, batch-hard, no augmentation (the
# network of the PyTorch comparison).
REFERENCE = dict(loss="batch_hard", augment_shift=0)


def config(batch_size: int, **settings) -> config_lib.Config:
  """`Config(**settings)` with P x K = `batch_size` / 16 x 16.

  Raises:
    ValueError: `batch_size` is not a multiple of 16.
  """
  if batch_size % EXAMPLES_PER_CLASS:
    raise ValueError(f"batch sizes must be multiples of "
                     f"{EXAMPLES_PER_CLASS}, got {batch_size}.")
  return config_lib.Config(
      classes_per_batch=batch_size // EXAMPLES_PER_CLASS,
      examples_per_class=EXAMPLES_PER_CLASS, **settings)


class TimedStep:
  """The train step of `config` compiled for one batch of random images of
  `image_shape` (``(H, W, C)``); `run` times steps of it."""

  def __init__(self, config: config_lib.Config,
               image_shape: tuple[int, int, int]):
    self.graphdef, self.state, tx = train.initial_state(config, image_shape)
    rng = np.random.default_rng(0)
    self.images = jnp.asarray(rng.integers(
        0, 256, (config.batch_size, *image_shape), np.uint8))
    self.labels = jnp.repeat(
        jnp.arange(config.classes_per_batch, dtype=jnp.int32),
        config.examples_per_class)
    step = jax.jit(functools.partial(train.train_step, graphdef=self.graphdef,
                                     tx=tx, config=config), donate_argnums=0)
    start = time.perf_counter()
    self.compiled = step.lower(self.state, self.images,
                               self.labels).compile()
    self.compile_seconds = time.perf_counter() - start

  def run(self, steps: int) -> float:
    """Seconds of `steps` steps, until their results are ready."""
    start = time.perf_counter()
    for _ in range(steps):
      self.state, metrics = self.compiled(self.state, self.images,
                                          self.labels)
    jax.block_until_ready(metrics)
    return time.perf_counter() - start
