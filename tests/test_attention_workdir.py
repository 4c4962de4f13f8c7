"""The attention family through the shared stack: trainer, checkpoints, evaluate, predict."""

import json
import pathlib

import numpy as np
import pytest

from hme_jax.data import input_pipeline
from hme_jax.eval import evaluate
from hme_jax.families import seq2seq
from hme_jax.infer import predict, saved_model
from hme_jax.train import trainer


@pytest.fixture(scope="module")
def attention_workdir(tmp_path_factory, synthetic_data_dir):
  from conftest import tiny_attention_config
  workdir = tmp_path_factory.mktemp("attention")
  trainer.train_and_evaluate(tiny_attention_config(synthetic_data_dir), str(workdir))
  return str(workdir)


@pytest.mark.slow
def test_trainer_evaluate_and_predict_serve_the_attention_family(attention_workdir, tmp_path):
  history = json.loads(pathlib.Path(attention_workdir, "metrics.json").read_text())["history"]
  assert len(history) == 1 and np.isfinite(history[0]["train_loss"])
  assert history[0]["train_infeasible"] == 0.0  # no CTC constraint for this family

  model = saved_model.LoadedModel(attention_workdir)
  assert isinstance(model.family, seq2seq.Seq2SeqFamily)
  assert model.config.model.name == "attention"

  report = evaluate.evaluate(attention_workdir, splits=["test"], decoder="beam", beam_width=3,
                             max_samples=8, output_dir=str(tmp_path))
  assert report["splits"]["test"]["raw"]["num_samples"] == 8

  builder = input_pipeline.dataset_builder(model.config.dataset)
  record = input_pipeline.data_source(builder, "test")[0]
  recognizer = predict.Recognizer.from_workdir(attention_workdir, beam_width=3)
  [result] = recognizer.recognize([255 - record["image"][..., 0]])  # dark ink on paper
  assert result.alternatives[0][0] == result.latex
  assert all(token in model.vocab for token in result.tokens)
  assert "<sos>" not in result.latex and "<eos>" not in result.latex
