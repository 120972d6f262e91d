r"""Speed and memory of the photo input: building the cache, reading batches.

For each number of images (--images) it writes a folder of generated
photo-like JPEGs (`experiments.shapes`, --min_side to --max_side pixels),
then for each network input size (--image_sizes), in a fresh process:

* build: decoding and resizing every image into the cache (shorter side to
  image_size * 8 / 7, centre crop) in worker processes, images/s overall and
  per worker;
* read: random P x K batches gathered from the cache (what the train loop
  reads each step), images/s;
* read + augment: the same batches also through the photo augmentation
  (random resized crop, flip, colour jitter) on the JAX device, images/s;
* the process's peak resident memory, which the cache does not grow: its
  rows are read with pread, never mapped or held.

  python -m experiments.benchmark_input --images=10000,50000 --image_sizes=64
  python -m experiments.benchmark_input --images=10000 --image_sizes=224

Expected on two CPU cores (docs/performance.md): the same peak memory for
10,000 and 50,000 images; batches of 224 x 224 read at several thousand
images/s.
"""

import multiprocessing
import os
import resource
import shutil
import tempfile
import time

from absl import flags

from experiments import common

_IMAGES = flags.DEFINE_list("images", ["10000"], "Folder sizes to measure.")
_IMAGE_SIZES = flags.DEFINE_list("image_sizes", ["64", "224"],
                                 "Network input sizes.")
_MIN_SIDE = flags.DEFINE_integer("min_side", 300, "Smallest generated side.")
_MAX_SIDE = flags.DEFINE_integer("max_side", 500, "Largest generated side.")
_CLASSES = flags.DEFINE_integer("classes", 100, "Classes of the folder.")
_BATCHES = flags.DEFINE_integer("batches", 20, "Batches timed per reading.")
_BATCH = flags.DEFINE_list("batch", ["16", "16"], "P, K of the batches.")
_WORK_DIR = flags.DEFINE_string(
    "work_dir", None, "Where the folders and caches go (default: a "
    "temporary directory, removed at the end).")
_JSON = flags.DEFINE_string("json", None, "Also write the rows to this file.")


def _measure_in_process(results, *args) -> None:
  """Puts `_measure`'s row, or the error it raised, on the queue `results`."""
  try:
    results.put(_measure(*args))
  except Exception as e:  # pylint: disable=broad-except
    results.put(e)


def _measure(folder: str, data_dir: str, image_size: int, p: int, k: int,
             batches: int) -> dict:
  """Builds the cache, then times reading."""
  # pylint: disable=g-import-not-at-top
  import jax
  from tripletjax import config as config_lib
  from tripletjax import data
  from tripletjax import models
  from tripletjax import parallel
  from tripletjax import sampling
  from tripletjax.data import augment
  # pylint: enable=g-import-not-at-top
  config = config_lib.Config(dataset=f"folder:{folder}", data_dir=data_dir,
                             image_size=image_size, classes_per_batch=p,
                             examples_per_class=k, augment_color=0.4)
  start = time.perf_counter()
  train, test = data.load_splits(config)
  build_seconds = time.perf_counter() - start
  sampler = sampling.create(config, train.labels)

  def read(step):
    indices = sampler(step)
    return parallel.local_batch(
        indices, sampler.batch_labels(indices, train.labels), train.images)

  read(0)
  start = time.perf_counter()
  for step in range(1, batches + 1):
    read(step)
  read_rate = batches * p * k / (time.perf_counter() - start)

  @jax.jit
  def augmented(images, step):
    key = jax.random.fold_in(jax.random.key(0), step)
    return augment.apply(models.preprocess(images), key, config)

  jax.block_until_ready(augmented(read(0)[0], 0))
  start = time.perf_counter()
  for step in range(1, batches + 1):
    out = augmented(read(step)[0], step)
  jax.block_until_ready(out)
  augment_rate = batches * p * k / (time.perf_counter() - start)
  workers = len(os.sched_getaffinity(0))
  images = len(train) + len(test)
  return {"images": images, "image_size": image_size,
          "stored_size": config.stored_size,
          "build_images_per_second": images / build_seconds,
          "build_images_per_second_per_worker":
              images / build_seconds / workers,
          "read_images_per_second": read_rate,
          "augmented_images_per_second": augment_rate,
          "peak_rss_mib": resource.getrusage(
              resource.RUSAGE_SELF).ru_maxrss / 1024}


def main(argv):
  del argv  # Checked by common.run.
  # pylint: disable=g-import-not-at-top
  from experiments import shapes
  # pylint: enable=g-import-not-at-top
  work = _WORK_DIR.value or tempfile.mkdtemp(prefix="benchmark_input-")
  p, k = map(int, _BATCH.value)
  table = common.Table([
      ("images", "images", "d"), ("size", "image_size", "d"),
      ("stored", "stored_size", "d"),
      ("build img/s", "build_images_per_second", ".0f"),
      ("per worker", "build_images_per_second_per_worker", ".0f"),
      ("read img/s", "read_images_per_second", ".0f"),
      ("read+augment img/s", "augmented_images_per_second", ".0f"),
      ("peak RSS (MiB)", "peak_rss_mib", ".0f")], _JSON.value)
  context = multiprocessing.get_context("spawn")
  try:
    for count in map(int, _IMAGES.value):
      folder = os.path.join(work, f"photos-{count}")
      if not os.path.isdir(folder):
        shapes.write_folder(folder, classes=_CLASSES.value,
                            per_class=count // _CLASSES.value,
                            sides=(_MIN_SIDE.value, _MAX_SIDE.value),
                            formats=("jpg",), nested_every=0)
      for size in map(int, _IMAGE_SIZES.value):
        # A process of its own (not a pool's daemon: it starts the cache's
        # decoding workers), so that its peak memory is this row's.
        results = context.Queue()
        process = context.Process(target=_measure_in_process, args=(
            results, folder, os.path.join(work, "data"), size, p, k,
            _BATCHES.value))
        process.start()
        row = results.get()
        process.join()
        if isinstance(row, Exception):
          raise row
        table.add(row)
  finally:
    if not _WORK_DIR.value:
      shutil.rmtree(work, ignore_errors=True)
  table.close()


if __name__ == "__main__":
  common.run(main)
