"""The trainer's device-resident step, one per dispatch against several per dispatch.

  python benchmarks/steps_per_dispatch.py --config configs/crohme_cpu.py --width 192
  python benchmarks/steps_per_dispatch.py --config configs/vgg16.py --width 256 --steps 8

Both programs are the trainer's own (``trainer.device_train_step`` and
``trainer.device_train_steps``, ``config.train.steps_per_dispatch``), gathering
and augmenting their batches inside the step from a random group of
``steps x batch`` samples already on the device: every step trains on other
samples, as in training, so that XLA cannot hoist a batch's own work out of the
loop. The metric sums are added on the device after each dispatch, as the
trainer does. Prints milliseconds per step for each and what the loop saves.
"""

import functools
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
from hme_jax.data import device_data, input_pipeline  # noqa: E402
from hme_jax.families import registry  # noqa: E402
from hme_jax.text.vocab import Vocabulary  # noqa: E402
from hme_jax.train import trainer  # noqa: E402

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", "configs/quickstart.py", "Config file.")
flags.DEFINE_integer("width", 128, "Image width of the group (its canvas).")
flags.DEFINE_integer("label_length", 32, "Padded label length.")
flags.DEFINE_integer("batch_size", 0, "Global batch size (default: the config's).")
flags.DEFINE_integer("steps", 8, "Steps per dispatch of the looped program.")
flags.DEFINE_integer("rounds", 3, "Timed rounds of --steps steps each (the best is kept).")


def main(argv):
  del argv
  config = FLAGS.config
  batch_size = FLAGS.batch_size or config.train.batch_size
  steps = FLAGS.steps
  height = config.input.height or config.input.canvases[0][0]
  samples = random_batch(steps * batch_size, height, FLAGS.width, FLAGS.label_length, 110,
                         config.model.width_downsample)
  group = {key: samples[key] for key in device_data.GROUP_KEYS if key in samples}
  group["min_frames"] = np.zeros(steps * batch_size, np.int32)  # every label fits its frames
  group = jax.device_put(group)
  rows = np.arange(steps * batch_size, dtype=np.int32).reshape(steps, batch_size)
  family = registry.create_family(config, Vocabulary(tuple(f"t{i}" for i in range(109))),
                                  sharding.to_jnp_dtype(config.train.compute_dtype))
  first = device_data.make_batch(group, rows[0], None, config.augment, config.input.height,
                                 input_pipeline.ctc_width_downsample(config))
  state, optimizer, _ = trainer.create_train_state(family, config, 1000, first,
                                                   jax.random.PRNGKey(0))
  rng = jax.random.PRNGKey(1)
  step_args = (family, optimizer, config.augment, config.input.height,
               input_pipeline.ctc_width_downsample(config))
  programs = {
      1: (jax.jit(functools.partial(trainer.device_train_step, *step_args), donate_argnums=0),
          [(group, jnp.asarray(row)) for row in rows]),
      steps: (jax.jit(functools.partial(trainer.device_train_steps, *step_args),
                      donate_argnums=0),
              [(group, jnp.asarray(rows), jnp.int32(steps))]),
  }
  per_step = {}
  for steps_per_dispatch, (program, dispatches) in programs.items():
    start = time.perf_counter()
    state, sums = jax.block_until_ready(program(state, dispatches[0], rng))
    print(f"{steps_per_dispatch} step(s) per dispatch: compiled and ran once in "
          f"{time.perf_counter() - start:.1f} s", flush=True)
    rounds = []
    for _ in range(FLAGS.rounds):
      start = time.perf_counter()
      for inputs in dispatches:
        state, metric_sums = program(state, inputs, rng)
        sums = jax.tree.map(jnp.add, sums, metric_sums)
      jax.block_until_ready(sums)
      rounds.append((time.perf_counter() - start) / steps)
    per_step[steps_per_dispatch] = min(rounds)
  single, looped = per_step[1], per_step[steps]
  print(f"{jax.default_backend()} ({jax.device_count()} device(s)), {config.model.name}, batch "
        f"{batch_size} x {height}x{FLAGS.width}, augmentation "
        f"{'on' if config.augment.enabled else 'off'}: 1 step per dispatch "
        f"{1e3 * single:.1f} ms/step, {steps} per dispatch {1e3 * looped:.1f} ms/step: the loop "
        f"saves {100 * (single - looped) / single:.1f}% of a step")


if __name__ == "__main__":
  app.run(main)
