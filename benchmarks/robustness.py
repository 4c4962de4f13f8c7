"""ExpRate on CROHME 2014 as people bring images: one transform family at a time, and clean.

  python benchmarks/robustness.py                         # the model shipped in the package
  python benchmarks/robustness.py --workdir DIR --max_samples 200 --grid /tmp/grid.png
  python benchmarks/robustness.py --preprocessing legacy  # the reading before normalise

The whole split takes about 10 minutes on 2 CPU cores; ``--max_samples 200``
about 4. Figures: results/README.md, "Real-world input".

Each sample of the split (the first ``--max_samples``) is transformed, read the
way ``predict`` reads a file (``predict.prepare_image``: ``preprocessing.normalise``
then ``fit_image``; ``--preprocessing legacy``: the fixed-threshold crop that
predict used before it) and decoded in batches. Prints a table of ExpRate per
family and writes a PNG grid of the first ``--grid_samples`` samples under each
family, the model's input and its reading (``--grid``; the default lies in
/tmp: the grid shows CROHME images, which must not go into the repository).

Transform families (``hme_jax/data/paper.py``; the random ones draw from
``np.random.default_rng([seed, family index, sample index])``, so every run
sees the same pixels):

  clean      the archive's bitmap, white strokes on black, as stored
  photo      a photographed page: the ink at 1.5x on grey paper (level 150-220,
             fibre texture), ruled (30% of pages squared), turned +-2 degrees,
             uneven light and a shadow (up to 40% of it), blur sigma 0.7 px,
             noise sigma 4, JPEG quality 75
  scan       a scanned page: white paper (225-245), no ruling, turned +-1 degree,
             blur sigma 0.5 px, noise sigma 3, JPEG quality 85
  blur       Gaussian blur, sigma 1.5 px
  jpeg       dark on white, JPEG quality 20
  scale_0.5x, scale_2x, scale_3x   the bitmap resized (area averaging / bilinear)
  rotation   turned by 5 degrees, clockwise or counter-clockwise at random
  thick_pen  strokes 4 px thicker (disk dilation, radius 2)
  thin_pen   strokes 2 px thinner (disk erosion, radius 1)
  canvas     as drawn on the web app's 1200x400 canvas: 2.5x, a 6 px round pen,
             black on white, anywhere on the canvas
"""

from __future__ import annotations

import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

from hme_jax.data import input_pipeline, paper, preprocessing  # noqa: E402
from hme_jax.infer import predict, saved_model  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", "", "Work dir or exported model; default: the bundled model.")
flags.DEFINE_string("split", "2014", "CROHME split.")
flags.DEFINE_integer("max_samples", 0, "The first N samples only (0 = all).")
flags.DEFINE_list("families", [], "Transform families (default: all, see the docstring).")
flags.DEFINE_enum("decoder", "greedy", ["greedy", "beam"], "Decoder.")
flags.DEFINE_enum("preprocessing", "normalise", ["normalise", "legacy"],
                  "normalise: predict's reading; legacy: invert, crop at grey level 32, fit.")
flags.DEFINE_integer("seed", 0, "Seed of the random transforms.")
flags.DEFINE_string("grid", "/tmp/hme_robustness_grid.png", "PNG grid of examples ('' = none).")
flags.DEFINE_integer("grid_samples", 4, "Samples per family in the grid.")
flags.DEFINE_string("json", "", "Also write the table as JSON here.")
flags.DEFINE_string("data_dir", "", "TFDS data dir (default: the one in the model's config).")
flags.DEFINE_string("manual_dir", "", "Where data.zip lies, if the dataset must be prepared.")


def _photo(ink, rng):
  page = paper.page(ink, rng, scale=1.5, tone=(150.0, 220.0), ruling_probability=1.0,
                    squared_probability=0.3)
  page = paper.rotate(page, rng.uniform(-2, 2), border=int(np.median(page)))
  page = paper.illuminate(page, rng, 0.4)
  return paper.jpeg(paper.add_noise(paper.blur(page, 0.7), rng, 4.0), 75)


def _scan(ink, rng):
  page = paper.page(ink, rng, tone=(225.0, 245.0), texture=3.0, ruling_probability=0.0)
  page = paper.rotate(page, rng.uniform(-1, 1), border=int(np.median(page)))
  return paper.jpeg(paper.add_noise(paper.blur(page, 0.5), rng, 3.0), 85)


FAMILIES = {
    "clean": lambda ink, rng: ink,
    "photo": _photo,
    "scan": _scan,
    "blur": lambda ink, rng: paper.blur(ink, 1.5),
    "jpeg": lambda ink, rng: paper.jpeg(255 - ink, 20),
    "scale_0.5x": lambda ink, rng: paper.rescale(ink, 0.5),
    "scale_2x": lambda ink, rng: paper.rescale(ink, 2.0),
    "scale_3x": lambda ink, rng: paper.rescale(ink, 3.0),
    "rotation": lambda ink, rng: paper.rotate(ink, 5.0 * rng.choice([-1, 1]), border=0),
    "thick_pen": lambda ink, rng: paper.change_pen(ink, 2),
    "thin_pen": lambda ink, rng: paper.change_pen(ink, -1),
    "canvas": lambda ink, rng: paper.canvas_drawing(ink, rng),
}


def legacy_input(gray: np.ndarray, input_config) -> np.ndarray:
  """``predict``'s reading before ``normalise``: polarity from the border, crop at grey
  level 32, fit (raises ``NoInkError`` without ink)."""
  image = preprocessing.to_white_on_black(gray)
  if not (image > preprocessing.INK_THRESHOLD).any():
    raise predict.NoInkError("no ink")
  return preprocessing.fit_image(preprocessing.crop_to_ink(image), input_config)


def read_split(model, split: str, max_samples: int):
  """``[(image uint8 [H, W] as stored, reference tokens)]`` of a split."""
  dataset_config = model.config.dataset.to_dict()
  dataset_config.update({k: v for k, v in (("data_dir", FLAGS.data_dir),
                                           ("manual_dir", FLAGS.manual_dir)) if v})
  import ml_collections  # pylint: disable=import-outside-toplevel
  builder = input_pipeline.dataset_builder(ml_collections.ConfigDict(dataset_config))
  source = input_pipeline.data_source(builder, split)
  count = min(len(source), max_samples or len(source))
  samples = []
  for index in range(count):
    record = source[index]
    latex = record["latex"].decode() if isinstance(record["latex"], bytes) else record["latex"]
    samples.append((np.asarray(record["image"])[..., 0], latex.split()))
  return samples


def run_family(recognizer, samples, family: str, family_index: int):
  """``(exprate, inputs, model inputs, predictions, seconds of preprocessing)`` of one family."""
  transform = FAMILIES[family]
  inputs, prepared, readable = [], [], []
  start = time.perf_counter()
  for index, (image, _) in enumerate(samples):
    rng = np.random.default_rng([FLAGS.seed, family_index, index])
    transformed = transform(image, rng)
    inputs.append(transformed)
    try:
      if FLAGS.preprocessing == "legacy":
        prepared.append(legacy_input(transformed, recognizer.input_config))
      else:
        prepared.append(predict.prepare_image(transformed, recognizer.input_config,
                                              recognizer.statistics))
      readable.append(index)
    except predict.NoInkError:
      prepared.append(None)
  seconds = time.perf_counter() - start
  recognitions = recognizer.recognize_prepared([prepared[i] for i in readable])
  predictions = [[] for _ in samples]
  for index, recognition in zip(readable, recognitions):
    predictions[index] = recognition.tokens
  correct = sum(prediction == reference for prediction, (_, reference)
                in zip(predictions, samples))
  return correct / len(samples), inputs, prepared, predictions, seconds


def write_grid(path: str, rows: list[tuple[str, list, list, list, list]]) -> None:
  """One row per family: each sample's transformed input above the model's input, titled
  with its reading (a tick when exact)."""
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  columns = max(len(row[1]) for row in rows)
  figure, axes = plt.subplots(2 * len(rows), columns, figsize=(3.2 * columns, 1.5 * len(rows)),
                              squeeze=False, gridspec_kw={"height_ratios": [2, 1] * len(rows)})
  for row, (family, inputs, prepared, predictions, references) in enumerate(rows):
    for column in range(columns):
      top, bottom = axes[2 * row, column], axes[2 * row + 1, column]
      top.axis("off")
      bottom.axis("off")
      if column >= len(inputs):
        continue
      top.imshow(inputs[column], cmap="gray", vmin=0, vmax=255)
      if prepared[column] is not None:
        bottom.imshow(prepared[column], cmap="gray", vmin=0, vmax=255)
      reading = " ".join(predictions[column]) or "(no reading)"
      mark = "OK " if predictions[column] == references[column] else ""
      top.set_title(f"{family}: {mark}{reading[:40]}", fontsize=7, loc="left")
  figure.tight_layout()
  figure.savefig(path, dpi=90)
  plt.close(figure)


def main(argv):
  del argv
  workdir = FLAGS.workdir or saved_model.pretrained_path()
  recognizer = predict.Recognizer.from_workdir(workdir, decoder=FLAGS.decoder)
  samples = read_split(recognizer.model, FLAGS.split, FLAGS.max_samples)
  families = FLAGS.families or list(FAMILIES)
  unknown = sorted(set(families) - set(FAMILIES))
  if unknown:
    raise app.UsageError(f"Unknown families {unknown}; there are {list(FAMILIES)}.")
  print(f"{workdir}: {FLAGS.split}, {len(samples)} samples, {FLAGS.decoder} decoding, "
        f"preprocessing {FLAGS.preprocessing}, seed {FLAGS.seed}")
  print(f"{'family':<12} {'ExpRate':>8} {'vs clean':>9} {'ms/img prep':>12}")
  table, grid_rows, clean = {}, [], None
  for family in families:
    exprate, inputs, prepared, predictions, seconds = run_family(
        recognizer, samples, family, list(FAMILIES).index(family))
    clean = exprate if family == "clean" else clean
    table[family] = {"exprate": exprate, "ms_per_image": 1000 * seconds / len(samples)}
    delta = "" if clean is None or family == "clean" else f"{100 * (exprate - clean):+.1f}"
    print(f"{family:<12} {100 * exprate:>7.1f}% {delta:>9} {table[family]['ms_per_image']:>12.1f}",
          flush=True)
    count = FLAGS.grid_samples
    grid_rows.append((family, inputs[:count], prepared[:count], predictions[:count],
                      [reference for _, reference in samples[:count]]))
  if FLAGS.grid:
    write_grid(FLAGS.grid, grid_rows)
    print(f"Grid of examples: {FLAGS.grid}")
  if FLAGS.json:
    with open(FLAGS.json, "w") as f:
      json.dump({"workdir": workdir, "split": FLAGS.split, "samples": len(samples),
                 "decoder": FLAGS.decoder, "preprocessing": FLAGS.preprocessing,
                 "seed": FLAGS.seed, "families": table}, f, indent=1)


if __name__ == "__main__":
  app.run(main)
