"""Small composable image ops shared by training, evaluation and prediction.

Every image inside the library is greyscale ``uint8 [H, W]`` with WHITE ink on a
BLACK background (the CROHME archive's convention). ``normalise`` turns any
greyscale image (a photo, a scan, a canvas drawing, a dataset bitmap; either
polarity) into such ink: background and illumination removed, cropped, and,
given the training data's ``InkStatistics``, scaled and re-inked to the training
data's symbol size and stroke width. Training, ``evaluate``, ``predict`` and the
web app all go through ``normalise`` and then ``fit_image`` so that a model sees
the same geometry everywhere: either every image scaled to one height
(``config.input.height > 0``) or each image at its native scale, bounded by
``config.input.max_height`` x ``config.input.max_width`` (``height = 0``).
"""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np
from PIL import Image

from hme_jax.data import paper

INK_THRESHOLD = 32  # a pixel is ink above this grey level (after polarity fix)


def to_white_on_black(image: np.ndarray) -> np.ndarray:
  """Detects the polarity and returns white ink on black, ``uint8 [H, W]``.

  Handwriting covers a small part of the page, so the background is the
  majority: the median of the border pixels tells the background level.
  """
  border = np.concatenate([image[0], image[-1], image[:, 0], image[:, -1]])
  if np.median(border) > 127:
    return 255 - image
  return image


def crop_to_ink(image: np.ndarray, margin: int = 2) -> np.ndarray:
  """Crops ``uint8 [H, W]`` (white on black) to its ink plus ``margin`` pixels.

  An image without ink is returned unchanged.
  """
  rows = np.flatnonzero((image > INK_THRESHOLD).any(axis=1))
  cols = np.flatnonzero((image > INK_THRESHOLD).any(axis=0))
  if rows.size == 0:
    return image
  top, bottom = max(rows[0] - margin, 0), min(rows[-1] + margin + 1, image.shape[0])
  left, right = max(cols[0] - margin, 0), min(cols[-1] + margin + 1, image.shape[1])
  return image[top:bottom, left:right]


def height_fit_shape(shape: tuple[int, int], height: int, max_width: int) -> tuple[int, int]:
  """The ``(height, width)`` that ``fit_to_height`` gives an ``[h, w]`` image."""
  h, w = shape
  return height, int(np.clip(round(w * height / max(h, 1)), 1, max_width))


def fit_to_height(image: np.ndarray, height: int, max_width: int) -> np.ndarray:
  """Resizes to ``height`` keeping the aspect ratio; wider results are squeezed to ``max_width``.

  Returns ``uint8 [height, w]`` with ``1 <= w <= max_width``.
  """
  return _resize(image, height_fit_shape(image.shape, height, max_width))


def _resize(image: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
  if image.shape == tuple(shape):
    return image
  return np.asarray(Image.fromarray(image).resize(shape[::-1], Image.Resampling.BILINEAR))


MIN_NATIVE_SIZE = 16  # native-scale images are enlarged to at least this many pixels a side


def native_fit_shape(shape: tuple[int, int], max_height: int, max_width: int,
                     min_size: int = MIN_NATIVE_SIZE) -> tuple[int, int]:
  """The ``(height, width)`` that ``fit_within`` gives an ``[h, w]`` image."""
  h, w = shape
  scale = min(1.0, max_height / h, max_width / w)
  scale = max(scale, min(max(min_size / h, min_size / w), max_height / h, max_width / w))
  return (int(np.clip(round(h * scale), 1, max_height)),
          int(np.clip(round(w * scale), 1, max_width)))


def fit_within(image: np.ndarray, max_height: int, max_width: int,
               min_size: int = MIN_NATIVE_SIZE) -> np.ndarray:
  """Keeps the native scale, shrinking (aspect kept) only what exceeds ``max_height x max_width``.

  Images smaller than ``min_size`` on a side are enlarged to it (a strided
  encoder needs a few pixels to see anything). Returns ``uint8 [h, w]`` with
  ``h <= max_height`` and ``w <= max_width``.
  """
  return _resize(image, native_fit_shape(image.shape, max_height, max_width, min_size))


def fit_shape(shape: tuple[int, int], input_config) -> tuple[int, int]:
  """The ``(height, width)`` that ``fit_image`` gives an image of ``shape``."""
  if input_config.height:
    return height_fit_shape(shape, input_config.height, input_config.max_width)
  return native_fit_shape(shape, input_config.max_height, input_config.max_width)


def fit_image(image: np.ndarray, input_config) -> np.ndarray:
  """The model's input geometry of ``config.input`` (see the module docstring)."""
  return _resize(image, fit_shape(image.shape, input_config))


# --- normalisation: any greyscale image -> ink like the training data's -------
# OpenCV does the pixel work. A dataset bitmap (ink on one flat background level)
# comes out exactly as ``crop_to_ink`` cuts it, so trained models see what they
# were trained on; a photo or a scan loses its paper, light, ruling and specks.

MAX_SIDE = 4096           # larger images are shrunk to this first (CROHME's widest: 2,116 px)
BACKGROUND_SIDE = 256     # the paper's brightness is estimated at this resolution
FLAT_LEVELS = 4           # a background within this many grey levels (98% of it) is one level
MIN_INK_CONTRAST = 12     # ink fainter than this against the paper (grey levels) is no ink
RULING_LENGTH = 0.6       # an edge-to-edge line inked over this share of its length is ruling
FAINT_INK = 48            # ruling is looked for among pixels above this grey level (after polarity)


class NoInkError(ValueError):
  """The image holds no ink to read (blank, one colour, or nothing but faint specks)."""


@dataclasses.dataclass(frozen=True)
class InkStatistics:
  """What the training data's ink looks like (``config.normalise``, ``measure_statistics``).

  In pixels over the training split's images (``ink_measures``):
  ``stroke_width`` is ``(min, median, max)``: an image whose strokes lie in
  that range is left at its scale; ``symbol_height`` is ``(5th percentile,
  median, 95th percentile)``. See ``training_scale``.
  """

  stroke_width: tuple[float, float, float]
  symbol_height: tuple[float, float, float]

  @classmethod
  def from_config(cls, config) -> "InkStatistics":
    """``config.normalise``; a config saved before it existed gets CROHME's."""
    normalise_config = config.get("normalise")
    if not normalise_config:
      return CROHME_TRAIN
    return cls(tuple(float(v) for v in normalise_config.stroke_width),
               tuple(float(v) for v in normalise_config.symbol_height))


# CROHME train (8,835 bitmaps), measured by ``python benchmarks/ink_statistics.py``.
CROHME_TRAIN = InkStatistics(stroke_width=(2.88, 3.30, 4.58), symbol_height=(23.5, 31.5, 43.0))


def ink_measures(ink: np.ndarray) -> tuple[float, float]:
  """``(stroke width, symbol height)`` in pixels of white-on-black ``uint8 [H, W]`` ink.

  Stroke width: twice the ink's area over the length of its outlines (exact for
  long strokes of one width). Symbol height: the median height of the ink's
  8-connected pieces, leaving out those no taller than 2.5 stroke widths (minus
  signs, fraction bars, dots); NaN when there is none.
  """
  mask = (ink > 127).astype(np.uint8)
  contours, _ = cv2.findContours(mask, cv2.RETR_LIST, cv2.CHAIN_APPROX_NONE)
  outline = sum(cv2.arcLength(contour, True) for contour in contours)
  stroke_width = 2.0 * float(mask.sum()) / max(outline, 1.0)
  # Pieces a third of a stroke apart count as one (a thin pen breaks strokes).
  reach = max(1, round(stroke_width / 3))
  joined = cv2.dilate(mask, np.ones((2 * reach + 1, 2 * reach + 1), np.uint8))
  heights = cv2.connectedComponentsWithStats(joined, connectivity=8)[2][1:, cv2.CC_STAT_HEIGHT]
  heights = heights - 2 * reach
  tall = heights[heights >= 2.5 * stroke_width]
  return stroke_width, float(np.median(tall)) if tall.size else float("nan")


def measure_statistics(images) -> InkStatistics:
  """The ``InkStatistics`` of white-on-black ink images (a training split)."""
  measures = np.array([ink_measures(image) for image in images], np.float64).reshape(-1, 2)
  stroke_widths, symbol_heights = (values[np.isfinite(values)] for values in measures.T)
  def rounded(low, median, high):  # outwards, so that the split lies inside its own range
    return (float(np.floor(low * 100) / 100), round(float(median), 2),
            float(np.ceil(high * 100) / 100))
  return InkStatistics(
      rounded(stroke_widths.min(), np.median(stroke_widths), stroke_widths.max()),
      rounded(*np.percentile(symbol_heights, (5, 50, 95))))


def _resize_by(image: np.ndarray, factor: float) -> np.ndarray:
  h, w = image.shape
  shape = (max(1, round(w * factor)), max(1, round(h * factor)))
  return cv2.resize(image, shape, interpolation=cv2.INTER_AREA if factor < 1 else cv2.INTER_LINEAR)


def _flat_level(values: np.ndarray) -> float | None:
  """The median of ``values`` if (nearly) all of them lie within ``FLAT_LEVELS`` of it."""
  median = float(np.median(values))
  return median if np.mean(np.abs(values.astype(np.float32) - median) <= FLAT_LEVELS) >= 0.98 \
      else None


def paper_level(gray: np.ndarray) -> np.ndarray | float:
  """The paper's brightness under ``uint8 [H, W]``: one level when it is flat (all round the
  border, where writing rarely reaches, or everywhere), else ``float32 [H, W]`` (a median
  filter far wider than strokes, at low resolution, which follows uneven light and shadows)."""
  border = _flat_level(np.concatenate([gray[0], gray[-1], gray[:, 0], gray[:, -1]]))
  if border is not None:
    return border
  h, w = gray.shape
  small = _resize_by(gray, BACKGROUND_SIDE / max(h, w)) if max(h, w) > BACKGROUND_SIDE else gray
  kernel = max(min(small.shape) // 2, max(small.shape) // 8) | 1
  if min(small.shape) < 3 or kernel < 3:
    return float(np.median(gray))
  level = cv2.medianBlur(small, kernel)
  if (flat := _flat_level(level)) is not None:
    return flat
  level = cv2.GaussianBlur(level.astype(np.float32), (0, 0), kernel / 4)
  return cv2.resize(level, (w, h), interpolation=cv2.INTER_LINEAR)


def _robust_sigma(values: np.ndarray) -> float:
  """1.4826 x the median absolute deviation (a standard deviation that ignores the ink), from
  at most 65,536 evenly spread values."""
  values = values.reshape(-1)[::max(1, values.size // 65536)]
  return 1.4826 * float(np.median(np.abs(values - np.median(values))))


def remove_background(gray: np.ndarray, stretch: bool = True) -> np.ndarray:
  """Greyscale ``uint8 [H, W]`` of either polarity -> white ink on black ``uint8 [H, W]``.

  The ink is what departs from the paper's level (``paper_level``); its
  polarity is the side (darker or lighter) that holds more of the strong
  departures. Dark ink is measured as the share of the paper's light it takes
  (so a shadow dims paper and ink alike and changes nothing). Paper noise (3
  robust standard deviations) goes to 0, the ink's 90th-percentile contrast to
  255; without ``stretch``, a clean digital image (one flat, noiseless paper
  level, ink of at least half contrast: a dataset bitmap) keeps its grey
  levels: it is returned as it is, or inverted.

  Raises:
    NoInkError: no ink stands out of the paper.
  """
  level = np.float32(paper_level(gray))
  departure = gray.astype(np.float32) - level
  spread = _robust_sigma(departure)
  strong = np.abs(departure) > max(4.0 * spread, MIN_INK_CONTRAST)
  lighter = float(departure[strong & (departure > 0)].sum())
  darker = -float(departure[strong & (departure < 0)].sum())
  signed = departure if lighter >= darker else -departure * (255.0 / np.maximum(level, 32.0))
  noise = _robust_sigma(signed)
  ink = np.maximum(signed, 0.0)
  floor = 3.0 * noise
  levels = np.clip(ink, 0, 255).astype(np.uint8)
  otsu, _ = cv2.threshold(levels, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
  solid = ink[ink > max(otsu, floor)]
  contrast = float(np.percentile(solid[::max(1, solid.size // 65536)], 90)) - floor \
      if solid.size else 0.0
  if not strong.any() or contrast < MIN_INK_CONTRAST:
    raise NoInkError(
        f"The image ({gray.shape[1]}x{gray.shape[0]} px) has no ink to read: every pixel has "
        "(nearly) the paper's colour, so nothing is written on it (a blank page, or a picture "
        "that is all one colour). Write or draw the formula and try again.")
  if not stretch and floor == 0 and np.ndim(level) == 0 and contrast >= 128:
    contrast = 255.0
  return np.clip(np.rint((ink - floor) * (255.0 / contrast)), 0, 255).astype(np.uint8)


RULING_SEARCH_SIDE = 1024  # lines are searched for at this resolution at most


def _straight_lines(ink: np.ndarray, horizontal: bool) -> list[tuple[int, int, int, int]]:
  """``(x0, y0, x1, y1)`` of the straight lines of ``ink`` (within 10 degrees of
  horizontal, or of vertical) that run from edge to edge, their pixels above
  ``FAINT_INK`` covering ``RULING_LENGTH`` of the way.

  A Hough transform over those angles only, on ``_along``'s mask shrunk to
  ``RULING_SEARCH_SIDE``; the cover is checked at full resolution.
  """
  h, w = ink.shape
  span = w if horizontal else h
  if span < 32:
    return []
  factor = min(1.0, RULING_SEARCH_SIDE / max(h, w))
  search = _along(ink, horizontal)
  small = search if factor == 1.0 else (_resize_by(search * 255, factor) > 0).astype(np.uint8)
  mask = (ink > FAINT_INK).astype(np.uint8)
  votes = int(RULING_LENGTH * span * factor)
  tilt = np.deg2rad(10.0)
  ranges = ([(np.pi / 2 - tilt, np.pi / 2 + tilt)] if horizontal
            else [(0.0, tilt), (np.pi - tilt, np.pi)])
  found = [cv2.HoughLines(small, 1, np.pi / 720, votes, min_theta=low, max_theta=high)
           for low, high in ranges]
  candidates = np.concatenate([f.reshape(-1, 2) for f in found if f is not None] or
                              [np.zeros((0, 2))])
  along = np.arange(span)
  limit = h if horizontal else w

  def on_mask(across: np.ndarray) -> np.ndarray:
    """``bool [..., span]``: whether the line through ``across [..., span]`` is on ink."""
    inside = (across >= 0) & (across < limit)
    across = np.clip(across, 0, limit - 1)
    return inside & ((mask[across, along] if horizontal else mask[along, across]) > 0)

  # One candidate per 2 px of distance and degree of angle: a thick line gives many.
  candidates = {(int(rho / factor) // 2, int(np.degrees(theta))): (rho, theta)
                for rho, theta in candidates}.values()
  segments = []
  for rho, theta in candidates:
    cos, sin = np.cos(theta), np.sin(theta)
    # The line's pixels: y of each x for a horizontal line, x of each y for a vertical one.
    across = np.rint((rho / factor - along * (cos if horizontal else sin))
                     / (sin if horizontal else cos)).astype(np.int64)
    # The shrunk image placed it to within 1 / factor px: shift it onto its ink.
    shifts = np.arange(-int(np.ceil(1 / factor)) - 2, int(np.ceil(1 / factor)) + 3)
    cover = on_mask(across[None] + shifts[:, None]).sum(axis=1)
    across = across + int(np.median(shifts[cover >= 0.9 * cover.max()]))  # the line's middle
    covered = on_mask(across[None] + np.arange(-2, 3)[:, None]).any(axis=0)
    if covered.mean() < RULING_LENGTH:
      continue
    first, last = np.flatnonzero(covered)[[0, -1]]
    if first > 0.03 * span or last < 0.97 * span - 1:  # ruling runs off the page's edges
      continue
    if horizontal:
      segments.append((int(first), int(across[first]), int(last), int(across[last])))
    else:
      segments.append((int(across[first]), int(first), int(across[last]), int(last)))
  return segments


def _half_thickness(mask: np.ndarray, lines: np.ndarray) -> int:
  """Pixels from the middle of ``lines`` (drawn 1 px wide) to the edge of their ink in ``mask``."""
  inside = cv2.distanceTransform(mask, cv2.DIST_L2, 3)[lines > 0]
  return int(np.ceil(np.percentile(inside, 90))) if inside.size else 1


def _draw(shape: tuple[int, int], segments) -> np.ndarray:
  lines = np.zeros(shape, np.uint8)
  for x0, y0, x1, y1 in segments:
    cv2.line(lines, (x0, y0), (x1, y1), 1, 1)
  return lines


def _along(ink: np.ndarray, horizontal: bool) -> np.ndarray:
  """``uint8 [H, W]`` 1 where ``ink``, averaged along one direction over 2% of the image,
  is above ``FAINT_INK`` / 4: lines broken by noise join up, writing across thins out."""
  span = ink.shape[1] if horizontal else ink.shape[0]
  length = max(3, span // 50)
  smoothed = cv2.blur(ink, (length, 1) if horizontal else (1, length))  # (width, height)
  return (smoothed > FAINT_INK // 4).astype(np.uint8)


def _ruling(ink: np.ndarray) -> dict[bool, np.ndarray]:
  """``{horizontal: uint8 [H, W]}``, 1 on the paper ruling of ``ink`` (see ``remove_ruling``)."""
  mask = (ink > FAINT_INK).astype(np.uint8)
  candidates = {horizontal: _straight_lines(ink, horizontal) for horizontal in (True, False)}
  if not any(candidates.values()):
    return {}
  lines = _draw(mask.shape, candidates[True] + candidates[False])
  reach = 2 * _half_thickness(mask, lines) + 3
  others = mask & (cv2.dilate(lines, np.ones((reach, reach), np.uint8)) == 0)
  # The writing: the other pieces, less any half as long as the page (lines not found).
  _, labels, stats, _ = cv2.connectedComponentsWithStats(others, connectivity=8)
  short = ((stats[:, cv2.CC_STAT_WIDTH] < mask.shape[1] / 2)
           & (stats[:, cv2.CC_STAT_HEIGHT] < mask.shape[0] / 2))
  short[0] = False
  ys, xs = np.nonzero(short[labels])
  ruling = {}
  for horizontal, segments in candidates.items():
    # Writing ends where the page goes on: ruling runs past the writing at both ends (its
    # extent leaves out the 1% of stray pixels at either side).
    if xs.size:
      first, last = np.percentile(xs if horizontal else ys, (1, 99))
      overhang = 0.04 * mask.shape[1 if horizontal else 0]
      segments = [(x0, y0, x1, y1) for x0, y0, x1, y1 in segments
                  if min((x0, x1) if horizontal else (y0, y1)) < first - overhang
                  and max((x0, x1) if horizontal else (y0, y1)) > last + overhang]
    # Paper is ruled over and over; one long bar may be the formula's own (a fraction's).
    offsets = [(y0 + y1) / 2 if horizontal else (x0 + x1) / 2 for x0, y0, x1, y1 in segments]
    # Upright lines only on squared paper: alone they are more often bars (|x|) than paper.
    if (offsets and max(offsets) - min(offsets) > 0.05 * mask.shape[0 if horizontal else 1]
        and (horizontal or True in ruling)):
      ruling[horizontal] = _draw(mask.shape, segments)
  return ruling


def remove_ruling(ink: np.ndarray) -> np.ndarray:
  """White-on-black ``uint8 [H, W]`` without the ruled or squared lines of its paper.

  A line is paper ruling when it runs straight from edge to edge (inked over
  ``RULING_LENGTH`` of the way), past both ends of the rest of the ink
  (fraction bars end with what they divide), and has a parallel one (upright
  lines: and horizontal ones, squared paper). Printed ruling is often fainter
  than the writing: it is looked for above ``FAINT_INK``. Its pixels are
  cleared except where writing crosses it (ink reaching further across the
  line than the line is thick) or is darker than it.
  """
  cleared = ink.copy()
  for horizontal, lines in _ruling(ink).items():
    mask = (cleared > FAINT_INK).astype(np.uint8)  # squared: the crossing lines are gone
    half = _half_thickness(mask, lines)
    reach = 2 * (half + 2) + 1  # the line's path is known to 2 px (_straight_lines)
    band = np.ones((reach, 1) if horizontal else (1, reach), np.uint8)
    across = 3 * half + 3  # well past the line's thickness (2 x half), blur included
    crossing = cv2.morphologyEx(mask, cv2.MORPH_OPEN, np.ones(
        (across, 1) if horizontal else (1, across), np.uint8))
    near = (cv2.dilate(lines, band) > 0) & (crossing == 0)
    ruling_level = float(np.percentile(ink[near & (mask > 0)], 75)) if (near & (mask > 0)).any() \
        else 255.0
    region = near & (ink <= 1.25 * ruling_level + 16)
    cleared[region] = 0
  return cleared


def remove_specks(ink: np.ndarray) -> np.ndarray:
  """White-on-black ``uint8 [H, W]`` with only its strokes: pieces smaller than a third
  of a stroke-wide square, and faint pixels away from any stroke, go to 0."""
  mask = (ink > 127).astype(np.uint8)
  stroke_width, _ = ink_measures(ink)
  _, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
  keep = stats[:, cv2.CC_STAT_AREA] >= max(2.0, stroke_width ** 2 / 3)
  keep[0] = False
  strokes = keep[labels].astype(np.uint8)
  return np.where(cv2.dilate(strokes, np.ones((3, 3), np.uint8)) > 0, ink, 0).astype(np.uint8)


def dataset_ink(image: np.ndarray) -> np.ndarray:
  """A dataset image ``uint8 [H, W]`` normalised: it is the training distribution itself, so
  ``normalise`` without statistics (background, polarity, crop); a blank one is only cropped."""
  try:
    return normalise(image)
  except NoInkError:
    return crop_to_ink(image)


def training_scale(ink: np.ndarray, statistics: InkStatistics) -> tuple[np.ndarray, float]:
  """``(ink, factor)``: white-on-black ``uint8 [H, W]``, re-inked if its pen is thin, and the
  factor that brings it to the training data's scale.

  Training strokes have nearly one width, so an image whose strokes lie in
  that range is at the training scale already (factor 1); for any other the
  strokes set the scale: the factor that gives them the median width. If that
  puts the symbols outside the training range (a pen thick or thin for the
  writing's size), the symbols set it instead (the median height), and thin
  strokes are redrawn at the median width (the ink comes back rescaled, factor
  1) and thick ones are eroded to about that width (redrawing them from a
  skeleton would merge and break more than it mends).
  """
  stroke_width, symbol_height = ink_measures(ink)
  low, median_width, high = statistics.stroke_width
  if low <= stroke_width <= high:
    return ink, 1.0
  factor = median_width / stroke_width
  low, median_height, high = statistics.symbol_height
  if not np.isfinite(symbol_height) or low <= symbol_height * factor <= high:
    return ink, factor
  factor = median_height / symbol_height
  if stroke_width * factor > median_width:
    return paper.change_pen(ink, -round((stroke_width - median_width / factor) / 2)), factor
  return crop_to_ink(paper.restroke(_resize_by(ink, factor), median_width)), 1.0


def _normalised(gray: np.ndarray, statistics: InkStatistics | None) -> tuple[np.ndarray, float]:
  """``normalise``'s ink before its last rescaling, and the factor of that rescaling."""
  if max(gray.shape) > MAX_SIDE:
    gray = _resize_by(gray, MAX_SIDE / max(gray.shape))
  ink, factor = remove_background(gray, stretch=statistics is not None), 1.0
  if statistics is not None:
    ink = remove_specks(remove_ruling(ink))
    if (ink > INK_THRESHOLD).any():
      ink, factor = training_scale(crop_to_ink(ink), statistics)
  ink = crop_to_ink(ink)
  if not (ink > INK_THRESHOLD).any():
    raise NoInkError(f"The image ({gray.shape[1]}x{gray.shape[0]} px) has no ink to read: only "
                     "faint specks stand out of the paper. Write or draw the formula and try "
                     "again.")
  return ink, factor


def normalise(gray: np.ndarray, statistics: InkStatistics | None = None) -> np.ndarray:
  """Any greyscale ``uint8 [H, W]`` (either polarity) -> white ink on black cropped to it.

  Background, light and polarity (``remove_background``), then, for an image
  from outside the training data (``statistics`` given): its contrast
  stretched, paper ruling and specks removed, and the ink brought to the
  training data's scale and stroke width (``training_scale``). A dataset
  image (``statistics=None``) is the training distribution itself: a clean
  bitmap keeps its grey levels and is only cropped. Returns ``uint8 [h, w]``
  with ``crop_to_ink``'s margin around the ink.

  Raises:
    NoInkError: no ink to read.
  """
  ink, factor = _normalised(gray, statistics)
  return ink if factor == 1.0 else crop_to_ink(_resize_by(ink, factor))


def model_input(gray: np.ndarray, input_config,
                statistics: InkStatistics | None = CROHME_TRAIN) -> np.ndarray:
  """``fit_image(normalise(gray, statistics), input_config)`` in one resampling: at a fixed
  height (``input_config.height``) the training scale changes nothing but the blur of
  resampling twice, at native scale it goes into the fit."""
  ink, factor = _normalised(gray, statistics)
  h, w = ink.shape
  shape = ink.shape if input_config.height else (max(1, round(h * factor)),
                                                  max(1, round(w * factor)))
  return _resize(ink, fit_shape(shape, input_config))


# --- augmentation (training only) -------------------------------------------
# OpenCV does the pixel work: one ``cv2.remap`` applies the affine map and the
# elastic field together (a fraction of a millisecond per CROHME image).


def random_affine_matrix(shape: tuple[int, int], rng: np.random.Generator,
                         rotation_degrees: float, scale: float,
                         shear: float) -> tuple[np.ndarray, tuple[int, int]]:
  """A small rotation, scale and shear of an ``[H, W]`` image, on a canvas that cuts no ink.

  Returns ``(inverse [2, 3], (out_height, out_width))``: output pixel ``(x, y)``
  samples the input at ``inverse @ (x, y, 1)``.
  """
  angle = np.deg2rad(rng.uniform(-rotation_degrees, rotation_degrees))
  zoom = rng.uniform(1.0 - scale, 1.0 + scale)
  skew = rng.uniform(-shear, shear)
  rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
  forward = zoom * rotation @ np.array([[1.0, skew], [0.0, 1.0]])  # output = A @ input
  h, w = shape
  corners = np.array([[0, 0], [w, 0], [0, h], [w, h]], np.float64) @ forward.T
  low, high = corners.min(axis=0), corners.max(axis=0)
  out_w, out_h = np.ceil(high - low).astype(int).clip(1)
  inverse = np.linalg.inv(forward)
  return np.concatenate([inverse, (inverse @ low)[:, None]], axis=1), (int(out_h), int(out_w))


def elastic_field(shape: tuple[int, int], rng: np.random.Generator, alpha: float,
                  sigma: float) -> np.ndarray:
  """Simard-style smooth displacement ``[2, H, W]`` float32 (x, y), at most ``alpha`` pixels.

  Drawn on a coarse grid (one point per ``sigma`` pixels) and upsampled
  bilinearly, which smooths it like a Gaussian of width ~``sigma``.
  """
  h, w = shape
  grid = (max(2, int(h / sigma) + 2), max(2, int(w / sigma) + 2))
  coarse = rng.uniform(-alpha, alpha, (2, *grid)).astype(np.float32)
  return np.stack([cv2.resize(c, (w, h), interpolation=cv2.INTER_LINEAR) for c in coarse])


def warp(image: np.ndarray, rng: np.random.Generator, augment_config) -> np.ndarray:
  """The affine map and elastic distortion of ``config.augment`` in one bilinear resampling."""
  cfg = augment_config
  inverse, (out_h, out_w) = random_affine_matrix(image.shape, rng, cfg.rotation_degrees,
                                                 cfg.scale, cfg.shear)
  inverse = inverse.astype(np.float32)
  xs, ys = np.meshgrid(np.arange(out_w, dtype=np.float32), np.arange(out_h, dtype=np.float32))
  if cfg.elastic_alpha > 0:
    field = elastic_field((out_h, out_w), rng, cfg.elastic_alpha, cfg.elastic_sigma)
    xs, ys = xs + field[0], ys + field[1]
  map_x = inverse[0, 0] * xs + inverse[0, 1] * ys + inverse[0, 2]
  map_y = inverse[1, 0] * xs + inverse[1, 1] * ys + inverse[1, 2]
  return cv2.remap(image, map_x, map_y, cv2.INTER_LINEAR,
                   borderMode=cv2.BORDER_CONSTANT, borderValue=0)


def change_stroke_width(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  """Thickens (dilation) or thins (erosion) white strokes by about a pixel."""
  kernel = np.ones((3, 3), np.uint8)
  result = (cv2.dilate if rng.random() < 0.5 else cv2.erode)(image, kernel)
  # Thinning can erase thin strokes entirely; keep the original then.
  return result if (result > INK_THRESHOLD).any() else image


def jitter_brightness_contrast(image: np.ndarray, rng: np.random.Generator, brightness: float,
                               contrast: float) -> np.ndarray:
  """The seed's ColorJitter on greyscale: ``x * c + b`` with ``c ~ 1 +- contrast``."""
  gain = rng.uniform(1.0 - contrast, 1.0 + contrast)
  offset = rng.uniform(-brightness, brightness) * 255.0 * 0.5
  return np.clip(image.astype(np.float32) * gain + offset, 0, 255).astype(np.uint8)


def augment(image: np.ndarray, rng: np.random.Generator, augment_config,
            statistics: InkStatistics = CROHME_TRAIN) -> np.ndarray:
  """Applies the training augmentations of ``config.augment`` to ``uint8 [H, W]``.

  With ``paper_probability`` the result may be a photographed page
  (``paper.photograph``) normalised back with ``statistics``, as ``predict``
  would read it; a page the normaliser finds blank leaves the image as it was.
  """
  cfg = augment_config
  if cfg.stroke_probability > 0 and rng.random() < cfg.stroke_probability:
    image = change_stroke_width(image, rng)
  if cfg.rotation_degrees > 0 or cfg.scale > 0 or cfg.shear > 0 or cfg.elastic_alpha > 0:
    image = warp(image, rng, cfg)
  if cfg.get("paper_probability", 0.0) > 0 and rng.random() < cfg.paper_probability:
    try:
      return normalise(paper.photograph(image, rng, cfg), statistics)
    except NoInkError:
      pass
  if cfg.brightness > 0 or cfg.contrast > 0:
    image = jitter_brightness_contrast(image, rng, cfg.brightness, cfg.contrast)
  return image
