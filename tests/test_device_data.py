"""The device-resident training split (hme_jax/data/device_data.py) against the host pipeline."""

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import default
from conftest import compilations, tiny_attention_config, tiny_config
from hme_jax import sharding
from hme_jax.data import device_data, input_pipeline
from hme_jax.families import registry
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
  groups, indices, _ = data.epoch_plan(0)
  assert indices.shape == (data.steps_per_epoch, data.batch_size)
  for group in range(len(data.groups)):
    chosen = indices[groups == group].reshape(-1)
    assert len(set(chosen)) == len(chosen) and chosen.max() < data.group_sizes[group]
  again = data.epoch_plan(0)
  np.testing.assert_array_equal(again[1], indices)
  assert not np.array_equal(data.epoch_plan(1)[1], indices)
  group, device_indices, steps = data.dispatch_at(data.steps_per_epoch + 2, 10**6)
  assert steps == 1
  assert group == data.epoch_plan(1)[0][2]
  np.testing.assert_array_equal(np.asarray(device_indices), data.epoch_plan(1)[1][2])


def test_a_plans_runs_are_consecutive_steps_of_one_group_cut_where_asked():
  sizes = [100, 37, 250, 64]
  one = device_data.DeviceTrainData([], [], sizes, 16, 3, None)
  runs = device_data.DeviceTrainData([], [], sizes, 16, 3, None, steps_per_dispatch=4)
  for epoch in range(2):
    groups, indices, run_ends = runs.epoch_plan(epoch)
    starts = np.concatenate([[0], np.unique(run_ends)[:-1]])
    lengths = np.diff(np.concatenate([starts, [runs.steps_per_epoch]]))
    assert (lengths >= 1).all() and (lengths <= 4).all()
    for start, end in zip(starts, np.unique(run_ends)):
      assert len(set(groups[start:end])) == 1 and (run_ends[start:end] == end).all()
    # Each group's batches fill runs of 4 but the last: ceil(steps / 4) runs.
    assert sorted(groups[starts].tolist()) == sorted(
        g for g, size in enumerate(sizes) for _ in range(-(-(size // 16) // 4)))
    for group, size in enumerate(sizes):
      chosen = indices[groups == group].reshape(-1)
      assert len(set(chosen)) == len(chosen) == size // 16 * 16
  # One step per dispatch: every run is a step.
  np.testing.assert_array_equal(one.epoch_plan(0)[2], np.arange(1, one.steps_per_epoch + 1))
  # A dispatch ends at its run's end or at the stop asked for, whichever comes first.
  groups, indices, run_ends = runs.epoch_plan(1)
  step = runs.steps_per_epoch + 1
  group, rows = runs.batches_at(step, stop=10**6)
  assert group == groups[1] and len(rows) == run_ends[1] - 1
  np.testing.assert_array_equal(rows, indices[1:run_ends[1]])
  assert len(runs.batches_at(step, stop=step + 1)[1]) == 1
  with pytest.raises(ValueError, match="No training step"):
    runs.batches_at(step, stop=step)


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


def assert_each_train_step_compiled_once_ahead(compiled: list[str], result: dict) -> None:
  compiles = [message for message in compiled if "train_step" in message]
  assert 1 <= len(compiles) <= 4
  assert len(compiles) == result["programs_compiled_ahead"] == len(result["batch_shapes"])
  assert result["seconds_to_first_step"] >= result["compile_seconds"] > 0


# The device feed of the CRNN is counted in the resume test below.
@pytest.mark.slow
@pytest.mark.parametrize("make_config, device_resident", [
    (crnn_config, False), (tiny_attention_config, True)])
def test_two_epochs_compile_each_train_step_once_before_the_first_step(
    tmp_path, caplog, synthetic_data_dir, make_config, device_resident):
  config = make_config(synthetic_data_dir)
  config.train.num_epochs = 2
  config.train.compilation_cache_dir = ""
  config.input.device_resident = device_resident
  with compilations(caplog) as compiled:
    result = trainer.train_and_evaluate(config, str(tmp_path / "run"))
  assert_each_train_step_compiled_once_ahead(compiled, result)
  assert [r["epoch"] for r in result["history"]] == [1, 2]


def test_several_steps_in_one_dispatch_are_those_steps_one_by_one(synthetic_data_dir):
  config = crnn_config(synthetic_data_dir)
  data, _, vocab = build(config)
  family = registry.create_family(config, vocab, jnp.float32)
  group = data.groups[1]
  batch = device_data.make_batch(group, np.arange(16), None, config.augment, config.input.height,
                                 input_pipeline.ctc_width_downsample(config))
  state, optimizer, _ = trainer.create_train_state(family, config, 10, batch,
                                                   jax.random.PRNGKey(0))
  step_args = (family, optimizer, config.augment, config.input.height,
               input_pipeline.ctc_width_downsample(config))
  rng = jax.random.PRNGKey(1)
  rows = np.stack([np.roll(np.arange(16), shift) for shift in range(4)]).astype(np.int32)
  # Three of the four rows: the fourth is padding, never trained on.
  looped, looped_sums = jax.jit(functools.partial(trainer.device_train_steps, *step_args))(
      state, (group, rows, np.int32(3)), rng)
  one = jax.jit(functools.partial(trainer.device_train_step, *step_args))
  sums = []
  for row in rows[:3]:
    state, metric_sums = one(state, (group, row), rng)
    sums.append(metric_sums)
  assert int(looped.step) == int(state.step) == 3
  for key in ("loss_sum", "samples", "steps", "grad_norm"):
    np.testing.assert_allclose(looped_sums[key], sum(s[key] for s in sums), rtol=1e-4)
  for a, b in zip(jax.tree.leaves(looped.params), jax.tree.leaves(state.params)):
    np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-5)


def test_several_steps_per_dispatch_need_the_device_feed(tmp_path, synthetic_data_dir):
  config = crnn_config(synthetic_data_dir)
  config.train.steps_per_dispatch = 4
  with pytest.raises(ValueError, match="steps_per_dispatch=4 .*device_resident=True"):
    trainer.train_and_evaluate(config, str(tmp_path / "run"))
  assert not os.path.exists(tmp_path / "run")  # refused before anything is written


@pytest.mark.slow
@pytest.mark.parametrize("steps_per_dispatch", [1, 3])
def test_device_resident_resume_is_exact_and_a_feed_change_is_refused(
    tmp_path, caplog, synthetic_data_dir, steps_per_dispatch):
  config = crnn_config(synthetic_data_dir)
  config.input.device_resident = True
  config.train.steps_per_dispatch = steps_per_dispatch
  config.train.log_every_steps = 100  # no cut of a dispatch but at the epoch's end
  config.train.num_epochs = 2
  config.train.compilation_cache_dir = ""
  with compilations(caplog) as compiled:
    straight = trainer.train_and_evaluate(config, str(tmp_path / "straight"))
  assert_each_train_step_compiled_once_ahead(compiled, straight)
  config.train.max_steps = 1  # stops mid-epoch (and, with runs of 3, mid-run), then resumes
  trainer.train_and_evaluate(config, str(tmp_path / "resumed"))
  config.train.max_steps = 0
  resumed = trainer.train_and_evaluate(config, str(tmp_path / "resumed"))
  # The stop at step 1 validated there; the end of the run matches the straight one.
  assert [r["step"] for r in resumed["history"]] == [1, 5, 10]
  keys = ("epoch", "step", "train_loss", "val_loss")
  assert [straight["history"][-1][k] for k in keys] == [resumed["history"][-1][k] for k in keys]
  for a, b in zip(jax.tree.leaves(final_variables(str(tmp_path / "straight"))),
                  jax.tree.leaves(final_variables(str(tmp_path / "resumed")))):
    np.testing.assert_array_equal(a, b)

  config.train.num_epochs = 3
  config.train.steps_per_dispatch = steps_per_dispatch + 1
  with pytest.raises(checkpoints.CheckpointMismatchError, match="steps_per_dispatch"):
    trainer.train_and_evaluate(config, str(tmp_path / "resumed"))
  config.train.steps_per_dispatch = 1
  config.input.device_resident = False
  with pytest.raises(checkpoints.CheckpointMismatchError,
                     match="device_resident=True" if steps_per_dispatch == 1
                     else "steps_per_dispatch"):
    trainer.train_and_evaluate(config, str(tmp_path / "resumed"))
