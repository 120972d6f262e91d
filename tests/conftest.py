"""Shared fixtures: the offline dataset files and a prepared-data cache;
one compilation cache for the suite.

The original MNIST files are read from $TRIPLETJAX_MANUAL_DIR, else from
../shared/datasets beside the repository. Prepared data is cached in .tfds/
in the repository (`data.prepare` locks, so parallel tests prepare it once).
Compiled programs that take a second or more to compile are cached in
.jax_cache/ (JAX's persistent cache, set here through the environment so that
the scripts and training jobs the tests start share it): the suite compiles
the same train steps in many tests and processes. Not the small programs:
with every program cached (thousands of entries) each new compilation got
slower, and the suite took half as long again (docs/performance.md).

Every program the suite and its processes compile is compiled at LLVM's -O0
and with XLA's older elemental emitters for fusions instead of its MLIR
fusion emitters (`TEST_XLA_FLAGS`): a test's programs are tiny and compiling
them is what the suite spends its time on (the 1-vs-8-device step script of
parallel_test took 58 s instead of 94 s at -O0; the older emitters compile a
tiny train step in about a quarter of the time; docs/performance.md). Neither
setting allows fast-math rewrites, but the generated code may round
differently in the last bit (one of the tiny CNN's 36 initial convolution
weights differs by one unit in the last place at -O0): the tests compare
programs compiled with the same flags with each other, or with references to
a tolerance; `xla_cpu_test` checks a convolution and its gradients compiled
as the project compiles them.

The suite's temporary files, and those of the processes it starts, go to a
folder of its own, removed when the suite ends: tensorflow-datasets leaves an
empty temporary folder behind each time it builds a dataset's info without
prepared files (mock data does), six a run of photos_test alone.
"""

import atexit
import os
import pathlib
import shutil
import sys
import tempfile

REPO = pathlib.Path(__file__).resolve().parents[1]
tempfile.tempdir = os.environ["TMPDIR"] = tempfile.mkdtemp(
    prefix="tripletjax-tests-")
atexit.register(shutil.rmtree, tempfile.tempdir, ignore_errors=True)
# Before JAX is imported. A size limit turns on JAX's lock around each entry
# (the `filelock` package), so that parallel workers never read one half
# written.
for _name, _value in (("JAX_COMPILATION_CACHE_DIR", str(REPO / ".jax_cache")),
                      ("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "1"),
                      ("JAX_COMPILATION_CACHE_MAX_SIZE", str(4 << 30))):
  os.environ.setdefault(_name, _value)
TEST_XLA_FLAGS = ("--xla_backend_optimization_level=0"
                  " --xla_cpu_use_fusion_emitters=false")
if TEST_XLA_FLAGS not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = " ".join(
      (os.environ.get("XLA_FLAGS", ""), TEST_XLA_FLAGS)).strip()

import pytest  # pylint: disable=g-import-not-at-top,wrong-import-position

from tripletjax import data  # pylint: disable=g-import-not-at-top,wrong-import-position
MANUAL_DIR = os.environ.get(data.MANUAL_DIR_ENV) or str(
    REPO.parent / "shared" / "datasets")
DATA_DIR = str(REPO / ".tfds")


@pytest.fixture(scope="session")
def dataset_dirs():
  """``dict(data_dir=..., manual_dir=...)`` with MNIST prepared."""
  if not os.path.isdir(os.path.join(MANUAL_DIR, "mnist")):
    pytest.fail(f"The offline MNIST files are missing from {MANUAL_DIR}; set "
                f"${data.MANUAL_DIR_ENV}.")
  data.prepare("mnist", data_dir=DATA_DIR, manual_dir=MANUAL_DIR)
  return {"data_dir": DATA_DIR, "manual_dir": MANUAL_DIR}


@pytest.fixture(autouse=True)
def _no_leftover_jobs():
  """Kills the training jobs a test started and left running."""
  yield
  jobs = sys.modules.get("tests.reliability_test")  # Where jobs start.
  if jobs is not None:
    jobs.kill_leftover_jobs()
