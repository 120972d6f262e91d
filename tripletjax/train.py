"""Training: the train state, the pure train step, and `train_and_evaluate`.

`train_and_evaluate(config, workdir)` reads top to bottom in the order of a
run: configuration, data, model, optimiser and state, checkpoint, compiled
step, loop, final evaluation.
"""

from __future__ import annotations

import functools
import json
import os
import time
from typing import Any, Callable

from absl import logging
from flax import nnx
from flax import struct
import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P
import numpy as np
import optax

from tripletjax import checkpointing
from tripletjax import config as config_lib
from tripletjax import data
from tripletjax import evaluation
from tripletjax import health
from tripletjax import losses
from tripletjax import models
from tripletjax import parallel
from tripletjax import report
from tripletjax import sampling
from tripletjax import workdir as workdir_lib
from tripletjax import writers
from tripletjax.data import augment
from tripletjax.models import weights

Config = config_lib.Config
# Train steps per compiled call when Config.steps_per_call is 0, by backend
# (the CPU's measured, docs/performance.md "The training loop"; GPUs' and
# TPUs' not yet: a call of 100 steps of 0.6 ms amortises the host's work).
STEPS_PER_CALL = {"cpu": 10, "gpu": 100, "tpu": 100}
# The most bytes of training images `sampling="auto"` keeps on each GPU or
# TPU (read into memory first, from a photo cache).
DEVICE_IMAGES_LIMIT = 1 << 30


@struct.dataclass
class TrainState:
  """Everything that changes during training; a pytree of arrays."""
  step: jax.Array  # int32 scalar: number of updates applied.
  params: nnx.State
  batch_stats: nnx.State  # Batch norm's running averages (empty without).
  opt_state: optax.OptState
  # The moving average of `params` (empty without `Config.ema_decay`).
  ema_params: nnx.State = struct.field(
      default_factory=lambda: nnx.State({}))


def network_params(state: TrainState, config: Config) -> nnx.State:
  """The parameters evaluation, embedding and export use: the moving
  average where the run keeps one."""
  return state.ema_params if config.ema_decay else state.params


def ema_update(ema: nnx.State, params: nnx.State, step: jax.Array,
               decay: float) -> nnx.State:
  """The moving average after the update that made `params` the update
  ``step`` (counted from 1): ``d ema + (1 - d) params`` with ``d = min(decay,
  (1 + step) / (10 + step))``, so that the first steps, whose parameters
  are furthest from the trained ones, weigh less (as TensorFlow's
  ``ExponentialMovingAverage`` with ``num_updates``).
  """
  d = jnp.minimum(decay, (1.0 + step) / (10.0 + step))
  return jax.tree.map(lambda e, p: d * e + (1.0 - d) * p, ema, params)


# --------------------------------------------------------------------------
# Pure functions of the step.
# --------------------------------------------------------------------------
def make_optimizer(config: Config, frozen=None,
                   learning_rate: optax.Schedule | None = None
                   ) -> optax.GradientTransformation:
  """Adam(W) with linear warm-up and cosine decay to 1% of the peak rate.

  Args:
    config: the learning rate, warm-up, steps and weight decay.
    frozen: a pytree of bools like the parameters: those never updated.
    learning_rate: a schedule in place of the config's (a learning-rate
      range test's ramp).
  """
  schedule = learning_rate or optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=config.learning_rate,
      warmup_steps=config.warmup_steps, decay_steps=config.steps,
      end_value=config.learning_rate * 0.01)
  tx = (optax.adamw(schedule, weight_decay=config.weight_decay)
        if config.weight_decay else optax.adam(schedule))
  if frozen is not None:
    tx = optax.chain(tx, optax.masked(optax.set_to_zero(), frozen))
  return tx


def compute_loss(embeddings: jax.Array, labels: jax.Array, config: Config, *,
                 key: jax.Array | None = None, axis_name: str | None = None
                 ) -> tuple[jax.Array, losses.Metrics]:
  """The configured loss of a batch of embeddings.

  Args:
    embeddings: ``[B, D]``; for ``random_triplets`` rows ``3i, 3i+1, 3i+2``
      are anchor, positive and negative of triplet ``i``.
    labels: ``[B]``; < 0 marks padding rows.
    config: names the loss, margin, metric and mining scope.
    key: the draws of a sampling loss (`losses.SAMPLING_LOSSES`).
    axis_name: the mapped axis the batch is split along, if any. Global
      mining mines the whole batch across it; local mining mines each
      device's shard alone and averages the losses.

  Returns:
    ``(loss, metrics)``, the same on every device.
  """
  if config.loss == config_lib.RANDOM_TRIPLETS:
    triplets = embeddings.reshape(-1, 3, embeddings.shape[-1])
    loss, metrics = losses.triplet_margin_loss(
        triplets[:, 0], triplets[:, 1], triplets[:, 2], margin=config.margin,
        metric=config.metric)
  else:
    loss_fn = losses.MINING_LOSSES.get(config.loss)
    if loss_fn is None:  # It draws, from the key.
      if key is None:
        raise ValueError(f"loss {config.loss!r} draws at random: give a key.")
      loss_fn = functools.partial(losses.SAMPLING_LOSSES[config.loss],
                                  key=key)
    if config.mining_scope == "global":
      return loss_fn(embeddings, labels, margin=config.margin,
                     metric=config.metric, axis_name=axis_name)
    loss, metrics = loss_fn(embeddings, labels, margin=config.margin,
                            metric=config.metric)
  if axis_name is not None:
    loss, metrics = jax.lax.pmean((loss, metrics), axis_name)
  return loss, metrics


def train_step(state: TrainState, images: jax.Array, labels: jax.Array, *,
               graphdef: nnx.GraphDef, tx: optax.GradientTransformation,
               config: Config, mesh: jax.sharding.Mesh | None = None,
               axis_name: str | None = None
               ) -> tuple[TrainState, dict[str, jax.Array]]:
  """One optimiser update on a batch.

  Args:
    state: the train state.
    images: ``uint8 [B, H, W, C]``.
    labels: ``int32 [B]``, < 0 for padding rows.
    graphdef: the model's structure (from `initial_state`).
    tx: the optimiser.
    config: loss, margin, metric, mining scope, augmentation and seed.
    mesh: under `jax.jit` over a mesh of several devices: the batch is
      sharded along its ``data`` axis and the loss runs in `jax.shard_map`
      across it.
    axis_name: under `jax.pmap`: the mapped axis; gradients are averaged
      over it.

  Returns:
    The new state and the step's metrics (scalars): the loss's metrics plus
    ``loss`` and ``grad_norm``.
  """
  key = jax.random.fold_in(jax.random.key(config.seed), state.step)
  rows = {}
  if axis_name is not None:  # This device's rows of the global batch.
    rows = dict(first_row=jax.lax.axis_index(axis_name) * images.shape[0],
                batch_size=images.shape[0] * jax.lax.axis_size(axis_name))
  loss_key = jax.random.fold_in(key, 1)  # Augmentation draws from `key`.

  def loss_of(embeddings, labels, loss_key, axis_name=axis_name):
    return compute_loss(embeddings, labels, config, key=loss_key,
                        axis_name=axis_name)

  if mesh is not None and mesh.size > 1:
    axis = parallel.DATA_AXIS
    loss_of = jax.shard_map(functools.partial(loss_of, axis_name=axis),
                            mesh=mesh, in_specs=(P(axis), P(axis), P()),
                            out_specs=P())

  def loss_fn(params, batch_stats):
    model = nnx.merge(graphdef, params, batch_stats, copy=True)
    x = augment.apply(models.preprocess(images), key, config, **rows)
    # Padding rows take no part in batch statistics either.
    loss, metrics = loss_of(model(x, (labels >= 0)[:, None, None, None]),
                            labels, loss_key)
    return loss, (metrics, nnx.state(model, nnx.BatchStat))

  (loss, (metrics, batch_stats)), grads = jax.value_and_grad(
      loss_fn, has_aux=True)(state.params, state.batch_stats)
  if axis_name is not None:
    # Each device holds the gradient of the (global) loss through its own
    # images; their mean is the gradient of the loss.
    grads = jax.lax.pmean(grads, axis_name)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  metrics = {**metrics, "loss": loss, "grad_norm": optax.tree.norm(grads)}
  ema_params = state.ema_params
  if config.ema_decay:
    ema_params = ema_update(ema_params, params, state.step + 1,
                            config.ema_decay)
  return TrainState(step=state.step + 1, params=params,
                    batch_stats=batch_stats, opt_state=opt_state,
                    ema_params=ema_params), metrics


@struct.dataclass
class DeviceData:
  """The training set in device memory, and the sampler that draws from it."""
  images: jax.Array  # uint8 [N, H, W, C].
  sampler: sampling.DeviceSampler

  def batch(self, step: jax.Array, *, mesh: jax.sharding.Mesh | None = None,
            axis_name: str | None = None) -> tuple[jax.Array, jax.Array]:
    """Batch `step`, padded with rows of label -1 to a multiple of the
    number of devices, as the train step takes it (`parallel.device_rows`).
    """
    indices, labels = self.sampler.draw(step)
    devices = (jax.lax.axis_size(axis_name) if axis_name is not None
               else mesh.size if mesh is not None else 1)
    padding = parallel.padded_batch_size(len(indices), devices) - len(indices)
    indices = jnp.pad(indices, (0, padding))
    labels = jnp.pad(labels, (0, padding), constant_values=-1)
    indices, labels = (parallel.device_rows(x, mesh=mesh, axis_name=axis_name)
                       for x in (indices, labels))
    return self.images[indices], labels


def train_steps(state: TrainState, data: DeviceData | None, inputs: Any, *,
                mesh: jax.sharding.Mesh | None = None,
                axis_name: str | None = None, **step_settings
                ) -> tuple[TrainState, dict[str, jax.Array]]:
  """Several train steps in one call: a `lax.scan` of `train_step`, on the
  CPU the steps one after the other (no loop).

  Args:
    state: the train state.
    data: the training set on the devices, each step's batch drawn from it
      (then `inputs` are the steps' numbers, ``int32 [S]``); or None, and
      `inputs` are the batches, ``(uint8 [S, B, H, W, C], int32 [S, B])``.
    inputs: see `data`; S steps are run.
    mesh, axis_name: as in `train_step`.
    **step_settings: `train_step`'s graphdef, tx and config.

  Returns:
    The state after S steps and each step's metrics, ``[S]`` each.
  """
  step_fn = functools.partial(train_step, mesh=mesh, axis_name=axis_name,
                              **step_settings)

  def one_step(state, batch):
    if data is not None:
      batch = data.batch(state.step, mesh=mesh, axis_name=axis_name)
    return step_fn(state, *batch)

  if jax.default_backend() != "cpu":
    return jax.lax.scan(one_step, state, inputs)
  # XLA's CPU backend runs convolutions inside a while loop far slower than
  # outside one (docs/performance.md), and `lax.scan`'s unroll keeps a loop
  # for one step: the steps are traced one after the other.
  step_metrics = []
  for i in range(len(jax.tree.leaves(inputs)[0])):
    state, metrics = one_step(state, jax.tree.map(lambda x: x[i], inputs))
    step_metrics.append(metrics)
  return state, jax.tree.map(lambda *x: jnp.stack(x), *step_metrics)


def draws_on_device(config: Config, images: Any, backend: str) -> bool:
  """Whether batches are drawn on the device: as configured, or (auto) on
  GPUs and TPUs when the training images take at most
  `DEVICE_IMAGES_LIMIT`. On the CPU the host draws while the step runs on
  the other core, which measured faster (docs/performance.md)."""
  if config.sampling != "auto":
    return config.sampling == "device"
  size = np.prod(images.shape) * images.dtype.itemsize
  return backend != "cpu" and size <= DEVICE_IMAGES_LIMIT


def steps_per_call(config: Config, backend: str) -> int:
  """Steps per compiled call: the config's, or the backend's default."""
  return config.steps_per_call or STEPS_PER_CALL.get(backend, 1)


def call_end(step: int, config: Config, per_call: int) -> int:
  """Where the call that starts at `step` ends: the next multiple of
  `per_call`, of the evaluation and checkpoint periods, or the last step.

  The boundaries depend on the step alone, so a resumed run makes the same
  calls as an uninterrupted one.
  """
  ends = [config.steps]
  for period in (per_call, config.eval_every, config.checkpoint_every):
    if period:
      ends.append((step // period + 1) * period)
  return min(ends)


def initial_state(config: Config, image_shape: tuple[int, int, int], *,
                  learning_rate: optax.Schedule | None = None
                  ) -> tuple[nnx.GraphDef, TrainState,
                             optax.GradientTransformation]:
  """The model's structure, the step-0 train state and the optimiser
  (`learning_rate`: as `make_optimizer`'s).

  The backbone starts from ``config.init_from`` where given; under pmap,
  batch norm reduces its statistics across the devices.
  """
  model = models.create(
      config.model, image_shape=image_shape, seed=config.seed,
      axis_name=(parallel.DATA_AXIS if config.parallelism == "pmap"
                 else None), **config.model_settings())
  if config.init_from:
    weights.load_torchvision(model, config.init_from)
  graphdef, params, batch_stats = nnx.split(model, nnx.Param, nnx.BatchStat)
  tx = make_optimizer(config, weights.batch_norm_mask(model, params)
                      if config.freeze_bn else None, learning_rate)
  return graphdef, TrainState(
      step=jnp.zeros((), jnp.int32), params=params, batch_stats=batch_stats,
      opt_state=tx.init(params),
      ema_params=(jax.tree.map(jnp.copy, params) if config.ema_decay
                  else nnx.State({}))), tx


def train_and_evaluate(
    config: Config, workdir: str, *,
    should_stop: Callable[[int], bool] | None = None,
    allow_config_change: bool = False) -> dict[str, Any]:
  """Trains an embedding network and evaluates it; resumes from `workdir`.

  Args:
    config: the run's configuration.
    workdir: checkpoints, ``config.json``, ``metrics.jsonl``, TensorBoard
      events and ``results.json`` go here. A workdir with checkpoints is
      resumed from its latest one.
    should_stop: called before each compiled call (`call_end`) with the
      step number; when it returns True the run checkpoints its current
      step and returns early
      (``results["interrupted"]`` is then True and nothing is evaluated).
    allow_config_change: resume a workdir whose recorded settings differ
      from `config` (else a `ValueError` lists the differences).

  Returns:
    The final results, as written to ``workdir/results.json``.
  """
  start_time = time.time()
  # Configuration: every setting checked before anything is loaded.
  config_lib.validate(config)
  workdir_lib.prepare(workdir, config, allow_config_change=allow_config_change)
  is_main = jax.process_index() == 0

  config_lib.validate_for_devices(config, jax.device_count())
  devices = parallel.create(config.parallelism)

  # Input. The first process prepares the dataset, the others wait for it.
  if jax.process_count() > 1:
    if is_main:
      data.prepare(config.dataset, data_dir=config.data_dir,
                   manual_dir=config.manual_dir)
    parallel.barrier("tripletjax: dataset prepared")
  train, test = data.load_splits(config)
  # What the steps draw from; evaluation keeps to `train` and `test`.
  training = (data.with_rotated_classes(train) if config.rotated_classes
              else train)
  image_shape = data.input_shape(config, train)
  workdir_lib.record_inputs(workdir, image_shape)
  sampler = sampling.create(config, training.labels, training.class_names)
  logging.info("%s: %d train and %d test images of shape %s, %d classes.",
               config.dataset, len(training), len(test), train.image_shape,
               training.num_classes)

  # Model, optimiser, state.
  graphdef, state, tx = initial_state(config, image_shape)
  logging.info("Model %s: %d parameters.", config.model,
               sum(x.size for x in jax.tree.leaves(state.params)))
  state = devices.place_state(state)
  logging.info("%d devices in %d processes (%s); mining scope: %s.",
               jax.device_count(), jax.process_count(), config.parallelism,
               config.mining_scope)

  # Checkpoint: resume from the latest one. (Orbax's first collective, so
  # the processes line up first.)
  parallel.barrier("tripletjax: state ready")
  checkpointer = checkpointing.Checkpointer(
      os.path.join(workdir, workdir_lib.CHECKPOINTS_DIR),
      keep=config.keep_checkpoints)
  restored = checkpointer.restore_latest(devices.host_state(state))
  if restored is not None:
    state = devices.place_state(restored[1])
    logging.info("Resumed from the checkpoint of step %d.", restored[0])
  first_step = int(devices.host_state(state).step)

  # Input: the training images on the devices with an on-device sampler,
  # or batches drawn on the host and copied for each call.
  on_device = draws_on_device(config, training.images,
                              jax.default_backend())
  device_data = None
  if on_device:
    device_data = devices.replicate(DeviceData(
        images=np.asarray(training.images),
        sampler=sampler.on_device(training.labels)))
  per_call = steps_per_call(config, jax.default_backend())
  logging.info("Batches drawn on the %s; %d steps per call.",
               "device" if on_device else "host", per_call)

  def inputs(first: int, last: int):
    """The inputs of a call running steps `first` to `last` - 1."""
    if on_device:
      return devices.place_state(np.arange(first, last, dtype=np.int32))
    batches = []
    for step in range(first, last):
      indices = sampler(step)
      batches.append(parallel.local_batch(
          indices, sampler.batch_labels(indices, training.labels),
          training.images))
    return devices.place_batch(*parallel.stack_local_batches(batches),
                               stacked=True)

  # Compiled functions.
  steps_fn = devices.compile(functools.partial(train_steps, graphdef=graphdef,
                                               tx=tx, config=config))

  def evaluate_now():  # The current network, copied to the host once.
    host = jax.device_get(devices.host_state(state))
    embedder = evaluation.Embedder(
        graphdef, network_params(host, config), host.batch_stats,
        config.eval_batch_size, image_shape[0],
        flip=config.test_time_flip, shift=config.test_time_shift)
    return (embedder,
            *evaluation.evaluate_network(embedder, train, test, config))

  # Loop.
  writer = writers.create_default_writer(workdir, enabled=is_main)
  reporter = writers.ProgressReporter(
      total_steps=config.steps, every_seconds=config.log_every_seconds,
      show=("loss", "fraction_active_triplets"))
  collapse = health.CollapseDetector(margin=config.margin)
  pending = None  # (first step, metrics on device) not yet read back.

  def read_back(pending):
    first, metrics = pending
    metrics = jax.device_get(devices.metrics(metrics))
    for i in range(len(metrics["loss"])):
      step_metrics = {k: float(v[i]) for k, v in metrics.items()}
      step = first + i + 1
      health.check_finite(step, step_metrics)
      writer.write_scalars(step, step_metrics)
      reporter(step, step_metrics)
      collapse(step, step_metrics)
    writer.flush()

  loop_start = time.time()
  warm = None  # (time, step) when the first call (and compilation) ended.
  interrupted = False
  try:
    step = first_step
    while step < config.steps:
      if should_stop is not None and should_stop(step):
        interrupted = True
        break
      done = call_end(step, config, per_call)
      state, metrics = steps_fn(state, device_data, inputs(step, done))
      if warm is None:  # Throughput is timed from here, compiled.
        jax.block_until_ready(metrics)
        warm = time.time(), done
      # Reading the previous call's metrics lets this call run meanwhile.
      if pending is not None:
        read_back(pending)
      pending, step = (step, metrics), done
      eval_due = config.eval_every and done % config.eval_every == 0
      save_due = (config.checkpoint_every
                  and done % config.checkpoint_every == 0)
      if eval_due or save_due or done == config.steps:
        read_back(pending)  # Never save or report a non-finite state.
        pending = None
        if save_due or done == config.steps:
          checkpointer.save(done, devices.host_state(state))
        if eval_due and done < config.steps:
          writer.write_scalars(done, evaluate_now()[2])
          writer.flush()
    if pending is not None:
      read_back(pending)
    loop_end = time.time()
    train_seconds = loop_end - loop_start
    last_step = int(devices.host_state(state).step)
    checkpointer.save(last_step, devices.host_state(state))
  finally:  # Saves in flight are completed, even after an error.
    checkpointer.close()
  if interrupted:
    writer.close()
    logging.warning("Stopped at step %d; relaunch to resume.", last_step)
    return {"interrupted": True, "steps": last_step}

  # Final evaluation and figures.
  embedder, (train_embeddings, test_embeddings), results = evaluate_now()
  writer.write_scalars(last_step, results)
  writer.close()
  if is_main and config.write_figures:
    indices = sampler(last_step)
    report.write_figures(workdir, embedder, training, test, indices,
                         sampler.batch_labels(indices, training.labels),
                         metric=config.metric,
                         train_embeddings=(train_embeddings
                                           if training is train else None),
                         test_embeddings=test_embeddings)
  steps_run = last_step - first_step
  warm_steps = last_step - warm[1] if warm else 0
  results = {
      **results,
      "steps": last_step,
      "steps_this_run": steps_run,
      "train_seconds_this_run": train_seconds,
      # The loop's pace after its first call (which compiles), checkpoints
      # and evaluations within the loop included.
      "first_call_seconds": warm[0] - loop_start if warm else None,
      "images_per_second": (
          warm_steps * config.batch_size / (loop_end - warm[0])
          if warm_steps else None),
      "wall_seconds_this_run": time.time() - start_time,
      "config": config.to_dict(),
  }
  if is_main:
    with open(os.path.join(workdir, "results.json"), "w",
              encoding="utf-8") as f:
      json.dump(results, f, indent=2)
  logging.info("Results: %s", {k: v for k, v in results.items()
                               if k != "config"})
  return results
