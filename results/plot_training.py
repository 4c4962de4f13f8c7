"""Training curve of a work dir: loss and validation ExpRate per epoch, as a PNG.

  python results/plot_training.py --workdir workdirs/crohme_cpu --output results/crohme_cpu_curve.png

Reads the per-epoch history that the trainer keeps in every checkpoint (or in
``metrics.json``). Several work dirs draw one line each.
"""

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def history(workdir: str) -> list[dict]:
  """The per-epoch records of the latest checkpoint (current while a run goes on)."""
  from hme_jax.train import checkpoints
  try:
    manager = checkpoints.Checkpoints(workdir, read_only=True)
  except checkpoints.NoCheckpointError:
    with open(os.path.join(workdir, "metrics.json")) as f:
      return json.load(f)["history"]
  try:
    return manager.read_meta(manager.resolve("latest")).get("history", [])
  finally:
    manager.close()


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--workdir", action="append", required=True)
  parser.add_argument("--output", required=True)
  parser.add_argument("--x", default="train_seconds", choices=("epoch", "train_seconds"))
  args = parser.parse_args()

  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  figure, (loss_axis, rate_axis) = plt.subplots(1, 2, figsize=(11, 4))
  for workdir in args.workdir:
    records = history(workdir)
    if not records:
      raise SystemExit(f"{workdir} has no validated epoch yet.")
    name = os.path.basename(os.path.normpath(workdir))
    xs = [r.get(args.x, r["epoch"]) / (60.0 if args.x == "train_seconds" else 1.0)
          for r in records]
    loss_axis.plot(xs, [r["train_loss"] for r in records], label=f"{name} train")
    loss_axis.plot(xs, [r["val_loss"] for r in records], "--", label=f"{name} validation")
    rate_axis.plot(xs, [100 * r["val_exprate"] for r in records], marker="o", label=name)
  label = "training minutes" if args.x == "train_seconds" else "epoch"
  loss_axis.set(xlabel=label, ylabel="loss per token", title="Loss")
  rate_axis.set(xlabel=label, ylabel="ExpRate (%)", title="Validation ExpRate (greedy)")
  for axis in (loss_axis, rate_axis):
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
  figure.tight_layout()
  figure.savefig(args.output, dpi=100)
  print(f"Wrote {args.output}")


if __name__ == "__main__":
  main()
