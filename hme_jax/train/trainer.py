"""Training loop: ``train_and_evaluate(config, workdir)``.

Each epoch is one shuffled pass over ``config.dataset.train_split`` in full
batches (``input_pipeline.steps_per_epoch`` of them; the samples left over, fewer
than a batch, wait for a later epoch's shuffle, and no batch spans two epochs); every
``config.train.eval_every_epochs`` epochs (and at the end) the model is
validated on ``config.dataset.eval_split`` (greedy decoding: loss, ExpRate and
token error rate) and checkpointed. The step is ``jax.jit``-compiled over a
data-parallel mesh of every device.
Re-running with the same work dir resumes from the latest checkpoint.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import functools
import json
import math
import os
import signal
import threading
import time
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import tqdm
from jax.sharding import NamedSharding, PartitionSpec

from hme_jax import sharding as sharding_lib
from hme_jax.data import device_data, input_pipeline
from hme_jax.eval import decode
from hme_jax.families import registry
from hme_jax.text.vocab import Vocabulary
from hme_jax.train import checkpoints as checkpoints_lib


class TrainingDivergedError(FloatingPointError):
  """The training loss became NaN or infinite."""


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  extra_variables: dict       # e.g. BatchNorm statistics
  opt_state: Any
  plateau: Any                # optax.contrib.reduce_on_plateau state (its .scale multiplies updates)

  @property
  def variables(self) -> dict:
    return {"params": self.params, **self.extra_variables}


# --- optimisation ------------------------------------------------------------


def make_optimizer(train_config: ml_collections.ConfigDict, steps_per_epoch: int,
                   trainable: Any = None) -> optax.GradientTransformation:
  """Clipping + the configured optimiser and schedule; frozen parameters get no update."""
  cfg = train_config
  total_steps = max(cfg.num_epochs * steps_per_epoch, 1)
  if cfg.schedule == "constant":
    learning_rate = cfg.learning_rate
  elif cfg.schedule == "warmup_cosine":
    warmup_steps = min(int(cfg.warmup_epochs * steps_per_epoch), total_steps - 1)
    learning_rate = optax.warmup_cosine_decay_schedule(
        0.0, cfg.learning_rate, warmup_steps, total_steps)
  else:
    raise ValueError(f"Unknown config.train.schedule {cfg.schedule!r}.")
  # Weight decay on kernels and embeddings only, not on biases and norm scales.
  decay_mask = lambda params: jax.tree.map(lambda p: p.ndim > 1, params)  # noqa: E731
  if cfg.optimizer == "adam":
    optimizer = optax.adam(learning_rate)
  elif cfg.optimizer == "adamw":
    optimizer = optax.adamw(learning_rate, weight_decay=cfg.weight_decay, mask=decay_mask)
  elif cfg.optimizer == "adadelta":
    optimizer = optax.chain(optax.add_decayed_weights(cfg.weight_decay, mask=decay_mask),
                            optax.adadelta(learning_rate))
  else:
    raise ValueError(f"Unknown config.train.optimizer {cfg.optimizer!r}.")
  optimizer = optax.chain(optax.clip_by_global_norm(cfg.grad_clip_norm), optimizer)
  if trainable is not None and not all(jax.tree.leaves(trainable)):
    labels = jax.tree.map(lambda t: "train" if t else "frozen", trainable)
    optimizer = optax.multi_transform({"train": optimizer, "frozen": optax.set_to_zero()}, labels)
  return optimizer


def make_plateau(train_config: ml_collections.ConfigDict) -> optax.GradientTransformationExtraArgs:
  """Learning-rate reduction on the validation loss, stepped once per epoch."""
  return optax.contrib.reduce_on_plateau(factor=train_config.plateau_factor,
                                         patience=train_config.plateau_patience)


def train_step(family, optimizer, state: TrainState, batch: dict, base_rng: jax.Array):
  """One optimisation step. Returns ``(state, metric sums)``."""
  rng = jax.random.fold_in(base_rng, state.step)
  grad_fn = jax.value_and_grad(family.loss, has_aux=True)
  (_, (metric_sums, extra_variables)), grads = grad_fn(
      state.params, state.extra_variables, batch, rng, True)
  updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
  updates = jax.tree.map(lambda update: update * state.plateau.scale, updates)
  params = optax.apply_updates(state.params, updates)
  metric_sums = {**metric_sums, "grad_norm": optax.tree.norm(grads), "steps": 1.0}
  return state.replace(step=state.step + 1, params=params, extra_variables=extra_variables,
                       opt_state=opt_state), metric_sums


def device_train_step(family, optimizer, augment_config, fixed_height: int,
                      ctc_width_downsample: int | None, state: TrainState,
                      inputs: tuple[dict, jax.Array], base_rng: jax.Array):
  """``train_step`` on ``inputs = (group, indices [B])``: samples of a device-resident group
  (``device_data``), gathered and augmented inside the step."""
  group, indices = inputs
  augment_rng = None
  if augment_config.enabled:
    augment_rng = jax.random.fold_in(jax.random.fold_in(base_rng, state.step), 1)
  batch = device_data.make_batch(group, indices, augment_rng, augment_config, fixed_height,
                                 ctc_width_downsample)
  return train_step(family, optimizer, state, batch, base_rng)


def device_train_steps(family, optimizer, augment_config, fixed_height: int,
                       ctc_width_downsample: int | None, state: TrainState,
                       inputs: tuple[dict, jax.Array, jax.Array], base_rng: jax.Array):
  """``device_train_step`` on the first ``count`` rows of ``inputs = (group, indices [K, B],
  count [])``, one after the other in one program: a loop on the device instead of a
  dispatch per step. Returns ``(state, metric sums over those steps)``."""
  group, indices, count = inputs
  step = functools.partial(device_train_step, family, optimizer, augment_config, fixed_height,
                           ctc_width_downsample)

  def body(row, carry):
    state, sums = carry
    state, metric_sums = step(state, (group, indices[row]), base_rng)
    return state, jax.tree.map(jnp.add, sums, metric_sums)

  sums_spec = jax.eval_shape(lambda: step(state, (group, indices[0]), base_rng)[1])
  zeros = jax.tree.map(lambda spec: jnp.zeros(spec.shape, spec.dtype), sums_spec)
  return jax.lax.fori_loop(0, count, body, (state, zeros))


def make_initializer(family, config: ml_collections.ConfigDict, steps_per_epoch: int,
                     batch: dict, sharding=None):
  """``(init, optimizer, plateau)``; ``init(rng, inputs) -> TrainState`` is jitted onto ``sharding``.

  ``inputs`` are ``batch`` without ``ids``. ``jax.eval_shape(init, rng, inputs)``
  gives the restore target of a resumed run without initialising anything.
  """
  inputs = {k: v for k, v in batch.items() if k != "ids"}
  trainable = family.trainable_mask(
      jax.eval_shape(family.init, jax.random.PRNGKey(0), inputs)["params"])
  optimizer = make_optimizer(config.train, steps_per_epoch, trainable)
  plateau = make_plateau(config.train)

  def init(rng, inputs):
    variables = dict(family.init(rng, inputs))
    params = variables.pop("params")
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, extra_variables=variables,
                      opt_state=optimizer.init(params), plateau=plateau.init(params))

  return jax.jit(init, out_shardings=sharding), optimizer, plateau


def load_pretrained(state: TrainState, config: ml_collections.ConfigDict, optimizer, plateau,
                    sharding=None, vocab: Vocabulary | None = None) -> TrainState:
  """``state`` with the variables of ``config.train.init_from`` (a trained model: fine-tuning)
  or the torchvision weights of ``config.model.pretrained_path`` (the backbone), if set."""
  variables = None
  if config.train.get("init_from"):
    variables = _trained_variables(config.train.init_from, state.variables, vocab)
  elif config.model.get("pretrained_path"):
    from hme_jax.models import torch_import  # needs torch, only for this
    variables = torch_import.load_torchvision_weights(jax.device_get(state.variables),
                                                      config.model)
  if variables is None:
    return state
  params = variables.pop("params")
  state = state.replace(params=params, extra_variables=variables,
                        opt_state=optimizer.init(params), plateau=plateau.init(params))
  return jax.device_put(state, sharding) if sharding is not None else state


def _trained_variables(init_from: str, like: dict, vocab: Vocabulary | None) -> dict:
  """The variables of a trained model (export, work dir or ``"bundled"``), checked against
  the model being trained (``like``) and its training vocabulary (if given)."""
  from hme_jax.infer import saved_model  # reads exports; only for fine-tuning
  path = saved_model.pretrained_path() if init_from == "bundled" else init_from
  source = saved_model.LoadedModel(path, compute_dtype="float32")
  where = f"config.train.init_from={init_from!r}"
  if vocab is not None and source.vocab != vocab:
    raise checkpoints_lib.CheckpointMismatchError(
        f"{where} was trained on another vocabulary ({len(source.vocab)} tokens, this dataset's "
        f"has {len(vocab)}): fine-tuning needs the same tokens. Train from scratch "
        "(config.train.init_from='') or use the dataset that model was trained on.")
  found, like = jax.device_get(source.variables), jax.device_get(like)
  problems = checkpoints_lib.shape_differences(found, like)
  if problems:
    raise checkpoints_lib.CheckpointMismatchError(
        f"{where} holds another model than config.model describes ("
        + "; ".join(problems[:4]) + "). Use that model's config.model "
        "(its model.json or work dir config) or train from scratch.")
  return jax.tree.map(lambda value, leaf: np.asarray(value, np.asarray(leaf).dtype), found, like)


def create_train_state(family, config: ml_collections.ConfigDict, steps_per_epoch: int,
                       batch: dict, rng: jax.Array, sharding=None):
  """Initial variables (ImageNet weights if configured), optimiser and plateau state.

  Returns ``(state, optimizer, plateau)``; the state is initialised on ``sharding``.
  """
  init, optimizer, plateau = make_initializer(family, config, steps_per_epoch, batch, sharding)
  state = init(rng, {k: v for k, v in batch.items() if k != "ids"})
  return load_pretrained(state, config, optimizer, plateau, sharding), optimizer, plateau


# --- bookkeeping ---------------------------------------------------------------


class Summaries:
  """TensorBoard scalars (tensorboardX, no TensorFlow) on the first process."""

  def __init__(self, workdir: str):
    self.writer = None
    if jax.process_index() == 0:
      from tensorboardX import SummaryWriter
      self.writer = SummaryWriter(os.path.join(workdir, "tensorboard"))

  def scalars(self, step: int, values: dict[str, float]) -> None:
    if self.writer:
      for name, value in values.items():
        self.writer.add_scalar(name, value, step)
      self.writer.flush()

  def close(self) -> None:
    if self.writer:
      self.writer.close()


class SteadyThroughput:
  """Training images per second between host syncs, leaving out spans that compiled a shape.

  A batch of a shape not compiled ahead compiles the step (seconds to minutes on
  an accelerator); the median rate of the other spans is the steady throughput.
  """

  def __init__(self):
    self.shapes: set[tuple[int, ...]] = set()
    self.rates: list[float] = []
    self.restart()

  def restart(self) -> None:
    self.start, self.images, self.compiled = time.time(), 0, False

  def add(self, shape: tuple[int, ...], images: int, compiled: bool) -> None:
    """``shape``: the batch's images and labels shapes, ``compiled``: whether this step compiled."""
    self.compiled |= compiled
    self.shapes.add(shape)
    self.images += images

  def mark(self) -> None:
    """Closes a span; call right after a host sync."""
    if self.images and not self.compiled:
      self.rates.append(self.images / max(time.time() - self.start, 1e-9))
    self.restart()

  @property
  def images_per_second(self) -> float | None:
    return float(np.median(self.rates)) if self.rates else None


def _say(message: str) -> None:
  if jax.process_index() == 0:
    print(message, flush=True)


@contextlib.contextmanager
def _stop_on_sigterm():
  """Yields an event set by SIGTERM (``timeout``, a preempted VM), so the loop can save and stop.

  Only in the main thread of a single-process run: elsewhere signals cannot be
  caught, and processes of a multi-host run must stop at the same step.
  """
  requested = threading.Event()
  if threading.current_thread() is not threading.main_thread() or jax.process_count() > 1:
    yield requested
    return
  previous = signal.signal(signal.SIGTERM, lambda *_: requested.set())
  try:
    yield requested
  finally:
    signal.signal(signal.SIGTERM, previous)


def _check_finite(value: float, step: int, workdir: str) -> None:
  if not math.isfinite(value):
    raise TrainingDivergedError(
        f"The training loss became {value} at step {step}. Training stopped; the last good "
        f"checkpoint in {workdir}/checkpoints is kept as it was. Lower "
        "config.train.learning_rate or config.train.grad_clip_norm, or use "
        "config.train.compute_dtype=float32, then re-run (it resumes from that checkpoint).")


def validate(family, variables: dict, eval_data, mesh) -> dict[str, float]:
  """Loss, ExpRate and token error rate of the eval batches (greedy decoding)."""
  predictions, loss_sums = decode.decode_batches(family, variables, eval_data, mesh)
  summary = decode.summarize(predictions)["all"]["raw"]
  return {
      "loss": loss_sums.get("loss_sum", 0.0) / max(loss_sums.get("samples", 0.0), 1.0),
      "exprate": summary["exprate"],
      "token_error_rate": summary["token_error_rate"],
      "infeasible": loss_sums.get("infeasible", 0.0),
  }


# --- the loop ------------------------------------------------------------------------


def batch_key(images_shape, labels_shape) -> tuple[int, ...]:
  """What identifies a compiled step: ``images [B, H, W, 1]`` and ``labels [B, L]`` shapes."""
  return tuple(int(v) for v in images_shape) + tuple(int(v) for v in labels_shape)


def _abstract(tree, sharding=None):
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(
      x.shape, x.dtype, sharding=sharding if sharding is not None else x.sharding), tree)


class TrainFeed:
  """Where training batches come from, and the step program that eats them.

  Host feed: the Grain pipeline's NumPy batches, sharded onto the mesh each
  step; its iterator state is checkpointed. Device feed
  (``config.input.device_resident``): the split lives on the devices
  (``device_data``); a step gets a group and ``[B]`` indices, and the step
  number is the data position. With ``config.train.steps_per_dispatch`` K > 1
  a dispatch gets ``[K, B]`` indices and the number of them to train on: the
  rest of a run of the epoch plan, up to the loop's next stop.
  """

  def __init__(self, config, train_source, vocab, mesh):
    self.config, self.mesh = config, mesh
    self.batch_size = config.train.batch_size
    self.device_resident = bool(config.input.get("device_resident", False))  # absent before it
    self.steps_per_dispatch = 1
    if self.device_resident:
      self.data = device_data.build(config, train_source, vocab, mesh)
      self.steps_per_dispatch = self.data.steps_per_dispatch
      self.steps_per_epoch = self.data.steps_per_epoch
      self.shapes = list(self.data.shapes)
    else:
      self.dataset = input_pipeline.train_dataset(config, train_source, vocab)
      self.iterator = input_pipeline.to_iterator(self.dataset, config.input.worker_count,
                                                 config.input.prefetch)
      self.steps_per_epoch = input_pipeline.steps_per_epoch(config, len(train_source))
      # Canvases are every shape a batch takes (but for over-long labels); bucket widths
      # times label lengths are too many to compile ahead: those compile when met.
      self.shapes = list(input_pipeline.BatchShapes.from_config(config.input).canvases)

  def describe(self) -> str:
    if self.device_resident:
      return (f"{self.data.num_samples} training images in device memory "
              f"({self.data.nbytes / 2**20:.0f} MiB, {len(self.shapes)} groups)")
    return "training images from the host input pipeline"

  def keys(self) -> list[tuple[int, ...]]:
    return [batch_key((self.batch_size, h, w, 1), (self.batch_size, length))
            for h, w, length in self.shapes]

  def make_step(self, family, optimizer, replicated):
    """The jitted step (the state is donated); its arguments after the state: ``inputs, rng``."""
    if self.device_resident:
      step = functools.partial(
          device_train_steps if self.steps_per_dispatch > 1 else device_train_step,
          family, optimizer, self.config.augment, self.config.input.height,
          input_pipeline.ctc_width_downsample(self.config))
    else:
      step = functools.partial(train_step, family, optimizer)
    return jax.jit(step, donate_argnums=0, out_shardings=(replicated, replicated))

  def abstract_inputs(self, index: int):
    if self.device_resident:
      inputs = (_abstract(self.data.groups[index]), self.data.abstract_indices())
      return inputs + (self._count_spec(),) if self.steps_per_dispatch > 1 else inputs
    sharding = NamedSharding(self.mesh, PartitionSpec("data"))
    spec = input_pipeline.batch_spec(self.batch_size, self.shapes[index])
    return {key: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=sharding)
            for key, v in spec.items()}

  def _count_spec(self) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct((), jnp.int32, sharding=NamedSharding(self.mesh, PartitionSpec()))

  def next(self, step: int, stop: int):
    """``(key, inputs, steps, seconds waited for the input pipeline)`` of the next dispatch: training
    step ``step`` and, with ``steps_per_dispatch > 1``, those after it in its run, before ``stop``."""
    if self.device_resident:
      group, indices, steps = self.data.dispatch_at(step, stop)
      inputs = (self.data.groups[group], indices)
      if self.steps_per_dispatch > 1:
        inputs += (jax.device_put(np.int32(steps), self._count_spec().sharding),)
      return self.keys()[group], inputs, steps, 0.0
    wait_start = time.time()
    batch = next(self.iterator)
    waited = time.time() - wait_start
    inputs = sharding_lib.shard_batch(batch, self.mesh)  # global shapes, agreed by the processes
    return batch_key(inputs["images"].shape, inputs["labels"].shape), inputs, 1, waited

  def get_state(self) -> dict:
    if self.device_resident:
      return {"device_resident": True}
    return self.iterator.get_state()

  def set_state(self, data_state: dict) -> None:
    saved = bool(data_state.get("device_resident", False))
    if saved != self.device_resident:
      raise checkpoints_lib.CheckpointMismatchError(
          f"This work dir was trained with config.input.device_resident={saved}; resuming "
          f"with {self.device_resident} would change the order of the training data. Re-run "
          f"with --config.input.device_resident={saved}, or use a new --workdir.")
    if not self.device_resident:
      self.iterator.set_state(data_state)


def compile_programs(step_fn, abstract_state, feed: TrainFeed, rng, pool) -> dict:
  """Compiles the step for every batch shape of ``feed`` ahead of time, in ``pool``'s threads.

  Returns ``{key: future of the compiled program}``.
  """
  rng_spec = _abstract(rng)
  return {key: pool.submit(lambda index: step_fn.lower(
              abstract_state, feed.abstract_inputs(index), rng_spec).compile(), index)
          for index, key in enumerate(feed.keys())}


def warm_up_evaluation(family, abstract_variables, config, mesh, beam: bool) -> None:
  """Compiles the validation step (and the beam search, if ``beam``) for each eval canvas.

  Meant for a background thread while training runs: the programs are then in
  this process's jit cache (for replicated variables on ``mesh``, as the
  trainer's) and JAX's persistent cache (for ``evaluate``). Compiled ahead, not
  run: running them on zeros filled the same caches but took the cores from
  the first training steps. With bucket widths instead of canvases only the
  beam search is compiled, once per width: a validation batch's label length
  follows its captions.
  """
  batch_shapes = input_pipeline.BatchShapes.from_config(config.input)
  shapes = batch_shapes.canvases or (
      tuple((config.input.height, width, 1) for width in batch_shapes.bucket_widths)
      if beam and config.input.height else ())
  if not shapes or jax.process_count() > 1:  # processes must compile their programs in one order
    return
  batch_size = decode.eval_batch_size(config.eval.batch_size)
  variables = _abstract(abstract_variables, NamedSharding(mesh, PartitionSpec()))
  batch_sharding = NamedSharding(mesh, PartitionSpec("data"))
  for shape in shapes:
    batch = {key: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=batch_sharding)
             for key, v in input_pipeline.batch_spec(batch_size, shape).items()
             if key not in sharding_lib.HOST_ONLY_KEYS}
    if batch_shapes.canvases:
      decode.eval_step.lower(family, variables, batch).compile()
    if beam:
      images = {key: batch[key] for key in decode.IMAGE_KEYS}
      decode.beam_step.lower(family, variables, images, config.eval.beam_width,
                             config.eval.max_length, config.eval.well_formed).compile()


def check_steps_per_dispatch(steps_per_dispatch: int, device_resident: bool) -> None:
  """A clear error for a value the feed cannot honour."""
  if steps_per_dispatch < 1:
    raise ValueError(f"config.train.steps_per_dispatch={steps_per_dispatch}: use 1 or more.")
  if steps_per_dispatch > 1 and not device_resident:
    raise ValueError(
        f"config.train.steps_per_dispatch={steps_per_dispatch} runs several steps on data "
        "already on the device: it needs --config.input.device_resident=True (the host "
        "pipeline feeds one batch per dispatch), or set it to 1.")


def next_stop(step: int, total_steps: int, *periods: int) -> int:
  """The first step after ``step`` at which the loop must look (a multiple of one of
  ``periods``, those > 0, or ``total_steps``): no dispatch runs past it."""
  return min([total_steps] + [(step // period + 1) * period for period in periods if period > 0])


def check_batch_size(batch_size: int) -> None:
  """A clear error unless the global batch splits evenly over the devices of every process."""
  devices = jax.device_count()
  if batch_size % devices:
    multiple = -(-batch_size // devices) * devices
    raise ValueError(
        f"config.train.batch_size={batch_size} does not divide by the {devices} "
        f"{jax.default_backend()} devices: the global batch is split evenly over them. Use a "
        f"multiple of {devices}, e.g. --config.train.batch_size={multiple}.")


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains ``config`` in ``workdir`` (resuming if it holds checkpoints); returns the history."""
  process_start = time.time()
  if config.distributed and not jax.distributed.is_initialized():
    # Fields left unset (as on a TPU pod slice) are detected by JAX.
    jax.distributed.initialize(
        coordinator_address=config.coordinator_address or None,
        num_processes=config.num_processes or None,
        process_id=config.process_id if config.process_id >= 0 else None)
  check_batch_size(config.train.batch_size)
  check_steps_per_dispatch(config.train.steps_per_dispatch, config.input.device_resident)
  # Absent from configs saved before it existed.
  sharding_lib.use_compilation_cache(config.train.get("compilation_cache_dir", ""))
  workdir = os.path.abspath(os.path.expanduser(workdir))
  os.makedirs(workdir, exist_ok=True)

  builder = input_pipeline.dataset_builder(config.dataset)
  vocab = input_pipeline.load_vocabulary(builder)
  checkpoints = checkpoints_lib.Checkpoints(workdir, keep=config.train.keep_checkpoints)
  checkpoints.check_compatible(config, vocab)  # before anything is written
  if jax.process_index() == 0:
    vocab.save(workdir)

  dtype = sharding_lib.to_jnp_dtype(config.train.compute_dtype)
  family = registry.create_family(config, vocab, dtype)
  mesh = sharding_lib.make_mesh()
  replicated = NamedSharding(mesh, PartitionSpec())
  train_source = input_pipeline.data_source(builder, config.dataset.train_split)
  eval_source = input_pipeline.data_source(builder, config.dataset.eval_split)
  feed = TrainFeed(config, train_source, vocab, mesh)
  steps_per_epoch = feed.steps_per_epoch
  total_steps = steps_per_epoch * config.train.num_epochs
  if config.train.max_steps:
    total_steps = min(total_steps, config.train.max_steps)
  eval_data = input_pipeline.eval_dataset(
      config, eval_source, vocab, batch_size=decode.eval_batch_size(config.eval.batch_size))
  data_seconds = time.time() - process_start

  _say(f"Training {family.describe()} on "
       f"{jax.device_count()} {jax.default_backend()} device(s), compute {jnp.dtype(dtype).name}; "
       f"{steps_per_epoch * config.train.batch_size} training images per epoch "
       f"({len(train_source)} in the split; {feed.describe()}), {steps_per_epoch} steps/epoch, "
       f"{config.train.num_epochs} epochs; work dir {workdir}")

  rng = jax.random.PRNGKey(config.seed)
  init_rng, step_rng = jax.random.split(rng)
  init_inputs = input_pipeline.dummy_batch(config, config.train.batch_size)
  init, optimizer, plateau = make_initializer(family, config, steps_per_epoch, init_inputs,
                                              replicated)
  abstract_state = _abstract(jax.eval_shape(init, init_rng, init_inputs), replicated)
  step_fn = feed.make_step(family, optimizer, replicated)
  pool = concurrent.futures.ThreadPoolExecutor(max(len(feed.shapes), 1) + 1,
                                               thread_name_prefix="compile")
  compile_start = time.time()
  pending = compile_programs(step_fn, abstract_state, feed, step_rng, pool)

  history: list[dict] = []
  start_step = 0
  previous_seconds = 0.0  # training wall time of earlier runs in this work dir
  latest = checkpoints.latest_step()
  if latest is not None:
    state, data_state, meta = checkpoints.restore(latest, abstract_state)
    feed.set_state(data_state)
    history = meta.get("history", [])
    previous_seconds = float(meta.get("train_seconds", 0.0))
    start_step = int(state.step)
    _say(f"Resumed from the checkpoint at step {start_step} (epoch "
         f"{start_step // steps_per_epoch}).")
  else:
    state = load_pretrained(init(init_rng, init_inputs), config, optimizer, plateau, replicated,
                            vocab)
  init_seconds = time.time() - compile_start
  programs = {key: future.result() for key, future in pending.items()}
  compile_seconds = time.time() - compile_start
  eval_warm_up = pool.submit(warm_up_evaluation, family, _abstract(state.variables), config,
                             mesh, config.eval.decoder == "beam")
  pool.shutdown(wait=False)

  summaries = Summaries(workdir)
  meta_base = {"config": checkpoints_lib.config_to_json(config), "vocab": vocab.to_json()}

  def train_seconds() -> float:
    return previous_seconds + time.time() - run_start

  def save(step: int, metrics: dict | None):
    checkpoints.save(step, state, feed.get_state(),
                     {**meta_base, "history": history, "epoch": step // steps_per_epoch,
                      "train_seconds": train_seconds()},
                     metrics=metrics, force=True)

  progress = tqdm.tqdm(total=total_steps, initial=start_step, unit="step", dynamic_ncols=True,
                       disable=not config.train.progress_bar or jax.process_index() > 0)
  epoch_sums: dict[str, jax.Array] = {}
  run_start = epoch_start = time.time()
  epoch_images = 0
  input_wait = epoch_input_wait = 0.0  # seconds the loop waited for the input pipeline
  throughput = SteadyThroughput()
  startup: dict[str, float] = {"data_seconds": data_seconds, "init_seconds": init_seconds,
                               "compile_seconds": compile_seconds,
                               "programs_compiled_ahead": len(programs)}
  step = start_step
  budget = config.train.get("max_seconds", 0)  # absent from configs saved before it existed
  if budget and previous_seconds >= budget:
    _say(f"The training budget config.train.max_seconds={budget} is already spent "
         f"({previous_seconds:.0f} s in this work dir): nothing to train.")
    total_steps = start_step
  on_exit = contextlib.ExitStack()
  stop_requested = on_exit.enter_context(_stop_on_sigterm())
  terminated = False
  try:
    while step < total_steps:
      stop = next_stop(step, total_steps, steps_per_epoch, config.train.log_every_steps,
                       config.train.checkpoint_every_steps)
      key, inputs, steps, waited = feed.next(step, stop)
      epoch_input_wait += waited
      compiles = key not in programs
      if compiles:  # a shape not known ahead (e.g. an over-long label): compiled now, once
        programs[key] = step_fn.lower(state, inputs, step_rng).compile()
      throughput.add(key, steps * config.train.batch_size, compiles)
      state, metric_sums = programs[key](state, inputs, step_rng)
      epoch_sums = jax.tree.map(jnp.add, epoch_sums, metric_sums) if epoch_sums else metric_sums
      epoch_images += steps * config.train.batch_size
      step += steps
      progress.update(steps)
      if "seconds_to_first_step" not in startup:
        jax.block_until_ready(metric_sums)
        startup["seconds_to_first_step"] = time.time() - process_start
        _say(f"First training step done {startup['seconds_to_first_step']:.1f} s after start "
             f"(data {data_seconds:.1f} s, {len(programs)} step programs compiled ahead in "
             f"{compile_seconds:.1f} s, initialisation or restore overlapping it).")
      if budget and step < total_steps and train_seconds() >= budget:
        _say(f"Stopping at step {step}: the training budget config.train.max_seconds={budget} "
             f"is spent ({train_seconds():.0f} s in this work dir). Raise it and re-run to "
             "continue.")
        total_steps = step
      if stop_requested.is_set() and step < total_steps:
        _say(f"Stopping at step {step}: terminated (SIGTERM); saving a checkpoint without "
             "validating. Re-run to continue.")
        total_steps, terminated = step, True
      end_of_epoch = step % steps_per_epoch == 0 or step == total_steps
      if step % config.train.log_every_steps == 0 or end_of_epoch:
        sums = jax.device_get(epoch_sums)  # the only host sync of the loop
        throughput.mark()
        train_loss = float(sums["loss_sum"]) / max(float(sums["samples"]), 1.0)
        _check_finite(train_loss, step, workdir)
        images_per_second = epoch_images / max(time.time() - epoch_start, 1e-9)
        progress.set_postfix(loss=f"{train_loss:.3f}", img_s=f"{images_per_second:.0f}",
                             epoch=step // steps_per_epoch + (not end_of_epoch))
        summaries.scalars(step, {"train/loss": train_loss, "train/img_per_s": images_per_second,
                                 "train/grad_norm": float(sums["grad_norm"] / sums["steps"])})
      epoch = math.ceil(step / steps_per_epoch)
      every = config.train.eval_every_epochs
      if (end_of_epoch and every and not terminated
          and (epoch % every == 0 or step == total_steps)):
        epoch_time = time.time() - epoch_start
        val = validate(family, state.variables, eval_data, mesh)
        _, plateau_state = plateau.update(updates={}, state=jax.device_get(state.plateau),
                                          value=val["loss"])
        # From host values: a single-device array put on a multi-process mesh is malformed.
        state = state.replace(plateau=jax.device_put(jax.device_get(plateau_state), replicated))
        record = {
            "epoch": epoch, "step": step,
            "train_loss": train_loss, "train_infeasible": float(sums.get("infeasible", 0.0)),
            "val_loss": val["loss"], "val_exprate": val["exprate"],
            "val_token_error_rate": val["token_error_rate"],
            "val_infeasible": val["infeasible"],
            "lr_scale": float(plateau_state.scale), "epoch_seconds": epoch_time,
            "train_img_per_s": epoch_images / max(epoch_time, 1e-9),
            # The rate with the time spent waiting for input left out.
            "step_img_per_s": epoch_images / max(epoch_time - epoch_input_wait, 1e-9),
            "input_wait_seconds": epoch_input_wait,
            "wall_seconds": time.time() - run_start,
            "train_seconds": train_seconds(),
        }
        history.append(record)
        summaries.scalars(step, {f"val/{k[4:]}": v for k, v in record.items()
                                 if k.startswith("val_")} | {"train/lr_scale": record["lr_scale"]})
        progress.write(
            f"epoch {record['epoch']}: train loss {train_loss:.4f} | val loss {val['loss']:.4f} "
            f"ExpRate {val['exprate']:.2%} TER {val['token_error_rate']:.4f} | "
            f"{record['train_img_per_s']:.0f} img/s ({record['step_img_per_s']:.0f} without "
            f"input waits) | lr x{record['lr_scale']:.3g}"
            + (f" | {int(record['train_infeasible'])} infeasible samples masked"
               if record["train_infeasible"] else ""))
        save(step, {checkpoints_lib.BEST_METRIC: val["exprate"]})
        throughput.restart()
      elif step == total_steps or (config.train.checkpoint_every_steps
                                   and step % config.train.checkpoint_every_steps == 0):
        _check_finite(float(jax.device_get(epoch_sums["loss_sum"])), step, workdir)
        save(step, None)
        throughput.restart()
      if end_of_epoch:
        input_wait += epoch_input_wait
        epoch_sums, epoch_images, epoch_start, epoch_input_wait = {}, 0, time.time(), 0.0
  finally:
    on_exit.close()
    progress.close()
    summaries.close()
    checkpoints.close()
    # The programs it compiles are for evaluate (persistent cache): let it finish, unless
    # the process is asked to end.
    if not terminated and (error := eval_warm_up.exception()) is not None:
      _say(f"Warning: compiling the evaluation programs ahead failed ({error!r}); evaluation "
           "will compile them when it runs.")

  result = {"history": history, "steps": step, "steps_per_epoch": steps_per_epoch,
            "batch_size": config.train.batch_size,
            "best_val_exprate": max((r["val_exprate"] for r in history), default=None),
            "steady_img_per_s": throughput.images_per_second,
            "batch_shapes": sorted(throughput.shapes),
            "input_wait_seconds": input_wait,
            **startup,
            "wall_seconds": time.time() - run_start,
            "train_seconds": train_seconds()}
  _say(f"Trained to step {step} in {result['wall_seconds']:.0f} s; steady throughput "
       + (f"{result['steady_img_per_s']:.0f} img/s" if result["steady_img_per_s"]
          else "not measured")
       + f" ({len(throughput.shapes)} batch shapes met, {len(programs)} step programs).")
  if jax.process_index() == 0:
    with open(os.path.join(workdir, "metrics.json"), "w") as f:
      json.dump(result, f, indent=1)
  return result
