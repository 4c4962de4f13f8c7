"""Training throughput of a config: JAX step vs. a PyTorch twin of the same CRNN.

  python benchmarks/train_throughput.py --config configs/vgg16.py --width 256 --steps 20
  python benchmarks/train_throughput.py --config configs/quickstart.py --batch_size 32
  python benchmarks/train_throughput.py --config configs/attention.py --height 176 --width 640 \
      --label_length 80 --torch=false       # one canvas; no PyTorch twin for this family

Also prints the time to the first step (initialisation, compilation, one step; the
trainer's ``seconds_to_first_step`` in metrics.json also counts reading the data),
GFLOP/s (XLA's cost analysis of the compiled step over its time;
``--config.model.conv_gradient=xla`` vs ``matmul`` compares the convolution
gradients), and the seconds to initialise the model and to compile the step (on an
accelerator, XLA's autotuning is part of that: ``XLA_FLAGS=--xla_gpu_autotune_level=0``
trades it for heuristics).

Both frameworks train on the same random batch shapes (images ``[B, H, W, 1]``,
labels ``[B, L]``) on the current backend (JAX: its default device(s); PyTorch:
CUDA if available, else CPU with all cores). Prints images/s, step time and the
ratio. Timings start after warm-up (compilation) and end after a device sync.
"""

import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from benchmarks.batches import random_batch  # noqa: E402
from hme_jax import sharding  # noqa: E402
from hme_jax.families import registry  # noqa: E402
from hme_jax.text.vocab import Vocabulary  # noqa: E402
from hme_jax.train import trainer  # noqa: E402

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", "configs/vgg16.py", "Config file.")
flags.DEFINE_integer("width", 256, "Image width of the benchmark batches (a bucket width).")
flags.DEFINE_integer("height", 0, "Image height (default: config.input.height).")
flags.DEFINE_integer("label_length", 32, "Padded label length.")
flags.DEFINE_integer("steps", 20, "Timed steps (after 3 warm-up steps).")
flags.DEFINE_integer("batch_size", 0, "Global batch size (default: the config's).")
flags.DEFINE_integer("num_classes", 110, "Vocabulary size (110 = CROHME with the blank).")
flags.DEFINE_bool("torch", True, "Also time the PyTorch twin.")
flags.DEFINE_integer("data_batches", 0, "If > 0: time the step on this many real batches of the "
                     "config's training data (read into memory first, every shape compiled "
                     "before timing): the step-only rate to compare with the trainer's "
                     "end-to-end img/s.")
flags.DEFINE_string("output_json", "", "Also write the figures printed to this JSON file.")


def real_batches(config, count):
  """The first ``count`` training batches of the config's dataset, and its vocabulary."""
  from hme_jax.data import input_pipeline
  builder = input_pipeline.dataset_builder(config.dataset)
  vocab = input_pipeline.load_vocabulary(builder)
  dataset = input_pipeline.train_dataset(
      config, input_pipeline.data_source(builder, config.dataset.train_split), vocab)
  return [{k: v for k, v in dataset[i].items() if k != "ids"} for i in range(count)], vocab


def time_jax(config, batch, steps, batches=None, vocab=None):
  """Seconds per step on ``batch`` (or per batch of ``batches``, cycling) and step FLOPs."""
  vocab = vocab or Vocabulary(tuple(f"t{i}" for i in range(FLAGS.num_classes - 1)))
  family = registry.create_family(config, vocab, sharding.to_jnp_dtype(config.train.compute_dtype))
  mesh = sharding.make_mesh()
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  start = first_step_start = time.perf_counter()
  state, optimizer, _ = trainer.create_train_state(family, config, 1000, batch, jax.random.PRNGKey(0),
                                                   replicated)
  jax.block_until_ready(state)
  print(f"JAX initialisation: {time.perf_counter() - start:.1f} s", flush=True)
  step = jax.jit(lambda s, b: trainer.train_step(family, optimizer, s, b, jax.random.PRNGKey(1)),
                 donate_argnums=0)
  device_batches = [sharding.shard_batch(b, mesh) for b in (batches or [batch])]
  shapes = {}
  start = time.perf_counter()
  for device_batch in device_batches:
    key = tuple(device_batch["images"].shape) + tuple(device_batch["labels"].shape)
    if key not in shapes:
      shapes[key] = step.lower(state, device_batch).compile()
  print(f"JAX step compilation: {time.perf_counter() - start:.1f} s ({len(shapes)} shapes)",
        flush=True)
  compiled = [shapes[tuple(b["images"].shape) + tuple(b["labels"].shape)] for b in device_batches]
  costs = [c.cost_analysis() for c in compiled]
  flops = sum(float(((c[0] if isinstance(c, (list, tuple)) else c) or {}).get("flops", 0.0))
              for c in costs) / len(costs)  # a list in older JAX
  state, sums = compiled[0](state, device_batches[0])
  jax.block_until_ready(sums)
  print(f"JAX time to first step (initialisation, compilation of every shape, one step): "
        f"{time.perf_counter() - first_step_start:.1f} s", flush=True)
  for index in range(1, 3):
    state, sums = compiled[index % len(compiled)](state, device_batches[index % len(compiled)])
  jax.block_until_ready(sums)
  steps = max(steps, len(compiled)) if batches else steps
  start = time.perf_counter()
  for index in range(steps):
    state, sums = compiled[index % len(compiled)](state, device_batches[index % len(compiled)])
  jax.block_until_ready(sums)
  return (time.perf_counter() - start) / steps, flops


def time_torch(config, batch, steps):
  import torch
  from benchmarks.torch_crnn import build_torch_crnn, make_torch_optimizer, torch_train_step
  device = "cuda" if torch.cuda.is_available() else "cpu"
  model = build_torch_crnn(config.model, FLAGS.num_classes, config.input.height).to(device)
  optimizer = make_torch_optimizer(model, config.train.learning_rate)
  autocast = torch.bfloat16 if device == "cuda" and config.train.compute_dtype != "float32" else None
  images = torch.from_numpy(batch["images"]).permute(0, 3, 1, 2).float().div(255).to(device)
  widths = torch.from_numpy(batch["image_widths"]).long().to(device)
  labels = torch.from_numpy(batch["labels"]).long().to(device)
  label_lengths = torch.from_numpy(batch["label_lengths"]).long().to(device)

  def run(count):
    for _ in range(count):
      loss = torch_train_step(model, optimizer, images, widths, labels, label_lengths,
                              grad_clip_norm=config.train.grad_clip_norm, autocast_dtype=autocast)
    loss.item()  # sync

  run(3)
  start = time.perf_counter()
  run(steps)
  return (time.perf_counter() - start) / steps, device


def main(argv):
  del argv
  config = FLAGS.config
  batch_size = FLAGS.batch_size or config.train.batch_size
  height = FLAGS.height or config.input.height
  batch = random_batch(batch_size, height, FLAGS.width, FLAGS.label_length,
                       FLAGS.num_classes, config.model.width_downsample)
  print(f"config: {config.model.name}/{config.model.backbone}, batch {batch_size} x "
        f"{height}x{FLAGS.width}, labels {FLAGS.label_length}, compute "
        f"{config.train.compute_dtype}, XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}", flush=True)
  batches = vocab = None
  if FLAGS.data_batches:
    batches, vocab = real_batches(config, FLAGS.data_batches)
    batch = batches[0]
    print(f"{len(batches)} real batches of {config.dataset.name}/{config.dataset.train_split}, "
          f"shapes {sorted({b['images'].shape[1:3] for b in batches})}", flush=True)
  jax_seconds, step_flops = time_jax(config, batch, FLAGS.steps, batches, vocab)
  device = f"{jax.device_count()} x {jax.devices()[0].device_kind}"
  figures = {"config": f"{config.model.name}/{config.model.backbone}", "batch_size": batch_size,
             "image_shape": [height, FLAGS.width], "label_length": FLAGS.label_length,
             "jax_device": device, "jax_img_per_s": batch_size / jax_seconds,
             "jax_gflop_per_s": step_flops / jax_seconds / 1e9}
  print(f"JAX     ({device}): {batch_size / jax_seconds:9.1f} img/s  {1e3 * jax_seconds:8.1f} ms/step"
        f"  {step_flops / jax_seconds / 1e9:6.1f} GFLOP/s ({step_flops / batch_size / 1e9:.2f} "
        "GFLOP per image, XLA cost analysis)")
  write_figures(figures)  # now, so that a PyTorch failure keeps them
  if FLAGS.torch:
    torch_seconds, torch_device = time_torch(config, batch, FLAGS.steps)
    print(f"PyTorch ({torch_device}): {batch_size / torch_seconds:9.1f} img/s  "
          f"{1e3 * torch_seconds:8.1f} ms/step")
    print(f"JAX / PyTorch images/s: {torch_seconds / jax_seconds:.2f}x")
    figures.update(torch_device=torch_device, torch_img_per_s=batch_size / torch_seconds,
                   jax_over_torch=torch_seconds / jax_seconds)
    write_figures(figures)


def write_figures(figures: dict) -> None:
  if FLAGS.output_json:
    with open(FLAGS.output_json, "w") as f:
      json.dump(figures, f, indent=1)


if __name__ == "__main__":
  app.run(main)
