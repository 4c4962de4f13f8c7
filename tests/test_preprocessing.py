import cv2
import numpy as np
import pytest
from configs import default

from hme_jax import input_pipeline, preprocessing


def stroke_image(height=40, width=120, polarity="white_on_black"):
  image = np.zeros((height, width), np.uint8)
  image[15:25, 30:90] = 255
  image[5:35, 55:60] = 255
  return 255 - image if polarity == "black_on_white" else image


def test_polarity_is_detected_both_ways():
  white_on_black = stroke_image()
  np.testing.assert_array_equal(preprocessing.to_white_on_black(white_on_black), white_on_black)
  np.testing.assert_array_equal(
      preprocessing.to_white_on_black(stroke_image(polarity="black_on_white")), white_on_black)


def test_crop_to_ink_keeps_a_margin_and_all_ink():
  cropped = preprocessing.crop_to_ink(stroke_image(), margin=2)
  assert cropped.shape == (30 + 4, 60 + 4)
  assert cropped.sum() == stroke_image().sum()
  blank = np.zeros((10, 10), np.uint8)
  assert preprocessing.crop_to_ink(blank).shape == (10, 10)


def test_fit_to_height_keeps_aspect_and_caps_width():
  image = stroke_image(40, 120)
  assert preprocessing.fit_to_height(image, 20, 1000).shape == (20, 60)
  assert preprocessing.fit_to_height(image, 80, 100).shape == (80, 100)
  assert preprocessing.fit_to_height(np.zeros((40, 1), np.uint8), 20, 100).shape == (20, 1)


def _warp_config(**overrides):
  config = default.get_config().augment
  for field in ("rotation_degrees", "scale", "shear", "elastic_alpha"):
    config[field] = overrides.get(field, 0.0)
  return config


def test_warp_without_distortion_is_identity():
  image = np.random.default_rng(0).integers(0, 256, (7, 9)).astype(np.uint8)
  out = preprocessing.warp(image, np.random.default_rng(0), _warp_config())
  np.testing.assert_array_equal(out, image)


def test_elastic_field_is_bounded_and_smooth():
  field = preprocessing.elastic_field((40, 120), np.random.default_rng(0), 8.0, 5.0)
  assert field.shape == (2, 40, 120) and np.abs(field).max() <= 8.0
  assert np.abs(np.diff(field, axis=2)).max() < 8.0 * 2 / 5.0 + 1e-4  # bilinear between points


def test_augment_is_deterministic_per_seed_and_keeps_the_ink():
  config = default.get_config().augment
  image = stroke_image()
  first = preprocessing.augment(image, np.random.default_rng(3), config)
  second = preprocessing.augment(image, np.random.default_rng(3), config)
  other = preprocessing.augment(image, np.random.default_rng(4), config)
  np.testing.assert_array_equal(first, second)
  assert first.shape != other.shape or not np.array_equal(first, other)
  # Geometry changes are small: the ink survives and its extent stays similar.
  ink = preprocessing.crop_to_ink(first)
  assert (first > 128).sum() > 0.3 * (image > 128).sum()
  assert 0.6 < ink.shape[1] / 64 < 1.6


@pytest.mark.parametrize("degrees", [0.0, 10.0])
def test_affine_grows_the_canvas_so_no_ink_is_cut(degrees):
  image = np.zeros((20, 20), np.uint8)
  image[0:20, 0] = 255  # ink on the border
  out = preprocessing.warp(image, np.random.default_rng(0), _warp_config(rotation_degrees=degrees))
  assert (out > 64).sum() >= 15


def wave_stroke() -> np.ndarray:
  image = np.zeros((48, 200), np.uint8)
  xs = np.arange(10, 190)
  points = np.stack([xs, 24 + 10 * np.sin(xs / 15.0)], axis=1).astype(np.int32)
  cv2.polylines(image, [points], isClosed=False, color=255, thickness=3)
  return image


def stroke_pieces_and_offset(out: np.ndarray, image: np.ndarray) -> tuple[int, float]:
  """Connected ink pieces of ``out``, and how far (px) its ink lies from ``image``'s at most."""
  pieces = cv2.connectedComponents((out > 64).astype(np.uint8))[0] - 1
  distance = cv2.distanceTransform((image <= 64).astype(np.uint8), cv2.DIST_L2, 5)
  return pieces, float(distance[out > 64].max())


@pytest.mark.parametrize("alpha_sigma, torn", [(None, False), ((8.0, 5.0), True)])
def test_the_default_elastic_field_bends_strokes_without_tearing_them(alpha_sigma, torn):
  config = _warp_config(elastic_alpha=default.get_config().augment.elastic_alpha)
  if alpha_sigma:
    config.elastic_alpha, config.elastic_sigma = alpha_sigma
  image = wave_stroke()
  results = [stroke_pieces_and_offset(
      preprocessing.warp(image, np.random.default_rng(seed), config), image) for seed in range(8)]
  if torn:  # the old default: pieces scattered up to 8 px away
    assert max(pieces for pieces, _ in results) > 2
  else:
    assert all(pieces == 1 and offset <= config.elastic_alpha + 1.5 for pieces, offset in results)
    with pytest.raises(ValueError, match="elastic_alpha=8.0 is more than half"):
      config.elastic_alpha, config.elastic_sigma = 8.0, 5.0
      input_pipeline.check_augment(config)
