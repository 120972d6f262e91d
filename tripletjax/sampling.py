"""Global batches of example indices, deterministic from (seed, step).

A batch depends on nothing but its seed and step, never on the batches
before it: a run resumed at step N sees exactly the batches an uninterrupted
run sees, without saving any sampler state. Every process of a multi-host run
draws the same global batch and feeds its own slice of it
(`tripletjax.parallel.process_slice`), so the batches do not depend on the
number of processes either.

Each sampler draws in two places, with the same distribution and contract
but different random streams: on the host with NumPy (``sampler(step)``,
for data streamed from disk), and on the device with `jax.random`
(`DeviceSampler`, from ``sampler.on_device()``), inside the compiled train
step, for training images kept in device memory. Every device computes the
same global batch from ``(seed, step)``, so the draws do not depend on the
number of devices.
"""

from __future__ import annotations

from absl import logging
from flax import struct
import jax
import jax.numpy as jnp
from jax import lax
import numpy as np

from tripletjax import config as config_lib


def _rng(seed: int, step: int) -> np.random.Generator:
  return np.random.default_rng((seed, step))


class _ClassIndex:
  """Example indices grouped by class: ``members[offsets[c]:offsets[c + 1]]``."""

  def __init__(self, labels: np.ndarray):
    labels = np.asarray(labels)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
      raise ValueError(
          f"labels must be a 1-D integer array, got {labels.dtype} "
          f"{labels.shape}.")
    if labels.size and labels.min() < 0:
      raise ValueError("labels must be >= 0.")
    self.members = np.argsort(labels, kind="stable")
    self.counts = np.bincount(labels)
    self.offsets = np.concatenate([[0], np.cumsum(self.counts)])


class PKSampler:
  """Balanced batches: P classes, K examples of each, without repeats.

  Classes with fewer than K examples are left out of the draw (with a
  warning that names them), or, with ``small_classes="error"``, stop the
  run; fewer than P classes with K examples is an error.
  """

  def __init__(self, labels: np.ndarray, *, classes_per_batch: int,
               examples_per_class: int, seed: int,
               dataset_name: str = "the dataset",
               small_classes: str = "drop",
               class_names: tuple[str, ...] | None = None):
    """Args:
      labels: ``[N]`` class ids of the examples to draw from.
      classes_per_batch: P.
      examples_per_class: K.
      seed: base seed of every draw.
      dataset_name: used in error messages.
      small_classes: ``"drop"`` or ``"error"``: what classes with fewer
        than K examples do.
      class_names: the classes' names, for the messages.
    """
    self._index = _ClassIndex(labels)
    self.p, self.k = classes_per_batch, examples_per_class
    self.seed = seed
    self.eligible = np.flatnonzero(self._index.counts >= self.k)
    present = int(np.count_nonzero(self._index.counts))
    if len(self.eligible) < self.p:
      raise ValueError(
          f"P x K sampling needs classes_per_batch (P) = {self.p} classes with "
          f"at least examples_per_class (K) = {self.k} examples each; "
          f"{dataset_name} has {present} classes, {len(self.eligible)} of them "
          f"with at least {self.k} examples. Lower P or K.")
    small = np.flatnonzero((self._index.counts > 0) &
                           (self._index.counts < self.k))
    if len(small):
      listed = ", ".join(
          f"{class_names[c] if class_names else c} "
          f"({self._index.counts[c]})" for c in small[:10])
      listed += " ..." if len(small) > 10 else ""
      if small_classes == "error":
        raise ValueError(
            f"{len(small)} classes of {dataset_name} have fewer than "
            f"examples_per_class (K) = {self.k} training images: {listed}. "
            "Lower K, add images, or drop them (--small_classes=drop).")
      logging.warning(
          "%d of %d classes of %s have fewer than K = %d training images and "
          "are never drawn: %s.", len(small), present, dataset_name, self.k,
          listed)

  @property
  def batch_size(self) -> int:
    return self.p * self.k

  def batch_labels(self, indices: np.ndarray, labels: np.ndarray
                   ) -> np.ndarray:
    """The labels of batch `indices`: the examples' own."""
    return labels[indices]

  def __call__(self, step: int) -> np.ndarray:
    """Indices of batch `step`: ``int64 [P * K]``, class by class."""
    rng = _rng(self.seed, step)
    classes = rng.choice(self.eligible, size=self.p, replace=False)
    index = self._index
    # K distinct members per class: the K smallest of random keys.
    counts = index.counts[classes]
    keys = rng.random((self.p, counts.max()))
    keys[np.arange(counts.max())[None, :] >= counts[:, None]] = np.inf
    picks = np.argpartition(keys, self.k - 1, axis=1)[:, :self.k]
    return index.members[index.offsets[classes][:, None] + picks].reshape(-1)

  def on_device(self, labels: np.ndarray) -> DeviceSampler:
    """This sampler's draws in `jax.random` (`labels`: the examples')."""
    return DeviceSampler.create(PK, labels, self._index, self.eligible,
                                p=self.p, k=self.k, seed=self.seed)


class TripletSampler:
  """Random triplets: anchor and negative drawn uniformly, positive from the
  anchor's class.

  The anchor is uniform over the examples of classes with at least two
  examples, the positive uniform over the other members of its class, and the
  negative uniform over all examples of other classes.
  """

  def __init__(self, labels: np.ndarray, *, triplets_per_batch: int,
               seed: int, dataset_name: str = "the dataset"):
    self._labels = np.asarray(labels)
    self._index = _ClassIndex(self._labels)
    self.t = triplets_per_batch
    self.seed = seed
    self._anchors = np.flatnonzero(self._index.counts[self._labels] >= 2)
    # Position of each example within its class block.
    index = self._index
    self._slot = np.empty_like(index.members)
    self._slot[index.members] = np.arange(len(index.members)) - np.repeat(
        index.offsets[:-1], index.counts)
    if len(self._anchors) == 0 or np.count_nonzero(self._index.counts) < 2:
      raise ValueError(
          f"Random triplets need two classes and a class with two examples; "
          f"{dataset_name} has none.")

  @property
  def batch_size(self) -> int:
    return 3 * self.t

  batch_labels = PKSampler.batch_labels

  def __call__(self, step: int) -> np.ndarray:
    """Indices ``int64 [3 * T]``: anchor, positive, negative of triplet 0,
    then of triplet 1, ... (so any split into whole triplets is valid)."""
    rng = _rng(self.seed, step)
    index, labels = self._index, self._labels
    anchors = rng.choice(self._anchors, size=self.t)
    cls = labels[anchors]
    counts = index.counts[cls]
    # A uniform other member: a draw among count - 1 slots, skipping the
    # anchor's own slot.
    slot = rng.integers(0, counts - 1)
    slot = slot + (slot >= self._slot[anchors])
    positives = index.members[index.offsets[cls] + slot]
    # A uniform example of another class: a draw among N - count slots of the
    # class-sorted order, skipping the anchor's class block.
    other = rng.integers(0, len(labels) - counts)
    other = other + np.where(other >= index.offsets[cls], counts, 0)
    negatives = index.members[other]
    return np.stack([anchors, positives, negatives], axis=1).reshape(-1)

  def on_device(self, labels: np.ndarray) -> DeviceSampler:
    """This sampler's draws in `jax.random` (`labels`: the examples')."""
    return DeviceSampler.create(TRIPLETS, labels, self._index, self._anchors,
                                p=self.t, k=3, seed=self.seed,
                                slot=self._slot)


class ViewsSampler:
  """Label-free batches: P distinct images, each K times (K augmented
  views once the train step augments them), labelled by the image's place
  in the batch: a view's positives are the other views of its image."""

  def __init__(self, num_examples: int, *, images_per_batch: int,
               views: int, seed: int, dataset_name: str = "the dataset"):
    if num_examples < images_per_batch:
      raise ValueError(
          f"Batches of classes_per_batch (P) = {images_per_batch} images "
          f"need that many; {dataset_name} has {num_examples}.")
    self.n, self.p, self.k, self.seed = (num_examples, images_per_batch,
                                         views, seed)

  @property
  def batch_size(self) -> int:
    return self.p * self.k

  def batch_labels(self, indices: np.ndarray, labels: np.ndarray
                   ) -> np.ndarray:
    """``[P * K]``: the views of the batch's i-th image have label i."""
    del indices, labels
    return np.repeat(np.arange(self.p, dtype=np.int32), self.k)

  def __call__(self, step: int) -> np.ndarray:
    """Indices of batch `step`: ``int64 [P * K]``, each image K times."""
    chosen = _rng(self.seed, step).choice(self.n, size=self.p, replace=False)
    return np.repeat(chosen, self.k)

  def on_device(self, labels: np.ndarray) -> DeviceSampler:
    """This sampler's draws in `jax.random` (`labels`: the examples')."""
    return DeviceSampler.create(VIEWS, labels, _ClassIndex(labels),
                                np.arange(self.n), p=self.p, k=self.k,
                                seed=self.seed)


PK, TRIPLETS, VIEWS = "pk", "triplets", "views"
# Folded into the key of (seed, step) for the draws of a batch; the train
# step's augmentation and loss draw from the same key, folded otherwise.
_SAMPLING_STREAM = 2


def _subset(key: jax.Array, n: int, size: int) -> jax.Array:
  """`size` distinct integers drawn uniformly from ``range(n)``: the places
  of the `size` largest of n uniform keys."""
  return lax.top_k(jax.random.uniform(key, (n,)), size)[1]


@struct.dataclass
class DeviceSampler:
  """A sampler's draws as a pure function of the step, in `jax.random`.

  A pytree: its arrays go to the devices with the training images, and
  ``draw(step)`` runs inside the compiled train step. The batches have the
  distribution of the host sampler it came from (``on_device()``), drawn
  from another stream.
  """
  members: jax.Array  # int32 [N]: example indices grouped by class.
  offsets: jax.Array  # int32 [C + 1]: class c's are members[offsets[c]:...].
  counts: jax.Array  # int32 [C]: examples of each class.
  eligible: jax.Array  # int32 [E]: what is drawn first (classes, anchors,
  #                      images).
  labels: jax.Array  # int32 [N]: the examples' labels.
  slot: jax.Array  # int32 [N]: each example's place in its class (triplets).
  seed: jax.Array  # int32 scalar.
  kind: str = struct.field(pytree_node=False)
  p: int = struct.field(pytree_node=False)  # Classes, triplets or images.
  k: int = struct.field(pytree_node=False)  # Examples of each (3 triplets).
  max_count: int = struct.field(pytree_node=False)

  @classmethod
  def create(cls, kind: str, labels: np.ndarray, index: _ClassIndex,
             eligible: np.ndarray, *, p: int, k: int, seed: int,
             slot: np.ndarray | None = None) -> DeviceSampler:
    as_int32 = lambda x: jnp.asarray(x, jnp.int32)
    return cls(members=as_int32(index.members),
               offsets=as_int32(index.offsets), counts=as_int32(index.counts),
               eligible=as_int32(eligible), labels=as_int32(labels),
               slot=as_int32(np.zeros(0) if slot is None else slot),
               seed=jnp.int32(seed), kind=kind, p=p, k=k,
               max_count=int(index.counts.max()))

  def draw(self, step: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Batch `step`: ``(indices, labels)``, ``int32 [P * K]`` each, in the
    order of the host sampler's (class by class; anchor, positive, negative
    of each triplet; each image K times, labelled by its place)."""
    key = jax.random.fold_in(jax.random.fold_in(
        jax.random.key(self.seed), step), _SAMPLING_STREAM)
    first, second, third = jax.random.split(key, 3)
    if self.kind == VIEWS:
      chosen = self.eligible[_subset(first, len(self.eligible), self.p)]
      return (jnp.repeat(chosen, self.k),
              jnp.repeat(jnp.arange(self.p, dtype=jnp.int32), self.k))
    if self.kind == PK:
      classes = self.eligible[_subset(first, len(self.eligible), self.p)]
      # K distinct members per class: the K smallest of random keys, the
      # places beyond the class's size keyed out of reach (keys are < 1).
      keys = jax.random.uniform(second, (self.p, self.max_count))
      present = jnp.arange(self.max_count) < self.counts[classes][:, None]
      keys = jnp.where(present, keys, 2.0)
      picks = lax.top_k(-keys, self.k)[1]
      indices = self.members[self.offsets[classes][:, None] + picks]
      indices = indices.reshape(-1)
      return indices, self.labels[indices]
    # Random triplets, as `TripletSampler` draws them.
    anchors = self.eligible[jax.random.randint(first, (self.p,), 0,
                                               len(self.eligible))]
    cls = self.labels[anchors]
    counts, starts = self.counts[cls], self.offsets[cls]
    slot = jax.random.randint(second, (self.p,), 0, counts - 1)
    positives = self.members[starts + slot + (slot >= self.slot[anchors])]
    other = jax.random.randint(third, (self.p,), 0,
                               len(self.labels) - counts)
    negatives = self.members[other + jnp.where(other >= starts, counts, 0)]
    indices = jnp.stack([anchors, positives, negatives], axis=1).reshape(-1)
    return indices, self.labels[indices]


def create(config: config_lib.Config, labels: np.ndarray,
           class_names: tuple[str, ...] | None = None
           ) -> PKSampler | TripletSampler:
  """The sampler of ``config.loss``: random triplets, or P x K batches for
  the mining losses.

  Args:
    config: the run's loss, batch shape, seed and small-class policy.
    labels: ``[N]`` class ids of the training examples.
    class_names: the classes' names, for messages.
  """
  name = config.dataset
  if config.positives == "augmented":
    return ViewsSampler(len(labels), images_per_batch=config.classes_per_batch,
                        views=config.examples_per_class, seed=config.seed,
                        dataset_name=name)
  if config.loss == config_lib.RANDOM_TRIPLETS:
    return TripletSampler(labels, triplets_per_batch=config.triplets_per_batch,
                          seed=config.seed, dataset_name=name)
  return PKSampler(labels, classes_per_batch=config.classes_per_batch,
                   examples_per_class=config.examples_per_class,
                   seed=config.seed, dataset_name=name,
                   small_classes=config.small_classes, class_names=class_names)
