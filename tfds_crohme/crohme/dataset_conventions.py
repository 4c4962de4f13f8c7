"""What every dataset of this package shares: features and file format.

Both `crohme` and `crohme_synthetic` store the same three features, so code
that reads one reads the other:

  image   uint8 ``[H, W, 1]``, PNG-encoded greyscale, white ink on black
  latex   the caption as space-separated CROHME tokens, e.g. ``\\frac { 1 } { x }``
  id      the sample name (unique within a split)

Images are handed to TFDS as encoded PNG bytes, which TFDS stores without
touching them; that is what lets a dataset be prepared without TensorFlow.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image
import tensorflow_datasets as tfds

# Random-access format, readable by `tfds.data_source` and grain without TF.
DEFAULT_FILE_FORMAT = "array_record"


def features() -> tfds.features.FeaturesDict:
  return tfds.features.FeaturesDict({
      "image": tfds.features.Image(shape=(None, None, 1), encoding_format="png"),
      "latex": tfds.features.Text(),
      "id": tfds.features.Text(),
  })


def encode_png(pixels: np.ndarray) -> bytes:
  """uint8 ``[H, W]`` -> greyscale PNG bytes (lossless, deterministic)."""
  if pixels.dtype != np.uint8 or pixels.ndim != 2:
    raise ValueError(f"Expected uint8 [H, W] pixels, got {pixels.dtype} {pixels.shape}.")
  buffer = io.BytesIO()
  Image.fromarray(pixels).save(buffer, format="png")
  return buffer.getvalue()


def set_default_file_format(builder: tfds.core.DatasetBuilder,
                            requested: str | None) -> None:
  """Makes `DEFAULT_FILE_FORMAT` the format of a builder not yet prepared.

  TFDS itself defaults to tfrecord and has no class attribute to change that;
  a format given by the caller, or restored from a prepared dataset, is kept.
  """
  restored = (builder.data_path / "dataset_info.json").exists()
  if requested is None and not restored:
    builder.info.set_file_format(DEFAULT_FILE_FORMAT, override=True)
