r"""Exports a trained run's embedding function for serving without tripletjax.

Writes ``OUTPUT/embed.jax_export`` (`jax.export`, StableHLO: ``uint8
[N, H, W, C] -> float32 [N, D]`` for any N, preprocessing included, the
parameters inside) and ``OUTPUT/signature.json`` (input shape, input
normalisation, distance metric, embedding size, platforms, the run's
settings); with --saved_model also ``OUTPUT/saved_model/``, a TensorFlow
SavedModel of the same function (signature ``serving_default``: ``images``
-> ``embeddings``) for TensorFlow Serving. A process with only ``jax`` and
``numpy`` loads and calls the first:

  exported = jax.export.deserialize(open("OUTPUT/embed.jax_export", "rb").read())
  embeddings = exported.call(images)

  python -m experiments.export --workdir=runs/mnist-batch_all-312dc519 \
      --output=/tmp/mnist_export

Expected: one line naming the files, the input shape and the platforms
(3.4 MB for the main job's CNN: its parameters are inside).
"""

import json
import os

from absl import flags

from experiments import common
from tripletjax import export
from tripletjax import workdir as workdir_lib

_WORKDIR = common.define_trained_run_flag()
_OUTPUT = flags.DEFINE_string("output", None, "The folder to write.")
_SAVED_MODEL = flags.DEFINE_bool(
    "saved_model", False, "Also a TensorFlow SavedModel in OUTPUT/saved_model "
    "(for TensorFlow Serving), CPU only.")
_PLATFORMS = flags.DEFINE_list(
    "platforms", ["cpu"], "Where the function may run: cpu, cuda, rocm, tpu "
    "(several in one file).")


def main(argv):
  del argv  # Checked by common.run.
  for flag in (_WORKDIR, _OUTPUT):
    if not flag.value:
      raise ValueError(f"Give --{flag.name}.")
  unknown = set(_PLATFORMS.value) - {"cpu", "cuda", "rocm", "tpu"}
  if unknown:
    raise ValueError(f"platforms must be among cpu, cuda, rocm, tpu; got "
                     f"{sorted(unknown)}.")
  run = workdir_lib.restore(_WORKDIR.value)
  function, signature = export.export_embedder(run, _PLATFORMS.value)
  os.makedirs(_OUTPUT.value, exist_ok=True)
  with open(os.path.join(_OUTPUT.value, export.FUNCTION_FILE), "wb") as f:
    f.write(function)
  with open(os.path.join(_OUTPUT.value, export.SIGNATURE_FILE), "w",
            encoding="utf-8") as f:
    json.dump(signature, f, indent=2, sort_keys=True)
  if _SAVED_MODEL.value:
    export.save_tf_saved_model(run, os.path.join(_OUTPUT.value,
                                                 "saved_model"))
  print(f"Exported step {run.step} of {_WORKDIR.value} to {_OUTPUT.value}/"
        f"{{{export.FUNCTION_FILE}, {export.SIGNATURE_FILE}}} "
        f"({len(function) / 1e6:.1f} MB): uint8 [N, "
        f"{', '.join(map(str, run.image_shape))}] -> float32 "
        f"[N, {run.config.embedding_dim}] on {', '.join(signature['platforms'])}"
        f"{'; and a SavedModel in saved_model/' if _SAVED_MODEL.value else ''}")


if __name__ == "__main__":
  common.run(main)
