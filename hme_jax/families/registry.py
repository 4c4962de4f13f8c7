"""Model families: what the trainer, ``evaluate`` and ``predict`` need of a model.

A family wraps a Flax module with pure functions of ``(params or variables,
batch)`` (see ``hme_jax.data.input_pipeline`` for the batch layout):

  init(rng, batch) -> variables
  loss(params, extra_variables, batch, rng, train) -> (mean loss, (metric sums, new extra variables))
  greedy(variables, batch) -> (tokens [B, L], lengths [B])
  beam(variables, batch, beam_width, max_length) -> (tokens [B, K, L], lengths [B, K], scores [B, K])

and, for the data pipeline and the trainer, without building anything:

  ctc_frame_stride(model_config) -> image columns per CTC frame, or None (no CTC constraint)
  trainable_mask(abstract_params) -> pytree of bools (frozen parameters False), or None
  describe() -> a one-line name for logs

``FAMILIES`` is the one registry, keyed by ``config.model.name``:
``create_family(config, vocab, dtype)`` builds the named family and
``register_family`` adds one (tests/test_families.py trains, evaluates and
predicts with a toy family added that way). Nothing else looks at the name.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections

from hme_jax import ctc, models
from hme_jax.families import ctc_decoding, seq2seq
from hme_jax.models import images_to_float
from hme_jax.text.vocab import Vocabulary


def label_paddings(labels: jax.Array, label_lengths: jax.Array) -> jax.Array:
  """``[B, L]`` float, 1.0 past each label's length."""
  positions = jnp.arange(labels.shape[1])[None, :]
  return (positions >= label_lengths[:, None]).astype(jnp.float32)


class CTCFamily:
  """CRNN + CTC: per-frame class scores, trained with CTC, decoded greedily or by beam search."""

  def __init__(self, model_config: ml_collections.ConfigDict, vocab: Vocabulary,
               dtype=jnp.float32):
    self.model_config = model_config
    self.vocab = vocab
    self.num_classes = len(vocab)
    self.model = self.create_model(model_config, self.num_classes, dtype)
    self.grammar = ctc_decoding.LatexGrammar.from_vocab(vocab)

  create_model = staticmethod(models.create_crnn)  # (model_config, num_classes, dtype) -> module

  @staticmethod
  def ctc_frame_stride(model_config: ml_collections.ConfigDict) -> int | None:
    return model_config.width_downsample

  def trainable_mask(self, abstract_params):
    return models.trainable_mask(abstract_params, self.model_config)

  def describe(self) -> str:
    return f"{self.model_config.name} ({self.model_config.backbone})"

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
    paddings = label_paddings(batch["labels"], batch["label_lengths"])
    per_sequence, feasible = ctc.ctc_loss(logits, frame_paddings, batch["labels"], paddings,
                                          blank_id=self.vocab.blank_id)
    # A label id 0 is a token outside the vocabulary (an evaluation caption): no loss.
    in_vocabulary = jnp.all((batch["labels"] != 0) | (paddings > 0), axis=1)
    weights = feasible * batch["sample_mask"] * in_vocabulary
    loss_sum = jnp.sum(per_sequence * weights)
    metrics = {
        "loss_sum": loss_sum,
        "samples": jnp.sum(weights),
        "infeasible": jnp.sum((1.0 - feasible) * batch["sample_mask"]),
    }
    return loss_sum / jnp.maximum(metrics["samples"], 1.0), (metrics, dict(new_extra))

  def greedy(self, variables: dict, batch):
    logits, frame_paddings = self.logits(variables, batch)
    return ctc_decoding.greedy_decode(logits, frame_paddings, blank_id=self.vocab.blank_id)

  def beam(self, variables: dict, batch, beam_width: int, max_length: int,
           well_formed: bool = False):
    """``max_length`` 0 means one token per frame, the most CTC can emit."""
    logits, frame_paddings = self.logits(variables, batch)
    return ctc_decoding.beam_search(
        logits, frame_paddings, beam_width=beam_width,
        max_output_length=max_length or logits.shape[1], blank_id=self.vocab.blank_id,
        grammar=self.grammar if well_formed else None)


FAMILIES: dict[str, type] = {"crnn": CTCFamily, "attention": seq2seq.Seq2SeqFamily}


def register_family(name: str, family: type) -> None:
  """Makes ``config.model.name = name`` build ``family(config.model, vocab, dtype)``."""
  if name in FAMILIES and FAMILIES[name] is not family:
    raise ValueError(f"A model family named {name!r} is already registered: "
                     f"{FAMILIES[name].__name__}.")
  FAMILIES[name] = family


def family_class(model_config: ml_collections.ConfigDict) -> type:
  """The registered family of ``model_config.name``; a clear error for an unknown name."""
  if model_config.name not in FAMILIES:
    raise ValueError(f"Unknown config.model.name {model_config.name!r}; registered model "
                     f"families: {sorted(FAMILIES)} "
                     "(hme_jax.families.registry.register_family adds one).")
  return FAMILIES[model_config.name]


def create_family(config: ml_collections.ConfigDict, vocab: Vocabulary, dtype=jnp.float32):
  return family_class(config.model)(config.model, vocab, dtype)


def ctc_frame_stride(config: ml_collections.ConfigDict) -> int | None:
  """Image columns per CTC frame of ``config``'s model; None if it has no CTC constraint."""
  return family_class(config.model).ctc_frame_stride(config.model)
