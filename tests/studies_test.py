"""The research scripts' --quick modes, run as a user runs them."""

import csv
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from scipy import stats

from experiments import common
from experiments import compare_mining
from experiments import study
from tripletjax import config as config_lib
from tripletjax import data
from tripletjax import lr_range
from tripletjax import workdir

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("module,groups,figures", [
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


def test_compare_mining_tunes_on_validation_classes_and_tests_on_others(
    dataset_dirs, tmp_path):
  flags = ["--quick", "--strategies=batch_all,batch_hard_soft",
           f"--output_dir={tmp_path}",
           *(f"--{k}={v}" for k, v in dataset_dirs.items())]
  result = _run("experiments.compare_mining", flags)
  assert result.returncode == 0, result.stderr[-3000:]
  rows = list(csv.DictReader(open(tmp_path / "results.csv")))
  tuning = [r for r in rows if r["phase"] == "tuning"]
  final = [r for r in rows if r["phase"] == "final"]
  draws = compare_mining.draws(2, (0.02, 1.0), (3e-4, 3e-3))
  for strategy in ("batch_all", "batch_hard_soft"):
    trials = [r for r in tuning if r["strategy"] == strategy]
    # Every strategy gets the same draws; the soft margin has no margin.
    assert [float(r["learning_rate"]) for r in trials] == [
        rate for _, rate in draws]
    assert [float(r["margin"]) for r in trials] == (
        [0.0, 0.0] if strategy == "batch_hard_soft" else
        [margin for margin, _ in draws])
    best = max(trials, key=lambda r: float(r["MAP@R"]))
    runs = [r for r in final if r["strategy"] == strategy]
    assert [r["seed"] for r in runs] == ["1", "2"]
    assert {(r["margin"], r["learning_rate"]) for r in runs} == {
        (best["margin"], best["learning_rate"])}
  # Tuning scored digits 3-4 of the train split alone; the final runs trained
  # on 0-4 and were scored on the test split's 5-9 alone.
  validation = data.load("mnist", "train[:10000]", **dataset_dirs)
  test = data.load("mnist", "test[:500]", **dataset_dirs)
  for name, split, classes, trained in (
      ("batch_all-trial0", validation, [3, 4], [0, 1, 2]),
      ("batch_all-seed1", test, [5, 6, 7, 8, 9], [0, 1, 2, 3, 4])):
    results = _results(tmp_path, name)
    assert results["unseen_queries"] == np.isin(split.labels, classes).sum()
    assert not any(k.startswith("test_") for k in results)
    assert results["config"]["train_classes"] == trained
  table = (tmp_path / "results.md").read_text()
  assert table.count("\n| batch_") == 2
  assert "batch_all − batch_hard_soft" in table or (
      "batch_hard_soft − batch_all" in table)
  for figure in ("validation_vs_margin.png", "test_vs_steps.png"):
    assert (tmp_path / figure).stat().st_size > 1000
  again = _run("experiments.compare_mining", flags)
  assert again.returncode == 0, again.stderr[-3000:]
  assert "batch_all seed 2" in again.stdout


def test_ensemble_ranks_by_the_members_mean_distance(dataset_dirs, tmp_path):
  flags = ["--quick", "--seeds=2", "--seed=1", f"--output_dir={tmp_path}",
           *(f"--{k}={v}" for k, v in dataset_dirs.items())]
  result = _run("experiments.ensemble", flags)
  assert result.returncode == 0, result.stderr[-3000:]
  got = json.loads((tmp_path / "ensemble.json").read_text())
  members = [workdir.restore(w) for w in got["members"]]
  assert [m.config.seed for m in members] == [1, 2]
  train_split, test = data.load_splits(members[0].config)
  # The reference: each test image's nearest train image by the mean of the
  # members' squared distances, in float64.
  mean = _mean_squared_distances(members, test, train_split)
  nearest = train_split.labels[mean.argmin(1)]
  assert got["test_knn_accuracy_at_1"] == pytest.approx(
      np.mean(nearest == test.labels), abs=1e-9)
  alone = [_results(tmp_path, f"seed{s}")["test_knn_accuracy_at_1"]
           for s in (1, 2)]
  assert got["test_knn_accuracy_at_1"] not in alone  # Not one member's.
  table = (tmp_path / "results.md").read_text()
  assert "\n| member | 2 |" in table and "\n| ensemble | 1 |" in table
  # A second launch reads the members back instead of training them again.
  written = [os.path.getmtime(os.path.join(w, "results.json"))
             for w in got["members"]]
  again = _run("experiments.ensemble", flags)
  assert again.returncode == 0, again.stderr[-3000:]
  assert "member (seed 2)" in again.stdout
  assert [os.path.getmtime(os.path.join(w, "results.json"))
          for w in got["members"]] == written
  assert json.loads((tmp_path / "ensemble.json").read_text()) == got
  one = _run("experiments.ensemble", ["--quick", "--seeds=1",
                                      f"--output_dir={tmp_path}"])
  assert one.returncode == 2
  assert one.stderr.strip().splitlines()[-1] == (
      "Error: --seeds must be at least 2 for an ensemble, got 1.")


def test_ensemble_of_networks_tested_on_unseen_classes(dataset_dirs, tmp_path):
  """Test classes never trained on (as Omniglot's): scored leave-one-out
  among the test images, by the members' mean squared distance."""
  result = _run("experiments.ensemble", [
      "--quick", "--seeds=2", "--train_classes=0,1,2,3,4",
      "--test_classes=5,6,7,8,9", f"--output_dir={tmp_path}",
      *(f"--{k}={v}" for k, v in dataset_dirs.items())])
  assert result.returncode == 0, result.stderr[-3000:]
  assert "ensemble (seed 0-1): unseen 1-NN" in result.stdout
  got = json.loads((tmp_path / "ensemble.json").read_text())
  assert not any(k.startswith("test_") for k in got)
  members = [workdir.restore(w) for w in got["members"]]
  _, test = data.load_splits(members[0].config)
  mean = _mean_squared_distances(members, test, test)
  np.fill_diagonal(mean, np.inf)
  assert got["unseen_knn_accuracy_at_1"] == pytest.approx(
      np.mean(test.labels[mean.argmin(1)] == test.labels), abs=1e-9)


def _mean_squared_distances(members, queries, references):
  """float64 ``[Q, R]``: the mean over the trained `members` of the squared
  distances between their embeddings of two splits' images."""
  mean = 0
  for member in members:
    q, r = (np.asarray(member.embedder(s.images), np.float64)
            for s in (queries, references))
    mean = mean + ((q[:, None] - r[None]) ** 2).sum(-1) / len(members)
  return mean


def test_compare_mining_refuses_a_dataset_without_class_sets(tmp_path):
  result = _run("experiments.compare_mining",
                ["--quick", "--dataset=kmnist", f"--output_dir={tmp_path}"])
  assert result.returncode == 2
  assert result.stderr.strip().splitlines()[-1] == (
      "Error: compare_mining knows the class sets of mnist, fashion_mnist "
      "and omniglot_lake, not 'kmnist'.")


def test_omniglot_validation_holds_out_every_fifth_alphabet(monkeypatch):
  alphabets = {f"alphabet{a:02d}": tuple(range(3 * a, 3 * a + 3))
               for a in range(12)}
  monkeypatch.setattr(compare_mining.omniglot, "alphabets",
                      lambda manual_dir, split: alphabets)
  classes = compare_mining.class_sets(config_lib.Config(
      dataset="omniglot_lake"))
  assert classes.validation == (12, 13, 14, 27, 28, 29)  # Alphabets 4, 9.
  assert classes.tuning == tuple(sorted(set(range(36)) - set(
      classes.validation)))
  assert classes.training == classes.test == ()
  assert classes.validation_split == "train"
  monkeypatch.setattr(compare_mining.omniglot, "alphabets",
                      lambda manual_dir, split: dict(list(alphabets.items())[:4]))
  with pytest.raises(ValueError, match="needs at least 5"):
    compare_mining.class_sets(config_lib.Config(dataset="omniglot_lake"))


def test_mean_interval_by_hand():
  # t(0.975, 2 degrees of freedom) = 4.303 (tables); s = 1.
  mean, half = study.mean_interval([1.0, 2.0, 3.0])
  assert mean == 2.0 and half == pytest.approx(4.303 / np.sqrt(3), rel=1e-3)
  assert np.isnan(study.mean_interval([0.7])[1])


def test_difference_interval_is_welchs():
  a, b = np.array([1.0, 2.0, 3.0]), np.array([2.0, 4.0, 6.0, 8.0])
  va, vb = a.var(ddof=1) / 3, b.var(ddof=1) / 4  # 1/3 and 5/3.
  df = (va + vb) ** 2 / (va ** 2 / 2 + vb ** 2 / 3)  # Welch-Satterthwaite.
  se = np.sqrt(va + vb)
  diff, half, p = study.difference_interval(a, b)
  assert diff == pytest.approx(-3.0)
  assert half == pytest.approx(stats.t.ppf(0.975, df) * se)
  assert p == pytest.approx(2 * stats.t.sf(3.0 / se, df))


def _results(out, name):
  """results.json of the study's run whose workdir starts with `name-`."""
  [workdir] = [d for d in os.listdir(out) if d.startswith(f"{name}-")]
  return json.loads((out / workdir / "results.json").read_text())


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


def test_where_the_data_is_read_from_names_no_new_run(tmp_path):
  """The data moved (or its path spelt another way): a study's runs keep
  their names and a finished run is read back, not trained again."""
  config = config_lib.Config(steps=3000)
  moved = config.replace(data_dir="/elsewhere/tfds", manual_dir="/files")
  assert study.workdir("out", "seed0", moved) == study.workdir(
      "out", "seed0", config)
  assert common.default_workdir(moved) == common.default_workdir(config)
  results = {"config": json.loads(config.to_json()), "test_loss": 0.25}
  (tmp_path / "results.json").write_text(json.dumps(results))
  assert study.run(moved, str(tmp_path)) == results


def test_test_curves_keep_the_steps_every_seed_evaluated(tmp_path):
  """A final run whose metrics were lost, or evaluated at other steps,
  leaves the figure to the steps all seeds share, not a crash after
  hours of training."""
  curves = {"a": [(np.array([1, 2, 3]), np.array([0.1, 0.2, 0.3])),
                  (np.array([2, 3]), np.array([0.4, 0.5]))],
            "b": [(np.array([1]), np.array([0.1])),
                  (np.array([], int), np.array([]))]}
  compare_mining._plots(str(tmp_path), config_lib.Config(), {}, curves)
  assert (tmp_path / "test_vs_steps.png").stat().st_size > 1000


def test_a_setting_added_at_its_neutral_value_keeps_run_names():
  """The main job's default workdir as named before --ema_decay existed
  (recorded at commit 78f25b0): a setting added since, at the value that
  changes nothing, leaves every run's name, so runs and studies resume
  across the upgrade; at another value it names a new run."""
  assert common.default_workdir(config_lib.Config()) == (
      "runs/mnist-batch_all-0497d25f")
  assert common.default_workdir(config_lib.Config(ema_decay=0.999)) != (
      "runs/mnist-batch_all-0497d25f")
  assert set(config_lib.NEUTRAL_VALUES) <= set(config_lib.Config().to_dict())


def test_lr_range_test_pieces():
  """The ramp's ends, the smoothing against its definition, and the
  suggestions on a loss whose shape is known."""
  rates = np.asarray(lr_range.ramp(1e-4, 1.0, 5)(np.arange(5)))
  np.testing.assert_allclose(rates, [1e-4, 1e-3, 1e-2, 1e-1, 1.0], rtol=1e-5)
  losses = np.array([3.0, 1.0, 2.0])
  beta = lr_range.SMOOTHING
  want = [3.0, (beta * 3 * (1 - beta) + (1 - beta)) / (1 - beta ** 2)]
  np.testing.assert_allclose(lr_range.smooth(losses)[:2], want)
  # Falling fastest at 1e-3, lowest at 1e-1, rising beyond; the steeper
  # fall of the first steps (where the average rests on few losses) is
  # not taken.
  rates = np.logspace(-5, 0, 501)
  x = np.log10(rates)
  smoothed = np.where(x < -1, -np.tanh(2 * (x + 3)), (x + 1) ** 2 - 0.964)
  smoothed[:10] += np.linspace(5, 0, 10)
  got = lr_range.suggestions(rates, smoothed)
  assert got["steepest"] == pytest.approx(1e-3, rel=0.03)
  assert got["minimum / 10"] == pytest.approx(1e-2, rel=0.03)


def test_lr_range_test_runs_the_main_job_with_a_ramp(dataset_dirs, tmp_path):
  flags = ["--train_split=train[:2000]", "--widths=4", "--hidden_dim=16",
           "--embedding_dim=8", "--classes_per_batch=5",
           "--examples_per_class=4", "--range_steps=40", "--min_lr=1e-4",
           "--max_lr=10", f"--output={tmp_path}",
           *(f"--{k}={v}" for k, v in dataset_dirs.items())]
  result = _run("experiments.lr_range_test", flags)
  assert result.returncode == 0, result.stderr[-3000:]
  rows = list(csv.DictReader(open(tmp_path / "lr_range.csv")))
  rates = [float(r["learning_rate"]) for r in rows]
  assert 2 <= len(rows) <= 40 and rates[0] == pytest.approx(1e-4)
  assert np.all(np.diff(np.log(rates)) == pytest.approx(np.log(1e5) / 39))
  assert (tmp_path / "lr_range.png").stat().st_size > 1000
  assert "suggested peak learning rate (steepest)" in result.stdout
  bad = _run("experiments.lr_range_test", [*flags, "--min_lr=1", "--max_lr=0.1"])
  assert bad.returncode == 2 and bad.stderr.strip().splitlines()[-1] == (
      "Error: --min_lr and --max_lr must satisfy 0 < min_lr < max_lr, got "
      "1.0 and 0.1.")
