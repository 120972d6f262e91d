"""Preemption, resume, damaged checkpoints, NaNs and bad flags.

The kill and signal tests run the main job in a subprocess, as a user or a
cluster scheduler would.
"""

import json
import os
import pathlib
import re
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from tests import train_test
from tripletjax import checkpointing
from tripletjax import train

REPO = pathlib.Path(__file__).resolve().parents[1]


def job_flags(dataset_dirs, workdir, **changes):
  """Flags of a tiny main job; `changes` override them."""
  values = dict(
      train_split="train[:2000]", test_split="test[:500]", widths="4",
      hidden_dim=16, embedding_dim=8, classes_per_batch=5,
      examples_per_class=4, steps=400, warmup_steps=2, checkpoint_every=5,
      keep_checkpoints=1000, eval_every=0, eval_batch_size=256,
      log_every_seconds=1000, steps_per_call=1, write_figures=False,
      workdir=workdir, **dataset_dirs)
  values.update(changes)
  return [f"--{k}={v}" for k, v in values.items()]


# Jobs started by the tests; those still running when a test ends (it failed
# or timed out) are killed, so they cannot slow the tests after it.
JOBS = []


def start_job(flags):
  job = subprocess.Popen(
      [sys.executable, "-m", "experiments.train", *flags], cwd=REPO,
      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
      env={**os.environ, "PYTHONPATH": str(REPO)})
  JOBS.append(job)
  return job


def kill_leftover_jobs():
  while JOBS:
    job = JOBS.pop()
    if job.poll() is None:
      job.kill()
      job.wait()


def run_job(flags):
  """Runs a job to its end; its output."""
  job = start_job(flags)
  output = job.communicate(timeout=300)[0]
  assert job.returncode == 0, output[-3000:]
  return output


def wait_for_checkpoint(workdir, step, process, timeout=120):
  path = pathlib.Path(workdir) / "checkpoints" / str(step)
  deadline = time.monotonic() + timeout
  while not path.exists():
    assert process.poll() is None, process.communicate()[0][-3000:]
    assert time.monotonic() < deadline, "no checkpoint in time"
    time.sleep(0.05)


def final_params(config, workdir):
  return jax.tree.leaves(train_test.saved_params(config, workdir))


def config_of(dataset_dirs, steps):
  """The Config that `job_flags` describes."""
  return train_test.tiny_config(
      dataset_dirs, steps=steps, checkpoint_every=5, keep_checkpoints=1000)


def test_sigkill_then_relaunch_equals_uninterrupted_run(dataset_dirs,
                                                        tmp_path):
  steps = 60
  killed = tmp_path / "killed"
  # Several steps per call (as the CPU's default), so that the kill can land
  # inside a call.
  flags = job_flags(dataset_dirs, killed, steps=steps, steps_per_call=5)
  job = start_job(flags)
  wait_for_checkpoint(killed, 10, job)
  job.send_signal(signal.SIGKILL)
  job.wait()
  assert job.returncode == -signal.SIGKILL
  done = sorted(int(p.name) for p in (killed / "checkpoints").iterdir()
                if p.name.isdigit())
  assert done[-1] < steps, "the job finished before it was killed"
  output = run_job(flags)
  assert f"Resumed from the checkpoint of step {done[-1]}" in output

  # The uninterrupted run goes through the same script (and XLA flags).
  straight = tmp_path / "straight"
  run_job(job_flags(dataset_dirs, straight, steps=steps, steps_per_call=5))
  config = config_of(dataset_dirs, steps)
  for want, got in zip(final_params(config, straight),
                       final_params(config, killed)):
    np.testing.assert_array_equal(want, got)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_writes_a_checkpoint_of_the_current_step(dataset_dirs,
                                                        tmp_path, signum):
  """A preemption notice (SIGTERM) or Ctrl-C (SIGINT): the call in flight
  (of 7 steps) ends, and its last step is checkpointed."""
  job = start_job(job_flags(dataset_dirs, tmp_path, steps=100000,
                            checkpoint_every=1000, steps_per_call=7))
  wait_until_training(tmp_path, job)
  job.send_signal(signum)
  output = job.communicate(timeout=120)[0]
  assert job.returncode == 0, output[-3000:]
  step = stopped_step(output)
  assert 0 < step < 1000 and step % 7 == 0, step
  assert (tmp_path / "checkpoints" / str(step)).is_dir()


def wait_until_training(workdir, job, size=2000):
  """Waits until the job's metrics file has grown to `size` bytes (a bound
  against a hang, generous: two processes starting beside the other tests
  on two cores once took over 120 s)."""
  metrics = pathlib.Path(workdir) / "metrics.jsonl"
  deadline = time.monotonic() + 300
  while not (metrics.exists() and metrics.stat().st_size > size):
    assert job.poll() is None, job.communicate()[0][-3000:]
    assert time.monotonic() < deadline
    time.sleep(0.05)


def stopped_step(output):
  """The step of the job's "Stopped at step N" line."""
  line = [l for l in output.splitlines() if l.startswith("Stopped at step")]
  assert line, output[-3000:]
  return int(line[0].split()[3])


def test_sigterm_to_one_of_two_processes_stops_both_at_one_step(
    dataset_dirs, tmp_path):
  """A scheduler preempting one host: both processes checkpoint the same
  step and exit, instead of one waiting for the other in a collective."""
  from tests import parallel_test  # pylint: disable=g-import-not-at-top
  port = parallel_test.free_port()
  flags = job_flags(dataset_dirs, tmp_path, steps=100000,
                    checkpoint_every=1000)
  jobs = [start_job([*flags, f"--coordinator_address=127.0.0.1:{port}",
                     "--num_processes=2", f"--process_id={i}"])
          for i in range(2)]
  wait_until_training(tmp_path, jobs[0])
  jobs[1].send_signal(signal.SIGTERM)
  outputs = [job.communicate(timeout=120)[0] for job in jobs]
  for job, output in zip(jobs, outputs):
    assert job.returncode == 0, output[-3000:]
  steps = [stopped_step(output) for output in outputs]
  assert steps[0] == steps[1] and 0 < steps[0] < 1000, steps
  assert (tmp_path / "checkpoints" / str(steps[0])).is_dir()


def test_truncated_checkpoint_falls_back_to_the_previous_one(
    dataset_dirs, tmp_path, caplog):
  config = train_test.tiny_config(dataset_dirs)  # Checkpoints 4, 8, 12.
  train.train_and_evaluate(config, str(tmp_path / "straight"))
  run = tmp_path / "damaged"
  train.train_and_evaluate(config, str(run))
  files = [p for p in (run / "checkpoints" / "12").rglob("*") if p.is_file()]
  biggest = max(files, key=lambda p: p.stat().st_size)
  biggest.write_bytes(biggest.read_bytes()[: biggest.stat().st_size // 2])

  results = train.train_and_evaluate(config, str(run))
  assert "The checkpoint of step 12 cannot be read" in caplog.text
  assert results["steps_this_run"] == 4  # Resumed from step 8.
  assert (run / "checkpoints.damaged" / "12").is_dir()
  assert sorted(p.name for p in (run / "checkpoints").iterdir()
                if p.name.isdigit()) == ["12", "4", "8"]
  for want, got in zip(final_params(config, tmp_path / "straight"),
                       final_params(config, run)):
    np.testing.assert_array_equal(want, got)


def test_all_checkpoints_damaged_starts_over(dataset_dirs, tmp_path):
  config = train_test.tiny_config(dataset_dirs, steps=4, checkpoint_every=0)
  train.train_and_evaluate(config, str(tmp_path))
  for path in (tmp_path / "checkpoints" / "4").rglob("*"):
    if path.is_file():
      path.write_bytes(b"")
  results = train.train_and_evaluate(config, str(tmp_path))
  assert results["steps_this_run"] == 4
  assert (tmp_path / "checkpoints.damaged" / "4").is_dir()


# Between and at checkpoints, one step per call; and inside a call of steps
# 7 and 8 (calls end at multiples of 3 and of 4), 8 a checkpoint step.
@pytest.mark.parametrize("first_nan,steps_per_call", [(5, 1), (8, 1), (7, 3)])
def test_planted_nan_stops_with_step_and_quantity(dataset_dirs, tmp_path,
                                                  monkeypatch, first_nan,
                                                  steps_per_call):
  config = train_test.tiny_config(dataset_dirs, steps=12, checkpoint_every=4,
                                  steps_per_call=steps_per_call)
  stopped = train.train_and_evaluate(
      config, str(tmp_path), should_stop=lambda step: step >= first_nan - 1)
  assert stopped["steps"] == first_nan - 1
  real = train.compute_loss
  def poisoned(*args, **kwargs):
    loss, metrics = real(*args, **kwargs)
    return loss * np.nan, metrics
  monkeypatch.setattr(train, "compute_loss", poisoned)
  with pytest.raises(FloatingPointError,
                     match=f"Step {first_nan}: loss is nan"):
    train.train_and_evaluate(config, str(tmp_path))
  monkeypatch.setattr(train, "compute_loss", real)
  # The run has finished writing (it completes saves in flight on an error):
  # nothing non-finite was saved, at a checkpoint step either.
  checkpointer = checkpointing.Checkpointer(
      str(tmp_path / "checkpoints"), keep=3)
  assert checkpointer.latest_step() == first_nan - 1
  checkpointer.close()
  results = train.train_and_evaluate(config, str(tmp_path))
  assert results["steps"] == 12


def test_collapse_and_stall_are_reported_by_the_loop(dataset_dirs, tmp_path,
                                                     monkeypatch, caplog):
  """Losses stuck at the margin with negatives at distance 0: both warnings
  come out of a real run."""
  config = train_test.tiny_config(dataset_dirs, steps=205,
                                  checkpoint_every=0)
  real = train.compute_loss
  def collapsed(embeddings, labels, config, **kwargs):
    loss, metrics = real(embeddings, labels, config, **kwargs)
    return loss * 0 + config.margin, {**metrics,
                                      "mean_negative_distance": loss * 0}
  monkeypatch.setattr(train, "compute_loss", collapsed)
  train.train_and_evaluate(config, str(tmp_path))
  assert "embedding collapse" in caplog.text
  assert "within 1% of the margin (0.5) for 200 steps" in caplog.text


def test_config_change_needs_the_override(dataset_dirs, tmp_path):
  config = train_test.tiny_config(dataset_dirs, steps=4, checkpoint_every=0)
  train.train_and_evaluate(config, str(tmp_path))
  # The data read from elsewhere (here: the same folders spelt otherwise)
  # is the same run.
  moved = config.replace(data_dir=config.data_dir + "/",
                         manual_dir=config.manual_dir + "/")
  assert train.train_and_evaluate(moved, str(tmp_path))[
      "steps_this_run"] == 0
  changed = config.replace(steps=8)
  with pytest.raises(ValueError, match="steps: 4 -> 8.*allow_config_change"):
    train.train_and_evaluate(changed, str(tmp_path))
  results = train.train_and_evaluate(changed, str(tmp_path),
                                     allow_config_change=True)
  assert results["steps"] == 8 and results["steps_this_run"] == 4


def test_run_recorded_before_a_setting_existed_resumes(dataset_dirs,
                                                        tmp_path):
  # A workdir written before a setting was added lacks it: it had the
  # default's behaviour, so it is no difference.
  config = train_test.tiny_config(dataset_dirs, steps=4, checkpoint_every=0)
  train.train_and_evaluate(config, str(tmp_path))
  path = tmp_path / "config.json"
  recorded = json.loads(path.read_text())
  del recorded["augment_rotation"]
  path.write_text(json.dumps(recorded))
  with pytest.raises(ValueError,
                     match=r"different settings \(steps: 4 -> 6\)"):
    train.train_and_evaluate(config.replace(steps=6), str(tmp_path))
  results = train.train_and_evaluate(config, str(tmp_path))
  assert results["steps"] == 4 and results["steps_this_run"] == 0


# One bad flag for each place a run checks its input: flag parsing, the
# settings (config_test checks every setting's error, and that it is one
# line), the dataset's name, the settings against the dataset, the workdir.
BAD_FLAGS = (
    ("--widths=4,x", "widths must be integers"),
    ("--loss=hardest", "loss must be one of"),
    ("--dataset=no_such_dataset", "no_such_dataset"),
    ("--classes_per_batch=11", r"classes_per_batch \(P\) = 11.*mnist has 10"),
    ("--workdir=/proc/tripletjax", "workdir '/proc/tripletjax' cannot be"),
)


def test_each_bad_flag_gives_a_one_line_error(dataset_dirs, tmp_path):
  jobs = []
  for flag, pattern in BAD_FLAGS:
    workdir = tmp_path / flag.split("=")[0].strip("-")
    flags = [f for f in job_flags(dataset_dirs, workdir)
             if not f.startswith(flag.split("=")[0] + "=")]
    jobs.append((flag, pattern, start_job([*flags, flag])))
  for flag, pattern, job in jobs:
    output = job.communicate(timeout=300)[0]
    assert job.returncode == 2, (flag, output[-2000:])
    assert "Traceback" not in output, (flag, output[-2000:])
    errors = [l for l in output.splitlines() if l.startswith("Error: ")]
    assert len(errors) == 1 and re.search(pattern, errors[0]), (
        flag, output[-2000:])


def test_checkpoint_from_before_batch_statistics_resumes(dataset_dirs,
                                                         tmp_path):
  """A run checkpointed when the train state had no batch statistics (as
  the networks without batch norm still have none) resumes from it."""
  from flax import struct  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top

  @struct.dataclass
  class Earlier:
    step: jax.Array
    params: object
    opt_state: optax.OptState

  config = train_test.tiny_config(dataset_dirs, steps=6, checkpoint_every=0)
  train.train_and_evaluate(config.replace(steps=3), str(tmp_path / "first"))
  state = checkpointing.Checkpointer(
      str(tmp_path / "first" / "checkpoints"), keep=3)
  _, like, _ = train.initial_state(config, (28, 28, 1))
  saved = state.restore(3, like)
  state.close()
  manager = ocp.CheckpointManager(
      str(tmp_path / "old" / "checkpoints"),
      options=ocp.CheckpointManagerOptions(create=True))
  manager.save(3, args=ocp.args.StandardSave(Earlier(
      step=saved.step, params=saved.params, opt_state=saved.opt_state)))
  manager.wait_until_finished()
  manager.close()
  results = train.train_and_evaluate(config, str(tmp_path / "old"))
  assert results["steps"] == 6 and results["steps_this_run"] == 3
