"""CTC beam search: hme_jax.families.ctc_decoding.beam_search against pyctcdecode (no LM).

Both decoders get the same log-probabilities. Reported per setting: top-1
agreement (% of sequences whose best token sequences are identical), how often
each side's top-1 is the more probable label sequence when they differ (exact
CTC log-probability by ``optax.ctc_loss``), sequences per second, speed-up,
and the JAX device.

Set-up (benchmark only; never a runtime dependency of hme-jax):

  pip install --no-deps pyctcdecode pygtrie

(pyctcdecode's metadata pins numpy<2; it runs with numpy 2.)

Usage:

  python benchmarks/decode.py --synthetic                # standalone
  python benchmarks/decode.py --workdir DIR --split 2014 --max_samples 500

Settings compared (beam width 10 on both sides):

* ``exact``: ours extends every beam by every token (``top_tokens=None``);
  pyctcdecode with ``token_min_logp=-1000`` (every token of every frame: it
  clips log-probabilities at log(1e-15) = -34.5) and ``beam_prune_logp=-1000``
  (no pruning of beams relative to the best), ``prune_history=False``.
* ``pruned``: ours with ``top_tokens=10``; pyctcdecode with its defaults
  (``token_min_logp=-5``, ``beam_prune_logp=-10``).

pyctcdecode gets one unique character per token (``chr(0x4E00 + id)``) and
``""`` for the blank, so its text maps back to ids. Its beam holds
(prefix, last character) pairs rather than prefixes, so at equal width it keeps
somewhat fewer distinct prefixes than ours. It runs in one Python process on
the CPU; ours is jit-compiled, timed after a warm-up pass over every batch
shape, on batches already on the device.

Synthetic logits (``--synthetic``, the default without ``--workdir``): for each
sequence T ~ U[64, 256] frames, C = 110 classes; a random label path (each label
1-3 frames, 0-3 blanks between) scored with a per-frame peak of U[6, 14]
(``--peak``) over unit Gaussian noise, and on 15% of frames a confusable
runner-up close to the peak: confident, CTC-like posteriors with some
genuinely ambiguous frames. ``--peak 2 9`` gives a much less certain model.
"""

from __future__ import annotations

import argparse
import logging
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from hme_jax.families import ctc_decoding

BEAM_WIDTH = 10
SETTINGS = {
    # name: (our top_tokens, pyctcdecode keyword arguments)
    "exact": (None, dict(token_min_logp=-1000.0, beam_prune_logp=-1000.0, prune_history=False)),
    "pruned": (10, dict(token_min_logp=-5.0, beam_prune_logp=-10.0, prune_history=False)),
}


def synthetic_batches(num_sequences: int, batch_size: int, num_classes: int, seed: int,
                      peak=(6.0, 14.0)):
  """Peaked random CTC posteriors: list of (logits [B, T, C], frame_paddings [B, T])."""
  rng = np.random.default_rng(seed)
  sequences = []
  for _ in range(num_sequences):
    num_frames = int(rng.integers(64, 257))
    path = []
    while len(path) < num_frames:
      path += [int(rng.integers(1, num_classes))] * int(rng.integers(1, 4))
      path += [0] * int(rng.integers(0, 4))
    path = np.array(path[:num_frames])
    logits = rng.normal(size=(num_frames, num_classes)).astype(np.float32)
    logits[np.arange(num_frames), path] += rng.uniform(*peak, size=num_frames)
    confused = np.flatnonzero(rng.random(num_frames) < 0.15)
    runner_up = rng.integers(0, num_classes, size=confused.size)
    logits[confused, runner_up] = (logits[confused, path[confused]]
                                   - rng.uniform(0.0, 1.5, confused.size))
    sequences.append(logits)
  # Batch neighbours of similar length, padded to a multiple of 64 frames (a
  # handful of shapes, as the bucketed input pipeline gives).
  sequences.sort(key=len)
  batches = []
  for start in range(0, num_sequences, batch_size):
    group = sequences[start:start + batch_size]
    padded_frames = -(-max(len(s) for s in group) // 64) * 64
    logits = np.zeros((len(group), padded_frames, num_classes), np.float32)
    paddings = np.ones((len(group), padded_frames), np.float32)
    for i, sequence in enumerate(group):
      logits[i, :len(sequence)] = sequence
      paddings[i, :len(sequence)] = 0.0
    batches.append((logits, paddings))
  return batches


def log_softmax(logits):
  return np.asarray(jax.nn.log_softmax(jnp.asarray(logits, jnp.float32), axis=-1))


def run_ours(batches, top_tokens, repeats: int):
  """Top-1 id lists and the best wall time of a pass over every batch."""
  on_device = [(jnp.asarray(l), jnp.asarray(p)) for l, p in batches]
  max_length = max(l.shape[1] for l, _ in batches)

  def one_pass():
    outputs = [ctc_decoding.beam_search(l, p, beam_width=BEAM_WIDTH, max_output_length=max_length,
                                        top_tokens=top_tokens) for l, p in on_device]
    jax.block_until_ready(outputs)
    return outputs

  outputs = one_pass()  # warm-up: compiles every batch shape
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    one_pass()
    times.append(time.perf_counter() - start)
  best = []
  for tokens, lengths, _ in outputs:
    best += ctc_decoding.best_hypotheses(tokens, lengths)
  return best, min(times)


def run_pyctcdecode(batches, decoder, settings):
  best = []
  start = time.perf_counter()
  for logits, paddings in batches:
    for row, row_paddings in zip(logits, paddings):
      beams = decoder.decode_beams(row[row_paddings < 0.5], beam_width=BEAM_WIDTH, **settings)
      best.append([ord(ch) - 0x4E00 for ch in beams[0][0]])
  return best, time.perf_counter() - start


def ctc_log_likelihood(batches, hypotheses):
  """Exact log P(hypothesis | logits) of each sequence's hypothesis, ``[N]``."""
  loss_fn = jax.jit(optax.ctc_loss)
  out, index = [], 0
  for logits, paddings in batches:
    count = len(logits)
    labels = np.zeros((count, logits.shape[1]), np.int32)
    label_paddings = np.ones(labels.shape, np.float32)
    for i, hypothesis in enumerate(hypotheses[index:index + count]):
      labels[i, :len(hypothesis)] = hypothesis
      label_paddings[i, :len(hypothesis)] = 0.0
    out.append(-np.asarray(loss_fn(logits, paddings, labels, label_paddings)))
    index += count
  return np.concatenate(out)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--workdir", default="", help="training workdir: logits of its model")
  parser.add_argument("--split", default="2014")
  parser.add_argument("--max_samples", type=int, default=256)
  parser.add_argument("--synthetic", action="store_true", help="synthetic logits (default "
                      "without --workdir)")
  parser.add_argument("--num_classes", type=int, default=110)
  parser.add_argument("--peak", type=float, nargs=2, default=(6.0, 14.0),
                      help="synthetic: range of the path's logit margin (lower = less certain)")
  parser.add_argument("--batch_size", type=int, default=64)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--repeats", type=int, default=3, help="timed passes of ours (best kept)")
  parser.add_argument("--settings", default="exact,pruned", help=f"among {list(SETTINGS)}")
  args = parser.parse_args()

  try:
    import pyctcdecode  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise SystemExit("pyctcdecode is missing: pip install --no-deps pyctcdecode pygtrie") from None
  logging.getLogger("pyctcdecode").setLevel(logging.ERROR)

  if args.workdir and not args.synthetic:
    from hme_jax.eval import evaluate  # pylint: disable=g-import-not-at-top
    batches = evaluate.compute_logits(args.workdir, args.split, args.max_samples)
    source = f"{args.workdir} split {args.split}"
  else:
    batches = synthetic_batches(args.max_samples, args.batch_size, args.num_classes, args.seed,
                                tuple(args.peak))
    source = f"synthetic (peak {args.peak[0]:g}..{args.peak[1]:g})"
  # Both decoders see the same log-probabilities.
  batches = [(log_softmax(l), np.asarray(p, np.float32)) for l, p in batches]
  num_classes = batches[0][0].shape[-1]
  num_sequences = sum(len(l) for l, _ in batches)
  frames = np.concatenate([np.sum(p < 0.5, axis=1) for _, p in batches])

  labels = [""] + [chr(0x4E00 + i) for i in range(1, num_classes)]
  decoder = pyctcdecode.build_ctcdecoder(labels)
  device = jax.devices()[0]
  print(f"logits: {source}; {num_sequences} sequences, frames {frames.min()}..{frames.max()} "
        f"(mean {frames.mean():.0f}), {num_classes} classes, {len(batches)} batches; "
        f"beam width {BEAM_WIDTH}; device {device.platform} ({device.device_kind})")

  rows = []
  for name in args.settings.split(","):
    top_tokens, settings = SETTINGS[name]
    ours, our_seconds = run_ours(batches, top_tokens, args.repeats)
    theirs, their_seconds = run_pyctcdecode(batches, decoder, settings)
    agree = np.array([a == b for a, b in zip(ours, theirs)])
    ours_ll, theirs_ll = ctc_log_likelihood(batches, ours), ctc_log_likelihood(batches, theirs)
    differ = ~agree
    rows.append((name, 100 * agree.mean(), int(differ.sum()),
                 int(np.sum(ours_ll[differ] > theirs_ll[differ] + 1e-4)),
                 int(np.sum(theirs_ll[differ] > ours_ll[differ] + 1e-4)),
                 num_sequences / our_seconds, num_sequences / their_seconds,
                 their_seconds / our_seconds))

  header = ("setting", "top-1 agree %", "differ", "ours more prob.", "theirs more prob.",
            "ours seq/s", "pyctcdecode seq/s", "speed-up")
  print("| " + " | ".join(header) + " |")
  print("|" + "---|" * len(header))
  for name, agree, differ, ours_better, theirs_better, ours_rate, their_rate, speedup in rows:
    print(f"| {name} | {agree:.1f} | {differ} | {ours_better} | {theirs_better} | "
          f"{ours_rate:.0f} | {their_rate:.1f} | {speedup:.0f}x |")


if __name__ == "__main__":
  main()
