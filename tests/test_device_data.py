"""The device-resident training split (hme_jax/data/device_data.py) against the host pipeline."""

import logging

import jax
import numpy as np
import pytest

from configs import default
from conftest import tiny_attention_config, tiny_config
from hme_jax import sharding
from hme_jax.data import device_data, input_pipeline
from hme_jax.infer import saved_model
from hme_jax.train import checkpoints, trainer


def crnn_config(data_dir):
  config = tiny_config(data_dir)
  config.input.canvases = ((32, 128, 16), (32, 384, 32))
  return config


def build(config):
  builder = input_pipeline.dataset_builder(config.dataset)
  vocab = input_pipeline.load_vocabulary(builder)
  source = input_pipeline.data_source(builder, config.dataset.train_split)
  return device_data.build(config, source, vocab, sharding.make_mesh()), source, vocab


def samples_of(images, heights, widths, labels, label_lengths):
  """``{(image bytes, label tuple)}`` of a batch, each image cut to its content."""
  return {(np.asarray(images[row, :heights[row], :widths[row], 0]).tobytes(),
           tuple(np.asarray(labels[row, :label_lengths[row]])))
          for row in range(len(heights))}


@pytest.mark.parametrize("make_config", [crnn_config, tiny_attention_config])
def test_unaugmented_device_batches_hold_the_host_pipelines_samples(synthetic_data_dir,
                                                                    make_config):
  config = make_config(synthetic_data_dir)
  data, source, vocab = build(config)
  host = set()
  for example in input_pipeline.fitted(config, input_pipeline.encoded_examples(
      config, source, vocab, 0)):
    host.add((example["image"].tobytes(), tuple(example["labels"])))
  device = set()
  for group in data.groups:
    batch = device_data.make_batch(group, np.arange(len(group["labels"])), None, config.augment,
                                   config.input.height, input_pipeline.ctc_width_downsample(config))
    device |= samples_of(*(np.asarray(batch[k]) for k in (
        "images", "image_heights", "image_widths", "labels", "label_lengths")))
    assert batch["sample_mask"].shape == batch["ctc_feasible"].shape == (len(group["labels"]),)
  assert device == host and data.num_samples == len(source)
  # Every group is one of the configured canvases.
  assert set(data.shapes) <= set(config.input.canvases)


def test_epoch_plans_are_full_batches_of_one_group_fixed_by_seed_and_epoch(synthetic_data_dir):
  data, _, _ = build(crnn_config(synthetic_data_dir))
  groups, indices = data.epoch_plan(0)
  assert indices.shape == (data.steps_per_epoch, data.batch_size)
  for group in range(len(data.groups)):
    chosen = indices[groups == group].reshape(-1)
    assert len(set(chosen)) == len(chosen) and chosen.max() < data.group_sizes[group]
  again = data.epoch_plan(0)
  np.testing.assert_array_equal(again[1], indices)
  assert not np.array_equal(data.epoch_plan(1)[1], indices)
  group, device_indices = data.batch_at(data.steps_per_epoch + 2)
  assert group == data.epoch_plan(1)[0][2]
  np.testing.assert_array_equal(np.asarray(device_indices), data.epoch_plan(1)[1][2])


def test_small_size_classes_join_the_next_larger_one():
  classes = np.array([0] * 3 + [1] * 40 + [2] * 2)
  merged = device_data.group_classes(classes, batch_size=16)
  assert sorted(set(merged.tolist())) == [1]
  assert device_data.group_classes(np.array([0] * 20 + [3] * 20), 16).tolist() == \
      [0] * 20 + [3] * 20


def augment_config(**fields):
  config = default.get_config().augment
  for name in ("rotation_degrees", "scale", "shear", "elastic_alpha", "brightness", "contrast",
               "stroke_probability"):
    config[name] = fields.get(name, 0.0)
  return config


def one_group_batch(synthetic_data_dir):
  data, _, _ = build(crnn_config(synthetic_data_dir))
  group = data.groups[0]
  return {key: group[key][:8] for key in device_data.GROUP_KEYS}


def test_augmentation_with_nothing_to_do_is_the_identity(synthetic_data_dir):
  batch = one_group_batch(synthetic_data_dir)
  out = device_data.augment(batch, jax.random.PRNGKey(0), augment_config(), fixed_height=32)
  for key in ("images", "image_heights", "image_widths"):
    np.testing.assert_array_equal(np.asarray(out[key]), np.asarray(batch[key]))


def test_device_augmentation_is_seeded_keeps_the_ink_and_the_geometry(synthetic_data_dir):
  batch = one_group_batch(synthetic_data_dir)
  config = default.get_config().augment
  first = device_data.augment(batch, jax.random.PRNGKey(1), config, fixed_height=32)
  again = device_data.augment(batch, jax.random.PRNGKey(1), config, fixed_height=32)
  other = device_data.augment(batch, jax.random.PRNGKey(2), config, fixed_height=32)
  np.testing.assert_array_equal(np.asarray(first["images"]), np.asarray(again["images"]))
  assert not np.array_equal(np.asarray(first["images"]), np.asarray(other["images"]))
  images = np.asarray(first["images"][..., 0])
  heights, widths = np.asarray(first["image_heights"]), np.asarray(first["image_widths"])
  canvas_h, canvas_w = images.shape[1:]
  assert (heights == canvas_h).all() and (widths <= canvas_w).all()
  # The width follows the content (scale and shear change it by a little).
  ratio = widths / np.asarray(batch["image_widths"])
  assert (ratio > 0.6).all() and (ratio < 1.6).all()
  for row in range(len(widths)):
    assert not images[row, :, widths[row]:].any()  # nothing outside the content
    # Thin strokes at this height lose contrast in the resampling, but not their presence.
    before = (np.asarray(batch["images"][row, ..., 0]) > 64).sum()
    assert 0.2 * before < (images[row] > 96).sum() < 3 * before


def final_variables(workdir):
  return jax.tree.map(np.asarray, saved_model.LoadedModel(workdir, "latest").variables)


def count_step_compilations(caplog, run):
  # Globally: the trainer compiles in threads, which a context manager's setting skips.
  jax.config.update("jax_log_compiles", True)
  try:
    with caplog.at_level(logging.WARNING, logger="jax"):
      result = run()
  finally:
    jax.config.update("jax_log_compiles", False)
  messages = [record for record in caplog.records
              if "Compiling" in record.getMessage() and "train_step" in record.getMessage()]
  return result, messages


@pytest.mark.slow
@pytest.mark.parametrize("make_config, device_resident", [
    (crnn_config, True), (crnn_config, False), (tiny_attention_config, True)])
def test_two_epochs_compile_each_train_step_once_before_the_first_step(
    tmp_path, caplog, synthetic_data_dir, make_config, device_resident):
  config = make_config(synthetic_data_dir)
  config.train.num_epochs = 2
  config.train.compilation_cache_dir = ""
  config.input.device_resident = device_resident
  result, compiles = count_step_compilations(
      caplog, lambda: trainer.train_and_evaluate(config, str(tmp_path / "run")))
  assert 1 <= len(compiles) <= 4
  assert len(compiles) == result["programs_compiled_ahead"] == len(result["batch_shapes"])
  assert result["seconds_to_first_step"] >= result["compile_seconds"] > 0
  assert [r["epoch"] for r in result["history"]] == [1, 2]


@pytest.mark.slow
def test_device_resident_resume_is_exact_and_a_feed_change_is_refused(tmp_path,
                                                                      synthetic_data_dir):
  config = crnn_config(synthetic_data_dir)
  config.input.device_resident = True
  config.train.num_epochs = 2
  straight = trainer.train_and_evaluate(config, str(tmp_path / "straight"))
  config.train.max_steps = 3  # stops mid-epoch, then resumes
  trainer.train_and_evaluate(config, str(tmp_path / "resumed"))
  config.train.max_steps = 0
  resumed = trainer.train_and_evaluate(config, str(tmp_path / "resumed"))
  # The stop at step 3 validated there; the end of the run matches the straight one.
  assert [r["step"] for r in resumed["history"]] == [3, 5, 10]
  keys = ("epoch", "step", "train_loss", "val_loss")
  assert [straight["history"][-1][k] for k in keys] == [resumed["history"][-1][k] for k in keys]
  for a, b in zip(jax.tree.leaves(final_variables(str(tmp_path / "straight"))),
                  jax.tree.leaves(final_variables(str(tmp_path / "resumed")))):
    np.testing.assert_array_equal(a, b)

  config.input.device_resident = False
  config.train.num_epochs = 3
  with pytest.raises(checkpoints.CheckpointMismatchError, match="device_resident=True"):
    trainer.train_and_evaluate(config, str(tmp_path / "resumed"))
