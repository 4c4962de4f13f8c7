"""``tfds build`` without TensorFlow.

The ``tfds`` command of tensorflow-datasets 4.9.x imports TensorFlow at
start-up; its ``build`` subcommand itself does not need it. This runs that
subcommand with the same arguments:

  python -m tfds_crohme.build tfds_crohme/crohme --manual_dir DIR [--data_dir DIR]
  python -m tfds_crohme.build crohme_synthetic --data_dir DIR
"""

import sys

import simple_parsing
from tensorflow_datasets.scripts.cli import build

import tfds_crohme  # noqa: F401  (registers the builders by name)


def main(argv: list[str] | None = None) -> None:
  args = simple_parsing.parse(build.Args, args=sys.argv[1:] if argv is None else argv)
  args.execute()


if __name__ == "__main__":
  main()
