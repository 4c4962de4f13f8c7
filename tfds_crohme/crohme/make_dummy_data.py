r"""Writes ``dummy_data/data.zip``: a tiny fake CROHME archive (CoMER layout).

The images are random scribbles drawn here (white strokes on black, 8-bit BMP
like the real archive), never real CROHME data; the captions are made-up token
strings in the CROHME convention. Run from anywhere:

  python -m tfds_crohme.crohme.make_dummy_data
"""

from __future__ import annotations

import io
import pathlib
import zipfile

import numpy as np
from PIL import Image, ImageDraw

# split -> [(name, caption)]; train also owns every token of the other splits.
SAMPLES = {
    "train": [
        ("dummy_train_0", r"x ^ { 2 } + 1"),
        ("dummy_train_1", r"\frac { a } { b }"),
        ("dummy_train_2", r"\sqrt { y } = 3"),
        ("dummy_train_3", r"\sin ( x ) - 2"),
    ],
    "2014": [
        ("dummy_2014_0", r"a + b"),
        ("dummy_2014_1", r"\frac { 1 } { x }"),
    ],
    "2016": [
        ("dummy_2016_0", r"y ^ { 3 }"),
        ("dummy_2016_1", r"\sqrt { 2 }"),
    ],
}


def scribble_bmp(rng: np.random.Generator, height: int = 16, width: int = 40) -> bytes:
  """A few random white strokes on black, as 8-bit greyscale BMP bytes."""
  image = Image.new("L", (width, height), 0)
  draw = ImageDraw.Draw(image)
  for _ in range(3):
    points = [(int(rng.integers(0, width)), int(rng.integers(0, height)))
              for _ in range(3)]
    draw.line(points, fill=255, width=2)
  buffer = io.BytesIO()
  image.save(buffer, format="bmp")
  return buffer.getvalue()


def write_archive(path: pathlib.Path, samples=SAMPLES, seed: int = 0) -> None:
  """Writes a CoMER-layout zip of ``samples`` ({split: [(name, caption)]})."""
  rng = np.random.default_rng(seed)
  path.parent.mkdir(parents=True, exist_ok=True)
  with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as archive:
    for split, entries in samples.items():
      captions = "".join(f"{name}\t{caption}\n" for name, caption in entries)
      _write(archive, f"data/{split}/caption.txt", captions.encode())
      for name, _ in entries:
        _write(archive, f"data/{split}/img/{name}.bmp", scribble_bmp(rng))


def _write(archive: zipfile.ZipFile, name: str, data: bytes) -> None:
  # A fixed timestamp keeps the archive byte-identical from run to run.
  info = zipfile.ZipInfo(name, date_time=(2020, 1, 1, 0, 0, 0))
  info.compress_type = zipfile.ZIP_DEFLATED
  archive.writestr(info, data)


def main() -> None:
  path = pathlib.Path(__file__).parent / "dummy_data" / "data.zip"
  write_archive(path)
  print(f"Wrote {path} ({path.stat().st_size} bytes)")


if __name__ == "__main__":
  main()
