import csv
import io
import json

import numpy as np
import pytest
from PIL import Image

from hme_jax import checkpoints, evaluate, input_pipeline, predict, saved_model


@pytest.fixture(scope="module")
def test_samples(synthetic_data_dir):
  from conftest import tiny_config
  builder = input_pipeline.dataset_builder(tiny_config(synthetic_data_dir).dataset)
  source = input_pipeline.data_source(builder, "test")
  return [source[i] for i in range(6)]


def test_evaluate_writes_report_and_tsv(trained_workdir, tmp_path):
  report = evaluate.evaluate(trained_workdir, splits=["test"], decoder="greedy",
                             max_samples=20, output_dir=str(tmp_path))
  split = report["splits"]["test"]
  for key in ("exprate", "le1", "le2"):
    assert 0.0 <= split["raw"][key] <= 1.0
  for key in ("token_error_rate", "cer"):  # edit rates: above 1 when predictions run long
    assert split["raw"][key] >= 0.0
  assert split["raw"]["num_samples"] == 20
  assert split["raw"]["exprate"] <= split["raw"]["le1"] <= split["raw"]["le2"]
  assert set(split["length_split"]) == {"short", "long", "all"} and "cleaned" in split
  saved = json.loads((tmp_path / "report_best_greedy.json").read_text())
  assert saved["splits"]["test"]["raw"] == pytest.approx(split["raw"])
  rows = list(csv.DictReader((tmp_path / "predictions_test_best_greedy.tsv").open(), delimiter="\t"))
  assert len(rows) == 20 and len({r["id"] for r in rows}) == 20
  exact = sum(r["errors"] == "0" for r in rows) / 20
  assert exact == pytest.approx(split["raw"]["exprate"])
  for row in rows:
    assert (row["errors"] == "0") == (row["reference"] == row["prediction"])


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
  assert Image.open(render).size[0] > 100


def test_predict_cli_without_a_checkpoint_is_a_clear_error(tmp_path, capsys):
  assert predict.main(["--workdir", str(tmp_path), "x.png"]) == 2
  assert "No checkpoint" in capsys.readouterr().err
