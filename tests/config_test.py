"""Every bad setting is refused with a message naming it."""

import json
import os
import tempfile

from absl.testing import absltest
from absl.testing import parameterized
import numpy as np

from tripletjax import checkpointing
from tripletjax import config as config_lib
from tripletjax import workdir


class ValidateTest(parameterized.TestCase):

  def test_defaults_are_valid(self):
    config_lib.validate(config_lib.Config())

  @parameterized.parameters(
      ("loss", "hardest", "loss"),
      ("metric", "l1", "metric"),
      ("model", "resnet", "model"),
      ("classes_per_batch", 1, "classes_per_batch"),
      ("examples_per_class", 1, r"examples_per_class \(K\)"),
      ("margin", 0.0, "margin"),
      ("margin", -1.0, "margin"),
      ("learning_rate", 0.0, "learning_rate"),
      ("steps", 0, "steps"),
      ("warmup_steps", 5000, "warmup_steps"),
      ("embedding_dim", 0, "embedding_dim"),
      ("widths", (), "widths"),
      ("augment_shift", -1, "augment_shift"),
      ("test_time_shift", 9, "test_time_shift"),
      ("test_time_shift", 1.5, "test_time_shift"),
      ("augment_rotation", -5.0, "augment_rotation"),
      ("augment_rotation", float("nan"), "augment_rotation"),
      ("augment_scale", 1.0, "augment_scale"),
      ("eval_every", -1, "eval_every"),
      ("sampling", "gpu", "sampling"),
      ("steps_per_call", -1, "steps_per_call"),
      ("manual_dir", "/nonexistent/dir", "manual_dir"),
      ("train_classes", (1, 1), "train_classes"),
      ("test_classes", (-1,), "test_classes"),
  )
  def test_bad_value_is_named(self, name, value, pattern):
    # In one line: the scripts print it as their whole error.
    with self.assertRaisesRegex(ValueError, f"^[^\n]*{pattern}[^\n]*$"):
      config_lib.validate(config_lib.Config().replace(**{name: value}))

  def test_rotated_classes_are_not_for_photos(self):
    with self.assertRaisesRegex(ValueError, "rotated_classes is not for the "
                                "photo dataset 'cars196'"):
      config_lib.validate(config_lib.Config(
          dataset="cars196", image_size=64, rotated_classes=True))

  def test_soft_margin_may_be_zero(self):
    config_lib.validate(config_lib.Config(loss="batch_hard_soft", margin=0.0))

  def test_round_trip_and_unknown_keys(self):
    config = config_lib.Config(widths=(8, 16), loss="semihard")
    self.assertEqual(config_lib.Config.from_dict(config.to_dict()), config)
    with self.assertRaisesRegex(ValueError, "bogus"):
      config_lib.Config.from_dict({"bogus": 1})

  def test_batch_size(self):
    self.assertEqual(config_lib.Config(classes_per_batch=3,
                                       examples_per_class=4).batch_size, 12)
    self.assertEqual(config_lib.Config(loss="random_triplets",
                                       triplets_per_batch=5).batch_size, 15)


  def test_a_run_recorded_before_a_setting_existed_had_its_earlier_value(self):
    # A run recorded before `sampling` and `steps_per_call` drew on the host,
    # one step per call: resuming it with the defaults is a change.
    run = tempfile.mkdtemp()
    recorded = config_lib.Config().to_dict()
    del recorded["sampling"], recorded["steps_per_call"]
    with open(os.path.join(run, workdir.CONFIG_FILE), "w") as f:
      json.dump(recorded, f)
    _save_a_checkpoint(run)
    with self.assertRaisesRegex(ValueError, r"sampling: 'host' -> 'auto'.*"
                                r"steps_per_call: 1 -> 0"):
      workdir.prepare(run, config_lib.Config())
    workdir.prepare(run, config_lib.Config(sampling="host", steps_per_call=1))

  def test_settings_without_a_checkpoint_are_replaced(self):
    # A run that stopped before its first checkpoint (its data failed to
    # load, say) has nothing to resume: the corrected settings are taken.
    run = tempfile.mkdtemp()
    workdir.prepare(run, config_lib.Config(steps=5))
    workdir.prepare(run, config_lib.Config(steps=6))
    self.assertEqual(workdir.read_config(run).steps, 6)
    _save_a_checkpoint(run)
    with self.assertRaisesRegex(ValueError, "steps: 6 -> 7"):
      workdir.prepare(run, config_lib.Config(steps=7))


def _save_a_checkpoint(run):
  checkpointer = checkpointing.Checkpointer(
      os.path.join(run, workdir.CHECKPOINTS_DIR), keep=1)
  checkpointer.save(0, {"x": np.zeros(2)})
  checkpointer.close()


if __name__ == "__main__":
  absltest.main()
