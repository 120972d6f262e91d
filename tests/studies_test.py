"""The research scripts' --quick modes, run as a user runs them."""

import csv
import os
import pathlib
import subprocess
import sys

import pytest

from experiments import study
from tripletjax import config as config_lib

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("module,groups,figures", [
    ("experiments.compare_mining",
     ["random_triplets", "batch_all", "batch_hard", "batch_hard_soft",
      "semihard"], ["accuracy_vs_steps.png"]),
    ("experiments.batch_size_sweep", None,
     ["batch_size.png", "batch_size_time.png"]),
    ("experiments.baselines", None, []),
])
def test_quick_mode(module, groups, figures, dataset_dirs, tmp_path):
  flags = ["--quick", f"--output_dir={tmp_path}",
           *(f"--{k}={v}" for k, v in dataset_dirs.items())]
  if module.endswith("batch_size_sweep"):
    flags.append("--batch_sizes=8,64")
  result = _run(module, flags)
  assert result.returncode == 0, result.stderr[-3000:]
  rows = list(csv.DictReader(open(tmp_path / "results.csv")))
  table = (tmp_path / "results.md").read_text()
  if groups:
    assert [r["strategy"] for r in rows] == groups
  assert all(0 <= float(r["1-NN acc"]) <= 1 for r in rows)
  groups_seen = {next(iter(r.values())) for r in rows}
  assert table.count("\n|") == len(groups_seen) + 2
  for figure in figures:
    assert (tmp_path / figure).stat().st_size > 1000
  # A second launch reads the finished runs back instead of training again.
  again = _run(module, flags)
  assert again.returncode == 0, again.stderr[-3000:]
  assert "seed 0" in again.stdout
  untimed = lambda rows: [{k: v for k, v in r.items() if "time" not in k}
                          for r in rows]
  assert untimed(csv.DictReader(open(tmp_path / "results.csv"))) == untimed(
      rows)


def _run(module, flags):
  return subprocess.run([sys.executable, "-m", module, *flags], cwd=REPO,
                        capture_output=True, text=True, timeout=600,
                        env={**os.environ, "PYTHONPATH": str(REPO)})


def test_changed_settings_get_a_workdir_of_their_own():
  config = config_lib.Config(steps=3000)
  name = study.workdir("out", "mlp-seed0", config)
  assert name.startswith(os.path.join("out", "mlp-seed0-"))
  same = config_lib.Config(steps=3000)
  assert study.workdir("out", "mlp-seed0", same) == name
  assert study.workdir("out", "mlp-seed0", config.replace(steps=15000)) != name
