"""Decoding a dataset with a model family, shared by the trainer and ``evaluate``."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Iterable

import jax
import numpy as np
from jax.sharding import Mesh

from hme_jax.eval import metrics as metrics_lib
from hme_jax.sharding import gather, shard_batch

IMAGE_KEYS = ("images", "image_heights", "image_widths")  # all that decoding reads


@dataclasses.dataclass
class Prediction:
  id: str
  reference: list[str]
  prediction: list[str]
  score: float | None = None
  alternatives: list[tuple[list[str], float]] | None = None


@functools.partial(jax.jit, static_argnames=("family",))
def eval_step(family, variables: dict, batch: dict):
  """Loss sums and greedy tokens of one batch (evaluation mode)."""
  _, (loss_metrics, _) = family.loss(variables["params"],
                                     {k: v for k, v in variables.items() if k != "params"},
                                     batch, jax.random.PRNGKey(0), train=False)
  tokens, lengths = family.greedy(variables, batch)
  return loss_metrics, tokens, lengths


@functools.partial(jax.jit, static_argnames=("family", "beam_width", "max_length", "well_formed"))
def beam_step(family, variables: dict, batch: dict, beam_width: int, max_length: int,
              well_formed: bool = False):
  kwargs = {"well_formed": True} if well_formed else {}
  return family.beam(variables, batch, beam_width, max_length, **kwargs)


def decode_batches(family, variables: dict, batches: Iterable[dict], mesh: Mesh, *,
                   decoder: str = "greedy", beam_width: int = 10, max_length: int = 0,
                   well_formed: bool = False, num_alternatives: int = 0):
  """Decodes every batch; returns ``(predictions, loss_sums)``.

  ``max_length`` (beam search) 0 lets the family choose (CTC: one token per frame).
  A reference token outside the vocabulary (label id 0, ``input_pipeline.EncodeLabel``)
  reads ``vocab.UNKNOWN``, which no prediction holds: the sample counts as wrong.
  """
  vocab = family.vocab
  predictions: list[Prediction] = []
  loss_sums: dict[str, float] = {}
  for host_batch in batches:
    batch = shard_batch(host_batch, mesh)
    scores = alternatives = None
    if decoder == "greedy":
      loss_metrics, tokens, lengths = eval_step(family, variables, batch)
      for key, value in gather(loss_metrics).items():
        loss_sums[key] = loss_sums.get(key, 0.0) + float(value)
      tokens, lengths = gather((tokens, lengths))
    elif decoder == "beam":
      # Only the images: label shapes must not multiply the beam search's compilations.
      images = {key: batch[key] for key in IMAGE_KEYS if key in batch}
      beam_tokens, beam_lengths, beam_scores = gather(
          beam_step(family, variables, images, beam_width, max_length, well_formed))
      tokens, lengths, scores = beam_tokens[:, 0], beam_lengths[:, 0], beam_scores[:, 0]
      if num_alternatives:
        alternatives = (beam_tokens[:, :num_alternatives], beam_lengths[:, :num_alternatives],
                        beam_scores[:, :num_alternatives])
    else:
      raise ValueError(f"Unknown decoder {decoder!r}; expected 'greedy' or 'beam'.")
    labels, label_lengths, mask = gather(
        (batch["labels"], batch["label_lengths"], batch["sample_mask"]))
    ids = host_batch["ids"] if jax.process_count() == 1 else [""] * len(mask)
    for row in np.flatnonzero(mask):
      prediction = Prediction(
          id=str(ids[row]),
          reference=vocab.decode_reference(labels[row, : label_lengths[row]]),
          prediction=vocab.decode(tokens[row, : lengths[row]]),
          score=None if scores is None else float(scores[row]))
      if alternatives is not None:
        alt_tokens, alt_lengths, alt_scores = alternatives
        prediction.alternatives = [
            (vocab.decode(alt_tokens[row, k, : alt_lengths[row, k]]), float(alt_scores[row, k]))
            for k in range(alt_tokens.shape[1])]
      predictions.append(prediction)
  return predictions, loss_sums


def summarize(predictions: list[Prediction]) -> dict:
  """The seed's table: ``{"short"|"long"|"all": {"raw": scores, "clean": scores}}``.

  Scores are the field's: ExpRate, <=1 and <=2 token errors, token error rate, CER.
  """
  return metrics_lib.length_split_table([p.reference for p in predictions],
                                        [p.prediction for p in predictions])


def error_analysis(predictions: list[Prediction]) -> dict:
  """Scores by reference length and by layout structure: ``{"length"|"structure": table}``."""
  accumulator = metrics_lib.MetricsAccumulator()
  accumulator.add([p.reference for p in predictions], [p.prediction for p in predictions])
  return {"length": accumulator.table(metrics_lib.length_groups()),
          "structure": accumulator.table(metrics_lib.structure_groups())}


def eval_batch_size(requested: int) -> int:
  """Rounds the eval batch up to a multiple of the local device count."""
  devices = jax.local_device_count()
  return max(devices, -(-requested // devices) * devices)
