"""Small composable image ops shared by training, evaluation and prediction.

Every image inside the library is greyscale ``uint8 [H, W]`` with WHITE ink on a
BLACK background (the CROHME archive's convention). Training, ``evaluate``,
``predict`` and the web app all go through ``fit_image`` so that a model sees
the same geometry everywhere: either every image scaled to one height
(``config.input.height > 0``) or each image at its native scale, bounded by
``config.input.max_height`` x ``config.input.max_width`` (``height = 0``).
"""

from __future__ import annotations

import cv2
import numpy as np
from PIL import Image

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


def augment(image: np.ndarray, rng: np.random.Generator, augment_config) -> np.ndarray:
  """Applies the training augmentations of ``config.augment`` to ``uint8 [H, W]``."""
  cfg = augment_config
  if cfg.stroke_probability > 0 and rng.random() < cfg.stroke_probability:
    image = change_stroke_width(image, rng)
  if cfg.rotation_degrees > 0 or cfg.scale > 0 or cfg.shear > 0 or cfg.elastic_alpha > 0:
    image = warp(image, rng, cfg)
  if cfg.brightness > 0 or cfg.contrast > 0:
    image = jitter_brightness_contrast(image, rng, cfg.brightness, cfg.contrast)
  return image
