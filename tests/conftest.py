"""Shared fixtures: the offline dataset files and a prepared-data cache.

The original MNIST files are read from $TRIPLETJAX_MANUAL_DIR, else from
../shared/datasets beside the repository. Prepared data is cached in .tfds/
in the repository (`data.prepare` locks, so parallel tests prepare it once).
"""

import os
import pathlib
import sys

import pytest

from tripletjax import data

REPO = pathlib.Path(__file__).resolve().parents[1]
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
