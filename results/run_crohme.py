"""The Python steps of results/run_crohme.sh: prepare, evaluate + export, epochs, summary.

  python results/run_crohme.py prepare --dataset crohme --data_dir D --manual_dir M --out O
  python results/run_crohme.py evaluate --workdir W --export E --output_dir R
  python results/run_crohme.py epochs --metrics W/metrics.json --seconds 200
  python results/run_crohme.py summary --run_dir RUN --out O/crohme_gpu.json

Each step is its own process so that the shell script can bound it with ``timeout`` and go
on after a failure; ``summary`` reads whatever the others left and never fails on a
missing piece (it records it as null).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

SUMMARY_SCHEMA = 1
# What the summary keeps of a trainer's metrics.json.
TRAIN_FIELDS = ("steps", "steps_per_epoch", "batch_size", "steady_img_per_s", "seconds_to_first_step", "data_seconds",
                "init_seconds", "compile_seconds", "programs_compiled_ahead", "train_seconds",
                "wall_seconds", "best_val_exprate", "batch_shapes")
# What the summary keeps of each split of an evaluate report.
SPLIT_FIELDS = ("raw", "cleaned", "length", "structure", "seconds", "samples_per_second")


def prepare(args) -> None:
  """Prepares the dataset (as training would on first use) and writes ``versions.json``."""
  import jax
  import ml_collections

  import rapidfuzz  # noqa: F401  (the evaluation's edit distances: fail here, not at the end)
  import tensorboardX  # noqa: F401  (the trainer's summaries)

  from hme_jax.data import input_pipeline  # noqa: F401  (every training import)
  from hme_jax.train import trainer  # noqa: F401
  versions = {"jax": jax.__version__, "backend": jax.default_backend(),
              "device_count": jax.device_count(), "device": jax.devices()[0].device_kind}
  for name in ("flax", "optax", "orbax.checkpoint", "grain", "tensorflow_datasets", "torch"):
    try:
      versions[name] = __import__(name, fromlist=["_"]).__version__
    except Exception as error:  # noqa: BLE001 (a missing optional package is recorded)
      versions[name] = f"unavailable: {error.__class__.__name__}"
  os.makedirs(args.out, exist_ok=True)
  with open(os.path.join(args.out, "versions.json"), "w") as f:
    json.dump(versions, f, indent=1)
  print(json.dumps(versions), flush=True)
  builder = input_pipeline.dataset_builder(ml_collections.ConfigDict(
      {"name": args.dataset, "data_dir": args.data_dir, "manual_dir": args.manual_dir}))
  print({split: info.num_examples for split, info in builder.info.splits.items()}, flush=True)


def evaluate(args) -> None:
  """Exports the model (params only), then decodes the config's test splits that are present
  (``evaluate``'s default) with each decoder."""
  from hme_jax.eval import evaluate as evaluate_lib
  from hme_jax.infer import saved_model
  meta = saved_model.export_model(args.workdir, args.export, checkpoint=args.checkpoint,
                                  dtype="bfloat16")
  print(f"Exported step {meta['step']} to {args.export}", flush=True)
  for decoder in args.decoders.split(","):
    evaluate_lib.evaluate(args.workdir, checkpoint=args.checkpoint,
                          decoder=decoder, beam_width=args.beam_width,
                          max_samples=args.max_samples, output_dir=args.output_dir)


def epochs(args) -> None:
  """Prints how many epochs fit ``seconds`` more training at the rate a first stage measured,
  counting the images that stage already trained (at least 1)."""
  with open(args.metrics) as f:
    metrics = json.load(f)
  rate = metrics.get("steady_img_per_s") or 0.0
  epoch_images = metrics["steps_per_epoch"] * metrics["batch_size"]
  done_images = metrics["steps"] * metrics["batch_size"]
  print(max(1, math.floor((args.seconds * rate + done_images) / epoch_images)))


def _read_json(path: str):
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, ValueError):
    return None


def _model_summary(run_dir: str, name: str) -> dict:
  model_dir = os.path.join(run_dir, name)
  metrics = _read_json(os.path.join(model_dir, "workdir", "metrics.json")) or {}
  history = metrics.get("history") or []
  train = {field: metrics.get(field) for field in TRAIN_FIELDS}
  train["epochs"] = (metrics["steps"] / metrics["steps_per_epoch"]
                    if metrics.get("steps_per_epoch") else None)
  train["last_validation"] = history[-1] if history else None
  cold = _read_json(os.path.join(run_dir, f"{name}_cold_start", "workdir", "metrics.json"))
  if cold:  # a one-step run that compiled everything from scratch while the CRNN trained
    train["cold_start"] = {field: cold.get(field) for field in
                           ("seconds_to_first_step", "data_seconds", "init_seconds",
                            "compile_seconds", "programs_compiled_ahead")}
  stage_a = _read_json(os.path.join(model_dir, "metrics_stage_a.json"))
  if stage_a:  # stage A's throughput sized stage B
    train.update({f"stage_a_{field}": stage_a.get(field) for field in
                  ("seconds_to_first_step", "compile_seconds", "steady_img_per_s", "steps")})
  evaluations: dict = {}
  reports_dir = os.path.join(model_dir, "reports")
  for file_name in sorted(os.listdir(reports_dir)) if os.path.isdir(reports_dir) else []:
    report = _read_json(os.path.join(reports_dir, file_name))
    if not (file_name.startswith("report_") and report):
      continue
    evaluations[report["decoder"]] = {
        "checkpoint": report["checkpoint"], "step": report["step"],
        "beam_width": report["beam_width"],
        "splits": {split: {field: scores.get(field) for field in SPLIT_FIELDS}
                   for split, scores in report["splits"].items()}}
  export = os.path.join(model_dir, "export")
  return {"config": _read_text(os.path.join(model_dir, "config.txt")), "train": train,
          "eval": evaluations,
          "export": f"{name}/export" if os.path.exists(os.path.join(export, "model.json"))
          else None}


def _read_text(path: str) -> str | None:
  try:
    with open(path) as f:
      return f.read().strip()
  except OSError:
    return None


def _stages(run_dir: str) -> list[dict]:
  stages = []
  for line in (_read_text(os.path.join(run_dir, "stages.tsv")) or "").splitlines():
    name, rc, seconds = line.split("\t")
    stages.append({"name": name, "rc": int(rc), "seconds": int(seconds)})
  return stages


def summary(args) -> None:
  """Collects the run's figures into one JSON file (``results/crohme_gpu.json``'s format)."""
  run_dir = args.run_dir
  models = sorted(name for name in os.listdir(run_dir)
                  if os.path.isfile(os.path.join(run_dir, name, "config.txt")))
  result = {
      "schema": SUMMARY_SCHEMA, "profile": args.profile, "commit": args.commit,
      "budget_seconds": args.budget, "total_seconds": args.total_seconds,
      "versions": _read_json(os.path.join(run_dir, "versions.json")),
      "stages": _stages(run_dir),
      "torch_comparison": _read_json(os.path.join(run_dir, "throughput.json")),
      "models": {name: _model_summary(run_dir, name) for name in models},
  }
  with open(args.out, "w") as f:
    json.dump(result, f, indent=1)
  for name, model in result["models"].items():
    scores = {decoder: {split: round(s["raw"]["exprate"] * 100, 2) if s.get("raw") else None
                        for split, s in e["splits"].items()}
              for decoder, e in model["eval"].items()}
    print(f"{name}: {model['train'].get('epochs')} epochs, "
          f"{model['train'].get('steady_img_per_s')} img/s, ExpRate % {scores}")


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(prog="results/run_crohme.py", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  commands = parser.add_subparsers(dest="command", required=True)
  command = commands.add_parser("prepare")
  command.add_argument("--dataset", required=True)
  command.add_argument("--data_dir", default="")
  command.add_argument("--manual_dir", default="")
  command.add_argument("--out", required=True, help="Folder for versions.json.")
  command.set_defaults(run=prepare)
  command = commands.add_parser("evaluate")
  command.add_argument("--workdir", required=True)
  command.add_argument("--checkpoint", default="best")
  command.add_argument("--export", required=True, help="Folder for the params-only model.")
  command.add_argument("--output_dir", required=True, help="Folder for the reports.")
  command.add_argument("--decoders", default="beam,greedy")
  command.add_argument("--beam_width", type=int, default=10)
  command.add_argument("--max_samples", type=int, default=0, help=">0: the first N of each split.")
  command.set_defaults(run=evaluate)
  command = commands.add_parser("epochs")
  command.add_argument("--metrics", required=True)
  command.add_argument("--seconds", type=float, required=True)
  command.set_defaults(run=epochs)
  command = commands.add_parser("summary")
  command.add_argument("--run_dir", required=True)
  command.add_argument("--out", required=True)
  command.add_argument("--profile", default="gpu")
  command.add_argument("--commit", default="unknown")
  command.add_argument("--budget", type=int, default=0)
  command.add_argument("--total_seconds", type=int, default=0)
  command.set_defaults(run=summary)
  args = parser.parse_args(argv)
  args.run(args)


if __name__ == "__main__":
  main()
