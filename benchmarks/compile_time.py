"""DenseNet dense blocks: compile time vs step time, unrolled / scanned x remat off / on.

  python benchmarks/compile_time.py --config configs/attention.py --height 112 --width 320 \
      --label_length 40 --batch_size 8 --steps 2

For each variant (``config.model.scan_dense_layers`` x ``remat_dense_layers``)
on one canvas: the seconds to create the train state (``trainer.create_train_state``:
model and optimiser initialisation, itself compiled), to trace and lower
``jax.jit(trainer.train_step)`` and to compile it, the steady step time (after
``--warmup`` steps, to a device sync) and XLA's temporary buffer size of the
compiled step. JAX's persistent compilation cache is switched off, so every
compilation is a real one; each variant is a different program, so neither does
JAX's in-memory cache serve one variant from another. ``--variants`` picks a
subset, e.g. ``--variants=unrolled,unrolled_remat``. Figures: results/README.md.
"""

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

# name -> (scan_dense_layers, remat_dense_layers)
VARIANTS = {"unrolled": (False, False), "unrolled_remat": (False, True),
            "scanned": (True, False), "scanned_remat": (True, True)}

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", "configs/attention.py", "Config file.")
flags.DEFINE_integer("height", 112, "Canvas height.")
flags.DEFINE_integer("width", 320, "Canvas width.")
flags.DEFINE_integer("label_length", 40, "Padded label length.")
flags.DEFINE_integer("batch_size", 8, "Global batch size (0: the config's).")
flags.DEFINE_integer("steps", 3, "Timed steps per variant.")
flags.DEFINE_integer("warmup", 1, "Untimed steps per variant before the timed ones.")
flags.DEFINE_integer("num_classes", 110, "Vocabulary size (110 = CROHME with the specials).")
flags.DEFINE_list("variants", list(VARIANTS), f"Variants to measure, of {list(VARIANTS)}.")


def measure(config, batch, steps: int, warmup: int) -> dict:
  """Seconds of init, lower and compile, seconds per step and temp bytes for ``config``."""
  vocab = Vocabulary(tuple(f"t{i}" for i in range(FLAGS.num_classes - 1)))
  family = registry.create_family(config, vocab,
                                  sharding.to_jnp_dtype(config.train.compute_dtype))
  mesh = sharding.make_mesh()
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  start = time.perf_counter()
  state, optimizer, _ = trainer.create_train_state(family, config, 1000, batch,
                                                   jax.random.PRNGKey(0))
  state = jax.block_until_ready(jax.device_put(state, replicated))
  init_seconds = time.perf_counter() - start
  step = jax.jit(lambda s, b: trainer.train_step(family, optimizer, s, b, jax.random.PRNGKey(1)),
                 donate_argnums=0)
  device_batch = sharding.shard_batch(batch, mesh)
  start = time.perf_counter()
  lowered = step.lower(state, device_batch)
  lower_seconds = time.perf_counter() - start
  start = time.perf_counter()
  compiled = lowered.compile()
  compile_seconds = time.perf_counter() - start
  memory = compiled.memory_analysis()
  temp_bytes = getattr(memory, "temp_size_in_bytes", None) if memory is not None else None
  for _ in range(warmup):
    state, _ = compiled(state, device_batch)
  jax.block_until_ready(state)
  start = time.perf_counter()
  for _ in range(steps):
    state, _ = compiled(state, device_batch)
  jax.block_until_ready(state)
  return {"init": init_seconds, "lower": lower_seconds, "compile": compile_seconds,
          "step": (time.perf_counter() - start) / steps, "temp_bytes": temp_bytes}


def main(argv):
  del argv
  # Compile times are the point: no program may come from an earlier process.
  jax.config.update("jax_enable_compilation_cache", False)
  unknown = [name for name in FLAGS.variants if name not in VARIANTS]
  if unknown:
    raise app.UsageError(f"Unknown variants {unknown}; choose from {list(VARIANTS)}.")
  config = FLAGS.config
  batch_size = FLAGS.batch_size or config.train.batch_size
  batch = random_batch(batch_size, FLAGS.height, FLAGS.width, FLAGS.label_length,
                       FLAGS.num_classes, config.model.width_downsample)
  model = config.model
  print(f"{jax.device_count()} x {jax.devices()[0].device_kind}, jax {jax.__version__}; "
        f"DenseNet growth {model.get('growth_rate')}, {model.get('dense_blocks')} x "
        f"{model.get('dense_layers')} layers; batch {batch_size} x {FLAGS.height}x{FLAGS.width}, "
        f"labels {FLAGS.label_length}, compute {config.train.compute_dtype}; "
        f"{FLAGS.warmup} + {FLAGS.steps} steps; load average {os.getloadavg()[0]:.1f}", flush=True)
  rows = []
  for name in FLAGS.variants:
    variant = config.copy_and_resolve_references()
    variant.model.scan_dense_layers, variant.model.remat_dense_layers = VARIANTS[name]
    result = measure(variant, batch, FLAGS.steps, FLAGS.warmup)
    temp = "?" if result["temp_bytes"] is None else f"{result['temp_bytes'] / 2 ** 20:.0f}"
    rows.append(f"| {name} | {result['init']:.1f} | {result['lower']:.1f} | "
                f"{result['compile']:.1f} | {1e3 * result['step']:.0f} | "
                f"{batch_size / result['step']:.2f} | {temp} |")
    print(rows[-1] + f"  (load average {os.getloadavg()[0]:.1f})", flush=True)
  print("\n| variant | init s | lower s | compile s | ms/step | img/s | temp MiB |")
  print("|---|---|---|---|---|---|---|")
  print("\n".join(rows))


if __name__ == "__main__":
  app.run(main)
