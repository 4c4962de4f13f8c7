"""One synthetic sample from (seed, split, index), the same in any process.

Each sample draws from its own generator, seeded by ``(seed, split, index)``,
first the expression (`grammar.sample_expression`), then its rendering
(`render.render_expression`). So samples can be made in any order or process,
and a split's captions can be listed without rendering anything.
"""

from __future__ import annotations

import numpy as np

from tfds_crohme.crohme import dataset_conventions
from tfds_crohme.crohme_synthetic import grammar
from tfds_crohme.crohme_synthetic import render

SPLIT_CODES = {"train": 0, "test": 1}


def sample_rng(seed: int, split: str, index: int) -> np.random.Generator:
  if split not in SPLIT_CODES:
    raise ValueError(f"Unknown split {split!r}; expected one of {list(SPLIT_CODES)}.")
  return np.random.default_rng([seed, SPLIT_CODES[split], index])


def sample_id(split: str, index: int) -> str:
  return f"synthetic_{split}_{index:06d}"


def caption(seed: int, split: str, index: int, max_tokens: int) -> str:
  """The token string of one sample (what `make_sample` puts in ``latex``)."""
  return grammar.sample_expression(sample_rng(seed, split, index), max_tokens)


def make_sample(seed: int, split: str, index: int, max_tokens: int) -> dict:
  """``{"image": PNG bytes, "latex": tokens, "id": name}`` of one sample."""
  rng = sample_rng(seed, split, index)
  tokens = grammar.sample_expression(rng, max_tokens)
  pixels = render.render_expression(tokens, rng)
  return {"image": dataset_conventions.encode_png(pixels), "latex": tokens,
          "id": sample_id(split, index)}
