"""The order of the training data: whole epochs, and resumes only into the same order."""

import pathlib

import pytest
from conftest import tiny_config
from test_input_pipeline import VOCAB, fake_records, small_config

from hme_jax.data import input_pipeline
from hme_jax.train import checkpoints, trainer


@pytest.mark.parametrize("sort_window", [0, 2])
def test_an_epoch_is_a_pass_of_distinct_samples_when_the_batch_does_not_divide_the_split(
    sort_window):
  config = small_config(num_epochs=3, batch_size=4)
  config.input.sort_window = sort_window
  config.augment.enabled = False
  records = fake_records(10)  # 2 batches per epoch, 2 samples left over
  steps = input_pipeline.steps_per_epoch(config, len(records))
  batches = list(input_pipeline.train_dataset(config, records, VOCAB))
  assert steps == 2 and len(batches) == 3 * steps
  epochs = [[i for batch in batches[k * steps:(k + 1) * steps] for i in batch["ids"]]
            for k in range(3)]
  for epoch in epochs:
    assert len(set(epoch)) == len(epoch) == 8  # no batch reaches into the next pass
    assert set(epoch) <= {f"sample{i}" for i in range(10)}
  assert len({frozenset(epoch) for epoch in epochs}) > 1  # the left-over samples vary


@pytest.mark.parametrize("field, value", [
    ("seed", 1), ("train.batch_size", 8), ("input.sort_window", 0),
    ("dataset.max_train_samples", 50)])
def test_resume_with_another_data_order_is_refused_naming_the_field(
    trained_workdir, synthetic_data_dir, field, value):
  config = tiny_config(synthetic_data_dir)
  group, _, name = field.rpartition(".")
  fields = config[group] if group else config
  saved, fields[name] = fields[name], value
  before = {p: p.stat().st_mtime_ns for p in pathlib.Path(trained_workdir).rglob("*")}
  with pytest.raises(checkpoints.CheckpointMismatchError,
                     match=rf"(?s)order of the training data.*{field}: checkpoint has "
                           rf"{saved!r}, this run has {value!r}.*--config\.{field}={saved}"):
    trainer.train_and_evaluate(config, trained_workdir)
  assert before == {p: p.stat().st_mtime_ns for p in pathlib.Path(trained_workdir).rglob("*")}


def test_resume_compares_old_saved_configs_by_what_they_hold(trained_workdir, synthetic_data_dir):
  work = checkpoints.Checkpoints(trained_workdir, read_only=True)
  meta = work.read_meta(work.latest_step())
  vocab = input_pipeline.load_vocabulary(input_pipeline.dataset_builder(
      tiny_config(synthetic_data_dir).dataset))
  config = tiny_config(synthetic_data_dir)
  config.train.num_epochs = 5  # training longer keeps the order of the first epochs
  work.check_compatible(config, vocab)
  # A config saved before model.d_model and input.sort_window existed: the first is not
  # compared (the CRNN has no d_model), the second reads its old value, 0.
  old = checkpoints.config_to_json(config)
  del old["model"]["d_model"], old["input"]["sort_window"]
  work.read_meta = lambda step: {**meta, "config": old}
  with pytest.raises(checkpoints.CheckpointMismatchError,
                     match=r"input.sort_window: checkpoint has 0, this run has 16"):
    work.check_compatible(config, vocab)
  config.input.sort_window = 0
  work.check_compatible(config, vocab)
  work.close()
