import csv
import io
import json
import logging

import numpy as np
import pytest
from PIL import Image

from hme_jax.data import input_pipeline
from hme_jax.eval import decode, evaluate
from hme_jax.infer import predict, saved_model
from hme_jax.text import vocab
from hme_jax.train import checkpoints


@pytest.fixture(scope="module")
def test_samples(synthetic_data_dir):
  from conftest import tiny_config
  builder = input_pipeline.dataset_builder(tiny_config(synthetic_data_dir).dataset)
  source = input_pipeline.data_source(builder, "test")
  return [source[i] for i in range(6)]


def levenshtein(a, b) -> int:
  """Textbook dynamic programme (independent of hme_jax.eval.metrics' bit-parallel one)."""
  row = list(range(len(b) + 1))
  for i, x in enumerate(a, 1):
    previous, row[0] = row[0], i
    for j, y in enumerate(b, 1):
      previous, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, previous + (x != y))
  return row[-1]


def test_evaluate_writes_report_and_tsv(trained_workdir, tmp_path):
  report = evaluate.evaluate(trained_workdir, splits=["test"], decoder="greedy",
                             max_samples=20, output_dir=str(tmp_path))
  split = report["splits"]["test"]
  assert split["raw"]["num_samples"] == 20
  assert set(split["length_split"]) == {"short", "long", "all"} and "cleaned" in split
  saved = json.loads((tmp_path / "report_best_greedy.json").read_text())
  assert saved["splits"]["test"]["raw"] == pytest.approx(split["raw"])
  rows = list(csv.DictReader((tmp_path / "predictions_test_best_greedy.tsv").open(), delimiter="\t"))
  assert len(rows) == 20 and len({r["id"] for r in rows}) == 20
  references = [r["reference"].split() for r in rows]
  predictions = [r["prediction"].split() for r in rows]
  errors = [levenshtein(ref, pred) for ref, pred in zip(references, predictions)]
  assert [int(r["errors"]) for r in rows] == errors
  # Every figure of the report, recomputed from the TSV's references and predictions.
  assert split["raw"]["exprate"] == pytest.approx(np.mean([e == 0 for e in errors]))
  assert split["raw"]["le1"] == pytest.approx(np.mean([e <= 1 for e in errors]))
  assert split["raw"]["le2"] == pytest.approx(np.mean([e <= 2 for e in errors]))
  assert split["raw"]["token_error_rate"] == pytest.approx(
      sum(errors) / sum(len(ref) for ref in references))
  assert split["raw"]["cer"] == pytest.approx(
      sum(levenshtein("".join(ref), "".join(pred)) for ref, pred in zip(references, predictions))
      / sum(len("".join(ref)) for ref in references))
  assert 0 < sum(errors)  # a two-epoch model: the rates are not trivially 0


def test_beam_search_is_at_least_as_good_as_greedy_in_probability(trained_workdir):
  model = saved_model.LoadedModel(trained_workdir)
  builder = input_pipeline.dataset_builder(model.config.dataset)
  dataset = input_pipeline.eval_dataset(model.config, input_pipeline.data_source(builder, "test"),
                                        model.vocab, batch_size=8, max_samples=8)
  greedy, _ = model.decode(dataset, decoder="greedy")
  beam, _ = model.decode(dataset, decoder="beam", beam_width=4, num_alternatives=4)
  assert [p.id for p in greedy] == [p.id for p in beam]
  for prediction in beam:
    scores = [score for _, score in prediction.alternatives]
    assert scores == sorted(scores, reverse=True)
    assert prediction.prediction == prediction.alternatives[0][0]


def test_a_reference_token_outside_the_vocabulary_is_scored_wrong_with_a_warning(
    trained_workdir, test_samples, caplog):
  model = saved_model.LoadedModel(trained_workdir)
  records = [dict(record) for record in test_samples]
  records[1]["latex"] = records[1]["latex"] + b" \\omega"  # not a token of the training data
  unknown_id = records[1]["id"].decode()
  with caplog.at_level(logging.WARNING):
    predictions, loss_sums = model.decode(
        input_pipeline.eval_dataset(model.config, records, model.vocab, batch_size=8))
  expected, expected_loss = model.decode(
      input_pipeline.eval_dataset(model.config, test_samples, model.vocab, batch_size=8))
  assert [p.id for p in predictions] == [p.id for p in expected]
  for got, want in zip(predictions, expected):
    assert got.prediction == want.prediction
    if got.id == unknown_id:
      assert got.reference == want.reference + [vocab.UNKNOWN] != got.prediction
    else:
      assert got.reference == want.reference
  assert any("\\omega" in r.getMessage() and unknown_id in r.getMessage() for r in caplog.records)
  # Scored as a wrong expression, left out of the loss.
  wrong = [p for p in predictions if p.reference != p.prediction]
  assert decode.summarize(predictions)["all"]["raw"]["exprate"] == pytest.approx(
      1 - len(wrong) / len(predictions))
  assert loss_sums["samples"] == expected_loss["samples"] - 1


def test_evaluate_errors_are_clear(trained_workdir, tmp_path):
  with pytest.raises(input_pipeline.DatasetNotFoundError, match="2019"):
    evaluate.evaluate(trained_workdir, splits=["2019"], output_dir=str(tmp_path))
  with pytest.raises(checkpoints.NoCheckpointError, match="No checkpoint"):
    saved_model.LoadedModel(str(tmp_path))
  with pytest.raises(checkpoints.NoCheckpointError, match="step 123456"):
    saved_model.LoadedModel(trained_workdir, checkpoint="123456")


def encode(array: np.ndarray, fmt: str) -> bytes:
  buffer = io.BytesIO()
  Image.fromarray(array).save(buffer, format=fmt)
  return buffer.getvalue()


def test_load_image_accepts_real_formats_and_rejects_bad_input():
  ink = np.zeros((30, 60), np.uint8)
  ink[10:20, 5:55] = 255
  for fmt in ("PNG", "BMP"):
    np.testing.assert_array_equal(predict.load_image(encode(ink, fmt)), ink)
  colour = np.stack([ink] * 3, axis=-1)
  assert predict.load_image(encode(colour, "JPEG")).shape == (30, 60)
  transparent = np.zeros((30, 60, 4), np.uint8)
  transparent[10:20, 5:55, 3] = 255  # black ink, transparent paper
  loaded = predict.load_image(encode(transparent, "PNG"))
  assert loaded[0, 0] == 255 and loaded[15, 30] == 0
  with pytest.raises(predict.ImageError, match="empty"):
    predict.load_image(b"")
  with pytest.raises(predict.ImageError, match="Not an image"):
    predict.load_image(b"this is text, not pixels")
  with pytest.raises(predict.ImageError, match="pixels"):
    predict.load_image(encode(ink, "PNG"), max_pixels=100)


def test_prediction_ignores_polarity_colour_and_margins(trained_workdir, test_samples):
  recognizer = predict.Recognizer.from_workdir(trained_workdir, beam_width=4)
  originals = [sample["image"][..., 0] for sample in test_samples]
  variants = []
  for image in originals:
    paper = 255 - np.pad(image, 25)                          # dark ink on light paper, margins
    variants.append(predict.load_image(encode(np.stack([paper] * 3, -1), "PNG")))  # as colour
  expected = recognizer.recognize(originals)
  got = recognizer.recognize(variants)
  assert [r.latex for r in got] == [r.latex for r in expected]
  for result in got:
    assert result.alternatives[0][0] == result.latex
    assert len(result.alternatives) <= 4


def test_predict_cli_keeps_going_after_a_bad_file(trained_workdir, test_samples, tmp_path, capsys):
  good = tmp_path / "good.png"
  good.write_bytes(encode(255 - test_samples[0]["image"][..., 0], "PNG"))
  empty = tmp_path / "empty.png"
  empty.write_bytes(b"")
  text = tmp_path / "notes.jpg"
  text.write_text("not an image")
  render = tmp_path / "render.png"
  code = predict.main(["--workdir", trained_workdir, "--json", "--render", str(render),
                       str(good), str(empty), str(text)])
  captured = capsys.readouterr()
  assert code == 1
  records = json.loads(captured.out)
  assert [r["file"] for r in records] == [str(good), str(empty), str(text)]
  assert "latex" in records[0] and records[0]["alternatives"][0]["latex"] == records[0]["latex"]
  assert "empty" in records[1]["error"] and "Not an image" in records[2]["error"]
  assert "empty.png" in captured.err and "notes.jpg" in captured.err
  # One row (the readable image): the input drawn undistorted, then its LaTeX beside it.
  picture = np.asarray(Image.open(render).convert("L")) < 128
  assert picture.shape == (160, 1000)
  columns = np.flatnonzero(picture.any(axis=0))
  drawings = np.split(columns, np.flatnonzero(np.diff(columns) > 40) + 1)
  assert len(drawings) == 2
  drawn = picture[:, drawings[0]]
  drawn = drawn[drawn.any(axis=1)]
  ink = test_samples[0]["image"][..., 0] > 128
  ink = ink[ink.any(axis=1)][:, ink.any(axis=0)]
  assert drawn.shape[1] / drawn.shape[0] == pytest.approx(ink.shape[1] / ink.shape[0], rel=0.15)


def test_predict_cli_without_a_checkpoint_is_a_clear_error(tmp_path, capsys):
  assert predict.main(["--workdir", str(tmp_path), "x.png"]) == 2
  assert "No checkpoint" in capsys.readouterr().err
