"""The model-family registry: a third family added through it alone trains, evaluates, predicts."""

import json
import pathlib

import flax.linen as nn
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import tiny_config
from hme_jax.data import input_pipeline
from hme_jax.eval import evaluate
from hme_jax.families import registry
from hme_jax.infer import predict, saved_model
from hme_jax.train import trainer


class ColumnClassifier(nn.Module):
  """Per frame of two image columns, class scores from the column pair: a toy CTC model."""

  num_classes: int

  @nn.compact
  def __call__(self, images, image_widths, train: bool):
    del train
    batch, height, width, _ = images.shape
    frames = -(-width // 2)
    images = jnp.pad(images, ((0, 0), (0, 0), (0, 2 * frames - width), (0, 0)))
    columns = images.reshape(batch, height, frames, 2).transpose(0, 2, 1, 3)
    logits = nn.Dense(self.num_classes, name="toy_classifier")(columns.reshape(batch, frames, -1))
    frame_paddings = (jnp.arange(frames)[None, :] >= -(-image_widths[:, None] // 2))
    return logits.astype(jnp.float32), frame_paddings.astype(jnp.float32)


class ToyFamily(registry.CTCFamily):
  create_model = staticmethod(lambda model_config, num_classes, dtype: ColumnClassifier(num_classes))

  def trainable_mask(self, abstract_params):
    return None

  def describe(self) -> str:
    return "toy column classifier"


@pytest.fixture()
def toy_registered(monkeypatch):
  monkeypatch.setitem(registry.FAMILIES, "toy_ctc", ToyFamily)


def test_an_unknown_family_names_the_registered_ones():
  config = tiny_config("/nonexistent")
  config.model.name = "transformer_xl"
  with pytest.raises(ValueError, match=r"'transformer_xl'.*\['attention', 'crnn'\]"):
    registry.create_family(config, None)


def test_registering_a_name_twice_with_another_family_is_refused(toy_registered):
  with pytest.raises(ValueError, match="already registered"):
    registry.register_family("toy_ctc", registry.CTCFamily)


@pytest.mark.slow
def test_a_family_added_through_the_registry_trains_evaluates_and_predicts(
    toy_registered, synthetic_data_dir, tmp_path):
  config = tiny_config(synthetic_data_dir)
  config.model.name = "toy_ctc"
  config.train.num_epochs = 1
  workdir = tmp_path / "workdir"
  trainer.train_and_evaluate(config, str(workdir))
  history = json.loads(pathlib.Path(workdir, "metrics.json").read_text())["history"]
  assert len(history) == 1 and np.isfinite(history[0]["train_loss"])

  model = saved_model.LoadedModel(str(workdir))
  assert isinstance(model.family, ToyFamily)
  assert set(model.variables["params"]) == {"toy_classifier"}
  report = evaluate.evaluate(str(workdir), splits=["test"], decoder="beam", beam_width=3,
                             max_samples=8, output_dir=str(tmp_path / "eval"))
  assert report["splits"]["test"]["raw"]["num_samples"] == 8

  record = input_pipeline.data_source(input_pipeline.dataset_builder(config.dataset), "test")[0]
  [result] = predict.Recognizer.from_workdir(str(workdir)).recognize(
      [255 - record["image"][..., 0]])
  assert all(token in model.vocab for token in result.tokens)
