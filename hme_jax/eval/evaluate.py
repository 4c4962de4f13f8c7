"""Evaluates a trained work dir on test splits.

  python -m hme_jax.eval.evaluate [--workdir DIR] [--checkpoint best|latest|STEP]
      [--splits 2014,2016,2019] [--decoder greedy|beam] [--beam_width 10]

Restores the Orbax checkpoint with the config and vocabulary saved in it,
decodes each split in batches on the available devices, prints a table and
writes ``<output_dir>/report_<checkpoint>_<decoder>.json`` and one TSV per split
(id, reference, prediction, errors).
"""

from __future__ import annotations

import csv
import json
import os
import sys
import time

import jax
import ml_collections
import numpy as np
from absl import app, flags, logging

from hme_jax import sharding
from hme_jax.data import input_pipeline
from hme_jax.eval import decode, metrics
from hme_jax.families import registry
from hme_jax.infer import saved_model
from hme_jax.train import checkpoints as checkpoints_lib


def evaluate(workdir: str, *, checkpoint: str = "best", splits: list[str] | None = None,
             decoder: str = "greedy", beam_width: int = 10, well_formed: bool = False,
             batch_size: int = 0, max_samples: int = 0, output_dir: str = "",
             data_dir: str = "", manual_dir: str = "") -> dict:
  """Decodes ``splits`` and writes the report; returns it."""
  model = saved_model.LoadedModel(workdir, checkpoint)
  config = model.config
  dataset_config = ml_collections.ConfigDict(config.dataset.to_dict())
  if data_dir:
    dataset_config.data_dir = data_dir
  if manual_dir:
    dataset_config.manual_dir = manual_dir
  builder = input_pipeline.dataset_builder(dataset_config)
  available = set(builder.info.splits)
  if not splits:
    splits = [s for s in config.dataset.test_splits if s in available]
  batch_size = decode.eval_batch_size(batch_size or config.eval.batch_size)
  if not output_dir:  # an exported model's directory may be inside the installed package
    output_dir = (os.path.join("eval", os.path.basename(model.workdir))
                  if model.is_export else os.path.join(model.workdir, "eval"))
  os.makedirs(output_dir, exist_ok=True)

  report = {"workdir": model.workdir, "checkpoint": checkpoint, "step": model.step,
            "decoder": decoder, "beam_width": beam_width if decoder == "beam" else None,
            "well_formed": well_formed, "device": jax.devices()[0].device_kind,
            "splits": {}}
  for split in splits:
    source = input_pipeline.data_source(builder, split)  # clear error for a missing split
    dataset = input_pipeline.eval_dataset(config, source, model.vocab, batch_size=batch_size,
                                          max_samples=max_samples)
    start = time.time()
    predictions, _ = model.decode(dataset, decoder=decoder, beam_width=beam_width,
                                  max_length=config.eval.max_length,
                                  well_formed=well_formed)
    seconds = time.time() - start
    table = decode.summarize(predictions)
    analysis = decode.error_analysis(predictions)
    report["splits"][split] = {"raw": table["all"]["raw"], "cleaned": table["all"]["clean"],
                               "length_split": table, **analysis, "seconds": seconds,
                               "samples_per_second": len(predictions) / max(seconds, 1e-9)}
    write_tsv(report_path(output_dir, checkpoint, decoder, well_formed, split), predictions)
    print(f"\n== {split}: {len(predictions)} expressions, {decoder} decoding, "
          f"checkpoint {checkpoint} (step {model.step}), {seconds:.1f} s")
    print(metrics.format_table(table, split_at=14))
    for name, groups in analysis.items():
      print(f"\nby {name}:\n" + metrics.format_table(groups))
    path = report_path(output_dir, checkpoint, decoder, well_formed)
    with open(path, "w") as f:  # after each split, so finished splits survive an interruption
      json.dump(report, f, indent=1)
  print(f"\nReport: {path}")
  return report


def report_path(output_dir: str, checkpoint: str, decoder: str, well_formed: bool,
                split: str = "") -> str:
  """The report (``split`` empty) or a split's predictions TSV written by ``evaluate``."""
  tag = f"{checkpoint}_{decoder}" + ("_wellformed" if well_formed else "")
  return os.path.join(output_dir, f"predictions_{split}_{tag}.tsv" if split
                      else f"report_{tag}.json")


def write_tsv(path: str, predictions: list[decode.Prediction]) -> None:
  with open(path, "w", newline="") as f:
    writer = csv.writer(f, delimiter="\t", lineterminator="\n")
    writer.writerow(["id", "reference", "prediction", "errors"])
    for p in predictions:
      writer.writerow([p.id, " ".join(p.reference), " ".join(p.prediction),
                       metrics.edit_distance(p.reference, p.prediction)])


def compute_logits(workdir: str, split: str, max_samples: int = 0, checkpoint: str = "best"):
  """CTC logits of a split, for benchmarks: a list of ``(logits [B, T, C], frame_paddings [B, T])``."""
  model = saved_model.LoadedModel(workdir, checkpoint, compute_dtype="float32")
  if not isinstance(model.family, registry.CTCFamily):
    raise ValueError(f"{workdir} holds a {model.config.model.name} model; logits need a CTC model.")
  builder = input_pipeline.dataset_builder(model.config.dataset)
  dataset = input_pipeline.eval_dataset(model.config, input_pipeline.data_source(builder, split),
                                        model.vocab, max_samples=max_samples)
  logits_fn = jax.jit(model.family.logits)
  outputs = []
  for host_batch in dataset:
    mask = host_batch["sample_mask"] > 0
    logits, paddings = sharding.gather(
        logits_fn(model.variables, sharding.shard_batch(host_batch, model.mesh)))
    outputs.append((np.asarray(logits[mask], np.float32), np.asarray(paddings[mask], np.float32)))
  return outputs


# --- command line ------------------------------------------------------------------

FLAGS = flags.FLAGS


def _define_flags():
  flags.DEFINE_string("workdir", "", "Work dir or exported model directory of a trained "
                      "model; default: the model shipped in the package.")
  flags.DEFINE_string("checkpoint", "best", "best | latest | a step number.")
  flags.DEFINE_list("splits", [], "Splits to evaluate (default: the config's test splits present).")
  flags.DEFINE_enum("decoder", "greedy", ["greedy", "beam"], "Decoder.")
  flags.DEFINE_integer("beam_width", 10, "Beam width (beam decoder).")
  flags.DEFINE_bool("well_formed", False, "Constrain the beam to well-formed LaTeX.")
  flags.DEFINE_integer("batch_size", 0, "Batch size (default: the config's eval batch size).")
  flags.DEFINE_integer("max_samples", 0, "Evaluate only the first N samples of each split.")
  flags.DEFINE_string("output_dir", "", "Where the report and TSVs go (default: WORKDIR/eval; "
                      "eval/NAME for an exported model).")
  flags.DEFINE_string("data_dir", "", "TFDS data dir (default: the one in the saved config).")
  flags.DEFINE_string("manual_dir", "", "Where data.zip lies, if the dataset must be prepared.")


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  try:
    evaluate(FLAGS.workdir or saved_model.pretrained_path(), checkpoint=FLAGS.checkpoint,
             splits=FLAGS.splits,
             decoder=FLAGS.decoder, beam_width=FLAGS.beam_width, well_formed=FLAGS.well_formed,
             batch_size=FLAGS.batch_size, max_samples=FLAGS.max_samples,
             output_dir=FLAGS.output_dir, data_dir=FLAGS.data_dir, manual_dir=FLAGS.manual_dir)
  except (checkpoints_lib.NoCheckpointError, input_pipeline.DatasetNotFoundError) as error:
    print(f"error: {error}", file=sys.stderr)
    sys.exit(2)


def run():
  _define_flags()
  app.run(main)


if __name__ == "__main__":
  run()
