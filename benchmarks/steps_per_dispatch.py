"""One train step per dispatch (what the trainer does) vs several steps in one ``lax.scan``.

  python benchmarks/steps_per_dispatch.py --config configs/quickstart.py --width 128
  python benchmarks/steps_per_dispatch.py --config configs/vgg16.py --width 256 --scan_steps 8

What a scan over steps can save is the host's share of a step: Python, dispatch
and the launch of one program per step. With a device-resident split
(``config.input.device_resident``) a step's only input from the host is ``[B]``
indices, so here ``scan_steps`` batches are put on the device once (the same
random samples in another order each: one batch for every step, as in training,
so that XLA cannot hoist the batch's own work out of the loop) and both loops
reuse them; the loss sums of every step are added on the device in both, as the
trainer does. Prints seconds per step for each and the scan's gain.
"""

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from benchmarks.batches import random_batch  # noqa: E402
from hme_jax import sharding  # noqa: E402
from hme_jax.families import registry  # noqa: E402
from hme_jax.text.vocab import Vocabulary  # noqa: E402
from hme_jax.train import trainer  # noqa: E402

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", "configs/quickstart.py", "Config file.")
flags.DEFINE_integer("width", 128, "Image width of the batch.")
flags.DEFINE_integer("label_length", 32, "Padded label length.")
flags.DEFINE_integer("batch_size", 0, "Global batch size (default: the config's).")
flags.DEFINE_integer("scan_steps", 8, "Steps per dispatch of the scanned program.")
flags.DEFINE_integer("rounds", 5, "Timed rounds of scan_steps steps each (best round kept).")


def main(argv):
  del argv
  config = FLAGS.config
  batch_size = FLAGS.batch_size or config.train.batch_size
  height = config.input.height or config.input.canvases[0][0]
  batch = random_batch(batch_size, height, FLAGS.width, FLAGS.label_length, 110,
                       config.model.width_downsample)
  family = registry.create_family(config, Vocabulary(tuple(f"t{i}" for i in range(109))),
                                  sharding.to_jnp_dtype(config.train.compute_dtype))
  mesh = sharding.make_mesh()
  batches = [jax.tree.map(lambda v, shift=shift: np.roll(v, shift, axis=0), batch)
             for shift in range(FLAGS.scan_steps)]
  device_batches = [sharding.shard_batch(b, mesh) for b in batches]
  stacked = jax.tree.map(lambda *vs: np.stack(vs), *batches)
  state, optimizer, _ = trainer.create_train_state(family, config, 1000, batch,
                                                   jax.random.PRNGKey(0))
  rng = jax.random.PRNGKey(1)

  def one_step(state, sums, step_batch):
    state, metric_sums = trainer.train_step(family, optimizer, state, step_batch, rng)
    return state, jax.tree.map(jnp.add, sums, metric_sums)

  def scanned(state, sums, step_batches):
    return jax.lax.scan(lambda carry, step_batch: (one_step(*carry, step_batch), None),
                        (state, sums), step_batches)[0]

  _, sums = trainer.train_step(family, optimizer, state, device_batches[0], rng)
  sums = jax.tree.map(jnp.zeros_like, sums)
  programs = {1: (jax.jit(one_step, donate_argnums=(0, 1)), device_batches),
              FLAGS.scan_steps: (jax.jit(scanned, donate_argnums=(0, 1)),
                                 [jax.device_put(stacked)])}
  per_step = {}
  for steps_per_dispatch, (program, inputs) in programs.items():
    start = time.perf_counter()
    state, sums = jax.block_until_ready(program(state, sums, inputs[0]))
    print(f"{steps_per_dispatch} step(s) per dispatch: compiled and ran once in "
          f"{time.perf_counter() - start:.1f} s", flush=True)
    rounds = []
    for _ in range(FLAGS.rounds):
      start = time.perf_counter()
      for step_inputs in inputs:
        state, sums = program(state, sums, step_inputs)
      jax.block_until_ready(sums)
      rounds.append((time.perf_counter() - start) / FLAGS.scan_steps)
    per_step[steps_per_dispatch] = min(rounds)
  single, multi = per_step[1], per_step[FLAGS.scan_steps]
  print(f"{jax.default_backend()} ({jax.device_count()} device(s)), {config.model.name}, batch "
        f"{batch_size} x {height}x{FLAGS.width}: 1 step per dispatch {1e3 * single:.2f} ms/step, "
        f"{FLAGS.scan_steps} per dispatch (lax.scan) {1e3 * multi:.2f} ms/step: the scan saves "
        f"{100 * (single - multi) / single:.1f}% of a step")


if __name__ == "__main__":
  app.run(main)
