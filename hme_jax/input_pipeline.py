"""TF-free input pipeline: TFDS array_record data sources, batched with Grain.

A batch is a dict of NumPy arrays:

  images         uint8   [B, H, W, 1]  white ink on black, right-padded with 0;
                                        W is one of ``config.input.bucket_widths``
  image_widths   int32   [B]           content width before padding
  labels         int32   [B, L]        token ids, 0-padded; L is a power of two >= 16
  label_lengths  int32   [B]
  ctc_feasible   float32 [B]           0 where the label cannot fit the image's CTC
                                        frames (the loss masks these; they are counted)
  sample_mask    float32 [B]           0 for the filler rows of an incomplete eval batch
  ids            str     [B]           sample ids ('' for filler rows); stays on host

Training is shuffled, augmented and repeated for all epochs in one Grain
pipeline, so that the iterator state (saved in every checkpoint) resumes the
exact sequence of batches. Each JAX process reads only its own shard.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import grain
import jax
import ml_collections
import numpy as np

from hme_jax import ctc, preprocessing
from hme_jax.vocab import Vocabulary

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
  return tfds_crohme.load_vocabulary(builder)


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
  """``{image [H, W, 1], latex, id}`` -> ``{image [H, W], labels [L], id}``."""

  vocab: Vocabulary

  def map(self, record: dict[str, Any]) -> dict[str, Any]:
    sample_id = _as_str(record["id"])
    return {
        "image": np.asarray(record["image"])[..., 0],
        "labels": self.vocab.encode(_as_str(record["latex"]), sample_id=sample_id),
        "id": sample_id,
    }


@dataclasses.dataclass(frozen=True)
class Augment(grain.transforms.RandomMap):
  augment_config: ml_collections.ConfigDict

  def random_map(self, example: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
    return {**example, "image": preprocessing.augment(example["image"], rng, self.augment_config)}


@dataclasses.dataclass(frozen=True)
class FitImage(grain.transforms.Map):
  """Crops to the ink and resizes to the model's height; flags CTC-infeasible labels."""

  height: int
  max_width: int
  ctc_width_downsample: int | None  # None for models without a CTC constraint

  def map(self, example: dict[str, Any]) -> dict[str, Any]:
    image = preprocessing.crop_to_ink(example["image"])
    image = preprocessing.fit_to_height(image, self.height, self.max_width)
    feasible = True
    if self.ctc_width_downsample:
      frames = ctc.frame_lengths(image.shape[1], self.ctc_width_downsample)
      feasible = ctc.min_ctc_frames(example["labels"]) <= frames
    return {**example, "image": image, "ctc_feasible": feasible}


@dataclasses.dataclass(frozen=True)
class PadBatch:
  """Stacks examples into a bucketed batch (see the module docstring).

  ``batch_size`` rows are always returned: a short final batch is filled with
  masked rows, so the compiled step sees a static batch size.
  """

  batch_size: int
  bucket_widths: tuple[int, ...]

  def __call__(self, examples: list[dict[str, Any]]) -> dict[str, np.ndarray]:
    widths = [example["image"].shape[1] for example in examples]
    bucket_width = next((b for b in self.bucket_widths if b >= max(widths)), max(widths))
    longest = max(len(example["labels"]) for example in examples)
    label_bucket = max(MIN_LABEL_BUCKET, 1 << max(longest - 1, 0).bit_length())
    height = examples[0]["image"].shape[0]
    images = np.zeros((self.batch_size, height, bucket_width, 1), np.uint8)
    labels = np.zeros((self.batch_size, label_bucket), np.int32)
    batch = {
        "image_widths": np.zeros(self.batch_size, np.int32),
        "label_lengths": np.zeros(self.batch_size, np.int32),
        "ctc_feasible": np.zeros(self.batch_size, np.float32),
        "sample_mask": np.zeros(self.batch_size, np.float32),
        "ids": np.full(self.batch_size, "", dtype=object),
    }
    for row, example in enumerate(examples):
      image, label = example["image"], example["labels"]
      images[row, :, : image.shape[1], 0] = image
      labels[row, : len(label)] = label
      batch["image_widths"][row] = image.shape[1]
      batch["label_lengths"][row] = len(label)
      batch["ctc_feasible"][row] = example["ctc_feasible"]
      batch["sample_mask"][row] = 1.0
      batch["ids"][row] = example["id"]
    return {"images": images, "labels": labels, **batch}


def dummy_batch(config, batch_size: int) -> dict[str, np.ndarray]:
  """A batch of blank images in the pipeline's layout (for shapes: init, restore)."""
  example = {"image": np.zeros((config.input.height, 1), np.uint8),
             "labels": np.zeros(0, np.int32), "id": "", "ctc_feasible": True}
  batch = PadBatch(batch_size, tuple(config.input.bucket_widths))([example])
  return {k: v for k, v in batch.items() if k != "ids"}


# --- pipelines -------------------------------------------------------------


def per_process_batch_size(global_batch_size: int) -> int:
  if global_batch_size % jax.process_count():
    raise ValueError(f"batch_size {global_batch_size} is not divisible by the "
                     f"{jax.process_count()} JAX processes.")
  return global_batch_size // jax.process_count()


def _ctc_width_downsample(config) -> int | None:
  return config.model.width_downsample if config.model.name == "crnn" else None


def _check_buckets(config) -> None:
  buckets = tuple(config.input.bucket_widths)
  if list(buckets) != sorted(buckets) or buckets[-1] < config.input.max_width:
    raise ValueError(f"config.input.bucket_widths={buckets} must be increasing and end at or "
                     f"above config.input.max_width={config.input.max_width}.")
  step = _ctc_width_downsample(config)
  if step and any(b % step for b in buckets):
    raise ValueError(f"Every bucket width {buckets} must be a multiple of "
                     f"config.model.width_downsample={step}.")


def _shard_for_process(dataset: grain.MapDataset, max_samples: int) -> grain.MapDataset:
  if max_samples:
    dataset = dataset[:max_samples]
  return dataset[jax.process_index()::jax.process_count()]


def train_dataset(config, source, vocab: Vocabulary) -> grain.MapDataset:
  """Shuffled, augmented batches for all epochs, as a random-access MapDataset.

  Only full batches are made (``drop_remainder``), so every epoch has
  ``steps_per_epoch(config, len(source))`` steps.
  """
  _check_buckets(config)
  dataset = _shard_for_process(grain.MapDataset.source(source), config.dataset.max_train_samples)
  dataset = dataset.seed(config.seed).shuffle().repeat(config.train.num_epochs)
  dataset = dataset.map(EncodeLabel(vocab))
  if config.augment.enabled:
    dataset = dataset.random_map(Augment(config.augment))
  dataset = dataset.map(FitImage(config.input.height, config.input.max_width,
                                 _ctc_width_downsample(config)))
  batch_size = per_process_batch_size(config.train.batch_size)
  return dataset.batch(batch_size, drop_remainder=True,
                       batch_fn=PadBatch(batch_size, tuple(config.input.bucket_widths)))


def eval_dataset(config, source, vocab: Vocabulary, batch_size: int | None = None,
                 max_samples: int | None = None) -> grain.MapDataset:
  """Every sample of a split once, in order, in full (masked) batches."""
  _check_buckets(config)
  if max_samples is None:
    max_samples = config.dataset.max_eval_samples
  dataset = _shard_for_process(grain.MapDataset.source(source), max_samples)
  dataset = dataset.map(EncodeLabel(vocab))
  dataset = dataset.map(FitImage(config.input.height, config.input.max_width,
                                 _ctc_width_downsample(config)))
  batch_size = per_process_batch_size(batch_size or config.eval.batch_size)
  return dataset.batch(batch_size, batch_fn=PadBatch(batch_size, tuple(config.input.bucket_widths)))


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
  step = _ctc_width_downsample(config)
  if not step:
    return 0, []
  dataset = _shard_for_process(grain.MapDataset.source(source), max_samples)
  dataset = dataset.map(EncodeLabel(vocab)).map(
      FitImage(config.input.height, config.input.max_width, step))
  infeasible = [example["id"] for example in dataset if not example["ctc_feasible"]]
  return len(infeasible), infeasible
