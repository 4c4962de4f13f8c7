"""One normalisation for every image (``preprocessing.normalise``): dataset bitmaps pass as they
are, photographed pages come back as their ink, and training and ``predict`` agree."""

import io

import cv2
import ml_collections
import numpy as np
import pytest
from configs import default
from PIL import Image

from hme_jax.data import input_pipeline, paper, preprocessing
from hme_jax.infer import predict
from tfds_crohme.crohme_synthetic import render

INPUT = ml_collections.ConfigDict({"height": 48, "max_width": 768})  # the shipped model's fit
STATISTICS = preprocessing.CROHME_TRAIN

# CROHME-like bitmaps the test renders (white pen strokes on black, cropped).
EXPRESSIONS = (("x ^ { 2 } + 1", 0), ("\\frac { a } { b }", 1), ("\\sqrt { y } - 3", 2),
               ("\\sum _ { i } x _ { i }", 3))


def rendered(tokens: str, seed: int) -> np.ndarray:
  return render.render_expression(tokens, np.random.default_rng(seed))


def chamfer(reference: np.ndarray, image: np.ndarray) -> float:
  """Mean distance (px) from the ink of each image to the nearest ink of the other, after
  resizing ``image`` to ``reference``'s shape."""
  image = cv2.resize(image, reference.shape[::-1], interpolation=cv2.INTER_AREA)
  ink_a, ink_b = reference > 127, image > 127
  assert ink_a.any() and ink_b.any()
  to_a = cv2.distanceTransform((~ink_a).astype(np.uint8), cv2.DIST_L2, 3)
  to_b = cv2.distanceTransform((~ink_b).astype(np.uint8), cv2.DIST_L2, 3)
  return 0.5 * (float(to_a[ink_b].mean()) + float(to_b[ink_a].mean()))


def model_input(image: np.ndarray) -> np.ndarray:
  return preprocessing.fit_image(preprocessing.normalise(image, STATISTICS), INPUT)


def png_bytes(image: np.ndarray) -> bytes:
  buffer = io.BytesIO()
  Image.fromarray(image).save(buffer, format="PNG")
  return buffer.getvalue()


@pytest.mark.parametrize("tokens, seed", EXPRESSIONS)
@pytest.mark.parametrize("height", [None, 40], ids=["binary", "resized, grey edges"])
def test_a_dataset_bitmap_is_only_cropped_in_either_polarity(tokens, seed, height):
  bitmap = np.pad(render.render_expression(tokens, np.random.default_rng(seed), height), 7)
  cropped = preprocessing.crop_to_ink(bitmap)
  np.testing.assert_array_equal(preprocessing.normalise(bitmap), cropped)
  np.testing.assert_array_equal(preprocessing.normalise(255 - bitmap), cropped)


def test_ink_measures_follow_the_scale():
  bitmap = rendered("x ^ { 2 } + 1", 0)
  width, height = preprocessing.ink_measures(bitmap)
  for factor in (2.0, 3.0):
    scaled = preprocessing.ink_measures(paper.rescale(bitmap, factor))
    assert scaled[0] == pytest.approx(factor * width, rel=0.15)
    assert scaled[1] == pytest.approx(factor * height, rel=0.15)


@pytest.mark.parametrize("scale", [0.5, 1.0, 2.0, 3.0])
def test_ink_pasted_on_grey_shaded_lined_paper_comes_back_close_to_the_clean_one(scale):
  for tokens, seed in EXPRESSIONS:
    clean = rendered(tokens, seed)
    rng = np.random.default_rng(seed)
    page = paper.page(clean, rng, scale=scale, tone=(160, 200), ruling_probability=1.0,
                      squared_probability=0.0, ink_level=(30, 60))
    page = paper.illuminate(page, rng, strength=0.4)
    distance = chamfer(model_input(clean), model_input(page))
    assert distance <= 1.0, (tokens, scale, distance)


def test_a_phone_sized_photo_of_a_ruled_page_comes_back_as_its_ink():
  clean = rendered("x ^ { 2 } + 1", 0)
  rng = np.random.default_rng(0)
  page = paper.illuminate(paper.page(clean, rng, scale=10.0, ruling_probability=1.0,
                                     squared_probability=0.0, margin=(1.0, 2.0)), rng, 0.4)
  assert max(page.shape) > preprocessing.MAX_SIDE
  ink = preprocessing.normalise(page, STATISTICS)
  assert max(ink.shape) < 4 * max(clean.shape)  # the ink alone, near CROHME's scale
  assert chamfer(model_input(clean), preprocessing.fit_image(ink, INPUT)) <= 1.0


@pytest.mark.parametrize("factor", [0.5, 2.0, 3.0])
def test_a_native_scale_model_gets_the_ink_at_the_training_scale(factor):
  native = ml_collections.ConfigDict({"height": 0, "max_height": 256, "max_width": 1024})
  clean = np.pad(rendered("x ^ { 2 } + 1", 0), 4)
  statistics = preprocessing.measure_statistics([clean])
  expected = preprocessing.model_input(clean, native, statistics)
  np.testing.assert_array_equal(expected, preprocessing.crop_to_ink(clean))  # as it is
  scaled = preprocessing.model_input(paper.rescale(clean, factor), native, statistics)
  assert np.abs(np.subtract(scaled.shape, expected.shape)).max() <= 0.1 * max(expected.shape)
  # At a fixed height the scale changes nothing but resampling: one resampling of the crop.
  fixed = preprocessing.model_input(paper.rescale(clean, factor), INPUT, statistics)
  direct = preprocessing.fit_image(preprocessing.crop_to_ink(paper.rescale(clean, factor)), INPUT)
  assert fixed.shape[0] == direct.shape[0] and abs(fixed.shape[1] - direct.shape[1]) <= 4
  assert chamfer(direct, fixed) <= 0.5


@pytest.mark.parametrize("tokens, seed", EXPRESSIONS[:2])
def test_a_canvas_drawing_comes_back_at_the_training_scale(tokens, seed):
  clean = rendered(tokens, seed)
  drawing = paper.canvas_drawing(clean, np.random.default_rng(seed), scale=2.5, pen_width=6.0)
  assert drawing.shape == (400, 1200)
  ink = preprocessing.normalise(drawing, STATISTICS)
  stroke_width, symbol_height = preprocessing.ink_measures(ink)
  assert STATISTICS.stroke_width[0] <= stroke_width <= STATISTICS.stroke_width[2]
  assert symbol_height < 2 * STATISTICS.symbol_height[2]  # not 2.5 times CROHME's any more
  assert chamfer(model_input(clean), preprocessing.fit_image(ink, INPUT)) <= 1.0


@pytest.mark.parametrize("tokens, seed", EXPRESSIONS)
def test_a_thick_pen_comes_back_at_the_training_stroke_width(tokens, seed):
  clean = rendered(tokens, seed)
  thick = paper.change_pen(clean, 2)  # 4 px thicker: twice CROHME's width
  assert preprocessing.ink_measures(thick)[0] > STATISTICS.stroke_width[2] + 1
  ink = preprocessing.normalise(255 - thick, STATISTICS)
  low, _, high = STATISTICS.stroke_width
  assert 0.9 * low <= preprocessing.ink_measures(ink)[0] <= 1.1 * high  # about the training width
  assert chamfer(model_input(clean), preprocessing.fit_image(ink, INPUT)) <= 1.0


def test_a_fraction_bar_is_not_paper_ruling():
  bitmap = rendered("\\frac { 1 } { 2 }", 0)
  np.testing.assert_array_equal(preprocessing.remove_ruling(bitmap), bitmap)
  ruled = bitmap.copy()
  for row in (3, bitmap.shape[0] - 4):  # two long lines past the ink at both ends: ruling
    ruled[row] = 255
  ruled = np.pad(ruled, ((0, 0), (40, 40)))
  ruled[3], ruled[-4] = 255, 255
  np.testing.assert_array_equal(preprocessing.remove_ruling(ruled)[:, 40:-40], bitmap)


@pytest.mark.parametrize("image", [
    np.full((64, 200), 255, np.uint8), np.zeros((64, 200), np.uint8),
    np.full((30, 30), 128, np.uint8), np.zeros((1, 1), np.uint8)],
    ids=["white", "all ink (black)", "grey", "one pixel"])
def test_an_empty_or_all_ink_image_is_a_clear_error(image):
  with pytest.raises(preprocessing.NoInkError, match="has no ink to read"):
    preprocessing.normalise(image, STATISTICS)
  with pytest.raises(predict.NoInkError, match="no ink"):
    predict.prepare_image(image, INPUT)


def test_a_faint_speck_on_noisy_paper_is_no_ink():
  page = np.clip(np.random.default_rng(0).normal(200, 3, (80, 240)), 0, 255).astype(np.uint8)
  page[40, 120] = 150
  with pytest.raises(preprocessing.NoInkError, match="no ink"):
    preprocessing.normalise(page, STATISTICS)


def test_statistics_come_from_the_config_or_default_to_crohme():
  config = default.get_config()
  assert preprocessing.InkStatistics.from_config(config) == STATISTICS
  config.normalise.stroke_width = (1.0, 2.0, 3.0)
  assert preprocessing.InkStatistics.from_config(config).stroke_width == (1.0, 2.0, 3.0)
  del config["normalise"]  # a config saved before the field existed
  assert preprocessing.InkStatistics.from_config(config) == STATISTICS


def test_measured_statistics_hold_their_own_images():
  images = [rendered(tokens, seed) for tokens, seed in EXPRESSIONS]
  statistics = preprocessing.measure_statistics(images)
  for image in images:
    low, _, high = statistics.stroke_width
    assert low <= preprocessing.ink_measures(image)[0] <= high
    np.testing.assert_array_equal(preprocessing.normalise(image, statistics),
                                  preprocessing.crop_to_ink(image))


def _training_and_predict_inputs(records, input_config, statistics):
  """Each record's model input through the training pipeline's transforms, and through
  ``predict`` reading the image as a PNG file (dark on white, as people save them)."""
  vocab = input_pipeline.Vocabulary.from_captions(record["latex"] for record in records)
  encode = input_pipeline.EncodeLabel(vocab)
  fit = input_pipeline.FitImage(input_config, ctc_width_downsample=2)
  pairs = []
  for record in records:
    trained = fit.map(encode.map(record))["image"]
    read = predict.prepare_image(predict.load_image(png_bytes(255 - record["image"][..., 0])),
                                 input_config, statistics)
    pairs.append((trained, read))
  return pairs


def test_training_and_predict_give_a_rendered_sample_the_same_model_input():
  records = [{"image": np.pad(rendered(tokens, seed), 5)[..., None], "latex": tokens,
              "id": str(seed)} for tokens, seed in EXPRESSIONS]
  # The statistics of a model trained on these images.
  statistics = preprocessing.measure_statistics(
      preprocessing.dataset_ink(record["image"][..., 0]) for record in records)
  for trained, read in _training_and_predict_inputs(records, INPUT, statistics):
    np.testing.assert_array_equal(trained, read)


def test_training_and_predict_give_a_crohme_sample_the_same_model_input(crohme_data_dir):
  from hme_jax.infer import saved_model
  config = saved_model.LoadedModel(saved_model.pretrained_path()).config
  builder = input_pipeline.dataset_builder(ml_collections.ConfigDict(
      {**config.dataset.to_dict(), "data_dir": str(crohme_data_dir)}), prepare=False)
  source = input_pipeline.data_source(builder, "2014")
  records = [{key: (value.decode() if isinstance(value, bytes) else value)
              for key, value in source[index].items()} for index in range(0, 986, 41)]
  statistics = preprocessing.InkStatistics.from_config(config)
  for trained, read in _training_and_predict_inputs(records, config.input, statistics):
    assert trained.shape == read.shape
    assert np.abs(trained.astype(int) - read).max() <= 1
