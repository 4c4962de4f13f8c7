"""Latency of ``predict`` per image (one image per call, after warm-up): p50 and p90.

  python benchmarks/predict_latency.py --workdir workdirs/vgg16 --images 50
  python benchmarks/predict_latency.py --config configs/vgg16.py --images 50

With ``--workdir`` the trained model there is timed. With ``--config`` only, a
model of that config with freshly initialised weights is saved to a temporary
work dir first: the cost of a forward pass and a beam search does not depend on
the weights. Inputs are synthetic renders of random expressions, as photos of
dark ink on paper (so polarity detection, cropping and resizing are timed too).
"""

import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from hme_jax.data import input_pipeline  # noqa: E402
from hme_jax.families import registry  # noqa: E402
from hme_jax.infer import predict  # noqa: E402
from hme_jax.text.vocab import Vocabulary  # noqa: E402
from hme_jax.train import checkpoints, trainer  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", "", "Work dir of a trained model.")
config_flags.DEFINE_config_file("config", "configs/vgg16.py", "Config for an untrained model.")
flags.DEFINE_integer("images", 50, "Timed images.")
flags.DEFINE_enum("decoder", "beam", ["greedy", "beam"], "Decoder.")
flags.DEFINE_integer("beam_width", 10, "Beam width.")
flags.DEFINE_bool("well_formed", False, "Constrain the beam to well-formed LaTeX.")


def save_untrained(config, workdir: str) -> None:
  """A work dir holding one checkpoint of freshly initialised weights."""
  from tfds_crohme.crohme_synthetic import grammar
  vocab = Vocabulary.from_captions([" ".join(grammar.TOKENS)])
  family = registry.create_family(config, vocab)
  batch = input_pipeline.dummy_batch(config, 1)
  state, _, _ = trainer.create_train_state(family, config, 1, batch, jax.random.PRNGKey(0))
  store = checkpoints.Checkpoints(workdir)
  store.save(0, state, {}, {"config": checkpoints.config_to_json(config), "vocab": vocab.to_json()},
             metrics={checkpoints.BEST_METRIC: 0.0}, force=True)
  store.close()


def main(argv):
  del argv
  from tfds_crohme.crohme_synthetic import grammar, render
  workdir = FLAGS.workdir
  if not workdir:
    workdir = tempfile.mkdtemp(prefix="predict_latency_")
    save_untrained(FLAGS.config, workdir)
  recognizer = predict.Recognizer.from_workdir(workdir, decoder=FLAGS.decoder,
                                               beam_width=FLAGS.beam_width,
                                               well_formed=FLAGS.well_formed)
  rng = np.random.default_rng(0)
  photos = [255 - np.pad(render.render_expression(grammar.sample_expression(rng), rng), 20)
            for _ in range(FLAGS.images)]
  for photo in photos[:5]:  # warm-up: one compilation per width bucket met
    recognizer.recognize([photo])
  for bucket_photo in photos:
    recognizer.recognize([bucket_photo])
  latencies = []
  for photo in photos:
    start = time.perf_counter()
    recognizer.recognize([photo])
    latencies.append(time.perf_counter() - start)
  latencies = 1e3 * np.array(latencies)
  config = recognizer.model.config
  print(f"model {config.model.name}/{config.model.get('backbone', '')}, input height "
        f"{config.input.height}, {FLAGS.decoder} decoder (width {FLAGS.beam_width}"
        f"{', well-formed' if FLAGS.well_formed else ''}), "
        f"{jax.devices()[0].device_kind}, {os.cpu_count()} cores")
  print(f"predict latency per image over {len(latencies)} images: p50 "
        f"{np.percentile(latencies, 50):.1f} ms, p90 {np.percentile(latencies, 90):.1f} ms")


if __name__ == "__main__":
  app.run(main)
