"""TF-free input pipeline: TFDS array_record data sources, batched with Grain.

A batch is a dict of NumPy arrays:

  images         uint8   [B, H, W, 1]  white ink on black, padded right and below with 0;
                                        (H, W) from ``BatchShapes`` (config.input)
  image_heights  int32   [B]           content height before padding
  image_widths   int32   [B]           content width before padding
  labels         int32   [B, L]        token ids, 0-padded (0 within the length: a token
                                        outside the vocabulary, in evaluation splits only)
  label_lengths  int32   [B]
  ctc_feasible   float32 [B]           0 where the label cannot fit the image's CTC
                                        frames (the loss masks these; they are counted)
  sample_mask    float32 [B]           0 for the filler rows of an incomplete eval batch
  ids            str     [B]           sample ids ('' for filler rows); stays on host

Training is shuffled, augmented and repeated for all epochs in one Grain
pipeline, so that the iterator state (saved in every checkpoint) resumes the
exact sequence of batches. Each JAX process reads only its own shard. With
``config.input.sort_window`` the samples of each window of shuffled batches are
sorted by size before batching (and evaluation splits are read in size
order), so that a batch holds images of one size class: less padding, and few
distinct batch shapes to compile.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import os
from typing import Any

import grain
import jax
import ml_collections
import numpy as np
from absl import logging

from hme_jax import ctc
from hme_jax.data import preprocessing
from hme_jax.families import registry
from hme_jax.text.vocab import Vocabulary

MIN_LABEL_BUCKET = 16


class DatasetNotFoundError(FileNotFoundError):
  """The prepared dataset or its source archive is missing."""


# --- the prepared dataset --------------------------------------------------


def dataset_builder(dataset_config: ml_collections.ConfigDict, prepare: bool = True):
  """The TFDS builder of ``config.dataset``, prepared on first use.

  ``dataset.name`` is a TFDS name, optionally with a builder config
  (``"crohme_synthetic/tiny"``).
  """
  import tensorflow_datasets as tfds
  import tfds_crohme  # noqa: F401  (registers the builders)

  data_dir = os.path.expanduser(dataset_config.data_dir) if dataset_config.data_dir else None
  builder = tfds.builder(dataset_config.name, data_dir=data_dir)
  if prepare and not builder.is_prepared():
    manual_dir = os.path.expanduser(dataset_config.manual_dir) if dataset_config.manual_dir else None
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
  return builder


def load_vocabulary(builder) -> Vocabulary:
  """The vocabulary saved with the prepared data."""
  import tfds_crohme
  return Vocabulary.from_json(tfds_crohme.load_vocabulary(builder))


def data_source(builder, split: str):
  """A random-access source of one split; a clear error when the split is absent."""
  if split not in builder.info.splits:
    raise DatasetNotFoundError(
        f"Split {split!r} is not in the prepared dataset {builder.info.full_name} at "
        f"{builder.data_dir}; it has {sorted(builder.info.splits)}. Pick one of those "
        "(e.g. --splits=2014,2016) or rebuild from an archive that holds this split.")
  return builder.as_data_source(split=split)


# --- per-sample transforms -------------------------------------------------


def _as_str(value) -> str:
  return value.decode() if isinstance(value, bytes) else str(value)


@dataclasses.dataclass(frozen=True)
class EncodeLabel(grain.transforms.Map):
  """``{image [H, W, 1], latex, id}`` -> ``{image [h, w] cropped to the ink, labels [L], id}``.

  A token outside the vocabulary is an error, or with ``allow_unknown`` (evaluation
  splits) label id 0 and a warning naming it and the sample: the sample is scored
  as wrong (``Vocabulary.encode``), and left out of the loss.
  """

  vocab: Vocabulary
  allow_unknown: bool = False

  def map(self, record: dict[str, Any]) -> dict[str, Any]:
    sample_id = _as_str(record["id"])
    latex = _as_str(record["latex"])
    if self.allow_unknown and (unknown := self.vocab.unknown_tokens(latex)):
      logging.warning("Sample %r holds %s, outside the model's vocabulary: it is scored as "
                      "wrong.", sample_id, ", ".join(repr(token) for token in unknown))
    return {
        "image": preprocessing.dataset_ink(np.asarray(record["image"])[..., 0]),
        "labels": self.vocab.encode(latex, sample_id=sample_id, allow_unknown=self.allow_unknown),
        "id": sample_id,
    }


@dataclasses.dataclass(frozen=True)
class Augment(grain.transforms.RandomMap):
  augment_config: ml_collections.ConfigDict
  statistics: preprocessing.InkStatistics  # what paper pages are normalised back to

  def random_map(self, example: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
    return {**example, "image": preprocessing.augment(example["image"], rng, self.augment_config,
                                                      self.statistics)}


@dataclasses.dataclass(frozen=True)
class FitImage(grain.transforms.Map):
  """Crops to the ink and scales to the model's geometry; flags CTC-infeasible labels."""

  input_config: ml_collections.ConfigDict
  ctc_width_downsample: int | None  # None for models without a CTC constraint

  def map(self, example: dict[str, Any]) -> dict[str, Any]:
    image = preprocessing.crop_to_ink(example["image"])  # augmentation may move the ink
    image = preprocessing.fit_image(image, self.input_config)
    feasible = True
    if self.ctc_width_downsample:
      frames = ctc.frame_lengths(image.shape[1], self.ctc_width_downsample)
      feasible = ctc.min_ctc_frames(example["labels"]) <= frames
    return {**example, "image": image, "ctc_feasible": feasible}


# --- batching ----------------------------------------------------------------


def label_bucket(longest: int) -> int:
  """The padded label length for a longest label of ``longest`` tokens: a power of two >= 16."""
  return max(MIN_LABEL_BUCKET, 1 << max(longest - 1, 0).bit_length())


@dataclasses.dataclass(frozen=True)
class BatchShapes:
  """The padded ``(height, width, label length)`` a batch may take (``config.input``).

  Each distinct shape is compiled once, so few shapes; padding wastes compute,
  so shapes close to the content. Two layouts:

  * ``canvases`` empty: every image has height ``height``; a batch's width is
    the smallest of ``bucket_widths`` that holds it, its label length a power
    of two (>= 16).
  * ``canvases = ((height, width, label_length), ...)``, nested (each at least
    the one before in every dimension): a batch takes the first canvas that
    holds all its images and labels. Needed for native-scale images, whose
    heights differ. A label longer than the last canvas's gets a power-of-two
    length (evaluation splits may hold a few).
  """

  height: int
  bucket_widths: tuple[int, ...]
  canvases: tuple[tuple[int, int, int], ...] = ()

  @classmethod
  def from_config(cls, input_config: ml_collections.ConfigDict) -> "BatchShapes":
    canvases = tuple(tuple(int(v) for v in canvas) for canvas in input_config.get("canvases", ()))
    return cls(int(input_config.height), tuple(input_config.bucket_widths), canvases)

  def size_class(self, heights, widths, label_lengths) -> np.ndarray:
    """``[N]`` index of the first canvas (or width bucket) that holds each sample."""
    heights, widths, label_lengths = (np.asarray(v).reshape(-1)
                                      for v in (heights, widths, label_lengths))
    if not self.canvases:
      return np.searchsorted(np.asarray(self.bucket_widths), widths)
    canvases = np.asarray(self.canvases)
    fits = ((heights[:, None] <= canvases[None, :, 0]) & (widths[:, None] <= canvases[None, :, 1])
            & (label_lengths[:, None] <= canvases[None, :, 2]))
    return np.where(fits.any(axis=1), fits.argmax(axis=1), len(canvases))

  def shape_for(self, heights, widths, label_lengths) -> tuple[int, int, int]:
    """The padded ``(height, width, label length)`` of a batch of these samples."""
    tallest, widest = int(np.max(heights)), int(np.max(widths))
    labels = label_bucket(int(np.max(label_lengths)))
    if not self.canvases:
      return self.height, next((b for b in self.bucket_widths if b >= widest), widest), labels
    index = int(np.max(self.size_class(heights, widths, label_lengths)))
    if index < len(self.canvases):
      return self.canvases[index]
    height, width, label_length = self.canvases[-1]
    return max(height, tallest), max(width, widest), max(label_length, labels)


@dataclasses.dataclass(frozen=True)
class PadBatch:
  """Stacks examples into a batch of ``BatchShapes`` (see the module docstring).

  ``batch_size`` rows are always returned: a short final batch is filled with
  masked rows, so the compiled step sees a static batch size.
  """

  batch_size: int
  shapes: BatchShapes

  def __call__(self, examples: list[dict[str, Any]]) -> dict[str, np.ndarray]:
    height, width, label_length = self.shapes.shape_for(
        [example["image"].shape[0] for example in examples],
        [example["image"].shape[1] for example in examples],
        [len(example["labels"]) for example in examples])
    images = np.zeros((self.batch_size, height, width, 1), np.uint8)
    labels = np.zeros((self.batch_size, label_length), np.int32)
    batch = {
        "image_heights": np.zeros(self.batch_size, np.int32),
        "image_widths": np.zeros(self.batch_size, np.int32),
        "label_lengths": np.zeros(self.batch_size, np.int32),
        "ctc_feasible": np.zeros(self.batch_size, np.float32),
        "sample_mask": np.zeros(self.batch_size, np.float32),
        "ids": np.full(self.batch_size, "", dtype=object),
    }
    for row, example in enumerate(examples):
      image, label = example["image"], example["labels"]
      images[row, : image.shape[0], : image.shape[1], 0] = image
      labels[row, : len(label)] = label
      batch["image_heights"][row], batch["image_widths"][row] = image.shape
      batch["label_lengths"][row] = len(label)
      batch["ctc_feasible"][row] = example["ctc_feasible"]
      batch["sample_mask"][row] = 1.0
      batch["ids"][row] = example["id"]
    return {"images": images, "labels": labels, **batch}


def batch_spec(batch_size: int, shape: tuple[int, int, int]) -> dict[str, jax.ShapeDtypeStruct]:
  """Shapes and dtypes of a batch of padded ``(height, width, label_length)`` (without ``ids``)."""
  height, width, label_length = shape
  spec = {"images": ((batch_size, height, width, 1), np.uint8),
          "labels": ((batch_size, label_length), np.int32),
          "image_heights": ((batch_size,), np.int32), "image_widths": ((batch_size,), np.int32),
          "label_lengths": ((batch_size,), np.int32), "ctc_feasible": ((batch_size,), np.float32),
          "sample_mask": ((batch_size,), np.float32)}
  return {key: jax.ShapeDtypeStruct(*value) for key, value in spec.items()}


def dummy_batch(config, batch_size: int) -> dict[str, np.ndarray]:
  """A batch of blank images in the pipeline's layout (for shapes: init, restore)."""
  height = config.input.height or preprocessing.MIN_NATIVE_SIZE
  example = {"image": np.zeros((height, 1), np.uint8),
             "labels": np.zeros(0, np.int32), "id": "", "ctc_feasible": True}
  batch = PadBatch(batch_size, BatchShapes.from_config(config.input))([example])
  return {k: v for k, v in batch.items() if k != "ids"}


# --- pipelines -------------------------------------------------------------


def per_process_batch_size(global_batch_size: int) -> int:
  if global_batch_size % jax.process_count():
    raise ValueError(f"batch_size {global_batch_size} is not divisible by the "
                     f"{jax.process_count()} JAX processes.")
  return global_batch_size // jax.process_count()


def ctc_width_downsample(config) -> int | None:
  """Image columns per CTC frame of the config's model family (None: no CTC constraint)."""
  return registry.ctc_frame_stride(config)


def check_shapes(config) -> BatchShapes:
  """The batch shapes of ``config.input``; a clear error for an inconsistent geometry."""
  shapes = BatchShapes.from_config(config.input)
  step = ctc_width_downsample(config)
  height = config.input.height
  if step and not height:
    raise ValueError("The CRNN needs one image height: set config.input.height > 0 "
                     "(native-scale images, height 0, are for the attention model).")
  if not shapes.canvases:
    if not height:
      raise ValueError("Native-scale images (config.input.height=0) need config.input.canvases, "
                       "((height, width, label_length), ...) smallest first; see "
                       "configs/attention.py.")
    buckets = shapes.bucket_widths
    if list(buckets) != sorted(buckets) or buckets[-1] < config.input.max_width:
      raise ValueError(f"config.input.bucket_widths={buckets} must be increasing and end at or "
                       f"above config.input.max_width={config.input.max_width}.")
    if step and any(b % step for b in buckets):
      raise ValueError(f"Every bucket width {buckets} must be a multiple of "
                       f"config.model.width_downsample={step}.")
    return shapes
  canvases = np.asarray(shapes.canvases)
  if canvases.ndim != 2 or canvases.shape[1] != 3 or (np.diff(canvases, axis=0) < 0).any():
    raise ValueError(f"config.input.canvases={shapes.canvases} must be (height, width, "
                     "label_length) triples, each at least the one before in every dimension.")
  tallest = height or config.input.max_height
  if canvases[-1, 0] < tallest or canvases[-1, 1] < config.input.max_width:
    raise ValueError(f"The last of config.input.canvases, {shapes.canvases[-1]}, must hold the "
                     f"largest image, {tallest} x {config.input.max_width} (config.input).")
  if height and (canvases[:, 0] != height).any():
    raise ValueError(f"With config.input.height={height} every canvas has that height; got "
                     f"{shapes.canvases}.")
  if step and (canvases[:, 1] % step).any():
    raise ValueError(f"Every canvas width of {shapes.canvases} must be a multiple of "
                     f"config.model.width_downsample={step}.")
  return shapes


def check_augment(augment_config: ml_collections.ConfigDict) -> None:
  """A clear error for an elastic field that would tear strokes apart."""
  cfg = augment_config
  if cfg.enabled and cfg.elastic_alpha > 0 and cfg.elastic_alpha > cfg.elastic_sigma / 2:
    raise ValueError(
        f"config.augment.elastic_alpha={cfg.elastic_alpha} is more than half of "
        f"config.augment.elastic_sigma={cfg.elastic_sigma}: neighbouring points would move "
        "apart by more than their distance and strokes fold over. Lower elastic_alpha or raise "
        "elastic_sigma (the default is 3 over 10 pixels).")


def _shard_for_process(dataset: grain.MapDataset, max_samples: int) -> grain.MapDataset:
  if max_samples:
    dataset = dataset[:max_samples]
  return dataset[jax.process_index()::jax.process_count()]


def encoded_examples(config, source, vocab: Vocabulary, max_samples: int,
                     allow_unknown: bool = False) -> grain.MapDataset:
  """This process's share of ``source`` as encoded examples (``EncodeLabel``).

  With ``config.input.cache_in_memory`` every image is decoded and cropped
  once, on all cores, and kept in memory (CROHME train: about 170 MB).
  """
  examples = _shard_for_process(grain.MapDataset.source(source), max_samples).map(
      EncodeLabel(vocab, allow_unknown))
  if not config.input.get("cache_in_memory", False):  # absent from configs saved before it
    return examples
  threads = max(os.cpu_count() or 1, 1)
  return grain.MapDataset.source(list(examples.to_iter_dataset(
      grain.ReadOptions(num_threads=threads))))


def fitted(config, examples: grain.MapDataset) -> grain.MapDataset:
  """Model-geometry images of encoded examples, without augmentation."""
  return examples.map(FitImage(config.input, ctc_width_downsample(config)))


@dataclasses.dataclass(frozen=True)
class _Reordered(collections.abc.Sequence):
  """``records`` read in the order ``order`` (a random-access source for Grain)."""

  records: Any
  order: np.ndarray  # [N] int

  def __len__(self) -> int:
    return len(self.order)

  def __getitem__(self, index):
    return self.records[int(self.order[index])]


def size_keys(config, examples: grain.MapDataset) -> np.ndarray:
  """``[N]`` int64 sort key of each example: its size class (``BatchShapes``), then its area.

  From the fitted image shapes alone (no resizing, no augmentation).
  """
  def fitted_size(example):
    return (*preprocessing.fit_shape(example["image"].shape, config.input),
            len(example["labels"]))
  threads = max(os.cpu_count() or 1, 1)
  sizes = np.array(list(examples.map(fitted_size).to_iter_dataset(
      grain.ReadOptions(num_threads=threads))), np.int64).reshape(-1, 3)
  classes = BatchShapes.from_config(config.input).size_class(sizes[:, 0], sizes[:, 1], sizes[:, 2])
  return classes.astype(np.int64) << 32 | sizes[:, 0] * sizes[:, 1]


def sorted_batch_order(keys: np.ndarray, batch_size: int, num_epochs: int, seed: int,
                       window: int) -> np.ndarray:
  """Record indices of ``num_epochs`` epochs of full batches, each batch contiguous.

  Every epoch shuffles the records (dropping the remainder of a batch), sorts
  each run of ``window`` batches by ``keys`` (``window`` 0: no sorting), cuts
  batches, and shuffles the order of the epoch's batches: batches of similar
  samples, in random order.
  """
  rng = np.random.default_rng(seed)
  steps = len(keys) // batch_size
  span = window * batch_size
  epochs = []
  for _ in range(num_epochs):
    order = rng.permutation(len(keys))[: steps * batch_size]
    for start in range(0, len(order), span) if window else ():
      chunk = order[start:start + span]
      order[start:start + span] = chunk[np.argsort(keys[chunk], kind="stable")]
    epochs.append(order.reshape(steps, batch_size)[rng.permutation(steps)].reshape(-1))
  return np.concatenate(epochs) if epochs else np.zeros(0, np.int64)


def train_dataset(config, source, vocab: Vocabulary) -> grain.MapDataset:
  """Shuffled, augmented batches for all epochs, as a random-access MapDataset.

  Each epoch is ``steps_per_epoch(config, len(source))`` full batches of distinct
  samples (``sorted_batch_order``): a batch never spans two epochs, and the
  remainder of an epoch waits for another epoch's shuffle.
  """
  shapes = check_shapes(config)
  check_augment(config.augment)
  examples = encoded_examples(config, source, vocab, config.dataset.max_train_samples)
  batch_size = per_process_batch_size(config.train.batch_size)
  window = config.input.get("sort_window", 0)  # absent from configs saved before it existed
  keys = size_keys(config, examples) if window else np.zeros(len(examples), np.int64)
  order = sorted_batch_order(keys, batch_size, config.train.num_epochs, config.seed, window)
  dataset = grain.MapDataset.source(_Reordered(examples, order)).seed(config.seed)
  if config.augment.enabled:
    dataset = dataset.random_map(Augment(config.augment,
                                         preprocessing.InkStatistics.from_config(config)))
  dataset = fitted(config, dataset)
  return dataset.batch(batch_size, drop_remainder=True, batch_fn=PadBatch(batch_size, shapes))


def eval_dataset(config, source, vocab: Vocabulary, batch_size: int | None = None,
                 max_samples: int | None = None) -> grain.MapDataset:
  """Every sample of a split once, in full (masked) batches; in size order with ``sort_window``.

  A caption token outside ``vocab`` is label id 0 (``EncodeLabel``): the sample is scored wrong.
  """
  shapes = check_shapes(config)
  if max_samples is None:
    max_samples = config.dataset.max_eval_samples
  examples = encoded_examples(config, source, vocab, max_samples, allow_unknown=True)
  if config.input.get("sort_window", 0):  # absent from configs saved before it existed
    order = np.argsort(size_keys(config, examples), kind="stable")
    examples = grain.MapDataset.source(_Reordered(examples, order))
  batch_size = per_process_batch_size(batch_size or config.eval.batch_size)
  return fitted(config, examples).batch(batch_size, batch_fn=PadBatch(batch_size, shapes))


def steps_per_epoch(config, num_train_records: int) -> int:
  records = num_train_records
  if config.dataset.max_train_samples:
    records = min(records, config.dataset.max_train_samples)
  steps = (records // jax.process_count()) // per_process_batch_size(config.train.batch_size)
  if steps == 0:
    raise ValueError(f"The training split has {records} samples, fewer than one batch of "
                     f"{config.train.batch_size}: lower config.train.batch_size.")
  return steps


def to_iterator(dataset: grain.MapDataset, worker_count: int = 0, prefetch: int = 2):
  """A checkpointable iterator (``get_state`` / ``set_state``), optionally multi-process."""
  iter_dataset = dataset.to_iter_dataset(grain.ReadOptions(num_threads=2, prefetch_buffer_size=prefetch))
  if worker_count > 0:
    iter_dataset = iter_dataset.mp_prefetch(grain.MultiprocessingOptions(
        num_workers=worker_count, per_worker_buffer_size=prefetch))
  return iter(iter_dataset)


def count_infeasible(config, source, vocab: Vocabulary, max_samples: int = 0) -> tuple[int, list[str]]:
  """Samples of ``source`` whose label cannot fit their CTC frames (without augmentation)."""
  step = ctc_width_downsample(config)
  if not step:
    return 0, []
  dataset = fitted(config, encoded_examples(config, source, vocab, max_samples))
  infeasible = [example["id"] for example in dataset if not example["ctc_feasible"]]
  return len(infeasible), infeasible
