"""Training input pipeline throughput (images/s, augmentation on) by number of Grain workers.

  python benchmarks/input_pipeline.py --config configs/vgg16.py --workers 0,1,2 --batches 30
  python benchmarks/input_pipeline.py --config configs/quickstart.py
  python benchmarks/input_pipeline.py --config configs/crohme_cpu.py --workers 0 \
      --config.augment.paper_probability=0.5     # with pages drawn and normalised back

Reads the prepared dataset of the config (preparing it on first use).
"""

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from hme_jax.data import input_pipeline  # noqa: E402

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", "configs/vgg16.py", "Config file.")
flags.DEFINE_list("workers", ["0", "1", "2"], "Grain worker counts to try.")
flags.DEFINE_integer("batches", 30, "Batches timed per setting (after 3 warm-up batches).")


def main(argv):
  del argv
  config = FLAGS.config
  builder = input_pipeline.dataset_builder(config.dataset)
  vocab = input_pipeline.load_vocabulary(builder)
  source = input_pipeline.data_source(builder, config.dataset.train_split)
  dataset = input_pipeline.train_dataset(config, source, vocab)
  print(f"dataset {config.dataset.name} ({len(source)} train images), batch "
        f"{config.train.batch_size}, height {config.input.height}, augmentation "
        f"{'on' if config.augment.enabled else 'off'} (paper pages "
        f"{config.augment.get('paper_probability', 0.0):.0%}), {os.cpu_count()} CPU cores")
  print(f"{'workers':>8} {'images/s':>10} {'batches/s':>10}")
  for workers in map(int, FLAGS.workers):
    iterator = input_pipeline.to_iterator(dataset, workers, config.input.prefetch)
    for _ in range(3):
      next(iterator)
    start = time.perf_counter()
    for _ in range(FLAGS.batches):
      next(iterator)
    seconds = time.perf_counter() - start
    print(f"{workers:>8} {FLAGS.batches * config.train.batch_size / seconds:>10.1f} "
          f"{FLAGS.batches / seconds:>10.2f}")
    if hasattr(iterator, "close"):
      iterator.close()


if __name__ == "__main__":
  app.run(main)
