"""The vocabulary stored with a prepared dataset, in its info metadata.

Both builders compute `hme_jax.vocab.Vocabulary.from_captions` over their
train captions while preparing, and keep ``Vocabulary.to_json()`` under the key
``"vocab"`` of a `tfds.core.MetadataDict`; TFDS writes it as ``metadata.json``
beside ``dataset_info.json`` and restores it whenever the builder is loaded from
disk, so the vocabulary travels with the prepared data.
"""

from __future__ import annotations

from collections.abc import Iterable

import tensorflow_datasets as tfds

from hme_jax.vocab import Vocabulary

METADATA_KEY = "vocab"


def store_vocabulary(info: tfds.core.DatasetInfo, train_captions: Iterable[str]
                     ) -> Vocabulary:
  """Builds the vocabulary from the train captions and puts it in ``info``."""
  vocabulary = Vocabulary.from_captions(train_captions)
  if not vocabulary.num_tokens:
    raise ValueError(
        f"The train split of {info.full_name} has no tokens; cannot build a "
        "vocabulary.")
  info.metadata[METADATA_KEY] = vocabulary.to_json()
  return vocabulary


def load_vocabulary(builder_or_info: tfds.core.DatasetBuilder | tfds.core.DatasetInfo
                    ) -> Vocabulary:
  """The vocabulary of a prepared dataset (a builder or its info).

  Example::

    builder = tfds.builder("crohme", data_dir=data_dir)
    vocabulary = tfds_crohme.load_vocabulary(builder)   # 110 classes on CROHME

  Raises:
    ValueError: if the dataset was not prepared by these builders (or not
      prepared at all), so its info has no vocabulary.
  """
  info = getattr(builder_or_info, "info", builder_or_info)
  metadata = info.metadata
  if metadata is None or METADATA_KEY not in metadata:
    raise ValueError(
        f"Dataset {info.full_name} (at {info.data_dir}) has no vocabulary in its "
        f"metadata (key {METADATA_KEY!r}). Prepare it first, e.g. "
        f"tfds.builder({info.name!r}, data_dir=...).download_and_prepare().")
  return Vocabulary.from_json(dict(metadata[METADATA_KEY]))
