r"""A gallery index of a trained run: build it, add to it, describe it.

  python -m experiments.index build --workdir=W --dataset=mnist:train --output=INDEX
  python -m experiments.index add --index=INDEX --images=new_photos/
  python -m experiments.index info --index=INDEX

``build`` embeds a dataset (NAME, NAME:train or NAME:test, as --dataset of
training names it; labels and ``dataset:split:index`` references) or a
folder's image files (--images; paths as references, labels unknown) with
the run's newest checkpoint and writes the index folder (`tripletjax.gallery`;
with --approximate also a faiss HNSW graph for approximate search);
``add`` embeds more with the run that built the index and appends them (the
old index stays whole until the new one is written); ``info`` prints its
size and settings. `experiments.retrieve --index=INDEX` then embeds only its
queries.

Expected: for the main job's run, "mnist:train: 60000 items, 64-d, step
3000 of runs/mnist-batch_all-..." after about 10 s of embedding.
"""

import json

from absl import flags
import numpy as np

from experiments import common
from tripletjax import embedding
from tripletjax import gallery as gallery_lib
from tripletjax import workdir as workdir_lib

_WORKDIR = common.define_trained_run_flag()
_INDEX = flags.DEFINE_string("index", None, "The index folder (add, info).")
_OUTPUT = flags.DEFINE_string("output", None, "The index folder to write "
                              "(build).")
_DATASET = flags.DEFINE_string(
    "dataset", None, "Items from a dataset: NAME, NAME:train or NAME:test.")
_IMAGES = flags.DEFINE_string("images", None,
                              "Items from a folder of image files.")
_APPROXIMATE = flags.DEFINE_bool(
    "approximate", False, "build: also a faiss HNSW graph, for "
    "retrieve --backend=faiss (needs requirements-faiss.txt).")

COMMANDS = ("build", "add", "info")


def embed_items(run: workdir_lib.TrainedRun) -> gallery_lib.Gallery:
  """The gallery items that --dataset or --images name, embedded by `run`."""
  if bool(_DATASET.value) == bool(_IMAGES.value):
    raise ValueError("Give the items: --dataset or --images, one of the two.")
  info = {"workdir": run.workdir, "step": run.step,
          "settings": json.loads(run.config.to_json()),
          "metric": run.config.metric,
          "embedding_dim": run.config.embedding_dim, "class_names": None}
  if _IMAGES.value:
    paths = embedding.image_files(_IMAGES.value)
    embeddings = embedding.embed_folder(run.embedder, run.read_image,
                                        _IMAGES.value, paths)
    return gallery_lib.Gallery(embeddings, np.full(len(paths), -1, np.int64),
                               np.array([f"{_IMAGES.value.rstrip('/')}/{p}"
                                         for p in paths]), info)
  arrays = embedding.embed_dataset(
      run.embedder, run.config.replace(image_size=run.image_shape[0]),
      _DATASET.value)
  name = _DATASET.value.partition(":")[0]
  references = np.char.add(np.char.add(f"{name}:", arrays["split"]),
                           np.char.add(":", arrays["index"].astype(str)))
  info["class_names"] = arrays["class_names"].tolist() or None
  return gallery_lib.Gallery(arrays["embeddings"], arrays["labels"],
                             references, info)


def describe(index: gallery_lib.Gallery) -> str:
  info = index.info
  known = int(np.sum(index.labels >= 0))
  return (f"{len(index)} items ({known} labelled, "
          f"{len(np.unique(index.labels[index.labels >= 0]))} classes), "
          f"{info['embedding_dim']}-d, {info['metric']} distance, step "
          f"{info['step']} of {info['workdir']}"
          f"{', with a faiss graph' if index.approximate is not None else ''}")


def main(argv):
  if len(argv) != 2 or argv[1] not in COMMANDS:
    raise ValueError(f"Give one command: {', '.join(COMMANDS)}.")
  command = argv[1]
  if command == "build":
    if not _WORKDIR.value or not _OUTPUT.value:
      raise ValueError("build needs --workdir and --output.")
    index = embed_items(workdir_lib.restore(_WORKDIR.value))
    if _APPROXIMATE.value:
      index = index.with_approximate()
    gallery_lib.save(index, _OUTPUT.value)
    print(f"Built {_OUTPUT.value}: {describe(index)}")
    return
  if not _INDEX.value:
    raise ValueError(f"{command} needs --index.")
  index = gallery_lib.load(_INDEX.value)
  if command == "add":
    workdir = _WORKDIR.value or index.info["workdir"]
    index = index.add(embed_items(workdir_lib.restore(workdir)))
    gallery_lib.save(index, _INDEX.value)
    print(f"Added to {_INDEX.value}: {describe(index)}")
  else:
    print(f"{_INDEX.value}: {describe(index)}")
    print("settings: " + json.dumps(index.info["settings"], sort_keys=True))


if __name__ == "__main__":
  common.run(main, positional_args=True)
