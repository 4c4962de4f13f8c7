"""CTC bookkeeping shared by the input pipeline, the model and the loss."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax


def frame_lengths(image_widths, width_downsample: int):
  """Number of CTC frames that an image of each width yields: ``ceil(w / d)``.

  Works on NumPy and JAX arrays alike. ``image_widths``: ``[B]`` ints.
  """
  return (image_widths + width_downsample - 1) // width_downsample


def min_ctc_frames(label_ids: np.ndarray) -> int:
  """Fewest frames that can emit ``label_ids`` under CTC.

  One frame per label, plus one blank between each pair of equal neighbours
  (CTC merges repeats that no blank separates).
  """
  label_ids = np.asarray(label_ids)
  repeats = int(np.sum(label_ids[1:] == label_ids[:-1])) if label_ids.size else 0
  return int(label_ids.size) + repeats


def min_ctc_frames_batch(labels: jax.Array, label_paddings: jax.Array) -> jax.Array:
  """Batched ``min_ctc_frames``: labels ``[B, L]``, paddings ``[B, L]`` (1 = pad) -> ``[B]``."""
  valid = 1.0 - label_paddings
  repeat = (labels[:, 1:] == labels[:, :-1]) * valid[:, 1:] * valid[:, :-1]
  return (jnp.sum(valid, axis=1) + jnp.sum(repeat, axis=1)).astype(jnp.int32)


def ctc_loss(logits: jax.Array, logit_paddings: jax.Array, labels: jax.Array,
             label_paddings: jax.Array, blank_id: int = 0):
  """Per-sequence CTC loss with infeasible samples masked out.

  Args:
    logits: ``[B, T, C]`` unnormalised scores (any float dtype; computed in float32).
    logit_paddings: ``[B, T]``, 1.0 on padded frames.
    labels: ``[B, L]`` int token ids (blank-padded).
    label_paddings: ``[B, L]``, 1.0 on padded label positions.

  Returns:
    ``(loss, feasible)``: ``loss`` is ``[B]`` negative log-likelihood divided by
    the label length (so long and short expressions weigh alike, as
    ``torch.nn.CTCLoss(reduction="mean")`` does), 0 where the label cannot be
    aligned with the frames or the sample is padding; ``feasible`` is ``[B]``
    float, 1.0 where the loss is defined.
  """
  num_frames = jnp.sum(1.0 - logit_paddings, axis=1)
  label_lengths = jnp.sum(1.0 - label_paddings, axis=1)
  feasible = (min_ctc_frames_batch(labels, label_paddings) <= num_frames) & (label_lengths > 0)
  # An infeasible sample gets a harmless stand-in label (empty) so that neither
  # its loss nor its gradient is inf/NaN; its loss is then masked to zero.
  safe_label_paddings = jnp.where(feasible[:, None], label_paddings, 1.0)
  per_sequence = optax.ctc_loss(logits.astype(jnp.float32), logit_paddings, labels,
                                safe_label_paddings, blank_id=blank_id)
  per_sequence = per_sequence / jnp.maximum(label_lengths, 1.0)
  feasible = feasible.astype(jnp.float32)
  return per_sequence * feasible, feasible
