import cv2
import numpy as np
import pytest
from configs import default

from hme_jax.data import input_pipeline, preprocessing


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


def _paper_config(probability: float):
  config = default.get_config().augment
  config.paper_probability = probability
  return config


def test_paper_augmentation_is_off_by_default_and_then_changes_nothing():
  config = default.get_config().augment
  assert config.paper_probability == 0.0
  older = default.get_config().augment  # a config saved before the paper fields existed
  for field in ("paper_probability", "paper_scale", "pen_radius", "ruling_probability",
                "paper_rotation_degrees", "shadow", "blur_sigma", "noise_sigma", "jpeg_quality"):
    del older[field]
  for seed in range(3):
    np.testing.assert_array_equal(
        preprocessing.augment(wave_stroke(), np.random.default_rng(seed), config),
        preprocessing.augment(wave_stroke(), np.random.default_rng(seed), older))


def test_paper_augmentation_is_deterministic_per_seed_and_normalised_back():
  from hme_jax.data import paper
  from tfds_crohme.crohme_synthetic import render
  config = _paper_config(1.0)
  image = render.render_expression("x ^ { 2 } + 1", np.random.default_rng(0))
  first = preprocessing.augment(image, np.random.default_rng(5), config)
  again = preprocessing.augment(image, np.random.default_rng(5), config)
  np.testing.assert_array_equal(first, again)
  assert not np.array_equal(first, preprocessing.augment(image, np.random.default_rng(6), config))
  # The model sees the page as predict would read it: white ink on black, cropped, and (the
  # pen unchanged) at the training data's stroke width, whatever the page's scale.
  assert first.dtype == np.uint8 and first[0].max() <= preprocessing.INK_THRESHOLD
  config.pen_radius = config.stroke_probability = 0
  low, _, high = preprocessing.CROHME_TRAIN.stroke_width
  for seed in range(6):
    width, _ = preprocessing.ink_measures(
        preprocessing.augment(image, np.random.default_rng(seed), config))
    assert low - 0.6 <= width <= high + 0.6, (seed, width)
  page = paper.photograph(image, np.random.default_rng(5), config)
  assert np.median(page) > 100  # a page: dark ink on light paper
  np.testing.assert_array_equal(page, paper.photograph(image, np.random.default_rng(5), config))


def test_device_resident_training_refuses_paper_augmentation():
  from hme_jax.data import device_data
  config = default.get_config()
  config.input.device_resident = True
  config.augment.paper_probability = 0.5
  with pytest.raises(ValueError, match="paper_probability > 0.*device_resident=True"):
    device_data.build(config, None, None, None)
