"""Ink as people bring it: on photographed or scanned paper, blurred, compressed, drawn.

The paper-domain transforms of the training augmentation (``photograph``, from
``config.augment``) and of the robustness benchmark (``benchmarks/robustness.py``).
Each takes white ink on black, ``uint8 [H, W]`` (a CROHME bitmap), and a
``np.random.Generator`` that makes every random choice, so the same seed gives
the same pixels; pages come back as dark ink on light paper, ``uint8 [H', W']``,
the way a camera or scanner sees them. OpenCV does the pixel work.
"""

from __future__ import annotations

import cv2
import numpy as np

CROHME_SYMBOL_HEIGHT = 31.5  # px, median (preprocessing.CROHME_TRAIN): sets the ruling's spacing


def rescale(ink: np.ndarray, factor: float) -> np.ndarray:
  """``ink`` scaled by ``factor`` (area averaging down, bilinear up)."""
  h, w = ink.shape
  size = (max(1, round(w * factor)), max(1, round(h * factor)))
  return cv2.resize(ink, size, interpolation=cv2.INTER_AREA if factor < 1 else cv2.INTER_LINEAR)


def change_pen(ink: np.ndarray, radius: int) -> np.ndarray:
  """Strokes ``2 * radius`` px thicker (``radius > 0``, a disk dilation) or thinner (``< 0``)."""
  if radius == 0:
    return ink
  size = 2 * abs(radius) + 1
  disk = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (size, size))
  changed = (cv2.dilate if radius > 0 else cv2.erode)(ink, disk)
  return changed if (changed > 127).any() else ink  # thinning may erase thin strokes


def rotate(image: np.ndarray, degrees: float, border: int) -> np.ndarray:
  """``image`` turned by ``degrees`` (counter-clockwise) on a canvas that cuts nothing off;
  new corners take the grey level ``border``."""
  h, w = image.shape
  matrix = cv2.getRotationMatrix2D((w / 2, h / 2), degrees, 1.0)
  cos, sin = abs(matrix[0, 0]), abs(matrix[0, 1])
  out_w, out_h = int(np.ceil(h * sin + w * cos)), int(np.ceil(h * cos + w * sin))
  matrix[:, 2] += (out_w - w) / 2, (out_h - h) / 2
  return cv2.warpAffine(image, matrix, (out_w, out_h), flags=cv2.INTER_LINEAR,
                        borderMode=cv2.BORDER_CONSTANT, borderValue=int(border))


def page(ink: np.ndarray, rng: np.random.Generator, *, scale: float = 1.0,
         tone: tuple[float, float] = (150.0, 235.0), texture: float = 6.0,
         ruling_probability: float = 0.5, squared_probability: float = 1 / 3,
         ink_level: tuple[float, float] = (15.0, 90.0),
         margin: tuple[float, float] = (0.15, 0.6)) -> np.ndarray:
  """The ink written on paper: ``uint8 [H', W']``, dark on light.

  The ink, scaled by ``scale``, sits with margins (a share of its size, drawn
  in ``margin``) on paper of a grey level drawn in ``tone``, with a fibre
  texture of ``texture`` grey levels; with ``ruling_probability`` the paper is
  ruled (``squared_probability`` of those squared) at 1.2-2 symbol heights,
  every line across the page. The ink's darkest level is drawn in ``ink_level``.
  """
  ink = rescale(ink, scale).astype(np.float32) / 255.0
  h, w = ink.shape
  top, bottom = (int(rng.uniform(*margin) * h) + 2 for _ in range(2))
  left, right = (int(rng.uniform(*margin) * w) + 2 for _ in range(2))
  height, width = h + top + bottom, w + left + right
  fibres = cv2.GaussianBlur(rng.standard_normal((height, width)).astype(np.float32), (0, 0), 1.0)
  paper = np.float32(rng.uniform(*tone)) + fibres * np.float32(texture / max(fibres.std(), 1e-6))
  if rng.random() < ruling_probability:
    spacing = rng.uniform(1.2, 2.0) * CROHME_SYMBOL_HEIGHT * scale
    line_level = float(paper.mean() - rng.uniform(40.0, 100.0))
    thickness = max(1, int(round(scale * rng.uniform(0.8, 1.6))))
    squared = rng.random() < squared_probability
    for axis, length in ((0, height), (1, width)) if squared else ((0, height),):
      for offset in np.arange(rng.uniform(0, spacing), length, spacing):
        start, end = (0, int(offset)), (width, int(offset))
        if axis == 1:
          start, end = (int(offset), 0), (int(offset), height)
        cv2.line(paper, start, end, line_level, thickness, cv2.LINE_AA)
  alpha = np.zeros((height, width), np.float32)
  alpha[top:top + h, left:left + w] = ink
  written = paper * (1.0 - alpha) + np.float32(rng.uniform(*ink_level)) * alpha
  return np.clip(np.rint(written), 0, 255).astype(np.uint8)


def illuminate(image: np.ndarray, rng: np.random.Generator, strength: float) -> np.ndarray:
  """Uneven light: a gradient across the page and a soft-edged shadow, each taking up to
  ``strength`` of the light (drawn in ``[0, strength]``)."""
  h, w = image.shape
  ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
  angle = rng.uniform(0, 2 * np.pi)
  along = (xs * np.cos(angle) + ys * np.sin(angle)).astype(np.float32)
  along = (along - along.min()) / max(float(along.max() - along.min()), 1.0)
  light = 1.0 - np.float32(rng.uniform(0, strength)) * along
  # The shadow: a half-plane through a random point, its edge blurred over 5-20% of the page.
  angle = rng.uniform(0, 2 * np.pi)
  x0, y0 = rng.uniform(0, w), rng.uniform(0, h)
  side = (xs - x0) * np.cos(angle) + (ys - y0) * np.sin(angle)
  softness = rng.uniform(0.05, 0.2) * min(h, w) + 1.0
  inside = 1.0 / (1.0 + np.exp(-side / softness))
  light = light * (1.0 - np.float32(rng.uniform(0, strength)) * inside)
  return np.clip(np.rint(image * light), 0, 255).astype(np.uint8)


def blur(image: np.ndarray, sigma: float) -> np.ndarray:
  """Gaussian blur of ``sigma`` px (out of focus, motion-free)."""
  return cv2.GaussianBlur(image, (0, 0), sigma) if sigma > 0 else image


def add_noise(image: np.ndarray, rng: np.random.Generator, sigma: float) -> np.ndarray:
  """Sensor noise: Gaussian, ``sigma`` grey levels."""
  noisy = image + np.float32(sigma) * rng.standard_normal(image.shape, dtype=np.float32)
  return np.clip(np.rint(noisy), 0, 255).astype(np.uint8)


def jpeg(image: np.ndarray, quality: int) -> np.ndarray:
  """The image after a JPEG round trip at ``quality`` (1-100)."""
  ok, encoded = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
  if not ok:
    raise RuntimeError("OpenCV could not JPEG-encode the image.")
  return cv2.imdecode(encoded, cv2.IMREAD_GRAYSCALE)


def photograph(ink: np.ndarray, rng: np.random.Generator, augment_config) -> np.ndarray:
  """A random photo or scan of the ink (the paper augmentation of ``config.augment``).

  Pen width, scale (log-uniform in ``paper_scale``), paper and ruling
  (``page``), rotation, light and shadow, blur, noise and JPEG, each drawn
  within the config's bounds. Returns the page, dark on light.
  """
  cfg = augment_config
  ink = change_pen(ink, int(rng.integers(0, cfg.pen_radius + 1)))  # stroke_probability thins
  scale = float(np.exp(rng.uniform(*np.log(cfg.paper_scale))))
  image = page(ink, rng, scale=scale, ruling_probability=cfg.ruling_probability)
  if cfg.paper_rotation_degrees > 0:
    degrees = rng.uniform(-cfg.paper_rotation_degrees, cfg.paper_rotation_degrees)
    image = rotate(image, degrees, border=int(np.median(image)))
  if cfg.shadow > 0:
    image = illuminate(image, rng, cfg.shadow)
  image = blur(image, rng.uniform(0, cfg.blur_sigma))
  image = add_noise(image, rng, rng.uniform(0, cfg.noise_sigma))
  if cfg.jpeg_quality > 0:
    image = jpeg(image, int(rng.integers(cfg.jpeg_quality, 96)))
  return image


def restroke(ink: np.ndarray, width: float) -> np.ndarray:
  """Redraws white-on-black ``uint8 [H, W]`` strokes ``width`` px wide along their skeleton,
  as CROHME's bitmaps were drawn from pen traces."""
  # The renderer's Zhang-Suen thinning (imported here: it loads matplotlib's mathtext).
  from tfds_crohme.crohme_synthetic import render  # pylint: disable=import-outside-toplevel
  pad = int(np.ceil(width))
  skeleton = render.skeletonize(np.pad(ink > 127, pad))
  distance = cv2.distanceTransform((~skeleton).astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
  return (np.clip(width / 2 + 0.5 - distance, 0.0, 1.0) * 255).round().astype(np.uint8)


def canvas_drawing(ink: np.ndarray, rng: np.random.Generator, *, scale: float = 2.5,
                   pen_width: float = 6.0, size: tuple[int, int] = (400, 1200)) -> np.ndarray:
  """The ink as drawn on the web app's canvas: ``scale`` times larger, redrawn with a round
  ``pen_width`` px pen, black on a white ``size`` (height, width) canvas, anti-aliased.
  An expression too large for the canvas is shrunk to fit its width or height."""
  height, width = size
  scale = min(scale, 0.9 * width / ink.shape[1], 0.9 * height / ink.shape[0])
  strokes = restroke(rescale(ink, scale), pen_width)[:height, :width]
  h, w = strokes.shape
  canvas = np.zeros(size, np.uint8)
  top = int(rng.integers(0, max(height - h, 0) + 1))
  left = int(rng.integers(0, max(width - w, 0) + 1))
  canvas[top:top + h, left:left + w] = strokes
  return 255 - canvas
