"""Models: ``create_model(config.model, num_classes, dtype)`` builds the one named by the config."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from hme_jax.models.crnn import CRNN, create_crnn, trainable_mask

MODELS = ("crnn",)


def create_model(model_config, num_classes: int, dtype: Any = jnp.float32) -> nn.Module:
  """The model named by ``model_config.name``.

  Args:
    model_config: ``config.model`` (see configs/default.py).
    num_classes: ``len(vocabulary)`` (110 on CROHME for CTC, the blank included).
    dtype: compute dtype (e.g. ``jnp.bfloat16``); parameters are always float32.
  """
  name = model_config.get("name", "crnn")
  if name == "crnn":
    return create_crnn(model_config, num_classes, dtype)
  raise ValueError(f"Unknown config.model.name={name!r}; choose one of {MODELS}.")


__all__ = ["CRNN", "MODELS", "create_model", "trainable_mask"]
