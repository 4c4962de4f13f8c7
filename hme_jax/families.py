"""Model families: what the trainer, ``evaluate`` and ``predict`` need of a model.

A family wraps a Flax module with pure functions of ``(params or variables,
batch)`` (see ``hme_jax.input_pipeline`` for the batch layout):

  init(rng, batch) -> variables
  loss(params, extra_variables, batch, rng, train) -> (mean loss, (metric sums, new extra variables))
  greedy(variables, batch) -> (tokens [B, L], lengths [B])
  beam(variables, batch, beam_width, max_length) -> (tokens [B, K, L], lengths [B, K], scores [B, K])

``create_family(config, vocab, dtype)`` picks the family from ``config.model.name``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections

from hme_jax import ctc, decoding, models
from hme_jax.vocab import Vocabulary


def images_to_float(images) -> jax.Array:
  """``uint8 [B, H, W, 1]`` (or float already in [0, 1]) -> float32 in [0, 1], the models' input."""
  images = jnp.asarray(images)
  if images.dtype == jnp.uint8:
    return images.astype(jnp.float32) / 255.0
  return images.astype(jnp.float32)


def label_paddings(labels: jax.Array, label_lengths: jax.Array) -> jax.Array:
  """``[B, L]`` float, 1.0 past each label's length."""
  positions = jnp.arange(labels.shape[1])[None, :]
  return (positions >= label_lengths[:, None]).astype(jnp.float32)


class CTCFamily:
  """CRNN + CTC: per-frame class scores, trained with CTC, decoded greedily or by beam search."""

  def __init__(self, model_config: ml_collections.ConfigDict, vocab: Vocabulary,
               dtype=jnp.float32):
    self.vocab = vocab
    self.num_classes = len(vocab)
    self.model = models.create_model(model_config, self.num_classes, dtype)
    self.grammar = decoding.LatexGrammar.from_vocab(vocab)

  def init(self, rng: jax.Array, batch) -> dict:
    params_rng, dropout_rng = jax.random.split(rng)
    return dict(self.model.init({"params": params_rng, "dropout": dropout_rng},
                                images_to_float(batch["images"]), batch["image_widths"],
                                train=False))

  def logits(self, variables: dict, batch) -> tuple[jax.Array, jax.Array]:
    """Evaluation-mode ``(logits [B, T, C] float32, frame_paddings [B, T])``."""
    return self.model.apply(variables, images_to_float(batch["images"]), batch["image_widths"],
                            train=False)

  def loss(self, params, extra_variables: dict, batch, rng: jax.Array, train: bool):
    variables = {"params": params, **extra_variables}
    images = images_to_float(batch["images"])
    if train:
      (logits, frame_paddings), new_extra = self.model.apply(
          variables, images, batch["image_widths"], train=True, rngs={"dropout": rng},
          mutable=list(extra_variables))
    else:
      logits, frame_paddings = self.model.apply(variables, images, batch["image_widths"],
                                                train=False)
      new_extra = extra_variables
    per_sequence, feasible = ctc.ctc_loss(
        logits, frame_paddings, batch["labels"],
        label_paddings(batch["labels"], batch["label_lengths"]), blank_id=self.vocab.blank_id)
    weights = feasible * batch["sample_mask"]
    loss_sum = jnp.sum(per_sequence * weights)
    metrics = {
        "loss_sum": loss_sum,
        "samples": jnp.sum(weights),
        "infeasible": jnp.sum((1.0 - feasible) * batch["sample_mask"]),
    }
    return loss_sum / jnp.maximum(metrics["samples"], 1.0), (metrics, dict(new_extra))

  def greedy(self, variables: dict, batch):
    logits, frame_paddings = self.logits(variables, batch)
    return decoding.greedy_decode(logits, frame_paddings, blank_id=self.vocab.blank_id)

  def beam(self, variables: dict, batch, beam_width: int, max_length: int,
           well_formed: bool = False):
    """``max_length`` 0 means one token per frame, the most CTC can emit."""
    logits, frame_paddings = self.logits(variables, batch)
    return decoding.beam_search(
        logits, frame_paddings, beam_width=beam_width,
        max_output_length=max_length or logits.shape[1], blank_id=self.vocab.blank_id,
        grammar=self.grammar if well_formed else None)


def create_family(config: ml_collections.ConfigDict, vocab: Vocabulary, dtype=jnp.float32):
  name = config.model.name
  if name == "crnn":
    return CTCFamily(config.model, vocab, dtype)
  if name == "attention":
    from hme_jax import seq2seq
    return seq2seq.Seq2SeqFamily(config.model, vocab, dtype)
  raise ValueError(f"Unknown config.model.name {name!r}; expected 'crnn' or 'attention'.")
