"""The ink statistics of a prepared dataset's split (``preprocessing.InkStatistics``).

  python benchmarks/ink_statistics.py [--dataset crohme] [--split train]

Prints them as ``config.normalise`` lines: the stroke width and symbol height
that ``preprocessing.normalise`` scales outside images to.
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import ml_collections  # noqa: E402
import numpy as np  # noqa: E402

from hme_jax.data import input_pipeline, preprocessing  # noqa: E402


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog="python benchmarks/ink_statistics.py", description=__doc__)
  parser.add_argument("--dataset", default="crohme", help="TFDS name (config.dataset.name).")
  parser.add_argument("--split", default="train")
  parser.add_argument("--data_dir", default="", help="TFDS data dir (default: TFDS's).")
  parser.add_argument("--manual_dir", default="", help="Where data.zip lies, to prepare it.")
  args = parser.parse_args(argv)
  builder = input_pipeline.dataset_builder(ml_collections.ConfigDict(
      {"name": args.dataset, "data_dir": args.data_dir, "manual_dir": args.manual_dir}))
  source = input_pipeline.data_source(builder, args.split)
  statistics = preprocessing.measure_statistics(
      preprocessing.dataset_ink(np.asarray(source[index]["image"])[..., 0])
      for index in range(len(source)))
  print(f"{args.dataset} {args.split} ({len(source)} images):")
  print(f"  config.normalise.stroke_width = {statistics.stroke_width}")
  print(f"  config.normalise.symbol_height = {statistics.symbol_height}")
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
