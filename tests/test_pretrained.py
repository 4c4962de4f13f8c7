"""The model shipped in the package (``hme_jax/pretrained/crohme_cpu``).

It must load from the installed package alone, read images this test draws,
and reproduce the figure published for it on CROHME 2014.
"""

import os

import numpy as np
import pytest

from hme_jax.data import preprocessing
from hme_jax.eval import evaluate
from hme_jax.infer import predict, saved_model

# Expressions the test renders as fake handwriting (dark ink on white paper, as
# people photograph them), with a seed each: renders the shipped model reads
# exactly, chosen among 84 simple ones (21 expressions x 4 seeds; it read 35),
# so the test guards against the shipped files or the preprocessing drifting,
# not a claim of accuracy.
RENDERED = (
    ("x ^ { 2 }", 2),
    ("x = 1", 3),
    ("x - 1", 3),
    ("\\sqrt { x }", 0),
    ("x ^ { 2 } + 1", 0),
    ("\\frac { 1 } { 2 }", 2),
)


@pytest.fixture(scope="module")
def recognizer():
  import hme_jax
  return hme_jax.Recognizer.pretrained()  # the one-liner of the README


def test_bundled_model_is_small_bfloat16_and_documented():
  path = saved_model.pretrained_path()
  files = set(os.listdir(path))
  assert {saved_model.MODEL_FILE, saved_model.PARAMS_FILE, "README.md"} <= files
  assert sum(os.path.getsize(os.path.join(path, name)) for name in files) <= 15_000_000
  model = saved_model.LoadedModel(path)
  assert model.config.dataset.name == "crohme" and len(model.vocab) > 100
  assert "2014_first200" in model.scores and "2014" in model.scores
  # Its normalisation statistics, measured on CROHME train (test below), are saved with it.
  assert preprocessing.InkStatistics.from_config(model.config) == preprocessing.CROHME_TRAIN


def test_its_ink_statistics_are_crohme_trains(crohme_data_dir):
  import ml_collections
  from hme_jax.data import input_pipeline
  builder = input_pipeline.dataset_builder(ml_collections.ConfigDict(
      {"name": "crohme", "data_dir": str(crohme_data_dir)}), prepare=False)
  source = input_pipeline.data_source(builder, "train")
  measured = preprocessing.measure_statistics(
      preprocessing.dataset_ink(np.asarray(source[index]["image"])[..., 0])
      for index in range(len(source)))
  assert measured == preprocessing.CROHME_TRAIN


def test_reads_images_the_test_renders(recognizer):
  from tfds_crohme.crohme_synthetic import render
  images = [255 - render.render_expression(tokens, np.random.default_rng(seed))
            for tokens, seed in RENDERED]
  assert recognizer(images) == [tokens for tokens, _ in RENDERED]


def test_show_input_writes_what_the_model_read(recognizer, tmp_path, capsys):
  from PIL import Image
  sample = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                        "examples", "formula.png")
  shown = tmp_path / "input.png"
  assert predict.main(["--show-input", str(shown), sample]) == 0
  assert capsys.readouterr().out.strip() == recognizer(sample)
  view = np.asarray(Image.open(shown))
  np.testing.assert_array_equal(view, recognizer.prepare(sample))
  assert view.shape[0] == recognizer.input_config.height and view[0].max() == 0


def test_blank_image_gets_a_clear_error(recognizer):
  with pytest.raises(predict.NoInkError, match="no ink"):
    recognizer(np.full((64, 200), 255, np.uint8))


def test_reproduces_its_published_2014_exprate(crohme_data_dir, tmp_path):
  from conftest import CROHME_ZIP
  path = saved_model.pretrained_path()
  published = saved_model.LoadedModel(path).scores["2014_first200"]
  report = evaluate.evaluate(
      path, splits=["2014"], max_samples=published["max_samples"],
      decoder=published["decoder"], beam_width=published["beam_width"],
      well_formed=published["well_formed"], output_dir=str(tmp_path),
      data_dir=str(crohme_data_dir), manual_dir=str(CROHME_ZIP.parent))
  scores = report["splits"]["2014"]["raw"]
  assert scores["num_samples"] == published["max_samples"]
  assert abs(scores["exprate"] - published["exprate"]) <= 0.005


def test_reads_the_sample_images_of_the_readme(recognizer):
  import importlib.util
  folder = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples")
  spec = importlib.util.spec_from_file_location("make_samples",
                                                os.path.join(folder, "make_samples.py"))
  make_samples = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(make_samples)
  names = sorted(make_samples.SAMPLES)
  assert recognizer([os.path.join(folder, name) for name in names]) == [
      make_samples.SAMPLES[name][0] for name in names]
