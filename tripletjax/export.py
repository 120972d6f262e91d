"""A trained network as a serialised function that needs only JAX to run.

`export_embedder` serialises ``uint8 images [N, H, W, C] -> float32
embeddings [N, D]`` (preprocessing, input normalisation and evaluation-mode
batch norm included, the parameters as constants) with `jax.export`
(StableHLO), for a symbolic batch size ``N``, with a signature that says how
to call it. A process with ``jax`` and ``numpy`` alone runs it::

    import json, jax, numpy as np
    exported = jax.export.deserialize(open("embed.jax_export", "rb").read())
    embeddings = np.asarray(exported.call(images))   # uint8 [N, H, W, C]

The format is versioned by JAX (StableHLO with a compatibility window of
several months in both directions; see JAX's "Exporting and serializing"
guide); the signature records the JAX version that wrote it.
"""

from __future__ import annotations

import json
from typing import Any, Sequence

import jax
from jax import export as jax_export
import jax.numpy as jnp

from tripletjax import models

FUNCTION_FILE = "embed.jax_export"
SIGNATURE_FILE = "signature.json"


def _embed_function(run):
  """``uint8 [N, H, W, C] -> float32 [N, D]``: `run`'s network as its
  evaluation embeds (`models.embed`, with the run's test-time views)."""
  graphdef, params, batch_stats = run.graphdef, run.params, run.batch_stats

  def embed(images: jax.Array) -> jax.Array:
    return models.embed(graphdef, params, batch_stats, images,
                        flip=run.config.test_time_flip,
                        shift=run.config.test_time_shift)

  return embed


def export_embedder(run, platforms: Sequence[str] = ("cpu",)
                    ) -> tuple[bytes, dict[str, Any]]:
  """Serialises `run`'s embedding function.

  Args:
    run: a `tripletjax.workdir.TrainedRun`.
    platforms: where the function may run (``cpu``, ``cuda``, ``rocm``,
      ``tpu``); one serialisation holds them all.

  Returns:
    ``(the bytes of Exported.serialize(), the signature)``.
  """
  height, width, channels = run.image_shape
  batch, = jax_export.symbolic_shape("batch")
  exported = jax_export.export(jax.jit(_embed_function(run)),
                               platforms=tuple(platforms))(
      jax.ShapeDtypeStruct((batch, height, width, channels), jnp.uint8))
  config = run.config
  signature = {
      "function": FUNCTION_FILE,
      "input": {"shape": [None, height, width, channels], "dtype": "uint8",
                "range": [0, 255]},
      "preprocessing": "images / 255, then the input normalisation, inside "
                       "the function",
      "test_time_flip": config.test_time_flip,
      "test_time_shift": config.test_time_shift,
      "input_norm": config.input_norm,
      "input_norm_mean_std": models.INPUT_NORMS[config.input_norm],
      "output": {"shape": [None, config.embedding_dim], "dtype": "float32",
                 "l2_normalized": config.normalize_embeddings},
      "metric": config.metric,
      "embedding_dim": config.embedding_dim,
      "platforms": list(exported.platforms),
      "jax_version": jax.__version__,
      "step": run.step,
      "settings": json.loads(config.to_json()),
  }
  return bytes(exported.serialize()), signature


def save_tf_saved_model(run, path: str) -> None:
  """Writes `run`'s embedding function as a TensorFlow SavedModel at
  `path`, for TensorFlow Serving and TensorFlow programs: its ``serve``
  signature maps ``uint8 [N, H, W, C]`` images to ``float32 [N, D]``
  embeddings (the same StableHLO inside, through `jax2tf`)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from jax.experimental import jax2tf  # pylint: disable=g-import-not-at-top

  height, width, channels = run.image_shape
  module = tf.Module()
  converted = jax2tf.convert(
      _embed_function(run), with_gradient=False,
      polymorphic_shapes=[f"(batch, {height}, {width}, {channels})"])
  module.serve = tf.function(
      lambda images: {"embeddings": converted(images)},
      input_signature=[tf.TensorSpec([None, height, width, channels],
                                     tf.uint8, name="images")],
      autograph=False)
  tf.saved_model.save(module, path,
                      signatures={"serving_default": module.serve})
