"""Input data: datasets in host memory and augmentation on the device.

* `tfds_loader`: tensorflow-datasets, prepared offline from original files.
* `omniglot`: the ``omniglot_lake`` builder over Lake et al.'s zips.
* `split`: a split in host memory (`Split`).
* `run_splits`: the train and test splits a configured run uses.
* `augment`: random shifts, rotations and scaling inside the train step.
"""

from tripletjax.data.run_splits import input_shape
from tripletjax.data.run_splits import load_splits
from tripletjax.data.run_splits import with_rotated_classes
from tripletjax.data.split import Split
from tripletjax.data.tfds_loader import DatasetUnavailableError
from tripletjax.data.tfds_loader import load
from tripletjax.data.tfds_loader import load_features
from tripletjax.data.tfds_loader import MANUAL_DIR_ENV
from tripletjax.data.tfds_loader import prepare
from tripletjax.data.tfds_loader import resolve_manual_dir

__all__ = [
    "DatasetUnavailableError",
    "MANUAL_DIR_ENV",
    "Split",
    "input_shape",
    "load",
    "load_features",
    "load_splits",
    "prepare",
    "resolve_manual_dir",
    "with_rotated_classes",
]
