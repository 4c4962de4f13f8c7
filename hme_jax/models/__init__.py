"""Flax modules only: the CRNN (``crnn.py``) and the attention encoder-decoder (``attention.py``).

``hme_jax.families`` builds the one that ``config.model.name`` names.
"""

from hme_jax.models.crnn import CRNN, create_crnn, trainable_mask

__all__ = ["CRNN", "create_crnn", "trainable_mask"]
