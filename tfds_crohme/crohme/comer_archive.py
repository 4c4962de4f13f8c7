"""Reads a CROHME archive in the CoMER ``data.zip`` layout.

Layout (as distributed by BTTR, CoMER, ICAL, TAMER, PosFormer)::

  data/<split>/caption.txt        one line per expression: "<name>\t<tok> <tok> ..."
  data/<split>/img/<name>.bmp     8-bit greyscale bitmap, white ink (255) on black (0)

Every problem with the content (an image that does not decode, a caption
without an image, an image without a caption, an empty or duplicated caption)
raises `ArchiveError` naming the split and the sample; nothing is skipped.
"""

from __future__ import annotations

import io
import os
import re
import zipfile
from collections.abc import Iterator

import numpy as np
from PIL import Image

from tfds_crohme.crohme import dataset_conventions

# Splits of the public archive in the order they are reported; an archive may
# hold any subset (the copy in ../shared has no 2019).
KNOWN_SPLITS = ("train", "2014", "2016", "2019")
IMAGE_SUFFIX = ".bmp"
_CAPTION_PATH = re.compile(r"^data/([^/]+)/caption\.txt$")


class ArchiveError(ValueError):
  """The archive does not hold what the CoMER layout promises."""


def list_splits(archive: zipfile.ZipFile) -> list[str]:
  """Names of the splits present (each ``data/<split>/caption.txt``).

  The known splits come first in `KNOWN_SPLITS` order, any other ones after,
  sorted, so that nothing present is ignored.
  """
  found = {m.group(1) for m in map(_CAPTION_PATH.match, archive.namelist()) if m}
  known = [split for split in KNOWN_SPLITS if split in found]
  return known + sorted(found - set(known))


def read_captions(archive: zipfile.ZipFile, split: str) -> dict[str, str]:
  """``{name: "tok tok ..."}`` of one split, in file order.

  Raises:
    ArchiveError: for a line without a tab or without tokens, or a name that
      occurs twice.
  """
  path = f"data/{split}/caption.txt"
  try:
    text = archive.read(path).decode("utf-8")
  except KeyError:
    raise ArchiveError(f"{_where(archive)} has no {path}.") from None
  captions = {}
  for line_number, line in enumerate(text.splitlines(), start=1):
    if not line.strip():
      continue  # blank lines (e.g. a trailing newline) carry no sample
    name, _, caption = line.partition("\t")
    name, caption = name.strip(), " ".join(caption.split())
    if not caption:
      raise ArchiveError(
          f"Empty caption for sample {name!r} in split {split!r} ({path} line "
          f"{line_number}); each line must be '<name>\\t<tokens>'.")
    if name in captions:
      raise ArchiveError(
          f"Sample {name!r} appears twice in {path} (line {line_number}).")
    captions[name] = caption
  return captions


def decode_image(data: bytes, sample_id: str) -> np.ndarray:
  """Image file bytes -> uint8 ``[H, W]`` pixels, unchanged (ink bright)."""
  try:
    with Image.open(io.BytesIO(data)) as image:
      image.load()
      pixels = np.asarray(image.convert("L") if image.mode != "L" else image)
  except Exception as error:  # PIL raises several types for broken files
    raise ArchiveError(
        f"Image of sample {sample_id!r} cannot be decoded: {error}") from error
  if pixels.ndim != 2 or 0 in pixels.shape:
    raise ArchiveError(
        f"Image of sample {sample_id!r} is empty (shape {pixels.shape}).")
  return pixels


def iter_samples(archive_path: str | os.PathLike, split: str
                 ) -> Iterator[tuple[str, bytes, str]]:
  """Yields ``(name, png_bytes, caption)`` for every sample of one split.

  Raises:
    ArchiveError: naming the sample, for an image that is missing or broken,
      an image without a caption, or a bad caption line.
  """
  with zipfile.ZipFile(archive_path) as archive:
    captions = read_captions(archive, split)
    image_dir = f"data/{split}/img/"
    images = {
        name[len(image_dir):-len(IMAGE_SUFFIX)]: name
        for name in archive.namelist()
        if name.startswith(image_dir) and name.endswith(IMAGE_SUFFIX)}
    orphans = sorted(set(images) - set(captions))
    if orphans:
      raise ArchiveError(
          f"{len(orphans)} image(s) of split {split!r} have no caption in "
          f"data/{split}/caption.txt, e.g. sample {orphans[0]!r}.")
    for name, caption in captions.items():
      if name not in images:
        raise ArchiveError(
            f"Sample {name!r} of split {split!r} has a caption but no image "
            f"{image_dir}{name}{IMAGE_SUFFIX} in {_where(archive)}.")
      pixels = decode_image(archive.read(images[name]), sample_id=name)
      yield name, dataset_conventions.encode_png(pixels), caption


def _where(archive: zipfile.ZipFile) -> str:
  return str(archive.filename or "the archive")
