"""The synthetic data: grammar, renderer and the `crohme_synthetic` builder."""

import hashlib
import json
import os
import pathlib
import subprocess
import sys
import zipfile

import numpy as np
import pytest
import tensorflow_datasets as tfds

import tfds_crohme
from hme_jax.text.vocab import Vocabulary
from tfds_crohme.crohme import comer_archive
from tfds_crohme.crohme_synthetic import grammar
from tfds_crohme.crohme_synthetic import render
from tfds_crohme.crohme_synthetic import samples

REPO_ROOT = pathlib.Path(__file__).parents[1]
REAL_ARCHIVE = REPO_ROOT.parent / "shared" / "crohme" / "data.zip"
requires_real_archive = pytest.mark.skipif(
    not REAL_ARCHIVE.exists(), reason=f"no CROHME archive at {REAL_ARCHIVE}")


@pytest.fixture(scope="module")
def expressions():
  rng = np.random.default_rng(123)
  return [grammar.sample_expression(rng) for _ in range(3000)]


# --- grammar -------------------------------------------------------------------


def test_expressions_use_only_grammar_tokens(expressions):
  used = {token for expression in expressions for token in expression.split()}
  assert used <= grammar.TOKENS
  # The grammar reaches every token it declares (nothing dead in the tables).
  assert used == grammar.TOKENS


def test_expression_lengths_are_mostly_short(expressions):
  lengths = np.array([len(expression.split()) for expression in expressions])
  assert lengths.min() >= 1 and lengths.max() <= 25
  assert np.median(lengths) <= 12
  assert (lengths <= 5).mean() > 0.15  # plenty of very short ones to learn from


@pytest.mark.parametrize("max_tokens", [1, 3, 8])
def test_max_tokens_is_respected(max_tokens):
  rng = np.random.default_rng(max_tokens)
  for _ in range(200):
    assert 1 <= len(grammar.sample_expression(rng, max_tokens).split()) <= max_tokens


def test_expressions_are_well_formed(expressions):
  for expression in expressions:
    tokens = expression.split()
    depth = 0
    for position, token in enumerate(tokens):
      depth += {"{": 1, "}": -1}.get(token, 0)
      assert depth >= 0, expression
      if token in ("^", "_"):
        assert tokens[position + 1] == "{", expression
      if token == r"\frac":
        closing = _group_end(tokens, position + 1)
        assert tokens[closing + 1] == "{", expression
    assert depth == 0, expression


def _group_end(tokens, start):
  assert tokens[start] == "{"
  depth = 0
  for position in range(start, len(tokens)):
    depth += {"{": 1, "}": -1}.get(tokens[position], 0)
    if depth == 0:
      return position
  raise AssertionError(f"unclosed group in {' '.join(tokens)}")


def test_same_seed_same_expressions():
  first = [grammar.sample_expression(np.random.default_rng(7)) for _ in range(5)]
  again = [grammar.sample_expression(np.random.default_rng(7)) for _ in range(5)]
  assert first == again
  rng = np.random.default_rng(7)
  assert len({grammar.sample_expression(rng) for _ in range(50)}) > 25


@requires_real_archive
def test_grammar_tokens_are_crohme_training_tokens():
  with zipfile.ZipFile(REAL_ARCHIVE) as archive:
    captions = comer_archive.read_captions(archive, "train").values()
  training_tokens = set(Vocabulary.from_captions(captions).tokens)
  assert grammar.TOKENS <= training_tokens


# --- rendering -----------------------------------------------------------------


def test_to_mathtext_joins_tokens_so_scripts_attach():
  assert render.to_mathtext("x ^ { 2 }") == "$x^{2}$"
  assert render.to_mathtext(r"\sin x + \sqrt [ 3 ] { y }") == r"$\sin x+\sqrt[3]{y}$"
  assert render.to_mathtext(r"\frac { 1 } { 2 }") == r"$\dfrac{1}{2}$"
  assert render.to_mathtext(r"\frac { 1 } { 2 }", display_fractions=False) == r"$\frac{1}{2}$"


def test_render_polarity_and_shape():
  rng = np.random.default_rng(0)
  for expression in [r"\frac { 1 } { x ^ { 2 } }", "7", r"\lim _ { x \rightarrow 0 } \sin x"]:
    pixels = render.render_expression(expression, rng)
    assert pixels.dtype == np.uint8 and pixels.ndim == 2
    assert set(np.unique(pixels)) == {0, 255}  # binary strokes, like CROHME bitmaps
    # Dark background all round (the margin), bright ink a minority of pixels.
    border = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
    assert not border.any()
    assert 0.02 < (pixels > 0).mean() < 0.5


def test_render_to_a_given_height():
  pixels = render.render_expression("a + b", np.random.default_rng(0), height=32)
  assert pixels.shape[0] == 32 and pixels.shape[1] > 32


def test_longer_expressions_render_wider():
  short = render.render_expression("x", np.random.default_rng(0))
  long = render.render_expression("x + y + z + 1 2 3 4", np.random.default_rng(0))
  assert long.shape[1] > 3 * short.shape[1]


def test_distortion_varies_with_the_seed():
  first = render.render_expression("a + b", np.random.default_rng(1))
  again = render.render_expression("a + b", np.random.default_rng(1))
  other = render.render_expression("a + b", np.random.default_rng(2))
  np.testing.assert_array_equal(first, again)
  assert first.shape != other.shape or (first != other).any()


def test_unrenderable_tokens_are_named():
  with pytest.raises(ValueError, match="notacommand"):
    render.render_expression(r"\notacommand { x }", np.random.default_rng(0))


def test_samples_are_identical_in_another_process():
  indices = range(3)
  here = [hashlib.sha256(samples.make_sample(5, "test", i, 25)["image"]).hexdigest()
          for i in indices]
  script = ("import hashlib, json; from tfds_crohme.crohme_synthetic import samples; "
            "print(json.dumps([hashlib.sha256(samples.make_sample(5, 'test', i, 25)['image'])"
            ".hexdigest() for i in range(3)]))")
  env = dict(os.environ, PYTHONPATH=os.pathsep.join(
      filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])))
  result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env=env, cwd=REPO_ROOT, timeout=120)
  assert result.returncode == 0, result.stderr[-3000:]
  assert json.loads(result.stdout) == here


def test_caption_matches_the_sample():
  for index in range(5):
    assert samples.caption(3, "train", index, 25) == samples.make_sample(3, "train", index, 25)["latex"]


# --- the builder -----------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_data_dir(tmp_path_factory):
  data_dir = tmp_path_factory.mktemp("tfds")
  tfds.builder("crohme_synthetic/tiny", data_dir=os.fspath(data_dir)).download_and_prepare()
  return data_dir


def read_split(data_dir, name, split):
  source = tfds.data_source(name, split=split, data_dir=os.fspath(data_dir))
  return [source[i] for i in range(len(source))]


def test_tiny_build(tiny_data_dir):
  builder = tfds.builder("crohme_synthetic/tiny", data_dir=os.fspath(tiny_data_dir))
  config = builder.builder_config
  assert {s: i.num_examples for s, i in builder.info.splits.items()} == {
      "train": config.num_train, "test": config.num_test}
  assert set(builder.info.features.keys()) == {"image", "latex", "id"}
  assert builder.info.file_format == tfds.core.FileFormat.ARRAY_RECORD
  train = read_split(tiny_data_dir, "crohme_synthetic/tiny", "train")
  test = read_split(tiny_data_dir, "crohme_synthetic/tiny", "test")
  ids = [r["id"] for r in train + test]
  assert len(set(ids)) == len(ids)
  for record in train + test:
    tokens = record["latex"].decode().split()
    assert 1 <= len(tokens) <= config.max_tokens
    assert set(tokens) <= grammar.TOKENS
    image = record["image"]
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[-1] == 1
    assert np.median(image) == 0 and image.max() == 255
  # Vocabulary metadata: every token the grammar can emit, so that test captions
  # never hold unknown tokens even when the train split is tiny.
  vocabulary = Vocabulary.from_json(tfds_crohme.load_vocabulary(builder))
  assert vocabulary == Vocabulary.from_captions([" ".join(grammar.TOKENS)])
  for record in train + test:
    vocabulary.encode(record["latex"].decode(), sample_id=record["id"].decode())


def _records_by_id(data_dir, name):
  return {r["id"]: r for split in ("train", "test") for r in read_split(data_dir, name, split)}


def test_build_is_deterministic_per_seed(tmp_path):
  def build(data_dir, seed):
    config = tfds_crohme.SyntheticConfig(name=f"seed{seed}", num_train=6, num_test=3, seed=seed)
    tfds.builder("crohme_synthetic", config=config, data_dir=os.fspath(data_dir)).download_and_prepare()
    return _records_by_id(data_dir, f"crohme_synthetic/seed{seed}")

  first, again, other = build(tmp_path / "a", 1), build(tmp_path / "b", 1), build(tmp_path / "c", 2)
  assert first.keys() == again.keys()
  for sample_id, record in first.items():
    assert record["latex"] == again[sample_id]["latex"]
    np.testing.assert_array_equal(record["image"], again[sample_id]["image"])
  assert [first[k]["latex"] for k in sorted(first)] != [other[k]["latex"] for k in sorted(other)]


def test_strokes_are_redrawn_with_a_pen_3_to_5_px_wide():
  bar = np.zeros((30, 60), bool)
  bar[10:19, 5:55] = True  # a 9 px thick stroke
  skeleton = render.skeletonize(bar)
  assert (skeleton[:, 20:40].sum(axis=0) == 1).all()  # thinned to one pixel
  for seed in range(4):
    pixels = render.pen_strokes(skeleton, np.random.default_rng(seed))
    widths = (pixels[:, 20:40] > 0).sum(axis=0)
    assert widths.min() >= 3 and widths.max() <= 5
