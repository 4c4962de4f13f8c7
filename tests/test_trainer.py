import json
import pathlib
import re
import signal
import subprocess
import sys
import textwrap
import time

import jax
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec
from conftest import REPO_ROOT, compilations, tiny_config

from hme_jax import sharding
from hme_jax.data import input_pipeline
from hme_jax.eval import decode
from hme_jax.families import registry
from hme_jax.infer import saved_model
from hme_jax.text.vocab import Vocabulary
from hme_jax.train import checkpoints, trainer


def test_loss_and_gradients_stay_finite_with_infeasible_samples():
  config = tiny_config("unused")
  config.model.width_downsample = 4
  vocab = Vocabulary(tuple("abcdefgh"))
  family = registry.CTCFamily(config.model, vocab)
  batch_size, width = 4, 64  # 16 CTC frames per image
  batch = {
      "images": np.random.default_rng(0).integers(0, 255, (batch_size, 32, width, 1)).astype(np.uint8),
      "image_widths": np.array([64, 64, 8, 64], np.int32),   # row 2: 2 frames only
      "labels": np.zeros((batch_size, 32), np.int32),
      "label_lengths": np.array([3, 30, 5, 0], np.int32),     # row 1: 30 labels > 16 frames
      "sample_mask": np.array([1, 1, 1, 0], np.float32),      # row 3: filler
  }
  batch["labels"][:, :30] = np.arange(1, 31) % 8 + 1
  variables = dict(jax.jit(family.init)(jax.random.PRNGKey(0), batch))
  params = variables.pop("params")
  (loss, (sums, _)), grads = jax.jit(jax.value_and_grad(family.loss, has_aux=True),
                                     static_argnums=4)(
      params, variables, batch, jax.random.PRNGKey(1), True)
  assert np.isfinite(float(loss))
  assert all(np.isfinite(g).all() for g in jax.tree.leaves(grads))
  assert float(sums["samples"]) == 1.0 and float(sums["infeasible"]) == 2.0
  np.testing.assert_allclose(float(loss), float(sums["loss_sum"]), rtol=1e-6)


@pytest.mark.slow
def test_a_small_model_overfits_a_handful_of_samples(synthetic_data_dir):
  config = tiny_config(synthetic_data_dir)
  config.augment.enabled = False
  config.model.spatial_dropout = config.model.lstm_dropout = config.model.classifier_dropout = 0.0
  config.model.small_channels = (16, 32, 64)
  config.model.lstm_hidden = 64
  config.train.learning_rate = 3e-3
  config.train.batch_size = 8
  builder = input_pipeline.dataset_builder(config.dataset)
  vocab = input_pipeline.load_vocabulary(builder)
  source = input_pipeline.data_source(builder, "train")
  # Eight short expressions, always the same batch.
  short = [i for i in range(len(source)) if len(source[i]["latex"].split()) <= 6][:8]
  records = [source[i] for i in short]
  batch = next(iter(input_pipeline.eval_dataset(config, records, vocab, batch_size=8)))
  batch = {k: v for k, v in batch.items() if k != "ids"}
  family = registry.CTCFamily(config.model, vocab)
  state, optimizer, _ = trainer.create_train_state(family, config, 100, batch, jax.random.PRNGKey(0))
  step = jax.jit(lambda s, b: trainer.train_step(family, optimizer, s, b, jax.random.PRNGKey(1)))
  for _ in range(250):  # all 8 read exactly from about step 150 on
    state, sums = step(state, batch)
  tokens, lengths = family.greedy(state.variables, batch)
  predictions = [vocab.to_latex(t[:n]) for t, n in zip(np.asarray(tokens), np.asarray(lengths))]
  references = [vocab.to_latex(l[:n]) for l, n in zip(batch["labels"], batch["label_lengths"])]
  assert predictions == references, float(sums["loss_sum"])


SHARDED_SCRIPT = textwrap.dedent("""
    import os, sys
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
    sys.path.insert(0, "tests")
    import jax, numpy as np
    from jax.sharding import Mesh
    from conftest import tiny_config, tiny_attention_config
    from hme_jax import sharding
    from hme_jax.eval import decode
    from hme_jax.families import registry
    from hme_jax.text.vocab import Vocabulary
    from hme_jax.train import trainer
    assert jax.device_count() == 4
    config = tiny_attention_config("unused") if sys.argv[1] == "attention" else tiny_config("unused")
    vocab = Vocabulary(tuple("abcdefgh"))
    family = registry.create_family(config, vocab)
    rng = np.random.default_rng(0)
    batch = {"images": rng.integers(0, 255, (8, 32, 128, 1)).astype(np.uint8),
             "image_widths": rng.integers(40, 128, 8).astype(np.int32),
             "labels": rng.integers(1, 9, (8, 16)).astype(np.int32),
             "label_lengths": rng.integers(1, 8, 8).astype(np.int32),
             "sample_mask": np.ones(8, np.float32)}
    results = []
    for devices in (jax.devices()[:1], jax.devices()):
      mesh = Mesh(np.asarray(devices), ("data",))
      replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
      state, optimizer, _ = trainer.create_train_state(family, config, 10, batch, jax.random.PRNGKey(0))
      state = jax.device_put(state, replicated)
      step = jax.jit(lambda s, b: trainer.train_step(family, optimizer, s, b, jax.random.PRNGKey(1)))
      sharded = sharding.shard_batch(batch, mesh)
      assert len(sharded["images"].sharding.device_set) == len(devices)
      for _ in range(2):
        state, sums = step(state, sharded)
      results.append((float(sums["loss_sum"]), jax.tree.map(np.asarray, state.variables)))
    (loss1, vars1), (loss4, vars4) = results
    np.testing.assert_allclose(loss1, loss4, rtol=1e-5)
    # Adam divides by sqrt(v): where a gradient is ~0, float reassociation across shards
    # can move an update by up to ~lr (2e-3 and 5e-3 here), so the tolerance is a fraction
    # of lr * steps (1.1e-4 was seen on one attention parameter).
    for a, b in zip(jax.tree.leaves(vars1), jax.tree.leaves(vars4)):
      np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-3)
    print("SHARDED_OK", loss1, loss4)
""")


@pytest.mark.slow
@pytest.mark.timeout(900)  # a subprocess that compiles the step twice
@pytest.mark.parametrize("family", ["crnn", "attention"])
def test_sharded_step_equals_single_device_step(family):
  result = subprocess.run([sys.executable, "-c", SHARDED_SCRIPT, family], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-4000:]
  assert "SHARDED_OK" in result.stdout


def write_config(path: pathlib.Path, data_dir, family="crnn", **overrides) -> pathlib.Path:
  lines = "\n".join(f"  config.{key} = {value!r}" for key, value in overrides.items())
  make = "tiny_attention_config" if family == "attention" else "tiny_config"
  path.write_text(textwrap.dedent(f"""
      import sys
      sys.path.insert(0, {str(REPO_ROOT / 'tests')!r})
      from conftest import {make}

      def get_config():
        config = {make}({str(data_dir)!r})
      """) + lines + "\n  return config\n")
  return path


def train_command(config_path, workdir):
  return [sys.executable, "train.py", f"--config={config_path}", f"--workdir={workdir}"]


def saved_steps(workdir) -> list[int]:
  directory = pathlib.Path(workdir) / "checkpoints"
  if not directory.exists():
    return []
  return sorted(int(p.name) for p in directory.iterdir() if re.fullmatch(r"\d+", p.name))


def final_variables(workdir):
  return jax.tree.map(np.asarray, saved_model.LoadedModel(workdir, "latest").variables)


@pytest.mark.slow
@pytest.mark.timeout(1500)  # three training processes
@pytest.mark.parametrize("family", ["crnn", "attention"])
def test_kill_and_resume_matches_an_uninterrupted_run(tmp_path, synthetic_data_dir, family):
  config_path = write_config(tmp_path / "config.py", synthetic_data_dir, family,
                             **{"train.num_epochs": 2})
  straight, interrupted = tmp_path / "straight", tmp_path / "interrupted"
  # The uninterrupted run goes on beside the one that is killed: two processes, two cores.
  unbroken_log = tmp_path / "straight.log"
  with unbroken_log.open("w") as log:  # a file, not a pipe that nobody reads until the end
    unbroken = subprocess.Popen(train_command(config_path, straight), cwd=REPO_ROOT,
                                stdout=subprocess.DEVNULL, stderr=log)
  process = subprocess.Popen(train_command(config_path, interrupted), cwd=REPO_ROOT,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  deadline = time.time() + 300
  while not saved_steps(interrupted) and time.time() < deadline and process.poll() is None:
    time.sleep(0.05)
  process.send_signal(signal.SIGKILL)
  process.wait()
  assert unbroken.wait(timeout=600) == 0, unbroken_log.read_text()[-4000:]
  steps_at_kill = saved_steps(interrupted)
  assert steps_at_kill and max(steps_at_kill) < max(saved_steps(straight)), \
      "the run finished before it could be killed"
  subprocess.run(train_command(config_path, interrupted), cwd=REPO_ROOT, check=True,
                 capture_output=True, timeout=600)

  straight_metrics = json.loads((straight / "metrics.json").read_text())
  resumed_metrics = json.loads((interrupted / "metrics.json").read_text())
  keys = ("epoch", "step", "train_loss", "val_loss", "val_exprate", "val_token_error_rate")
  assert [[r[k] for k in keys] for r in straight_metrics["history"]] == \
      [[r[k] for k in keys] for r in resumed_metrics["history"]]
  for a, b in zip(jax.tree.leaves(final_variables(straight)),
                  jax.tree.leaves(final_variables(interrupted))):
    np.testing.assert_array_equal(a, b)


def test_a_workdir_of_another_model_is_refused_and_left_intact(tmp_path, trained_workdir,
                                                               synthetic_data_dir):
  before = {p: p.stat().st_mtime_ns for p in pathlib.Path(trained_workdir).rglob("*")}
  config = tiny_config(synthetic_data_dir)
  config.model.lstm_hidden = 48
  with pytest.raises(checkpoints.CheckpointMismatchError, match=r"(?s)model.lstm_hidden: checkpoint has 32, this run has 48.*--workdir"):
    trainer.train_and_evaluate(config, trained_workdir)
  after = {p: p.stat().st_mtime_ns for p in pathlib.Path(trained_workdir).rglob("*")}
  assert before == after


def test_training_metrics_and_summaries_are_written(trained_workdir):
  metrics = json.loads(pathlib.Path(trained_workdir, "metrics.json").read_text())
  history = metrics["history"]
  assert [r["epoch"] for r in history] == [1, 2]
  assert history[-1]["train_loss"] < history[0]["train_loss"]
  for record in history:
    assert 0.0 <= record["val_exprate"] <= 1.0 and record["val_token_error_rate"] >= 0.0
  assert list(pathlib.Path(trained_workdir, "tensorboard").glob("events.out.tfevents.*"))
  assert Vocabulary.load(trained_workdir) == checkpoints.Checkpoints(
      trained_workdir, read_only=True).config_and_vocab()[1]


@pytest.mark.slow
def test_nan_loss_stops_training_and_keeps_the_last_good_checkpoint(tmp_path, synthetic_data_dir):
  config = tiny_config(synthetic_data_dir)
  config.train.num_epochs = 1
  workdir = str(tmp_path / "run")
  trainer.train_and_evaluate(config, workdir)
  good_steps = saved_steps(workdir)
  good = final_variables(workdir)
  config.train.num_epochs = 2
  config.train.learning_rate = float("nan")
  with pytest.raises(trainer.TrainingDivergedError, match="last good checkpoint"):
    trainer.train_and_evaluate(config, workdir)
  assert saved_steps(workdir) == good_steps
  for a, b in zip(jax.tree.leaves(good), jax.tree.leaves(final_variables(workdir))):
    np.testing.assert_array_equal(a, b)


@pytest.mark.slow
def test_validation_every_n_epochs_or_never_and_steady_throughput(tmp_path, synthetic_data_dir):
  config = tiny_config(synthetic_data_dir)
  config.train.num_epochs = 3
  config.train.eval_every_epochs = 2
  train_images = input_pipeline.dataset_builder(config.dataset).info.splits["train"].num_examples
  steps_per_epoch = input_pipeline.steps_per_epoch(config, train_images)
  result = trainer.train_and_evaluate(config, str(tmp_path / "every2"))
  # Validated (and checkpointed with its ExpRate) after epoch 2 and at the end.
  assert [r["epoch"] for r in result["history"]] == [2, 3]
  assert saved_steps(str(tmp_path / "every2")) == [2 * steps_per_epoch, 3 * steps_per_epoch]
  # Throughput from spans without a compilation; every batch shape met is listed.
  assert result["steady_img_per_s"] > 0
  assert result["batch_shapes"] and all(
      shape[:2] == (config.train.batch_size, config.input.height) for shape in result["batch_shapes"])

  config.train.eval_every_epochs = 0
  config.train.num_epochs = 1
  result = trainer.train_and_evaluate(config, str(tmp_path / "never"))
  assert result["history"] == []
  assert saved_steps(str(tmp_path / "never")) == [steps_per_epoch]
  latest = saved_model.LoadedModel(str(tmp_path / "never"), checkpoint="latest")
  assert latest.step == steps_per_epoch


@pytest.mark.slow
def test_wall_time_budget_stops_validates_and_resumes(tmp_path, synthetic_data_dir):
  config = tiny_config(synthetic_data_dir)
  config.train.max_seconds = 1e-3  # spent after the first step
  workdir = str(tmp_path / "budget")
  result = trainer.train_and_evaluate(config, workdir)
  assert result["steps"] == 1 and saved_steps(workdir) == [1]
  assert [r["step"] for r in result["history"]] == [1]  # validated where it stopped
  record = result["history"][0]
  assert record["step_img_per_s"] >= record["train_img_per_s"] > 0
  assert 0.0 <= record["input_wait_seconds"] <= record["epoch_seconds"]
  meta = checkpoints.Checkpoints(workdir, read_only=True).read_meta(1)
  assert meta["train_seconds"] > 0

  again = trainer.train_and_evaluate(config, workdir)  # the budget is spent: nothing to do
  assert again["steps"] == 1 and saved_steps(workdir) == [1]

  config.train.max_seconds = 0  # no budget: continues to the end
  final = trainer.train_and_evaluate(config, workdir)
  train_images = input_pipeline.dataset_builder(config.dataset).info.splits["train"].num_examples
  assert final["steps"] == config.train.num_epochs * input_pipeline.steps_per_epoch(
      config, train_images)
  assert final["train_seconds"] > meta["train_seconds"]


def test_evaluation_warm_up_compiles_the_beam_search_of_every_bucket_width(synthetic_data_dir,
                                                                           caplog):
  """What ``evaluate`` then runs on a batch of any bucket width is already compiled."""
  config = tiny_config(synthetic_data_dir)
  config.eval.update(decoder="beam", beam_width=3)
  assert not config.input.canvases and len(config.input.bucket_widths) > 1
  family = registry.create_family(config, Vocabulary(tuple("abcdefgh")))
  mesh = sharding.make_mesh()
  inputs = {k: v for k, v in input_pipeline.dummy_batch(config, 2).items() if k != "ids"}
  abstract_variables = jax.eval_shape(family.init, jax.random.PRNGKey(0), inputs)
  with compilations(caplog) as warm_up:
    trainer.warm_up_evaluation(family, abstract_variables, config, mesh, beam=True)
  assert sum("beam_step" in m for m in warm_up) == len(config.input.bucket_widths)

  variables = replicated(family.init(jax.random.PRNGKey(0), inputs), mesh)
  batch_size = decode.eval_batch_size(config.eval.batch_size)
  spec = input_pipeline.batch_spec(batch_size, (config.input.height, config.input.bucket_widths[1], 7))
  batch = sharding.shard_batch({k: np.ones(v.shape, v.dtype) for k, v in spec.items()}, mesh)
  with compilations(caplog) as decoding:
    decode.beam_step(family, variables, {k: batch[k] for k in decode.IMAGE_KEYS},
                     config.eval.beam_width, config.eval.max_length, config.eval.well_formed)
  assert not [m for m in decoding if "beam_step" in m]


def replicated(variables, mesh):
  """``variables`` as the trainer holds them: replicated over ``mesh``."""
  return jax.device_put(variables, NamedSharding(mesh, PartitionSpec()))


def test_with_canvases_the_warm_up_compiles_every_validation_and_beam_program(synthetic_data_dir,
                                                                            caplog):
  """configs/vgg16.py's geometry: validating and beam-decoding a split then compile nothing."""
  config = tiny_config(synthetic_data_dir)
  config.eval.update(decoder="beam", beam_width=3)
  height, max_width = config.input.height, config.input.max_width
  config.input.canvases = ((height, max_width // 3, 16), (height, max_width, 64))
  builder = input_pipeline.dataset_builder(config.dataset)
  vocab = input_pipeline.load_vocabulary(builder)
  family = registry.create_family(config, vocab)
  mesh = sharding.make_mesh()
  inputs = {k: v for k, v in input_pipeline.dummy_batch(config, 2).items() if k != "ids"}
  abstract_variables = jax.eval_shape(family.init, jax.random.PRNGKey(0), inputs)
  with compilations(caplog) as warm_up:
    trainer.warm_up_evaluation(family, abstract_variables, config, mesh, beam=True)
  assert sum("eval_step" in m for m in warm_up) == sum("beam_step" in m for m in warm_up) == 2

  variables = replicated(family.init(jax.random.PRNGKey(0), inputs), mesh)
  batches = list(input_pipeline.eval_dataset(
      config, input_pipeline.data_source(builder, config.dataset.eval_split), vocab,
      batch_size=decode.eval_batch_size(config.eval.batch_size)))
  assert {batch["images"].shape[1:3] + batch["labels"].shape[1:] for batch in batches} == {
      canvas for canvas in config.input.canvases}
  with compilations(caplog) as decoding:
    for decoder in ("greedy", "beam"):
      decode.decode_batches(family, variables, batches, mesh, decoder=decoder, beam_width=3)
  assert not [m for m in decoding if "eval_step" in m or "beam_step" in m]
