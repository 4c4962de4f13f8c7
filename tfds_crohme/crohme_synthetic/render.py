r"""Renders CROHME token strings as fake handwriting.

`render_expression` typesets the tokens with matplotlib's mathtext (its Agg
rasterizer; no TeX install needed) in a random math font and size, then makes
the print look hand-made: affine jitter (rotation, slant, scale), an elastic distortion, and
strokes redrawn with a pen: the glyphs are thinned to their skeleton and
re-inked 3 to 5 px wide, the width varying along the strokes. That mimics how
CROHME bitmaps were drawn from pen traces. The result looks like a CROHME
bitmap: uint8 ``[H, W]``, white strokes (255) on black (0), cropped to the ink
with a margin.

All randomness comes from the ``rng`` argument, so the same generator state
gives byte-identical pixels in any process (with the same matplotlib, FreeType
and Pillow versions).
"""

from __future__ import annotations

import functools
import re

# The mathtext parser rasterizes with FreeType directly: no figure, no GUI
# backend, so the process-wide matplotlib backend is left alone.
from matplotlib.font_manager import FontProperties
from matplotlib.mathtext import MathTextParser
import numpy as np
from PIL import Image

# mathtext font sets; sans ones look closest to pen strokes, so they come first
# and are drawn more often.
FONTSETS = ("dejavusans", "stixsans", "cm", "stix", "dejavuserif")
_FONTSET_WEIGHTS = np.array([3, 3, 2, 1, 1], np.float64) / 10
_COMMAND = re.compile(r"\\[A-Za-z]+")


def to_mathtext(tokens: str, display_fractions: bool = True) -> str:
  r"""CROHME tokens -> a mathtext string: ``x ^ { 2 }`` -> ``$x^{2}$``.

  Tokens are joined without spaces (mathtext reads ``x ^ {2}`` as ``x`` then a
  detached ``^``); a space stays only where a command meets a letter or digit
  (``\sin x``). ``\frac`` becomes ``\dfrac`` when ``display_fractions``, as
  handwritten fractions are full size.
  """
  parts = []
  for token in tokens.split():
    if parts and _COMMAND.fullmatch(parts[-1]) and token[0].isalnum():
      parts.append(" ")
    parts.append(r"\dfrac" if token == r"\frac" and display_fractions else token)
  if not parts:
    raise ValueError("Cannot render an empty token string.")
  return "$" + "".join(parts) + "$"


def render_expression(tokens: str, rng: np.random.Generator,
                      height: int | None = None) -> np.ndarray:
  """Renders a token string as a hand-made-looking bitmap.

  Args:
    tokens: space-separated CROHME tokens, e.g. ``\\frac { 1 } { x }``.
    rng: the source of every random choice (font, size, distortions).
    height: if given, the image is resized to this height (aspect ratio kept;
      the resized strokes then have grey edges). By default the natural size,
      mostly 40 to 150 px high, like CROHME.

  Returns:
    uint8 ``[H, W]``, strokes 255 on background 0.

  Raises:
    ValueError: naming the tokens, if mathtext cannot typeset them.
  """
  fontset = FONTSETS[int(rng.choice(len(FONTSETS), p=_FONTSET_WEIGHTS))]
  font_px = float(rng.uniform(40.0, 64.0))
  mathtext = to_mathtext(tokens, display_fractions=bool(rng.random() < 0.7))
  ink = rasterize(mathtext, fontset, font_px, tokens)
  ink = affine_jitter(ink, rng)
  ink = elastic_distortion(ink, rng)
  ink = crop_to_ink(ink >= 128, margin=1, tokens=tokens)
  pixels = pen_strokes(skeletonize(ink), rng)
  pixels = crop_to_ink(pixels, margin=int(rng.integers(4, 16)), tokens=tokens)
  if height is not None:
    width = max(1, round(pixels.shape[1] * height / pixels.shape[0]))
    pixels = np.asarray(Image.fromarray(pixels).resize((width, height), Image.BILINEAR))
  return pixels


@functools.cache
def _parser() -> MathTextParser:
  return MathTextParser("agg")


def rasterize(mathtext: str, fontset: str, font_px: float, tokens: str = "") -> np.ndarray:
  """mathtext -> uint8 ``[H, W]`` ink coverage (255 = ink), padded by 1/3 of H."""
  prop = FontProperties(size=font_px, math_fontfamily=fontset)
  try:
    ink = np.asarray(_parser().parse(mathtext, dpi=72, prop=prop).image, np.uint8)
  except ValueError as error:
    raise ValueError(f"mathtext cannot typeset {tokens or mathtext!r}: {error}") from error
  # Room for the jitter and distortion to move strokes without clipping them.
  pad = ink.shape[0] // 3 + 8
  return np.pad(ink, pad)


def affine_jitter(ink: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  """Small random rotation, slant (x shear) and anisotropic scale, about the centre."""
  angle = np.deg2rad(rng.uniform(-3.0, 3.0))
  shear = rng.uniform(-0.25, 0.25)
  scale_x, scale_y = rng.uniform(0.85, 1.15), rng.uniform(0.9, 1.1)
  rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
  forward = rotation @ np.array([[1.0, shear], [0.0, 1.0]]) @ np.diag([scale_x, scale_y])
  height, width = ink.shape
  corners = np.array([[0, 0], [width, 0], [0, height], [width, height]], np.float64)
  centre = np.array([width, height]) / 2
  moved = (corners - centre) @ forward.T
  out_width, out_height = np.ceil(moved.max(0) - moved.min(0)).astype(int) + 1
  out_centre = np.array([out_width, out_height]) / 2
  # PIL maps each output pixel back to the input: x_in = A^-1 (x_out - c_out) + c_in.
  inverse = np.linalg.inv(forward)
  offset = centre - inverse @ out_centre
  coefficients = (inverse[0, 0], inverse[0, 1], offset[0], inverse[1, 0], inverse[1, 1], offset[1])
  image = Image.fromarray(ink).transform(
      (int(out_width), int(out_height)), Image.AFFINE, coefficients, resample=Image.BILINEAR)
  return np.asarray(image)


def elastic_distortion(ink: np.ndarray, rng: np.random.Generator,
                       alpha_px: tuple[float, float] = (1.2, 3.0),
                       grid_px: tuple[float, float] = (14.0, 30.0)) -> np.ndarray:
  """Warps the image by a smooth random displacement field.

  The field is Gaussian noise on a coarse grid (spacing ``grid_px``), upsampled
  bicubically, so it bends strokes locally like a hand does; ``alpha_px`` bounds
  the noise's standard deviation in pixels.
  """
  height, width = ink.shape
  spacing = rng.uniform(*grid_px)
  alpha = rng.uniform(*alpha_px)
  grid_shape = (int(np.ceil(height / spacing)) + 2, int(np.ceil(width / spacing)) + 2)
  displacement = []
  for _ in range(2):
    coarse = (rng.standard_normal(grid_shape) * alpha).astype(np.float32)
    field = Image.fromarray(coarse, mode="F").resize((width, height), Image.BICUBIC)
    displacement.append(np.asarray(field))
  rows, columns = np.mgrid[0:height, 0:width].astype(np.float32)
  return bilinear_sample(ink, rows + displacement[0], columns + displacement[1])


def bilinear_sample(image: np.ndarray, rows: np.ndarray, columns: np.ndarray) -> np.ndarray:
  """``image[rows, columns]`` at fractional positions; outside is 0. uint8 ``[H, W]``."""
  height, width = image.shape
  padded = np.pad(image.astype(np.float32), 1)  # zero border for outside reads
  rows = np.clip(rows + 1, 0, height + 0.999)
  columns = np.clip(columns + 1, 0, width + 0.999)
  top, left = np.floor(rows).astype(np.int64), np.floor(columns).astype(np.int64)
  bottom, right = np.minimum(top + 1, height + 1), np.minimum(left + 1, width + 1)
  dy, dx = rows - top, columns - left
  value = (padded[top, left] * (1 - dy) * (1 - dx) + padded[top, right] * (1 - dy) * dx
           + padded[bottom, left] * dy * (1 - dx) + padded[bottom, right] * dy * dx)
  return np.clip(np.rint(value), 0, 255).astype(np.uint8)


def skeletonize(ink: np.ndarray) -> np.ndarray:
  """Thins bool ``[H, W]`` strokes to 1 px wide lines (Zhang-Suen thinning).

  Each pass removes, all at once, the boundary pixels whose removal keeps the
  strokes connected; it stops when nothing changes.
  """
  image = np.pad(ink.astype(np.uint8), 1)
  while True:
    changed = False
    for step in (0, 1):
      # The 8 neighbours, clockwise from north: P2 .. P9.
      p2, p3, p4 = image[:-2, 1:-1], image[:-2, 2:], image[1:-1, 2:]
      p5, p6, p7 = image[2:, 2:], image[2:, 1:-1], image[2:, :-2]
      p8, p9 = image[1:-1, :-2], image[:-2, :-2]
      ring = (p2, p3, p4, p5, p6, p7, p8, p9, p2)
      neighbours = sum(n.astype(np.int32) for n in ring[:-1])
      transitions = sum(((a == 0) & (b == 1)).astype(np.int32) for a, b in zip(ring, ring[1:]))
      if step == 0:
        corner = ((p2 & p4 & p6) == 0) & ((p4 & p6 & p8) == 0)
      else:
        corner = ((p2 & p4 & p8) == 0) & ((p2 & p6 & p8) == 0)
      remove = ((image[1:-1, 1:-1] == 1) & (neighbours >= 2) & (neighbours <= 6)
                & (transitions == 1) & corner)
      if remove.any():
        image[1:-1, 1:-1][remove] = 0
        changed = True
    if not changed:
      return image[1:-1, 1:-1].astype(bool)


def pen_strokes(skeleton: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  """Inks a 1 px skeleton with a round pen, 3 to 5 px wide. uint8 ``[H, W]``.

  A smooth random field picks where the pen is thick, so the width varies along
  the strokes as well as from sample to sample.
  """
  thin = _dilate(skeleton, radius=1.0)
  thick = _dilate(skeleton, radius=float(rng.choice([1.5, 2.0])))
  height, width = skeleton.shape
  spacing = rng.uniform(20.0, 60.0)
  coarse = rng.standard_normal((int(height / spacing) + 2, int(width / spacing) + 2))
  field = np.asarray(Image.fromarray(coarse.astype(np.float32), mode="F").resize(
      (width, height), Image.BILINEAR))
  use_thick = field < np.quantile(field, rng.uniform(0.0, 1.0))  # that share is thick
  return np.where(use_thick, thick, thin).astype(np.uint8) * 255


def _dilate(mask: np.ndarray, radius: float) -> np.ndarray:
  """Dilation of a bool mask by a disk of ``radius`` pixels."""
  reach = int(radius)
  padded = np.pad(mask, reach)
  height, width = mask.shape
  out = np.zeros_like(mask)
  for dy in range(-reach, reach + 1):
    for dx in range(-reach, reach + 1):
      if dy * dy + dx * dx <= radius * radius:
        out |= padded[reach + dy:reach + dy + height, reach + dx:reach + dx + width]
  return out


def crop_to_ink(pixels: np.ndarray, margin: int, tokens: str = "") -> np.ndarray:
  """The bounding box of the non-zero pixels, plus ``margin`` of background."""
  rows = np.flatnonzero(pixels.any(axis=1))
  columns = np.flatnonzero(pixels.any(axis=0))
  if rows.size == 0:
    raise ValueError(f"Rendering {tokens!r} left no ink.")
  cropped = pixels[rows[0]:rows[-1] + 1, columns[0]:columns[-1] + 1]
  return np.pad(cropped, margin)
