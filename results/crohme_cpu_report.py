"""Evaluates the CPU-trained CROHME model and writes ``results/crohme_cpu.json``.

  python results/crohme_cpu_report.py --workdir workdirs/crohme_cpu \
      --export hme_jax/pretrained/crohme_cpu --output results/crohme_cpu.json

Runs ``hme_jax.eval.evaluate`` for each (model, decoder) the report needs, on every
test split the dataset holds: the best checkpoint in float32 with greedy and
beam search (width 10), beam search constrained to well-formed LaTeX, and the
bfloat16 export as shipped. An evaluation whose report already exists in the
output folder is read back, not run again, so an interrupted run resumes.
The JSON adds what the results need beside the scores: the training history,
wall time and img/s from the work dir, the config, the commit and the machine.
"""

import argparse
import json
import os
import platform
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# (name, model: "checkpoint" | "export", decoder, well_formed); None: the export's defaults
EVALUATIONS = (
    ("greedy", "checkpoint", "greedy", False),
    ("beam10", "checkpoint", "beam", False),
    ("beam10_wellformed", "checkpoint", "beam", True),
    ("export_greedy", "export", "greedy", False),
    ("export_default", "export", None, None),
)


def _commit() -> str:
  try:
    return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                          check=True, cwd=os.path.dirname(os.path.abspath(__file__))).stdout.strip()
  except (OSError, subprocess.CalledProcessError):
    return "unknown"


def _machine() -> dict:
  import jax
  return {"platform": platform.platform(), "processor": platform.processor(),
          "cpu_count": os.cpu_count(), "device": jax.devices()[0].device_kind,
          "jax": jax.__version__, "python": platform.python_version()}


def _training(workdir: str) -> dict:
  from hme_jax.train import checkpoints
  manager = checkpoints.Checkpoints(workdir, read_only=True)
  try:
    latest = manager.resolve("latest")
    meta = manager.read_meta(latest)
    best = manager.resolve("best")
  finally:
    manager.close()
  history = meta.get("history", [])
  finished_run = {}
  if os.path.exists(os.path.join(workdir, "metrics.json")):
    with open(os.path.join(workdir, "metrics.json")) as f:
      finished_run = json.load(f)
  return {"latest_step": latest, "best_step": best, "train_seconds": meta.get("train_seconds"),
          "batch_size": meta["config"]["train"]["batch_size"],
          "steady_img_per_s_last_run": finished_run.get("steady_img_per_s"),
          "train_img_per_s_by_epoch": [r.get("train_img_per_s") for r in history],
          "step_img_per_s_by_epoch": [r.get("step_img_per_s") for r in history],
          "history": history, "config": meta["config"]}


def _publish(export_dir: str, results: dict, eval_dir: str) -> None:
  """Records the shipped model's figures (its own default decoder) in its model.json.

  The 2014 ExpRate of the whole split, and of its first 200 images, which
  ``tests/test_pretrained.py`` reproduces from the installed package.
  """
  from hme_jax.eval import evaluate
  from hme_jax.infer import saved_model
  settings = saved_model.LoadedModel(export_dir).config.eval
  decoder = {"decoder": settings.decoder, "beam_width": settings.beam_width,
             "well_formed": settings.well_formed}
  first200 = evaluate.evaluate(export_dir, splits=["2014"], max_samples=200,
                               output_dir=os.path.join(eval_dir, "first200"), **decoder)
  saved_model.write_scores(export_dir, {
      split: {"exprate": scores["raw"]["exprate"], "token_error_rate":
              scores["raw"]["token_error_rate"], "num_samples": scores["raw"]["num_samples"],
              **decoder} for split, scores in results["export_default"]["splits"].items()})
  saved_model.write_scores(export_dir, {"2014_first200": {
      "exprate": first200["splits"]["2014"]["raw"]["exprate"], "max_samples": 200, **decoder}})


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--workdir", default="workdirs/crohme_cpu")
  parser.add_argument("--export", default="hme_jax/pretrained/crohme_cpu")
  parser.add_argument("--output", default="results/crohme_cpu.json")
  parser.add_argument("--eval_dir", default="", help="Where evaluation reports and TSVs go "
                      "(default: WORKDIR/eval/report; never commit them).")
  parser.add_argument("--only", default="", help="Comma-separated subset of: "
                      + ", ".join(name for name, *_ in EVALUATIONS))
  args = parser.parse_args()

  from hme_jax.eval import evaluate
  from hme_jax.infer import saved_model

  eval_dir = args.eval_dir or os.path.join(args.workdir, "eval", "report")
  wanted = set(args.only.split(",")) if args.only else None
  results = {}
  if os.path.exists(args.output):
    with open(args.output) as f:
      results = json.load(f).get("evaluations", {})
  for name, model, decoder, well_formed in EVALUATIONS:
    if wanted is not None and name not in wanted:
      continue
    if decoder is None:
      with open(os.path.join(args.export, saved_model.MODEL_FILE)) as f:
        defaults = json.load(f)["config"]["eval"]
      decoder, well_formed = defaults["decoder"], defaults["well_formed"]
    output_dir = os.path.join(eval_dir, name)
    path = evaluate.report_path(output_dir, "best", decoder, well_formed)
    if os.path.exists(path):
      with open(path) as f:
        results[name] = json.load(f)
      continue
    report = evaluate.evaluate(args.export if model == "export" else args.workdir,
                               checkpoint="best", decoder=decoder, beam_width=10,
                               well_formed=well_formed, output_dir=output_dir)
    results[name] = report

  if wanted is None:
    _publish(args.export, results, eval_dir)

  summary = {name: {split: {"exprate": scores["raw"]["exprate"],
                            "exprate_cleaned": scores["cleaned"]["exprate"],
                            "token_error_rate": scores["raw"]["token_error_rate"],
                            "samples_per_second": scores["samples_per_second"]}
                    for split, scores in report["splits"].items()}
             for name, report in results.items()}
  export = {}
  if os.path.exists(os.path.join(args.export, "model.json")):
    with open(os.path.join(args.export, "model.json")) as f:
      export_meta = json.load(f)
    export = {"path": args.export, "dtype": export_meta["dtype"], "step": export_meta["step"],
              "eval": export_meta["config"]["eval"], "scores": export_meta.get("scores", {}),
              "bytes": sum(os.path.getsize(os.path.join(args.export, name))
                           for name in os.listdir(args.export))}
  output = {"commit": _commit(), "machine": _machine(), "training": _training(args.workdir),
            "export": export, "summary": summary, "evaluations": results}
  with open(args.output, "w") as f:
    json.dump(output, f, indent=1)
  print(json.dumps(summary, indent=1))
  print(f"Wrote {args.output}")


if __name__ == "__main__":
  main()
