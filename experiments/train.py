r"""The main job: trains an embedding network with a triplet loss.

With no flags it trains the default CNN with batch-all mining on MNIST and
prints its retrieval metrics (test images queried against train images); the
figures of the run go to <workdir>/figures.
SIGTERM or Ctrl-C stops it with a checkpoint of the current step; the same
command resumes.

  python -m experiments.train
  python -m experiments.train --dataset=fashion_mnist --loss=batch_hard \
      --margin=0.2 --steps=3000 --workdir=runs/fashion

Several processes (one per host, or several on one machine):

  python -m experiments.train --coordinator_address=10.0.0.1:1234 \
      --num_processes=2 --process_id=0   # and --process_id=1 on the other

Expected with no flags (docs/results.md): 1-NN accuracy (precision@1) about
0.993 and MAP@R about 0.991 after 3,000 steps, in about 5 minutes on two CPU
cores.
"""

from absl import flags
from absl import logging
import jax

from experiments import common
from tripletjax import config as config_lib
from tripletjax import parallel
from tripletjax import preemption
from tripletjax import train

common.define_config_flags()
_WORKDIR = flags.DEFINE_string(
    "workdir", None,
    "Run directory: checkpoints, metrics, results. A relaunch with the same "
    "workdir resumes. Default: runs/<dataset>-<loss>-<hash of the settings>.")
_DISTRIBUTED = flags.DEFINE_bool(
    "distributed", False,
    "Start JAX's multi-process runtime; on Cloud TPU pods, SLURM, Open MPI "
    "and Kubernetes it finds its peers by itself. Implied by "
    "--coordinator_address.")
_COORDINATOR_ADDRESS = flags.DEFINE_string(
    "coordinator_address", None,
    "host:port of process 0 of a multi-process run, with --num_processes "
    "and --process_id.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None,
                                      "Processes in a multi-process run.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None,
                                   "This process's index, 0 to N-1.")
_ALLOW_CONFIG_CHANGE = flags.DEFINE_bool(
    "allow_config_change", False,
    "Resume a workdir whose recorded settings differ from these flags.")


def main(argv):
  del argv  # Checked by common.run.
  config = config_lib.validate(common.config_from_flags())
  if _DISTRIBUTED.value or _COORDINATOR_ADDRESS.value:
    parallel.initialize(_COORDINATOR_ADDRESS.value, _NUM_PROCESSES.value,
                        _PROCESS_ID.value)
  if jax.process_index() != 0:
    logging.set_verbosity(logging.WARNING)  # Progress from process 0 only.
  workdir = _WORKDIR.value or common.default_workdir(config)
  logging.info("Workdir: %s", workdir)
  with preemption.StopOnSignal() as stop:
    results = train.train_and_evaluate(
        config, workdir, should_stop=stop,
        allow_config_change=_ALLOW_CONFIG_CHANGE.value)
  if results.get("interrupted"):  # Said by every process.
    print(f"Stopped at step {results['steps']} with a checkpoint; the same "
          "command resumes.")
    return
  if jax.process_index() != 0:
    return
  print(common.format_metrics(results))
  print(f"after {results['steps']} steps "
        f"({results['wall_seconds_this_run']:.0f} s this run; "
        f"workdir {workdir})")

if __name__ == "__main__":
  flags.FLAGS.alsologtostderr = True
  common.run(main)
