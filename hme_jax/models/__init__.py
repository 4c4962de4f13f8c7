"""Flax modules only: the CRNN (``crnn.py``) and the attention encoder-decoder (``attention.py``),
and ``images_to_float``, the pixels they read.

``hme_jax.families.registry`` builds the one that ``config.model.name`` names.
"""

import jax
import jax.numpy as jnp

from hme_jax.models.crnn import CRNN, create_crnn, trainable_mask

__all__ = ["CRNN", "create_crnn", "images_to_float", "trainable_mask"]


def images_to_float(images) -> jax.Array:
  """``uint8 [B, H, W, 1]`` (or float already in [0, 1]) -> float32 in [0, 1], the models' input."""
  images = jnp.asarray(images)
  if images.dtype == jnp.uint8:
    return images.astype(jnp.float32) / 255.0
  return images.astype(jnp.float32)
