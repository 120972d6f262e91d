"""Published ResNet weights from a safetensors file, without PyTorch.

A torchvision or timm ResNet state dict (``conv1.weight``, ``bn1.weight``,
``bn1.running_mean``, ``layer1.0.conv1.weight``,
``layer2.0.downsample.0.weight``, ...), saved with safetensors (for example
``safetensors.torch.save_file(torchvision.models.resnet50(weights=...)
.state_dict(), "r50.safetensors")``, or timm's published
``model.safetensors``), is read with the safetensors package's NumPy API
into the backbone of a `tripletjax.models.resnet.ResNet` of the same
architecture: convolution kernels transposed from PyTorch's ``[out, in, kh,
kw]`` to Flax's ``[kh, kw, in, out]``, batch norm's weight, bias, running
mean and variance to its scale, bias, mean and var. The classifier
(``fc.*``) and ``num_batches_tracked`` are ignored; the embedding head
starts fresh. Missing, unexpected and mis-shaped tensors are named in one
error.
"""

from __future__ import annotations

from flax import nnx
import jax
import numpy as np
from safetensors import numpy as safetensors_numpy

# The last part of a Flax path, as PyTorch names it.
_TORCH_SUFFIX = {"kernel": "weight", "scale": "weight", "bias": "bias",
                 "mean": "running_mean", "var": "running_var"}
_IGNORED = ("fc.weight", "fc.bias")


def torch_name(path: tuple) -> str | None:
  """The state-dict name of the variable at Flax `path` inside a
  `tripletjax.models.Network`'s ``network``; None for the embedding head."""
  parts = [str(p) for p in path]
  if parts[0] == "network":
    parts = parts[1:]
  if parts[0] == "head":
    return None
  return ".".join(parts[:-1] + [_TORCH_SUFFIX[parts[-1]]])


def _to_flax(name: str, array: np.ndarray) -> np.ndarray:
  """A PyTorch tensor in Flax's layout (convolution kernels transposed)."""
  if array.ndim == 4:  # [out, in, kh, kw] -> [kh, kw, in, out].
    return np.transpose(array, (2, 3, 1, 0))
  del name
  return array


def load_torchvision(model: nnx.Module, path: str) -> None:
  """Loads the weights of safetensors file `path` into `model`'s backbone.

  Args:
    model: a `tripletjax.models.Network` around a ResNet.
    path: a safetensors file with torchvision / timm parameter names.

  Raises:
    ValueError: the file cannot be read, or its tensors do not match the
      backbone (the missing, unexpected and mis-shaped ones are named).
  """
  try:
    tensors = safetensors_numpy.load_file(path)
  except Exception as e:  # safetensors raises several types.
    raise ValueError(f"init_from {path!r} is not a readable safetensors file: "
                     f"{type(e).__name__}: {e}") from None
  state = nnx.state(model)
  flat = nnx.to_flat_state(state)
  wanted = {}
  for var_path, variable in flat:
    name = torch_name(var_path)
    if name is not None:
      wanted[name] = (var_path, variable)
  ignored = {n for n in tensors
             if n in _IGNORED or n.endswith("num_batches_tracked")}
  missing = sorted(set(wanted) - set(tensors))
  unexpected = sorted(set(tensors) - set(wanted) - ignored)
  misshaped = [
      f"{n} {tuple(tensors[n].shape)} (expected "
      f"{_torch_shape(wanted[n][1].get_value().shape)})"
      for n in sorted(set(wanted) & set(tensors))
      if _to_flax(n, tensors[n]).shape != wanted[n][1].get_value().shape]
  if missing or unexpected or misshaped:
    problems = [f"{label}: {', '.join(items[:6])}"
                f"{' ...' if len(items) > 6 else ''} ({len(items)})"
                for label, items in (("missing", missing),
                                     ("unexpected", unexpected),
                                     ("mis-shaped", misshaped)) if items]
    raise ValueError(f"init_from {path!r} does not fit the model: "
                     f"{'; '.join(problems)}.")
  for name, (_, variable) in wanted.items():
    variable.set_value(jax.numpy.asarray(
        _to_flax(name, tensors[name]), variable.get_value().dtype))
  nnx.update(model, nnx.from_flat_state(flat))


def _torch_shape(flax_shape: tuple[int, ...]) -> tuple[int, ...]:
  if len(flax_shape) == 4:
    kh, kw, c_in, c_out = flax_shape
    return (c_out, c_in, kh, kw)
  return tuple(flax_shape)


def batch_norm_mask(model: nnx.Module, params: nnx.State):
  """A pytree of bools like `params`: True for batch norm's scale and bias
  (what ``--freeze_bn`` keeps fixed)."""
  norms = {path for path, node in nnx.iter_graph(model)
           if isinstance(node, nnx.BatchNorm)}

  def is_norm(key_path, _):
    keys = tuple(k.key for k in key_path
                 if isinstance(k, jax.tree_util.DictKey))
    return keys[:-1] in norms

  return jax.tree_util.tree_map_with_path(is_norm, params)
