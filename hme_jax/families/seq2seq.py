"""Sequence-to-sequence family: the attention encoder-decoder, its loss and its decoders.

Bidirectional training (BTTR): every caption is learned in both reading
directions by one decoder, told apart by the start token,

    left-to-right   input  <sos> t1 t2 ... tn      target  t1 t2 ... tn <eos>
    right-to-left   input  <eos> tn ... t2 t1      target  tn ... t2 t1 <sos>

as two hypotheses ``G = 2`` of the same image (they share its encoding).

Decoding (jit-able; beam width and maximum length are static):
  * ``greedy``: left-to-right, one cached decoder step per token.
  * ``beam``: a batched beam search of width K in each direction at once
    (``2K`` hypotheses per image, one cached step per token), finished
    hypotheses scored by length-normalised log-probability
    ``log p / (n + 1) ** length_penalty`` (``n`` tokens plus the end token).
    Each direction's finished hypotheses are then rescored by the other
    direction (teacher-forced), and the ``2K`` candidates are ranked by the sum
    of both normalised scores, duplicates dropped (BTTR's / CoMER's
    approximate joint search).
  While decoding, the blank/padding id and the direction's own start token are
  never emitted.

Beam search follows the Hugging Face / CoMER bookkeeping: each step takes the
``2K`` best extensions; an end token among the best ``K`` finishes its
hypothesis, the best ``K`` other extensions stay alive. A direction stops when
it has ``K`` finished hypotheses and the best alive one, were it to end at the
next step, would not beat the worst of them (or at ``max_length`` tokens,
where every alive hypothesis is ended). With ``K = 1`` and
``length_penalty = 0`` this is exactly greedy decoding.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax

from hme_jax.models import images_to_float
from hme_jax.models.attention import create_attention_model
from hme_jax.text.vocab import Vocabulary

SPECIALS = ("<sos>", "<eos>")
LEFT_TO_RIGHT, RIGHT_TO_LEFT = 0, 1


# --- label layout --------------------------------------------------------------


def reverse_within_length(tokens: jax.Array, lengths: jax.Array) -> jax.Array:
  """Reverses the first ``lengths`` entries of each row of ``tokens [..., L]``; the rest is 0."""
  positions = jnp.arange(tokens.shape[-1])
  source = lengths[..., None] - 1 - positions
  reversed_tokens = jnp.take_along_axis(tokens, jnp.maximum(source, 0), axis=-1)
  return jnp.where(source >= 0, reversed_tokens, 0)


def direction_tokens(directions: jax.Array, sos_id: int, eos_id: int):
  """``directions [...]`` (0 = left-to-right, 1 = right-to-left) -> ``(start_ids, end_ids)``."""
  is_l2r = directions == LEFT_TO_RIGHT
  return jnp.where(is_l2r, sos_id, eos_id), jnp.where(is_l2r, eos_id, sos_id)


def teacher_forcing(tokens: jax.Array, lengths: jax.Array, directions: jax.Array,
                    sos_id: int, eos_id: int):
  """Decoder inputs and targets for token sequences read in the given directions.

  Args:
    tokens: ``[B, G, L]`` token ids in left-to-right order, 0-padded.
    lengths: ``[B, G]``.
    directions: ``[G]`` (0 = left-to-right, 1 = right-to-left).

  Returns:
    ``(inputs, targets, mask)``, each ``[B, G, L + 1]``: ``inputs`` starts
    with the direction's start token, ``targets`` ends with its end token at
    ``lengths``, ``mask`` is True up to and including that end token.
  """
  start, end = direction_tokens(directions, sos_id, eos_id)
  read = jnp.where((directions == RIGHT_TO_LEFT)[None, :, None],
                   reverse_within_length(tokens, lengths), tokens)
  batch, groups, _ = tokens.shape
  inputs = jnp.concatenate([jnp.broadcast_to(start[None, :, None], (batch, groups, 1)), read],
                           axis=-1)
  read = jnp.pad(read, ((0, 0), (0, 0), (0, 1)))
  positions = jnp.arange(read.shape[-1])
  targets = jnp.where(positions == lengths[..., None], end[None, :, None], read)
  return inputs, targets, positions <= lengths[..., None]


def bidirectional_targets(labels: jax.Array, label_lengths: jax.Array, sos_id: int, eos_id: int):
  """``labels [B, L]`` -> ``(inputs, targets, mask)``, each ``[B, 2, L + 1]`` (L2R, R2L)."""
  tokens = jnp.stack([labels, labels], axis=1)
  lengths = jnp.stack([label_lengths, label_lengths], axis=1)
  return teacher_forcing(tokens, lengths, jnp.array([LEFT_TO_RIGHT, RIGHT_TO_LEFT]),
                         sos_id, eos_id)


def _gather_hypotheses(tree, indices: jax.Array):
  """Reorders the hypotheses of every leaf ``[B, D * K, ...]`` by ``indices [B, D, K]``."""
  batch, directions, width = indices.shape

  def gather(leaf):
    leaf = leaf.reshape(batch, directions, width, *leaf.shape[2:])
    index = indices.reshape(batch, directions, width, *([1] * (leaf.ndim - 3)))
    return jnp.take_along_axis(leaf, index, axis=2).reshape(batch, directions * width,
                                                            *leaf.shape[3:])

  return jax.tree.map(gather, tree)


# --- the family ------------------------------------------------------------------------


class Seq2SeqFamily:
  """The attention model with the pure functions the trainer, ``evaluate`` and ``predict`` use.

  ``variables`` is ``{"params": ..., "batch_stats": ...}``. A batch is a dict
  with ``images [B, H, W, 1]`` (uint8 in [0, 255] or float in [0, 1], white
  ink on black, padded with 0), ``image_widths [B]``, optionally
  ``image_heights [B]`` (content height when images are also bottom-padded),
  and for the loss ``labels [B, L]``, ``label_lengths [B]``, ``sample_mask [B]``.
  """

  def __init__(self, model_config: ml_collections.ConfigDict, vocab: Vocabulary,
               dtype: Any = jnp.float32):
    if vocab.specials not in ((), SPECIALS):
      raise ValueError(f"The vocabulary has specials {vocab.specials}; the attention model adds "
                       f"its own {SPECIALS}: pass the vocabulary without specials.")
    self.vocab = Vocabulary(vocab.tokens).with_specials(SPECIALS)
    self.sos_id = self.vocab.id_of(SPECIALS[0])
    self.eos_id = self.vocab.id_of(SPECIALS[1])
    self.num_classes = len(self.vocab)
    self.model = create_attention_model(model_config, self.num_classes, dtype)
    self.label_smoothing = float(model_config.label_smoothing)
    self.max_decode_length = int(model_config.max_decode_length)
    self.length_penalty = float(model_config.length_penalty)

  @staticmethod
  def ctc_frame_stride(model_config: ml_collections.ConfigDict) -> None:
    return None  # any caption fits: no frames to align

  def trainable_mask(self, abstract_params) -> None:
    return None  # everything trains

  def describe(self) -> str:
    return "attention"

  # --- plumbing ---

  def _encode(self, variables: dict, batch):
    return self.model.apply(variables, images_to_float(batch["images"]), batch["image_widths"],
                            batch.get("image_heights"), train=False, method="encode")

  def _log_probs(self, logits: jax.Array, start_ids: jax.Array) -> jax.Array:
    """Log-softmax over the tokens a decoder may emit: not blank, not its own start token.

    ``logits [..., C]``, ``start_ids`` broadcastable to ``logits.shape[:-1]``.
    """
    classes = jnp.arange(self.num_classes)
    banned = (classes == 0) | (classes == start_ids[..., None])
    return jax.nn.log_softmax(jnp.where(banned, -jnp.inf, logits), axis=-1)

  def _normalise(self, log_prob: jax.Array, lengths: jax.Array, length_penalty: float):
    return log_prob / (lengths + 1.0) ** length_penalty

  # --- the interface ---

  def init(self, rng: jax.Array, batch) -> dict:
    params_rng, dropout_rng = jax.random.split(rng)
    labels = jnp.asarray(batch["labels"])
    inputs, _, mask = bidirectional_targets(labels, jnp.asarray(batch["label_lengths"]),
                                            self.sos_id, self.eos_id)
    # Compiled as a whole: op-by-op initialisation of this model is twice as slow.
    init = jax.jit(functools.partial(self.model.init, train=False))
    return dict(init({"params": params_rng, "dropout": dropout_rng},
                     images_to_float(batch["images"]),
                     jnp.asarray(batch["image_widths"]), inputs,
                     image_heights=batch.get("image_heights"), target_mask=mask))

  def loss(self, params, extra_variables: dict, batch, rng: jax.Array, train: bool):
    """Bidirectional teacher-forced cross-entropy.

    Each sample's loss is the mean over the tokens (end tokens included) of
    both directions, so long and short expressions weigh alike; the returned
    loss is the mean over the real samples (``sample_mask``).

    Returns:
      ``(loss, (metric_sums, new_extra_variables))`` with float32 sums over
      the batch: ``loss_sum`` (so loss = loss_sum / samples), ``samples``,
      ``tokens`` (target tokens, both directions) and ``token_correct``
      (teacher-forced argmax hits).
    """
    variables = {"params": params, **extra_variables}
    inputs, targets, mask = bidirectional_targets(
        jnp.asarray(batch["labels"]), jnp.asarray(batch["label_lengths"]), self.sos_id,
        self.eos_id)
    args = (images_to_float(batch["images"]), batch["image_widths"], inputs)
    kwargs = dict(image_heights=batch.get("image_heights"), target_mask=mask, train=train)
    if train and extra_variables:
      logits, new_extra = self.model.apply(variables, *args, **kwargs, rngs={"dropout": rng},
                                           mutable=list(extra_variables))
    elif train:
      logits, new_extra = self.model.apply(variables, *args, **kwargs,
                                           rngs={"dropout": rng}), extra_variables
    else:
      logits, new_extra = self.model.apply(variables, *args, **kwargs), extra_variables
    one_hot = jax.nn.one_hot(targets, self.num_classes)
    if self.label_smoothing:
      one_hot = optax.smooth_labels(one_hot, self.label_smoothing)
    token_loss = optax.softmax_cross_entropy(logits, one_hot)          # [B, 2, T]
    weights = mask.astype(jnp.float32)
    per_sample = jnp.sum(token_loss * weights, axis=(1, 2)) / jnp.maximum(
        jnp.sum(weights, axis=(1, 2)), 1.0)
    # A label id 0 is a token outside the vocabulary (an evaluation caption): no loss.
    in_vocabulary = jnp.all((targets != 0) | ~mask, axis=(1, 2))
    sample_mask = jnp.asarray(batch["sample_mask"], jnp.float32) * in_vocabulary
    token_weights = weights * sample_mask[:, None, None]
    metrics = {
        "loss_sum": jnp.sum(per_sample * sample_mask),
        "samples": jnp.sum(sample_mask),
        "tokens": jnp.sum(token_weights),
        "token_correct": jnp.sum((jnp.argmax(logits, axis=-1) == targets) * token_weights),
    }
    return metrics["loss_sum"] / jnp.maximum(metrics["samples"], 1.0), (metrics, dict(new_extra))

  def greedy(self, variables: dict, batch, max_length: int | None = None):
    """Left-to-right greedy decoding -> ``(tokens [B, max_length] int32, lengths [B] int32)``."""
    max_length = max_length or self.max_decode_length
    memory, memory_mask = self._encode(variables, batch)
    tokens, lengths = self.greedy_from_memory(variables, memory, memory_mask, max_length,
                                              directions=(LEFT_TO_RIGHT,))
    return tokens[:, 0], lengths[:, 0]

  def beam(self, variables: dict, batch, beam_width: int, max_length: int,
           length_penalty: float | None = None, well_formed: bool = False):
    """Bidirectional beam search with cross-direction rescoring.

    ``max_length`` 0 means ``config.model.max_decode_length`` (what ``evaluate``
    and ``predict`` pass); ``length_penalty`` defaults to
    ``config.model.length_penalty``; ``well_formed`` (a LaTeX grammar
    constraint) exists for CTC models only.

    Returns:
      ``(tokens [B, K, max_length], lengths [B, K], scores [B, K])`` best first;
      tokens are real-token ids in left-to-right order, 0-padded; a score is
      the sum of both directions' normalised log-probabilities (``-inf`` for a
      slot left empty).
    """
    if well_formed:
      raise NotImplementedError(
          "Well-formed (grammar-constrained) beam search is implemented for CTC models only; "
          "set config.eval.well_formed=False for the attention model.")
    if length_penalty is None:
      length_penalty = self.length_penalty
    max_length = max_length or self.max_decode_length
    memory, memory_mask = self._encode(variables, batch)
    tokens, lengths, scores = self.beam_from_memory(
        variables, memory, memory_mask, beam_width, max_length, length_penalty)
    batch_size = tokens.shape[0]
    # Candidates [B, 2K]: left-to-right ones first, each rescored by the other direction.
    tokens = tokens.reshape(batch_size, 2 * beam_width, max_length)
    lengths = lengths.reshape(batch_size, 2 * beam_width)
    scores = scores.reshape(batch_size, 2 * beam_width)
    rescoring = jnp.repeat(jnp.array([RIGHT_TO_LEFT, LEFT_TO_RIGHT]), beam_width)
    other = self.sequence_scores(variables, memory, memory_mask, tokens, lengths, rescoring,
                                 length_penalty)
    total = jnp.where(jnp.isfinite(scores), scores + other, -jnp.inf)
    return self._best_distinct(tokens, lengths, total, beam_width)

  # --- decoders on an encoded image ---

  def greedy_from_memory(self, variables: dict, memory: jax.Array, memory_mask: jax.Array,
                         max_length: int, directions: tuple[int, ...] = (LEFT_TO_RIGHT,)):
    """Greedy decoding in each of ``directions`` -> ``(tokens [B, D, max_length], lengths [B, D])``.

    Tokens are returned in left-to-right order whatever the direction.
    """
    batch = memory.shape[0]
    start, end = direction_tokens(jnp.asarray(directions), self.sos_id, self.eos_id)
    memory_kv, state = self.model.apply(variables, memory, memory_mask, len(directions),
                                        max_length, method="init_decode")
    tokens = jnp.zeros((batch, len(directions), max_length + 1), jnp.int32)
    tokens = tokens.at[:, :, 0].set(start[None, :])
    done = jnp.zeros((batch, len(directions)), bool)
    lengths = jnp.full((batch, len(directions)), max_length, jnp.int32)

    def cond(carry):
      step, _, done, _, _ = carry
      return (step < max_length) & ~jnp.all(done)

    def body(carry):
      step, tokens, done, lengths, state = carry
      logits, state = self.model.apply(variables, tokens[:, :, step], step, memory_kv,
                                       memory_mask, state, method="decode_step")
      best = jnp.argmax(self._log_probs(logits, start[None, :]), axis=-1).astype(jnp.int32)
      ended = ~done & (best == end[None, :])
      lengths = jnp.where(ended, step, lengths)
      done = done | ended
      tokens = tokens.at[:, :, step + 1].set(jnp.where(done, 0, best))
      return step + 1, tokens, done, lengths, state

    _, tokens, _, lengths, _ = jax.lax.while_loop(
        cond, body, (jnp.int32(0), tokens, done, lengths, state))
    tokens = tokens[:, :, 1:]
    is_r2l = (jnp.asarray(directions) == RIGHT_TO_LEFT)[None, :, None]
    return jnp.where(is_r2l, reverse_within_length(tokens, lengths), tokens), lengths

  def beam_from_memory(self, variables: dict, memory: jax.Array, memory_mask: jax.Array,
                       beam_width: int, max_length: int, length_penalty: float,
                       directions: tuple[int, ...] = (LEFT_TO_RIGHT, RIGHT_TO_LEFT)):
    """A beam search per image and direction, all batched (see the module docstring).

    Returns:
      ``(tokens [B, D, K, max_length], lengths [B, D, K], scores [B, D, K])``,
      each direction's finished hypotheses best first, tokens in left-to-right
      order; ``scores`` are normalised log-probabilities (``-inf``: empty slot).
    """
    batch = memory.shape[0]
    num_directions, width = len(directions), beam_width
    start, end = direction_tokens(jnp.asarray(directions), self.sos_id, self.eos_id)
    memory_kv, state = self.model.apply(variables, memory, memory_mask, num_directions * width,
                                        max_length + 1, method="init_decode")
    shape = (batch, num_directions, width)
    seq_length = max_length + 2        # start token, up to max_length tokens, end token
    positions = jnp.arange(seq_length)
    alive_seqs = jnp.zeros((*shape, seq_length), jnp.int32).at[..., 0].set(start[None, :, None])
    alive_log_prob = jnp.where(jnp.arange(width) == 0, 0.0, -jnp.inf) * jnp.ones(shape)
    finished_seqs = jnp.zeros((*shape, seq_length), jnp.int32)
    finished_scores = jnp.full(shape, -jnp.inf)
    finished_lengths = jnp.zeros(shape, jnp.int32)
    start_b, end_b = start[None, :, None], end[None, :, None]

    def cond(carry):
      step, _, alive_log_prob, _, finished_scores, _, _ = carry
      # The best an alive hypothesis can score by ending at the next step.
      best_alive = self._normalise(jnp.max(alive_log_prob, axis=-1), step, length_penalty)
      done = finished_scores[..., -1] >= best_alive
      return (step <= max_length) & ~jnp.all(done)

    def body(carry):
      step, alive_seqs, alive_log_prob, finished_seqs, finished_scores, finished_lengths, \
          state = carry
      inputs = alive_seqs[..., step].reshape(batch, num_directions * width)
      logits, state = self.model.apply(variables, inputs, step, memory_kv, memory_mask, state,
                                       method="decode_step")
      log_probs = self._log_probs(logits.reshape(*shape, -1), start_b)
      # At the last step every hypothesis ends.
      last = (step == max_length) & (jnp.arange(self.num_classes) != end_b[..., None])
      log_probs = jnp.where(last, -jnp.inf, log_probs)
      candidates = (alive_log_prob[..., None] + log_probs).reshape(batch, num_directions, -1)
      top_log_prob, top_index = jax.lax.top_k(candidates, 2 * width)
      parent, token = top_index // self.num_classes, top_index % self.num_classes
      seqs = jnp.take_along_axis(alive_seqs, parent[..., None], axis=2)
      seqs = jnp.where(positions == step + 1, token[..., None], seqs)
      is_end = token == end_b

      # Finish the end tokens among the best K extensions.
      finishing = is_end & (jnp.arange(2 * width) < width) & jnp.isfinite(top_log_prob)
      new_scores = jnp.where(finishing, self._normalise(top_log_prob, step, length_penalty),
                             -jnp.inf)
      ended_seqs = jnp.where(positions == step + 1, 0, seqs)
      pool_scores = jnp.concatenate([finished_scores, new_scores], axis=-1)
      finished_scores, keep = jax.lax.top_k(pool_scores, width)
      finished_seqs = jnp.take_along_axis(
          jnp.concatenate([finished_seqs, ended_seqs], axis=2), keep[..., None], axis=2)
      finished_lengths = jnp.take_along_axis(
          jnp.concatenate([finished_lengths, jnp.full(top_index.shape, step, jnp.int32)],
                          axis=-1), keep, axis=-1)

      # The best K other extensions stay alive.
      alive_log_prob, keep = jax.lax.top_k(jnp.where(is_end, -jnp.inf, top_log_prob), width)
      alive_seqs = jnp.take_along_axis(seqs, keep[..., None], axis=2)
      state = _gather_hypotheses(state, jnp.take_along_axis(parent, keep, axis=-1))
      return (step + 1, alive_seqs, alive_log_prob, finished_seqs, finished_scores,
              finished_lengths, state)

    carry = (jnp.int32(0), alive_seqs, alive_log_prob, finished_seqs, finished_scores,
             finished_lengths, state)
    _, _, _, finished_seqs, finished_scores, finished_lengths, _ = jax.lax.while_loop(
        cond, body, carry)
    tokens = finished_seqs[..., 1:max_length + 1]
    is_r2l = (jnp.asarray(directions) == RIGHT_TO_LEFT)[None, :, None, None]
    tokens = jnp.where(is_r2l, reverse_within_length(tokens, finished_lengths), tokens)
    return tokens, finished_lengths, finished_scores

  def sequence_scores(self, variables: dict, memory: jax.Array, memory_mask: jax.Array,
                      tokens: jax.Array, lengths: jax.Array, directions: jax.Array,
                      length_penalty: float) -> jax.Array:
    """Normalised log-probability of given sequences, each read in its direction.

    Uses the cached one-token decoder steps (memory stays small for long
    sequences) up to the longest sequence.

    Args:
      tokens: ``[B, G, L]`` left-to-right, 0-padded; ``lengths [B, G]``.
      directions: ``[G]`` the direction that reads each hypothesis.

    Returns:
      ``[B, G]`` ``log p(tokens, end) / (length + 1) ** length_penalty``.
    """
    batch, groups, max_length = tokens.shape
    inputs, targets, mask = teacher_forcing(tokens, lengths, directions, self.sos_id,
                                            self.eos_id)
    start, _ = direction_tokens(directions, self.sos_id, self.eos_id)
    memory_kv, state = self.model.apply(variables, memory, memory_mask, groups, max_length + 1,
                                        method="init_decode")
    last_step = jnp.max(lengths)

    def cond(carry):
      return carry[0] <= last_step

    def body(carry):
      step, total, state = carry
      logits, state = self.model.apply(variables, inputs[:, :, step], step, memory_kv,
                                       memory_mask, state, method="decode_step")
      log_probs = self._log_probs(logits, start[None, :])
      target = targets[:, :, step]
      picked = jnp.take_along_axis(log_probs, target[..., None], axis=-1)[..., 0]
      return step + 1, total + jnp.where(mask[:, :, step], picked, 0.0), state

    _, total, _ = jax.lax.while_loop(
        cond, body, (jnp.int32(0), jnp.zeros((batch, groups), jnp.float32), state))
    return self._normalise(total, lengths, length_penalty)

  @staticmethod
  def _best_distinct(tokens: jax.Array, lengths: jax.Array, scores: jax.Array, count: int):
    """The ``count`` best of ``[B, N]`` candidates, each distinct sequence once."""
    order = jnp.argsort(-scores, axis=-1)
    tokens = jnp.take_along_axis(tokens, order[..., None], axis=1)
    lengths = jnp.take_along_axis(lengths, order, axis=1)
    scores = jnp.take_along_axis(scores, order, axis=1)
    same = (jnp.all(tokens[:, :, None] == tokens[:, None, :], axis=-1)
            & (lengths[:, :, None] == lengths[:, None, :]))
    earlier = jnp.tril(jnp.ones(same.shape[1:], bool), k=-1)    # [j, i]: i before j
    duplicate = jnp.any(same & earlier[None] & jnp.isfinite(scores)[:, None, :], axis=-1)
    scores, keep = jax.lax.top_k(jnp.where(duplicate, -jnp.inf, scores), count)
    return (jnp.take_along_axis(tokens, keep[..., None], axis=1),
            jnp.take_along_axis(lengths, keep, axis=1), scores)
