"""Command line of the trainer (``train.py`` and the ``hme-train`` script).

  python train.py --config configs/quickstart.py --workdir workdirs/quickstart
  python train.py --config configs/vgg16.py --workdir workdirs/vgg16 --config.train.batch_size=64

Re-running the same command resumes from the latest checkpoint in the work dir.
"""

from absl import app, flags, logging
from ml_collections import config_flags

from hme_jax.train import trainer

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
    "config", None, "Config file (configs/*.py); override fields with --config.a.b=value.",
    lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and metrics.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if not FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # Orbax's INFO lines drown the progress bar
  trainer.train_and_evaluate(FLAGS.config, FLAGS.workdir)


def run():
  app.run(main)


if __name__ == "__main__":
  run()
