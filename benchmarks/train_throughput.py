"""Training throughput of a config: JAX step vs. a PyTorch twin of the same CRNN.

  python benchmarks/train_throughput.py --config configs/vgg16.py --width 256 --steps 20
  python benchmarks/train_throughput.py --config configs/quickstart.py --batch_size 32
  python benchmarks/train_throughput.py --config configs/attention.py --height 176 --width 640 \
      --label_length 80 --torch=false       # one canvas; no PyTorch twin for this family

Also prints the seconds to initialise the model and to compile the step (on an
accelerator, XLA's autotuning is part of that: ``XLA_FLAGS=--xla_gpu_autotune_level=0``
trades it for heuristics).

Both frameworks train on the same random batch shapes (images ``[B, H, W, 1]``,
labels ``[B, L]``) on the current backend (JAX: its default device(s); PyTorch:
CUDA if available, else CPU with all cores). Prints images/s, step time and the
ratio. Timings start after warm-up (compilation) and end after a device sync.
"""

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from hme_jax import evaluation, families, trainer  # noqa: E402
from hme_jax.vocab import Vocabulary  # noqa: E402

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", "configs/vgg16.py", "Config file.")
flags.DEFINE_integer("width", 256, "Image width of the benchmark batches (a bucket width).")
flags.DEFINE_integer("height", 0, "Image height (default: config.input.height).")
flags.DEFINE_integer("label_length", 32, "Padded label length.")
flags.DEFINE_integer("steps", 20, "Timed steps (after 3 warm-up steps).")
flags.DEFINE_integer("batch_size", 0, "Global batch size (default: the config's).")
flags.DEFINE_integer("num_classes", 110, "Vocabulary size (110 = CROHME with the blank).")
flags.DEFINE_bool("torch", True, "Also time the PyTorch twin.")


def random_batch(batch_size, height, width, label_length, num_classes, width_downsample):
  rng = np.random.default_rng(0)
  widths = rng.integers(width // 2, width + 1, batch_size).astype(np.int32)
  frames = -(-widths // width_downsample)
  label_lengths = np.minimum(rng.integers(5, label_length + 1, batch_size), frames // 2).astype(np.int32)
  labels = rng.integers(1, num_classes, (batch_size, label_length)).astype(np.int32)
  labels[np.arange(label_length)[None, :] >= label_lengths[:, None]] = 0
  images = rng.integers(0, 256, (batch_size, height, width, 1)).astype(np.uint8)
  return {"images": images, "image_widths": widths,
          "image_heights": np.full(batch_size, height, np.int32), "labels": labels,
          "label_lengths": label_lengths, "sample_mask": np.ones(batch_size, np.float32)}


def time_jax(config, batch, steps):
  vocab = Vocabulary(tuple(f"t{i}" for i in range(FLAGS.num_classes - 1)))
  family = families.create_family(config, vocab, evaluation.to_jnp_dtype(config.train.compute_dtype))
  mesh = evaluation.make_mesh()
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  start = time.perf_counter()
  state, optimizer, _ = trainer.create_train_state(family, config, 1000, batch, jax.random.PRNGKey(0))
  state = jax.device_put(state, replicated)
  jax.block_until_ready(state)
  print(f"JAX initialisation: {time.perf_counter() - start:.1f} s", flush=True)
  step = jax.jit(lambda s, b: trainer.train_step(family, optimizer, s, b, jax.random.PRNGKey(1)),
                 donate_argnums=0)
  device_batch = evaluation.shard_batch(batch, mesh)
  start = time.perf_counter()
  step = step.lower(state, device_batch).compile()
  print(f"JAX step compilation: {time.perf_counter() - start:.1f} s", flush=True)
  for _ in range(3):
    state, sums = step(state, device_batch)
  jax.block_until_ready(sums)
  start = time.perf_counter()
  for _ in range(steps):
    state, sums = step(state, device_batch)
  jax.block_until_ready(sums)
  return (time.perf_counter() - start) / steps


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
  jax_seconds = time_jax(config, batch, FLAGS.steps)
  device = f"{jax.device_count()} x {jax.devices()[0].device_kind}"
  print(f"JAX     ({device}): {batch_size / jax_seconds:9.1f} img/s  {1e3 * jax_seconds:8.1f} ms/step")
  if FLAGS.torch:
    torch_seconds, torch_device = time_torch(config, batch, FLAGS.steps)
    print(f"PyTorch ({torch_device}): {batch_size / torch_seconds:9.1f} img/s  "
          f"{1e3 * torch_seconds:8.1f} ms/step")
    print(f"JAX / PyTorch images/s: {torch_seconds / jax_seconds:.2f}x")


if __name__ == "__main__":
  app.run(main)
