"""Loading torchvision-named ResNet weights from safetensors files."""

from flax import nnx
import jax
import numpy as np
import pytest
from safetensors import numpy as safetensors_numpy

from tripletjax import models
from tripletjax.models import weights


def torchvision_state_dict(model) -> dict[str, np.ndarray]:
  """`model`'s backbone as torchvision would save it: PyTorch's names and
  layouts, its classifier and batch norm's counters included."""
  out = {"fc.weight": np.ones((1000, model.network.features), np.float32),
         "fc.bias": np.zeros(1000, np.float32)}
  for path, variable in nnx.to_flat_state(nnx.state(model)):
    name = weights.torch_name(path)
    if name is None:
      continue
    value = np.asarray(variable.get_value())
    out[name] = (np.ascontiguousarray(np.transpose(value, (3, 2, 0, 1)))
                 if value.ndim == 4 else value)
    if name.endswith("running_var"):
      out[name.replace("running_var", "num_batches_tracked")] = np.array(
          7, np.int64)
  return out


@pytest.fixture
def saved(tmp_path):
  source = models.create("resnet18", image_shape=(32, 32, 3), seed=0)
  # Batch statistics other than their initial values.
  for _, variable in nnx.to_flat_state(nnx.state(source, nnx.BatchStat)):
    variable.set_value(variable.get_value() + 0.25)
  nnx.update(source, nnx.state(source))
  path = str(tmp_path / "resnet18.safetensors")
  tensors = torchvision_state_dict(source)
  safetensors_numpy.save_file(tensors, path)
  return source, tensors, path


def test_round_trip_into_a_fresh_backbone(saved):
  source, tensors, path = saved
  model = models.create("resnet18", image_shape=(32, 32, 3), seed=1)
  head_before = np.asarray(model.network.head.kernel.get_value())
  weights.load_torchvision(model, path)
  got = dict(nnx.to_flat_state(nnx.state(model)))
  for path_, variable in nnx.to_flat_state(nnx.state(source)):
    if "head" in path_:
      continue
    np.testing.assert_array_equal(got[path_].get_value(), variable.get_value(),
                                  err_msg=str(path_))
  # The head starts fresh; one kernel checked by hand against PyTorch's
  # [out, in, kh, kw] layout.
  np.testing.assert_array_equal(model.network.head.kernel.get_value(), head_before)
  kernel = np.asarray(model.network.layer2[0].downsample[0].kernel.get_value())
  np.testing.assert_array_equal(
      kernel[0, 0, 5, 7], tensors["layer2.0.downsample.0.weight"][7, 5, 0, 0])
  np.testing.assert_array_equal(
      model.network.layer1[1].bn2.mean.get_value(),
      tensors["layer1.1.bn2.running_mean"])


def test_mismatches_are_named_in_one_error(saved, tmp_path):
  _, tensors, _ = saved
  broken = dict(tensors)
  del broken["layer3.1.conv2.weight"]
  broken["layer9.0.conv1.weight"] = np.zeros((1, 1, 1, 1), np.float32)
  broken["bn1.running_mean"] = np.zeros(3, np.float32)
  path = str(tmp_path / "broken.safetensors")
  safetensors_numpy.save_file(broken, path)
  model = models.create("resnet18", image_shape=(32, 32, 3), seed=1)
  with pytest.raises(ValueError) as error:
    weights.load_torchvision(model, path)
  message = str(error.value)
  assert "missing: layer3.1.conv2.weight" in message
  assert "unexpected: layer9.0.conv1.weight" in message
  assert "mis-shaped: bn1.running_mean (3,) (expected (64,))" in message
  # A resnet50 file into a resnet18: named, not a trace from deep inside.
  with pytest.raises(ValueError, match="does not fit"):
    weights.load_torchvision(
        models.create("resnet34", image_shape=(32, 32, 3), seed=0),
        saved[2])
  (tmp_path / "junk.safetensors").write_bytes(b"junk")
  with pytest.raises(ValueError, match="not a readable safetensors"):
    weights.load_torchvision(model, str(tmp_path / "junk.safetensors"))


def test_batch_norm_mask_marks_scale_and_bias():
  model = models.create("resnet18_small", image_shape=(8, 8, 3), seed=0)
  params = nnx.state(model, nnx.Param)
  mask = weights.batch_norm_mask(model, params)
  marked = [path for path, v in nnx.to_flat_state(
      jax.tree.map(lambda m: m, mask)) if v.get_value()]
  assert marked and all(p[-1] in ("scale", "bias") for p in marked)
  assert not any("head" in p or "conv" in str(p[-2]) for p in marked)
  assert len(marked) == 2 * 20  # resnet18 has 20 batch norms.
