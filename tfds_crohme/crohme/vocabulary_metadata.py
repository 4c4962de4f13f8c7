"""The vocabulary stored with a prepared dataset, in its info metadata.

Both builders collect the distinct tokens of their train captions while
preparing and keep them, as the JSON of a vocabulary file (``vocab.json``:
``{"format": "hme_jax.vocab/v1", "tokens": [sorted tokens], "specials": []}``),
under the key ``"vocab"`` of a `tfds.core.MetadataDict`; TFDS writes it as
``metadata.json`` beside ``dataset_info.json`` and restores it whenever the
builder is loaded from disk, so the vocabulary travels with the prepared data.
The format is plain JSON so that this package needs nothing of the model
library; ``hme_jax.text.vocab.Vocabulary.from_json`` reads it.
"""

from __future__ import annotations

from collections.abc import Iterable

import tensorflow_datasets as tfds

METADATA_KEY = "vocab"
FORMAT = "hme_jax.vocab/v1"  # the vocabulary file format (hme_jax.text.vocab.FORMAT)
BLANK = "<blank>"            # the CTC blank, never a caption token (hme_jax.text.vocab.BLANK)


def vocabulary_json(train_captions: Iterable[str]) -> dict:
  """The vocabulary file content of space-separated captions: their distinct tokens, sorted."""
  tokens = {token for caption in train_captions for token in caption.split()} - {BLANK}
  return {"format": FORMAT, "tokens": sorted(tokens), "specials": []}


def store_vocabulary(info: tfds.core.DatasetInfo, train_captions: Iterable[str]) -> dict:
  """Builds the vocabulary of the train captions, puts it in ``info`` and returns it."""
  vocabulary = vocabulary_json(train_captions)
  if not vocabulary["tokens"]:
    raise ValueError(
        f"The train split of {info.full_name} has no tokens; cannot build a "
        "vocabulary.")
  info.metadata[METADATA_KEY] = vocabulary
  return vocabulary


def load_vocabulary(builder_or_info: tfds.core.DatasetBuilder | tfds.core.DatasetInfo) -> dict:
  """The vocabulary file content (a dict) of a prepared dataset (a builder or its info).

  Example::

    builder = tfds.builder("crohme", data_dir=data_dir)
    vocabulary = hme_jax.text.vocab.Vocabulary.from_json(tfds_crohme.load_vocabulary(builder))

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
  return dict(metadata[METADATA_KEY])
