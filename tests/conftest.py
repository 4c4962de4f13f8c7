"""Shared fixtures: a tiny synthetic dataset and a briefly trained work dir."""

import contextlib
import logging
import pathlib

import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
CROHME_ZIP = REPO_ROOT.parent / "shared" / "crohme" / "data.zip"

requires_crohme = pytest.mark.skipif(not CROHME_ZIP.exists(),
                                     reason=f"CROHME archive not found at {CROHME_ZIP}")


@contextlib.contextmanager
def compilations(caplog):
  """Yields a list that, after the block, holds JAX's "Compiling ..." log line of every program
  compiled inside it, in any thread."""
  import jax
  compiled: list[str] = []
  # Globally: the trainer compiles in threads, which a context manager's setting skips.
  jax.config.update("jax_log_compiles", True)
  try:
    with caplog.at_level(logging.WARNING, logger="jax"):
      first = len(caplog.records)
      yield compiled
      compiled += [record.getMessage() for record in caplog.records[first:]
                   if record.getMessage().startswith("Compiling")]
  finally:
    jax.config.update("jax_log_compiles", False)


def tiny_config(data_dir: str):
  """The quickstart config shrunk to seconds: the tiny synthetic dataset, a tiny CRNN."""
  from configs import quickstart
  config = quickstart.get_config()
  config.dataset.name = "crohme_synthetic/tiny"
  config.dataset.data_dir = str(data_dir)
  config.model.small_channels = (8, 16, 32)
  config.model.lstm_hidden = 32
  config.train.batch_size = 16
  config.train.num_epochs = 2
  config.train.log_every_steps = 2
  config.train.progress_bar = False
  config.eval.batch_size = 16
  config.input.worker_count = 0
  return config


def tiny_attention_config(data_dir: str):
  """configs/attention_synthetic.py shrunk to seconds, on the tiny synthetic dataset.

  Native-scale images in two canvases, sorted batches: the geometry of configs/attention.py.
  """
  from configs import attention_synthetic
  config = attention_synthetic.get_config()
  config.dataset.name = "crohme_synthetic/tiny"
  config.dataset.data_dir = str(data_dir)
  config.model.update(d_model=32, growth_rate=4, dense_layers=1, num_heads=4, decoder_layers=1,
                      ffn_dim=32, coverage_channels=4, max_decode_length=30)
  config.train.update(batch_size=16, num_epochs=1, log_every_steps=2, progress_bar=False)
  config.eval.update(batch_size=16, beam_width=3)
  config.input.update(height=0, max_height=64, max_width=256, sort_window=2,
                      canvases=((48, 160, 16), (64, 256, 32)), worker_count=0)
  return config


@pytest.fixture(scope="session")
def crohme_data_dir(tmp_path_factory):
  """A TFDS data dir holding ``crohme`` prepared from ``CROHME_ZIP`` (skips without it)."""
  if not CROHME_ZIP.exists():
    pytest.skip(f"CROHME archive not found at {CROHME_ZIP}")
  import ml_collections
  from hme_jax.data import input_pipeline
  data_dir = tmp_path_factory.mktemp("tfds_crohme")
  input_pipeline.dataset_builder(ml_collections.ConfigDict(
      {"name": "crohme", "data_dir": str(data_dir), "manual_dir": str(CROHME_ZIP.parent)}))
  return data_dir


@pytest.fixture(scope="session")
def synthetic_data_dir(tmp_path_factory):
  """A TFDS data dir holding the prepared ``crohme_synthetic/tiny`` dataset."""
  from hme_jax.data import input_pipeline
  data_dir = tmp_path_factory.mktemp("tfds")
  input_pipeline.dataset_builder(tiny_config(data_dir).dataset)
  return data_dir


@pytest.fixture(scope="session")
def trained_workdir(tmp_path_factory, synthetic_data_dir):
  """A work dir with checkpoints of a tiny CRNN trained for two short epochs."""
  from hme_jax.train import trainer
  workdir = tmp_path_factory.mktemp("workdir")
  trainer.train_and_evaluate(tiny_config(synthetic_data_dir), str(workdir))
  return str(workdir)
