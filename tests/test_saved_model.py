"""Exported (params-only) models: written from a work dir, read back by predict/evaluate."""

import io
import json
import os

import jax
import numpy as np
import pytest
from PIL import Image

from hme_jax.data import input_pipeline
from hme_jax.infer import predict, saved_model
from hme_jax.train import checkpoints


@pytest.fixture(scope="module")
def test_images(synthetic_data_dir):
  from conftest import tiny_config
  builder = input_pipeline.dataset_builder(tiny_config(synthetic_data_dir).dataset)
  source = input_pipeline.data_source(builder, "test")
  return [np.asarray(source[i]["image"])[..., 0] for i in range(5)]


@pytest.fixture(scope="module")
def exported(trained_workdir, tmp_path_factory):
  paths = {}
  for dtype in ("float32", "bfloat16"):
    paths[dtype] = str(tmp_path_factory.mktemp(f"export_{dtype}"))
    saved_model.export_model(trained_workdir, paths[dtype], dtype=dtype)
  return paths


def test_export_holds_config_vocab_and_the_same_variables(trained_workdir, exported):
  original = saved_model.LoadedModel(trained_workdir)
  meta = json.loads(open(os.path.join(exported["bfloat16"], saved_model.MODEL_FILE)).read())
  assert meta["format"] == saved_model.EXPORT_FORMAT and meta["dtype"] == "bfloat16"
  assert meta["step"] == original.step
  for dtype, tolerance in (("float32", 0.0), ("bfloat16", 2 ** -8)):
    loaded = saved_model.LoadedModel(exported[dtype])
    assert loaded.vocab == original.vocab and loaded.config == original.config
    jax.tree.map(lambda a, b: np.testing.assert_allclose(
        np.asarray(a), np.asarray(b), rtol=tolerance, atol=tolerance * 1e-2),
        loaded.variables, original.variables)
  sizes = {d: os.path.getsize(os.path.join(p, saved_model.PARAMS_FILE)) for d, p in exported.items()}
  assert sizes["bfloat16"] < 0.6 * sizes["float32"]


def test_exported_model_reads_like_the_work_dir(trained_workdir, exported, test_images):
  from_workdir = predict.Recognizer.from_workdir(trained_workdir, decoder="greedy")
  from_export = predict.Recognizer.from_workdir(exported["float32"], decoder="greedy")
  assert from_export(test_images) == from_workdir(test_images)


def test_recognizer_takes_paths_bytes_pil_and_arrays(exported, test_images, tmp_path):
  recognizer = predict.Recognizer.from_workdir(exported["float32"], decoder="greedy")
  image = 255 - test_images[0]  # dark ink on paper, as people write
  path = tmp_path / "formula.png"
  Image.fromarray(image).save(path)
  expected = recognizer(image)
  assert isinstance(expected, str)
  assert recognizer(str(path)) == recognizer(path.read_bytes()) == expected
  assert recognizer(Image.open(path)) == expected
  assert recognizer([str(path), image]) == [expected, expected]


def test_long_lists_stream_in_eval_batches(exported, test_images):
  recognizer = predict.Recognizer.from_workdir(exported["float32"], decoder="greedy")
  recognizer.batch_size = 2
  calls = []
  decode = recognizer.model.decode
  recognizer.model.decode = lambda batches, **kw: (calls.append(len(batches[0]["ids"])),
                                                   decode(batches, **kw))[1]
  many = recognizer(test_images)
  assert calls == [2, 2, 1]  # 5 images: batches of at most 2, never one batch of 5
  assert many == [recognizer(image) for image in test_images]


def test_blank_image_is_a_clear_error(exported, test_images, tmp_path, capsys):
  recognizer = predict.Recognizer.from_workdir(exported["float32"], decoder="greedy")
  for blank in (np.full((40, 90), 255, np.uint8), np.zeros((1, 1), np.uint8)):
    with pytest.raises(predict.NoInkError, match="no ink"):
      recognizer(blank)
  with pytest.raises(predict.NoInkError, match="Image 1: .*no ink"):
    recognizer([test_images[0], np.full((20, 20), 255, np.uint8)])
  Image.fromarray(np.full((30, 30), 255, np.uint8)).save(tmp_path / "blank.png")
  Image.fromarray(test_images[0]).save(tmp_path / "ink.png")
  code = predict.main(["--workdir", exported["float32"], "--decoder", "greedy",
                       str(tmp_path / "blank.png"), str(tmp_path / "ink.png")])
  out, err = capsys.readouterr()
  assert code == 1 and "blank.png: error: The image (30x30 px) has no ink" in err
  assert out.startswith(str(tmp_path / "ink.png") + "\t")


def test_mismatched_params_are_refused(exported, tmp_path):
  broken = tmp_path / "broken"
  broken.mkdir()
  meta = json.loads(open(os.path.join(exported["float32"], saved_model.MODEL_FILE)).read())
  meta["config"]["model"]["lstm_hidden"] = 48  # a different model than the stored params
  (broken / saved_model.MODEL_FILE).write_text(json.dumps(meta))
  with open(os.path.join(exported["float32"], saved_model.PARAMS_FILE), "rb") as f:
    (broken / saved_model.PARAMS_FILE).write_bytes(f.read())
  with pytest.raises(checkpoints.CheckpointMismatchError, match="does not hold the parameters"):
    saved_model.LoadedModel(str(broken))
  meta["format"] = "something-else"
  (broken / saved_model.MODEL_FILE).write_text(json.dumps(meta))
  with pytest.raises(checkpoints.CheckpointMismatchError, match="something-else"):
    saved_model.LoadedModel(str(broken))


def test_bytes_that_are_no_image_name_the_problem(exported):
  recognizer = predict.Recognizer.from_workdir(exported["float32"], decoder="greedy")
  with pytest.raises(predict.ImageError, match="Not an image"):
    recognizer(b"not an image at all")
  with pytest.raises(predict.ImageError):
    recognizer(io.BytesIO(b"").getvalue())


def test_export_sets_decoder_defaults_and_records_scores(trained_workdir, tmp_path):
  path = str(tmp_path / "beam_default")
  saved_model.export_model(trained_workdir, path, eval_settings={"decoder": "beam",
                                                                 "well_formed": True})
  recognizer = predict.Recognizer.from_workdir(path)
  assert (recognizer.decoder, recognizer.well_formed) == ("beam", True)
  assert saved_model.LoadedModel(path).scores == {}
  saved_model.write_scores(path, {"2014": {"exprate": 0.25}})
  saved_model.write_scores(path, {"2016": {"exprate": 0.2}})
  assert saved_model.LoadedModel(path).scores == {"2014": {"exprate": 0.25},
                                                  "2016": {"exprate": 0.2}}
  with pytest.raises(KeyError, match="no field 'decodr'"):
    saved_model.export_model(trained_workdir, str(tmp_path / "typo"),
                             eval_settings={"decodr": "beam"})
  assert not os.path.exists(tmp_path / "typo" / saved_model.PARAMS_FILE)


def test_fine_tuning_starts_from_a_trained_model_and_refuses_another(synthetic_data_dir,
                                                                       trained_workdir, exported):
  from conftest import tiny_config
  from hme_jax.families import registry
  from hme_jax.text.vocab import Vocabulary
  from hme_jax.train import trainer
  config = tiny_config(synthetic_data_dir)
  vocab = input_pipeline.load_vocabulary(input_pipeline.dataset_builder(config.dataset))
  batch = {k: v for k, v in input_pipeline.dummy_batch(config, 2).items() if k != "ids"}

  def start(config, vocab=vocab):
    family = registry.create_family(config, vocab)
    init, optimizer, plateau = trainer.make_initializer(family, config, 10, batch)
    return trainer.load_pretrained(init(jax.random.PRNGKey(7), batch), config, optimizer,
                                   plateau, vocab=vocab)

  scratch = start(config)
  for source in (exported["float32"], trained_workdir):
    config.train.init_from = source
    state = start(config)
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(state.variables),
                 jax.device_get(saved_model.LoadedModel(source).variables))
    assert int(state.step) == 0
    assert not np.array_equal(jax.tree.leaves(state.params)[0], jax.tree.leaves(scratch.params)[0])

  config.model.lstm_hidden *= 2
  with pytest.raises(checkpoints.CheckpointMismatchError, match="init_from.*another model"):
    start(config)
  config.model.lstm_hidden //= 2
  with pytest.raises(checkpoints.CheckpointMismatchError, match="another vocabulary"):
    start(config, Vocabulary(vocab.tokens[:-1]))
