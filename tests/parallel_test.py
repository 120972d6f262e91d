"""One train step on 1 device, 8 devices under jit and 8 under pmap.

Each test runs in its own process: the number of simulated CPU devices must
be set before JAX starts.
"""

import os
import pathlib
import socket
import subprocess
import sys
import textwrap

import numpy as np

from tests import reliability_test
from tests import train_test
from tripletjax import config as config_lib
from tripletjax import train

REPO = pathlib.Path(__file__).resolve().parents[1]


def run_script(script, devices=8, timeout=600):
  env = {**os.environ, "PYTHONPATH": str(REPO),
         "XLA_FLAGS": f"{os.environ.get('XLA_FLAGS', '')} "
                      f"--xla_force_host_platform_device_count={devices}"}
  result = subprocess.run([sys.executable, "-c", textwrap.dedent(script)],
                          cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, env=env)
  assert result.returncode == 0, result.stderr[-5000:]
  return result.stdout


STEP_LOSSES = ("batch_hard", "distance_weighted", config_lib.RANDOM_TRIPLETS)
STEP_SCRIPT = f"STEP_LOSSES = {STEP_LOSSES!r}\n" + textwrap.dedent("""
    import functools
    import jax, jax.numpy as jnp, numpy as np, optax
    from flax import nnx
    from tripletjax import config as config_lib, models, parallel, train

    assert jax.device_count() == 8
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (32, 8, 8, 1), dtype=np.uint8)
    labels = np.repeat(np.arange(8), 4).astype(np.int32)
    labels[[3, 30]] = -1  # Padding rows.
    tx = optax.sgd(1.0)  # The update is minus the gradient.

    def network(image_shape, **settings):
      # The graphdef and step-0 state of a tiny CNN.
      graphdef, params, batch_stats = nnx.split(models.create(
          "cnn", image_shape=image_shape, seed=0, widths=(4,), hidden_dim=16,
          embedding_dim=8, **settings), nnx.Param, nnx.BatchStat)
      return graphdef, train.TrainState(
          step=jnp.zeros((), jnp.int32), params=params,
          batch_stats=batch_stats, opt_state=tx.init(params))

    graphdef, state = network((8, 8, 1))

    def run(config, how, images=images, graphdef=graphdef, state=state):
      step = functools.partial(train.train_step, graphdef=graphdef, tx=tx,
                               config=config)
      # Random triplets: 8 whole triplets, one per device.
      rows = 24 if config.loss == config_lib.RANDOM_TRIPLETS else 32
      batch = images[:rows], labels[:rows]
      if how == "one":
        new, metrics = jax.jit(step)(state, *batch)
        return float(metrics["loss"]), new
      devices = parallel.create(how)
      new, metrics = devices.compile(step)(
          devices.place_state(state), *devices.place_batch(*batch))
      return (float(devices.metrics(metrics)["loss"]),
              devices.host_state(new))

    def close(a, b):
      return all(np.allclose(x, y, rtol=1e-4, atol=1e-6)
                 for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))

    # Each loss's global mining across devices is distributed_losses_test's;
    # here the step's plumbing, once per kind of loss: mined, drawn from a
    # key, and whole triplets.
    for name in STEP_LOSSES:
      config = config_lib.Config(loss=name, margin=0.3, augment_shift=0)
      loss, params = run(config, "one")
      for how in ("jit", "pmap"):
        other_loss, other_params = run(config, how)
        assert np.isclose(other_loss, loss, rtol=1e-5), (name, how, loss,
                                                         other_loss)
        assert close(other_params, params), (name, how)
      if name == config_lib.RANDOM_TRIPLETS:
        print(name, "ok")
        continue
      # Mining each device's 4 rows alone: the mean of the shards' losses.
      local = config.replace(mining_scope="local")
      shard_losses = []
      for i in range(8):
        rows = slice(4 * i, 4 * i + 4)
        emb = nnx.merge(graphdef, state.params, state.batch_stats)(
            images[rows].astype(np.float32) / 255)
        shard_losses.append(float(train.compute_loss(
            emb, labels[rows], local, key=jax.random.fold_in(
                jax.random.fold_in(jax.random.key(local.seed), 0), 1))[0]))
      for how in ("jit", "pmap"):
        local_loss, _ = run(local, how)
        assert np.isclose(local_loss, np.mean(shard_losses), rtol=1e-5), (
            name, how, local_loss, np.mean(shard_losses))
        assert not np.isclose(local_loss, loss, rtol=1e-3), (name, how)
      print(name, "ok")

    # Augmentation draws depend on (seed, step, row of the global batch),
    # not on the device a row lands on.
    for name, changes in (("shifts", {}),
                          ("affine and erasing", dict(augment_rotation=20.0,
                                                      augment_scale=0.2,
                                                      augment_erase=0.5))):
      config = config_lib.Config(loss="batch_all", margin=0.3, **changes)
      loss, params = run(config, "one")
      unaugmented, _ = run(config.replace(augment_shift=0, augment_rotation=0.0,
                                          augment_scale=0.0, augment_erase=0.0),
                           "one")
      assert not np.isclose(loss, unaugmented, rtol=1e-3), name
      for how in ("jit", "pmap"):
        other_loss, other_params = run(config, how)
        assert np.isclose(other_loss, loss, rtol=1e-5), (name, how, loss,
                                                         other_loss)
        assert close(other_params, params), (name, how)
      print("augmentation", name, "ok")

    # Photos stored at 12 pixels, randomly cropped to the network's 8.
    photos = rng.integers(0, 256, (32, 12, 12, 3), dtype=np.uint8)
    photo_graphdef, photo_state = network((8, 8, 3))
    photo = dict(images=photos, graphdef=photo_graphdef, state=photo_state)
    config = config_lib.Config(loss="batch_all", margin=0.3, image_size=8,
                               augment="photo", augment_color=0.3)
    loss, params = run(config, "one", **photo)
    cropped, _ = run(config.replace(augment="none"), "one", **photo)
    assert not np.isclose(loss, cropped, rtol=1e-3)
    for how in ("jit", "pmap"):
      other_loss, other_params = run(config, how, **photo)
      assert np.isclose(other_loss, loss, rtol=1e-5), (how, loss, other_loss)
      assert close(other_params, params), how
    print("augmentation photo ok")

    # Batch norm: the global batch's statistics under jit (padding rows
    # left out), reduced across the devices under pmap.
    config = config_lib.Config(loss="batch_all", margin=0.3, augment_shift=0)
    bn_graphdef, bn_state = network((8, 8, 1), norm="batch")
    pmap_graphdef, _ = network((8, 8, 1), norm="batch", axis_name="data")
    loss, bn_new = run(config, "one", graphdef=bn_graphdef, state=bn_state)
    assert not close(bn_new.batch_stats, bn_state.batch_stats)
    for how, graph in (("jit", bn_graphdef), ("pmap", pmap_graphdef)):
      other_loss, other = run(config, how, graphdef=graph, state=bn_state)
      assert np.isclose(other_loss, loss, rtol=1e-5), (how, loss, other_loss)
      assert close(other, bn_new), how
    changed = images.copy()  # Other images in the padding rows: no effect.
    changed[[3, 30]] = 255 - changed[[3, 30]]
    same_loss, same = run(config, "one", images=changed, graphdef=bn_graphdef,
                          state=bn_state)
    assert np.isclose(same_loss, loss, rtol=1e-6) and close(same, bn_new)
    print("batch norm ok")
""")


def test_one_step_same_on_one_and_eight_devices():
  out = run_script(STEP_SCRIPT)
  assert out.count(" ok") == len(STEP_LOSSES) + 4, out


SAMPLED_STEPS_SCRIPT = """
    import functools
    import jax, jax.numpy as jnp, numpy as np, optax
    from flax import nnx
    from tripletjax import config as config_lib, models, parallel, sampling
    from tripletjax import train

    assert jax.device_count() == 8
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (60, 8, 8, 1), dtype=np.uint8)
    labels = np.repeat(np.arange(6), 10).astype(np.int32)
    tx = optax.sgd(0.5)
    graphdef, params, batch_stats = nnx.split(models.create(
        "cnn", image_shape=(8, 8, 1), seed=0, widths=(4,), hidden_dim=16,
        embedding_dim=8), nnx.Param, nnx.BatchStat)
    state = train.TrainState(step=jnp.array(5, jnp.int32), params=params,
                             batch_stats=batch_stats,
                             opt_state=tx.init(params))

    def close(a, b):
      return all(np.allclose(x, y, rtol=1e-4, atol=1e-6)
                 for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))

    # Batches of 30 rows (P x K = 3 x 10, 5 images x 6 views), padded to 32
    # on 8 devices, and 8 random triplets (never split).
    for name, changes in (("pk", dict(classes_per_batch=3,
                                      examples_per_class=10)),
                          ("triplets", dict(loss="random_triplets",
                                            triplets_per_batch=8)),
                          ("views", dict(positives="augmented",
                                         classes_per_batch=5,
                                         examples_per_class=6))):
      config = config_lib.Config(margin=0.3, **changes)
      sampler = sampling.create(config, labels).on_device(labels)
      data = train.DeviceData(images=images, sampler=sampler)
      steps = functools.partial(train.train_steps, graphdef=graphdef, tx=tx,
                                config=config)
      # Steps 5 and 6 (each step of a call is compiled: two keep it short).
      numbers = np.arange(5, 7, dtype=np.int32)
      one, one_metrics = jax.jit(steps)(state, data, numbers)
      assert int(one.step) == 7
      for how in ("jit", "pmap"):
        devices = parallel.create(how)
        new, metrics = devices.compile(steps)(
            devices.place_state(state), devices.replicate(data),
            devices.place_state(numbers))
        metrics = devices.metrics(metrics)
        np.testing.assert_allclose(metrics["loss"], one_metrics["loss"],
                                   rtol=1e-5)
        assert close(devices.host_state(new), one), (name, how)
      # The same steps one call each: the same batches and updates.
      single = state
      for number in numbers:
        single, _ = jax.jit(steps)(single, data, number[None])
      assert close(single, one), name
      print(name, "ok")
"""


def test_steps_drawn_on_the_device_same_on_one_and_eight_devices():
  out = run_script(SAMPLED_STEPS_SCRIPT)
  assert out.count(" ok") == 3, out


def test_batch_all_of_a_global_batch_of_8192_needs_no_b_cubed_memory():
  out = run_script("""
    import jax, numpy as np
    from jax.sharding import PartitionSpec as P
    from tripletjax import losses, parallel
    mesh = parallel.make_mesh()
    rng = np.random.default_rng(0)
    x = rng.normal(size=(8192, 64)).astype(np.float32)
    y = rng.integers(0, 512, 8192).astype(np.int32)
    fn = jax.shard_map(
        lambda e, l: losses.batch_all_triplet_loss(
            e, l, margin=0.2, axis_name="data")[0],
        mesh=mesh, in_specs=(P("data"), P("data")), out_specs=P())
    step = jax.jit(jax.value_and_grad(fn))
    # Compiled, not run: running it takes most of a minute on one core
    # (experiments.benchmark_losses --batch_sizes=8192 --devices=8 runs it;
    # distributed_losses_test checks the numbers on a smaller batch).
    memory = step.lower(x, y).compile().memory_analysis()
    # Per device: its 1024 anchor rows against all 8192, never 8192^3.
    print("temp MiB per device", memory.temp_size_in_bytes / 2**20)
    assert memory.temp_size_in_bytes < 20 * 1024 * 8192 * 4
  """)
  assert "temp MiB" in out


def free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def test_two_processes_reach_the_parameters_of_one(dataset_dirs, tmp_path):
  """Batches drawn on the devices, two calls of three steps. (The other
  multi-process tests draw on the host, the CPU's default.)"""
  steps = 6
  single = tmp_path / "single"
  settings = dict(steps=steps, checkpoint_every=0, augment_shift=0,
                  sampling="device", steps_per_call=3)
  config = train_test.tiny_config(dataset_dirs, **settings)
  two = tmp_path / "two"
  port = free_port()
  flags = reliability_test.job_flags(dataset_dirs, two, keep_checkpoints=3,
                                     **settings)
  jobs = [reliability_test.start_job(
      [*flags, f"--coordinator_address=127.0.0.1:{port}",
       "--num_processes=2", f"--process_id={i}"]) for i in range(2)]
  outputs = [job.communicate(timeout=600)[0] for job in jobs]
  for job, output in zip(jobs, outputs):
    assert job.returncode == 0, output[-4000:]
  assert "2 devices in 2 processes" in outputs[0]
  train.train_and_evaluate(config, str(single))
  want = reliability_test.final_params(config, single)
  got = reliability_test.final_params(config, two)
  for a, b in zip(want, got):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
