"""Small composable image ops shared by training, evaluation and prediction.

Every image inside the library is greyscale ``uint8 [H, W]`` with WHITE ink on a
BLACK background (the CROHME archive's convention). Training, ``evaluate``,
``predict`` and the web app all go through ``fit_image`` so that a model sees
the same geometry everywhere: either every image scaled to one height
(``config.input.height > 0``) or each image at its native scale, bounded by
``config.input.max_height`` x ``config.input.max_width`` (``height = 0``).
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageFilter

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


def fit_to_height(image: np.ndarray, height: int, max_width: int) -> np.ndarray:
  """Resizes to ``height`` keeping the aspect ratio; wider results are squeezed to ``max_width``.

  Returns ``uint8 [height, w]`` with ``1 <= w <= max_width``.
  """
  h, w = image.shape
  width = int(np.clip(round(w * height / max(h, 1)), 1, max_width))
  if (h, w) == (height, width):
    return image
  return np.asarray(Image.fromarray(image).resize((width, height), Image.Resampling.BILINEAR))


MIN_NATIVE_SIZE = 16  # native-scale images are enlarged to at least this many pixels a side


def fit_within(image: np.ndarray, max_height: int, max_width: int,
               min_size: int = MIN_NATIVE_SIZE) -> np.ndarray:
  """Keeps the native scale, shrinking (aspect kept) only what exceeds ``max_height x max_width``.

  Images smaller than ``min_size`` on a side are enlarged to it (a strided
  encoder needs a few pixels to see anything). Returns ``uint8 [h, w]`` with
  ``h <= max_height`` and ``w <= max_width``.
  """
  h, w = image.shape
  scale = min(1.0, max_height / h, max_width / w)
  scale = max(scale, min(max(min_size / h, min_size / w), max_height / h, max_width / w))
  height = int(np.clip(round(h * scale), 1, max_height))
  width = int(np.clip(round(w * scale), 1, max_width))
  if (h, w) == (height, width):
    return image
  return np.asarray(Image.fromarray(image).resize((width, height), Image.Resampling.BILINEAR))


def fit_image(image: np.ndarray, input_config) -> np.ndarray:
  """The model's input geometry of ``config.input`` (see the module docstring)."""
  if input_config.height:
    return fit_to_height(image, input_config.height, input_config.max_width)
  return fit_within(image, input_config.max_height, input_config.max_width)


# --- augmentation (training only) -------------------------------------------


def random_affine(image: np.ndarray, rng: np.random.Generator, rotation_degrees: float,
                  scale: float, shear: float) -> np.ndarray:
  """Small rotation, scale and shear; the canvas grows so no ink is cut."""
  angle = np.deg2rad(rng.uniform(-rotation_degrees, rotation_degrees))
  zoom = rng.uniform(1.0 - scale, 1.0 + scale)
  skew = rng.uniform(-shear, shear)
  # Forward map: output = A @ input.
  rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
  forward = zoom * rotation @ np.array([[1.0, skew], [0.0, 1.0]])
  h, w = image.shape
  corners = np.array([[0, 0], [w, 0], [0, h], [w, h]], np.float64) @ forward.T
  low, high = corners.min(axis=0), corners.max(axis=0)
  out_w, out_h = (np.ceil(high - low).astype(int)).clip(1)
  # PIL wants the inverse map: input = B @ output + offset.
  inverse = np.linalg.inv(forward)
  offset = inverse @ low
  coefficients = (inverse[0, 0], inverse[0, 1], offset[0], inverse[1, 0], inverse[1, 1], offset[1])
  return np.asarray(Image.fromarray(image).transform(
      (int(out_w), int(out_h)), Image.Transform.AFFINE, coefficients,
      resample=Image.Resampling.BILINEAR, fillcolor=0))


def elastic_distortion(image: np.ndarray, rng: np.random.Generator, alpha: float,
                       sigma: float) -> np.ndarray:
  """Simard-style elastic distortion: a smooth random displacement field.

  The field is drawn on a coarse grid (one point per ``sigma`` pixels) and
  upsampled bilinearly, which smooths it like a Gaussian of width ~``sigma``
  at a fraction of the cost. ``alpha`` is the largest displacement in pixels.
  """
  h, w = image.shape
  grid_h, grid_w = max(2, int(h / sigma) + 2), max(2, int(w / sigma) + 2)

  def field():
    coarse = rng.uniform(-alpha, alpha, (grid_h, grid_w)).astype(np.float32)
    return np.asarray(Image.fromarray(coarse, mode="F").resize((w, h), Image.Resampling.BILINEAR))

  ys, xs = np.meshgrid(np.arange(h, dtype=np.float32), np.arange(w, dtype=np.float32),
                       indexing="ij")
  return bilinear_sample(image, ys + field(), xs + field())


def bilinear_sample(image: np.ndarray, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
  """Samples ``uint8 [H, W]`` at float coordinates; outside is background (0)."""
  h, w = image.shape
  padded = np.pad(image.astype(np.float32), 1)  # a ring of background
  ys = np.clip(ys + 1, 0, h + 1 - 1e-3)
  xs = np.clip(xs + 1, 0, w + 1 - 1e-3)
  y0, x0 = np.floor(ys).astype(np.int32), np.floor(xs).astype(np.int32)
  y1, x1 = np.minimum(y0 + 1, h + 1), np.minimum(x0 + 1, w + 1)
  fy, fx = ys - y0, xs - x0
  top = padded[y0, x0] * (1 - fx) + padded[y0, x1] * fx
  bottom = padded[y1, x0] * (1 - fx) + padded[y1, x1] * fx
  return np.clip(top * (1 - fy) + bottom * fy + 0.5, 0, 255).astype(np.uint8)


def change_stroke_width(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  """Thickens (max filter) or thins (min filter) white strokes by about a pixel."""
  size = 3
  ink_filter = ImageFilter.MaxFilter(size) if rng.random() < 0.5 else ImageFilter.MinFilter(size)
  result = np.asarray(Image.fromarray(image).filter(ink_filter))
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
  if cfg.rotation_degrees > 0 or cfg.scale > 0 or cfg.shear > 0:
    image = random_affine(image, rng, cfg.rotation_degrees, cfg.scale, cfg.shear)
  if cfg.elastic_alpha > 0:
    image = elastic_distortion(image, rng, cfg.elastic_alpha, cfg.elastic_sigma)
  if cfg.brightness > 0 or cfg.contrast > 0:
    image = jitter_brightness_contrast(image, rng, cfg.brightness, cfg.contrast)
  return image
