"""The evaluation step's cost of padding labels to a width's CTC frame count.

  python benchmarks/eval_label_padding.py --config configs/quickstart.py --widths 128,384

Evaluation batches of a CTC model with bucket widths pad their labels to the
power of two that holds the width's frames (``input_pipeline.BatchShapes.for_evaluation``),
so that every validation program is known before any data. For each width this
times ``evaluation.eval_step`` (loss and greedy decoding, best of ``--repeats``
after one compiled warm-up) with labels padded to ``--short_label_length`` and to
that power of two. Figures: results/README.md.
"""

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from benchmarks.batches import random_batch  # noqa: E402
from hme_jax import evaluation, families, input_pipeline  # noqa: E402
from hme_jax.vocab import Vocabulary  # noqa: E402

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", "configs/quickstart.py", "Config file (a CTC model).")
flags.DEFINE_list("widths", ["128", "384"], "Bucket widths to time.")
flags.DEFINE_integer("batch_size", 32, "Eval batch size.")
flags.DEFINE_integer("short_label_length", 32, "The caption-following label length to compare.")
flags.DEFINE_integer("repeats", 3, "Timed calls per shape (the best is printed).")
flags.DEFINE_integer("num_classes", 110, "Vocabulary size (110 = CROHME with the specials).")


def time_eval_step(family, variables, batch, mesh, repeats: int) -> float:
  """Best seconds of one ``eval_step`` call on ``batch`` after a warm-up call."""
  device_batch = evaluation.shard_batch(batch, mesh)
  jax.block_until_ready(evaluation.eval_step(family, variables, device_batch))
  seconds = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(evaluation.eval_step(family, variables, device_batch))
    seconds.append(time.perf_counter() - start)
  return min(seconds)


def main(argv):
  del argv
  config = FLAGS.config
  shapes = input_pipeline.BatchShapes.for_evaluation(config)
  if not shapes.frame_stride:
    raise app.UsageError(f"{config.model.name!r} has no CTC frames: pick a CRNN config.")
  vocab = Vocabulary(tuple(f"t{i}" for i in range(FLAGS.num_classes - 1)))
  family = families.create_family(config, vocab)
  mesh = evaluation.make_mesh()
  variables = None
  print(f"{jax.device_count()} x {jax.devices()[0].device_kind}, jax {jax.__version__}; "
        f"batch {FLAGS.batch_size}; load average {os.getloadavg()[0]:.1f}")
  print("| width (frames) | label | ms | padded label | ms |\n|---|---|---|---|---|")
  for width in (int(w) for w in FLAGS.widths):
    padded = input_pipeline.label_bucket(width // shapes.frame_stride)
    row = [f"{width} ({width // shapes.frame_stride})"]
    for label_length in (FLAGS.short_label_length, padded):
      batch = random_batch(FLAGS.batch_size, config.input.height, width, label_length,
                           FLAGS.num_classes, shapes.frame_stride)
      batch["ctc_feasible"] = np.ones(FLAGS.batch_size, np.float32)
      if variables is None:
        variables = jax.jit(family.init)(jax.random.PRNGKey(0), batch)
      seconds = time_eval_step(family, variables, batch, mesh, FLAGS.repeats)
      row += [str(label_length), f"{1e3 * seconds:.0f}"]
    print("| " + " | ".join(row) + " |", flush=True)


if __name__ == "__main__":
  app.run(main)
