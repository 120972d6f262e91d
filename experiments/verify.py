r"""Same class or not? The distance of two images against the run's threshold.

The threshold is the one the run calibrated on its test split (the distance
of best verification accuracy over all pairs of test images: of classes never
trained on where the run held some out, else of its test classes; in
``results.json``), or --threshold.

  python -m experiments.verify --workdir=runs/mnist-batch_all-312dc519 a.png b.png

Expected, for the main job's run and two test images of a 2 (test[0] and
test[24] saved as PNG): "distance 0.2265, threshold 0.8507 (test images of
the classes trained on): same"; a 2 and a 0: "distance 1.41, ...:
different".
"""

import json
import os

from absl import flags
import numpy as np

from experiments import common
from tripletjax import distances
from tripletjax import workdir as workdir_lib

_WORKDIR = common.define_trained_run_flag()
_THRESHOLD = flags.DEFINE_float(
    "threshold", None, "Call pairs at most this far apart the same "
    "(default: the run's calibrated threshold).")
_INVERT = flags.DEFINE_bool("invert", False,
                            "Invert the image files' intensities.")

# The results that calibrate, best first, and what they were measured on.
CALIBRATIONS = (
    ("unseen_verification_threshold", "test images of classes never trained "
     "on"),
    ("test_verification_threshold", "test images of the classes trained on"),
)


def calibrated_threshold(workdir: str) -> tuple[float, str]:
  """The run's threshold and what it was calibrated on."""
  path = os.path.join(workdir, "results.json")
  if not os.path.exists(path):
    raise ValueError(f"{workdir!r} has no results.json (training did not "
                     "finish); give --threshold.")
  with open(path, encoding="utf-8") as f:
    results = json.load(f)
  for key, what in CALIBRATIONS:
    if key in results:
      return float(results[key]), what
  raise ValueError(f"{workdir!r} calibrated no verification threshold (its "
                   "test split was too large for all pairs); give "
                   "--threshold.")


def main(argv):
  if not _WORKDIR.value:
    raise ValueError("Give the trained run's directory: --workdir.")
  if len(argv) != 3:
    raise ValueError(f"Give two image files, got {len(argv) - 1}.")
  for path in argv[1:]:  # Before the run loads: a wrong path fails at once.
    workdir_lib.check_image_file(path)
  run = workdir_lib.restore(_WORKDIR.value)
  if _THRESHOLD.value is not None:
    threshold, source = _THRESHOLD.value, "--threshold"
  else:
    threshold, source = calibrated_threshold(_WORKDIR.value)
  images = [run.read_image(p, invert=_INVERT.value) for p in argv[1:]]
  a, b = run.embedder(np.stack(images))
  d = float(distances.paired_distances(a[None], b[None],
                                       metric=run.config.metric)[0])
  print(f"distance {d:.4g}, threshold {threshold:.4g} ({source}): "
        f"{'same' if d <= threshold else 'different'}")


if __name__ == "__main__":
  common.run(main, positional_args=True)
