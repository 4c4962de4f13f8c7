"""Attention encoder-decoder (BTTR / CoMER family): image -> token logits.

    images [B, H, W, 1] in [0, 1]  (white ink on black, padded with 0)
      -> DenseNet-B (hme_jax.models.densenet)     [B, h, w, C], h = ceil(H / 16), w = ceil(W / 16)
      -> 1x1 projection to d_model, + 2-D sinusoidal position (normalised to the content
         extent of each image), LayerNorm          memory [B, h, w, D], memory_mask [B, h, w]
    tokens [B, G, T]  (G hypotheses or directions per image, sharing its memory)
      -> embedding, LayerNorm, + 1-D sinusoidal position, LayerNorm
      -> num_layers post-norm Transformer decoder layers: causal self-attention,
         cross-attention to the memory (padded memory masked out), ReLU FFN
      -> Dense                                     logits [B, G, T, num_classes] float32

The images enter as they are: 0 is the background, the batch padding and what
the convolutions' border padding shows alike, so padding looks like empty
paper; the stem convolution has no bias and is followed by BatchNorm, which
absorbs any scale. (A mean shift would make the padding differ from the
background.) The padded pixels are zeroed whatever the input holds there.

Coverage (CoMER's Attention Refinement Module, ``cross_coverage`` /
``self_coverage``): from the second decoder layer on, the cross-attention
logits at step ``t`` are lowered by a learned function of the attention that
was paid to each memory position before ``t`` -- by the previous layer
(cross) and by this layer's own unrefined attention (self) -- so that the
decoder keeps track of which strokes it has already read. The function is a
5x5 conv over the 2-D feature grid -> ReLU -> 1x1 conv to one map per head
-> BatchNorm (content positions only), shared by all layers.

Decoding one token at a time (``init_decode`` / ``decode_step``) carries the
self-attention keys and values of earlier positions and the running attention
sums, so a step costs one token; it computes the same logits as the parallel
pass (``decode``) up to float rounding. Position ``p`` of a step is a traced
integer, so a whole decode loop compiles once.

Mixed precision: ``dtype`` is the compute dtype (e.g. bfloat16); parameters
are float32, and attention softmaxes, coverage sums and logits are float32.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from hme_jax.models import conv as conv_lib
from hme_jax.models import densenet

NEG_INF = -1e9  # masked attention logit: exp() underflows to exactly 0, no inf arithmetic


# --- masks and position encodings ----------------------------------------------


def pixel_mask(image_shape: tuple[int, ...], image_widths: jax.Array,
               image_heights: jax.Array | None = None) -> jax.Array:
  """``[B, H, W]`` bool, True on content pixels (top-left ``heights x widths``)."""
  _, height, width = image_shape[:3]
  mask = jnp.arange(width)[None, None, :] < image_widths[:, None, None]
  if image_heights is not None:
    mask = mask & (jnp.arange(height)[None, :, None] < image_heights[:, None, None])
  return jnp.broadcast_to(mask, (image_shape[0], height, width))


def sinusoid_1d(positions: jax.Array, dim: int, temperature: float = 10000.0) -> jax.Array:
  """``positions [...]`` -> ``[..., dim]`` float32, sin/cos interleaved (BTTR's WordPosEnc)."""
  if dim % 2:
    raise ValueError(f"A sinusoidal position encoding needs an even dimension, got {dim}.")
  inverse_frequency = 1.0 / temperature ** (jnp.arange(0, dim, 2, dtype=jnp.float32) / dim)
  angles = positions.astype(jnp.float32)[..., None] * inverse_frequency
  return jnp.stack([jnp.sin(angles), jnp.cos(angles)], axis=-1).reshape(*angles.shape[:-1], dim)


def sinusoid_2d(mask: jax.Array, dim: int, temperature: float = 10000.0) -> jax.Array:
  """``mask [B, h, w]`` -> ``[B, h, w, dim]`` float32 (BTTR's ImgPosEnc, normalize=True).

  Half the channels encode the column and half the row, each as the content
  position divided by the content extent of that row/column times 2 pi, so an
  image's encoding does not depend on how much padding surrounds it.
  """
  if dim % 4:
    raise ValueError(f"The 2-D position encoding needs d_model divisible by 4, got {dim}.")
  content = mask.astype(jnp.float32)
  rows = jnp.cumsum(content, axis=1)
  columns = jnp.cumsum(content, axis=2)
  rows = rows / (rows[:, -1:, :] + 1e-6) * 2 * math.pi
  columns = columns / (columns[:, :, -1:] + 1e-6) * 2 * math.pi
  half = dim // 2
  # sinusoid_1d uses exponents arange(0, half, 2) / half, as ImgPosEnc does.
  return jnp.concatenate([sinusoid_1d(columns, half, temperature),
                          sinusoid_1d(rows, half, temperature)], axis=-1)


def exclusive_cumsum(x: jax.Array, axis: int) -> jax.Array:
  """Sum of the entries before each position along ``axis``."""
  return jnp.cumsum(x, axis=axis) - x


# --- encoder -----------------------------------------------------------------------


class Encoder(nn.Module):
  """DenseNet -> 1x1 projection -> + 2-D position -> LayerNorm."""

  d_model: int = 256
  growth_rate: int = 24
  num_layers: int = 16
  num_blocks: int = 3
  compression: float = 0.5
  dropout_rate: float = 0.2
  scan_layers: bool = False
  remat_layers: bool = False
  dtype: Any = jnp.float32
  conv_gradient: str = "auto"  # see hme_jax.models.conv

  @nn.compact
  def __call__(self, images: jax.Array, pixel_mask: jax.Array,
               train: bool = False) -> tuple[jax.Array, jax.Array]:
    """``images [B, H, W, 1]``, ``pixel_mask [B, H, W]`` -> ``(memory [B, h, w, D], [B, h, w])``."""
    features, mask = densenet.DenseNet(
        growth_rate=self.growth_rate, num_layers=self.num_layers, num_blocks=self.num_blocks,
        compression=self.compression, dropout_rate=self.dropout_rate,
        scan_layers=self.scan_layers, remat_layers=self.remat_layers, dtype=self.dtype,
        conv_gradient=self.conv_gradient,
        name="densenet")(images, pixel_mask, train=train)
    x = nn.Dense(self.d_model, dtype=self.dtype, param_dtype=jnp.float32,
                 name="feature_projection")(features)
    x = x + sinusoid_2d(mask, self.d_model).astype(self.dtype)
    x = nn.LayerNorm(dtype=self.dtype, param_dtype=jnp.float32, name="norm")(x)
    return x, mask


# --- decoder -------------------------------------------------------------------------


class CoverageRefinement(nn.Module):
  """CoMER's Attention Refinement Module: past attention maps -> a logit penalty per head."""

  num_heads: int
  channels: int = 32
  kernel_size: int = 5
  dtype: Any = jnp.float32
  conv_gradient: str = "auto"  # see hme_jax.models.conv

  @nn.compact
  def __call__(self, coverage: jax.Array, memory_mask: jax.Array,
               target_mask: jax.Array | None = None, train: bool = False) -> jax.Array:
    """Penalty to subtract from the cross-attention logits.

    Args:
      coverage: ``[B, G, C_in, T, S]`` attention summed over the steps before each
        of the ``T`` steps (``C_in`` maps: previous layer's and/or this layer's heads).
      memory_mask: ``[B, h, w]`` bool, ``S = h * w``.
      target_mask: ``[B, G, T]`` bool, steps that count for BatchNorm statistics
        in training (``None``: all).

    Returns:
      ``[B, G, num_heads, T, S]`` float32.
    """
    batch, groups, in_channels, steps, _ = coverage.shape
    _, height, width = memory_mask.shape
    x = coverage.transpose(0, 1, 3, 4, 2).reshape(batch * groups * steps, height, width,
                                                  in_channels)
    grid_mask = jnp.broadcast_to(memory_mask[:, None, None], (batch, groups, steps, height, width))
    stat_mask = grid_mask
    if target_mask is not None:
      stat_mask = grid_mask & target_mask[..., None, None]
    grid_mask = grid_mask.reshape(-1, height, width, 1)
    stat_mask = stat_mask.reshape(-1, height, width, 1)
    pad = self.kernel_size // 2
    conv = functools.partial(conv_lib.Conv, dtype=self.dtype, param_dtype=jnp.float32,
                             kernel_init=densenet.conv_kernel_init(1.0, "truncated_normal"),
                             gradient=self.conv_gradient)
    x = conv(self.channels, (self.kernel_size, self.kernel_size),
             padding=((pad, pad), (pad, pad)), name="conv")(x.astype(self.dtype))
    x = jnp.where(grid_mask, nn.relu(x), jnp.zeros((), x.dtype))
    x = conv(self.num_heads, (1, 1), use_bias=False, name="projection")(x)
    x = nn.BatchNorm(use_running_average=not train, momentum=densenet.BATCH_NORM_MOMENTUM,
                     epsilon=densenet.BATCH_NORM_EPSILON, dtype=jnp.float32,
                     param_dtype=jnp.float32, name="norm")(x, mask=stat_mask)
    x = x.reshape(batch, groups, steps, height * width, self.num_heads)
    return x.transpose(0, 1, 4, 2, 3).astype(jnp.float32)


def _masked_softmax(logits: jax.Array, mask: jax.Array) -> jax.Array:
  return jax.nn.softmax(jnp.where(mask, logits, NEG_INF), axis=-1)


class DecoderLayer(nn.Module):
  """Post-norm Transformer decoder layer (PyTorch's default, as BTTR/CoMER) with a coverage hook."""

  d_model: int = 256
  num_heads: int = 8
  ffn_dim: int = 1024
  dropout_rate: float = 0.3
  dtype: Any = jnp.float32

  def setup(self):
    if self.d_model % self.num_heads:
      raise ValueError(f"d_model={self.d_model} is not divisible by num_heads={self.num_heads}.")
    head_dim = self.d_model // self.num_heads
    dense = functools.partial(nn.DenseGeneral, dtype=self.dtype, param_dtype=jnp.float32)
    self.self_qkv = dense((3, self.num_heads, head_dim))
    self.self_out = dense(self.d_model, axis=(-2, -1))
    self.cross_query = dense((self.num_heads, head_dim))
    self.cross_kv = dense((2, self.num_heads, head_dim))
    self.cross_out = dense(self.d_model, axis=(-2, -1))
    self.ffn_in = dense(self.ffn_dim)
    self.ffn_out = dense(self.d_model)
    norm = functools.partial(nn.LayerNorm, dtype=self.dtype, param_dtype=jnp.float32)
    self.self_norm, self.cross_norm, self.ffn_norm = norm(), norm(), norm()
    self.dropout = densenet.Dropout(self.dropout_rate)

  def memory_kv(self, memory: jax.Array) -> jax.Array:
    """``memory [B, S, D]`` -> cross-attention keys and values ``[B, S, 2, H, D / H]``."""
    return self.cross_kv(memory)

  def __call__(self, x: jax.Array, memory_kv: jax.Array, memory_mask: jax.Array, *,
               cache: dict | None = None, position: jax.Array | None = None,
               refine: Callable[[jax.Array], jax.Array] | None = None,
               train: bool = False):
    """One layer over ``x [B, G, T, D]``.

    Args:
      memory_kv: ``[B, S, 2, H, D / H]`` from ``memory_kv``.
      memory_mask: ``[B, S]`` bool.
      cache: for one-token steps (``T = 1``): ``{"keys", "values"}`` each
        ``[B, G, cache_length, H, D / H]``; ``position`` is the step's position.
        ``None``: causal self-attention over the ``T`` positions of ``x``.
      refine: maps this layer's unrefined cross-attention ``[B, G, H, T, S]``
        to a logit penalty of the same shape (coverage), or ``None``.

    Returns:
      ``(x, raw_attention, attention, cache)``: the attention maps are float32
      ``[B, G, H, T, S]`` before and after refinement.
    """
    deterministic = not train
    steps = x.shape[2]
    scale = 1.0 / math.sqrt(self.d_model // self.num_heads)

    # Causal self-attention (over the cache when stepping).
    query, key, value = jnp.moveaxis(self.self_qkv(x), 3, 0)  # each [B, G, T, H, Dh]
    if cache is None:
      key_mask = jnp.tril(jnp.ones((steps, steps), bool))
    else:
      key = jax.lax.dynamic_update_slice_in_dim(cache["keys"], key.astype(cache["keys"].dtype),
                                                jnp.asarray(position), axis=2)
      value = jax.lax.dynamic_update_slice_in_dim(cache["values"],
                                                  value.astype(cache["values"].dtype),
                                                  position, axis=2)
      cache = {"keys": key, "values": value}
      key_mask = (jnp.arange(key.shape[2]) <= position)[None, :]
    logits = jnp.einsum("bgthd,bgshd->bghts", query, key,
                        preferred_element_type=jnp.float32) * scale
    weights = self.dropout(_masked_softmax(logits, key_mask), deterministic=deterministic)
    context = jnp.einsum("bghts,bgshd->bgthd", weights.astype(self.dtype), value)
    x = self.self_norm(x + self.dropout(self.self_out(context), deterministic=deterministic))

    # Cross-attention to the image, refined by coverage.
    memory_key, memory_value = memory_kv[:, :, 0], memory_kv[:, :, 1]
    query = self.cross_query(x)
    logits = jnp.einsum("bgthd,bshd->bghts", query, memory_key,
                        preferred_element_type=jnp.float32) * scale
    key_mask = memory_mask[:, None, None, None, :]
    raw_attention = self.dropout(_masked_softmax(logits, key_mask), deterministic=deterministic)
    attention = raw_attention
    if refine is not None:
      attention = self.dropout(_masked_softmax(logits - refine(raw_attention), key_mask),
                               deterministic=deterministic)
    context = jnp.einsum("bghts,bshd->bgthd", attention.astype(self.dtype), memory_value)
    x = self.cross_norm(x + self.dropout(self.cross_out(context), deterministic=deterministic))

    # Feed-forward.
    y = self.ffn_out(self.dropout(nn.relu(self.ffn_in(x)), deterministic=deterministic))
    x = self.ffn_norm(x + self.dropout(y, deterministic=deterministic))
    return x, raw_attention, attention, cache


class Decoder(nn.Module):
  """Token embedding + position -> Transformer decoder layers (with coverage) -> logits."""

  num_classes: int
  d_model: int = 256
  num_heads: int = 8
  num_layers: int = 3
  ffn_dim: int = 1024
  dropout_rate: float = 0.3
  cross_coverage: bool = True
  self_coverage: bool = True
  coverage_channels: int = 32
  coverage_kernel: int = 5
  dtype: Any = jnp.float32
  conv_gradient: str = "auto"

  def setup(self):
    self.embed = nn.Embed(self.num_classes, self.d_model, dtype=self.dtype,
                          param_dtype=jnp.float32,
                          embedding_init=nn.initializers.normal(stddev=1.0))
    self.embed_norm = nn.LayerNorm(dtype=self.dtype, param_dtype=jnp.float32)
    self.input_norm = nn.LayerNorm(dtype=self.dtype, param_dtype=jnp.float32)
    self.layers = [DecoderLayer(self.d_model, self.num_heads, self.ffn_dim, self.dropout_rate,
                                dtype=self.dtype) for _ in range(self.num_layers)]
    self.coverage = None
    if self.uses_coverage:
      self.coverage = CoverageRefinement(self.num_heads, self.coverage_channels,
                                         self.coverage_kernel, dtype=self.dtype,
                                         conv_gradient=self.conv_gradient)
    self.head = nn.Dense(self.num_classes, dtype=self.dtype, param_dtype=jnp.float32)

  @property
  def uses_coverage(self) -> bool:
    return (self.cross_coverage or self.self_coverage) and self.num_layers > 1

  def _inputs(self, tokens: jax.Array, positions: jax.Array) -> jax.Array:
    x = self.embed_norm(self.embed(tokens))
    x = x + sinusoid_1d(positions, self.d_model).astype(x.dtype)
    return self.input_norm(x)

  def _coverage_inputs(self, previous: jax.Array | None, own: jax.Array | None) -> jax.Array:
    maps = []
    if self.cross_coverage:
      maps.append(previous)
    if self.self_coverage:
      maps.append(own)
    return jnp.concatenate(maps, axis=2)

  def __call__(self, tokens: jax.Array, memory: jax.Array, memory_mask: jax.Array,
               target_mask: jax.Array | None = None, train: bool = False) -> jax.Array:
    """Teacher-forced logits: ``tokens [B, G, T]``, ``memory [B, h, w, D]``,
    ``memory_mask [B, h, w]`` -> ``[B, G, T, num_classes]`` float32.

    ``target_mask [B, G, T]`` marks the real steps (BatchNorm statistics of the
    coverage module in training).
    """
    batch, height, width, _ = memory.shape
    flat_mask = memory_mask.reshape(batch, height * width)
    x = self._inputs(tokens, jnp.arange(tokens.shape[-1]))
    previous_attention = None
    for index, layer in enumerate(self.layers):
      refine = None
      if self.coverage is not None and index > 0:
        def refine(raw_attention, previous=previous_attention):
          coverage = self._coverage_inputs(
              exclusive_cumsum(previous, axis=3) if self.cross_coverage else None,
              exclusive_cumsum(raw_attention, axis=3) if self.self_coverage else None)
          return self.coverage(coverage, memory_mask, target_mask, train=train)
      memory_kv = layer.memory_kv(memory.reshape(batch, height * width, -1))
      x, _, previous_attention, _ = layer(x, memory_kv, flat_mask, refine=refine, train=train)
    return self.head(x).astype(jnp.float32)

  def init_decode(self, memory: jax.Array, memory_mask: jax.Array, num_hypotheses: int,
                  cache_length: int) -> tuple[list[jax.Array], dict]:
    """Per-image cross-attention keys/values and an empty step state.

    Returns:
      ``(memory_kv, state)``: ``memory_kv`` is a list (one per layer) of
      ``[B, S, 2, H, D / H]``, fixed for the whole decode. Every leaf of
      ``state`` is ``[B, num_hypotheses, ...]`` (so beam search can reorder it
      along axis 1): per layer the self-attention keys and values of
      ``cache_length`` positions and the float32 sums of past raw and refined
      cross-attention ``[B, G, H, S]``.
    """
    batch, height, width, _ = memory.shape
    flat_memory = memory.reshape(batch, height * width, -1)
    memory_kv = [layer.memory_kv(flat_memory) for layer in self.layers]
    head_dim = self.d_model // self.num_heads
    kv_shape = (batch, num_hypotheses, cache_length, self.num_heads, head_dim)
    sum_shape = (batch, num_hypotheses, self.num_heads, height * width)
    state = {
        "keys": [jnp.zeros(kv_shape, self.dtype) for _ in self.layers],
        "values": [jnp.zeros(kv_shape, self.dtype) for _ in self.layers],
        "raw_attention_sum": [jnp.zeros(sum_shape, jnp.float32) for _ in self.layers],
        "attention_sum": [jnp.zeros(sum_shape, jnp.float32) for _ in self.layers],
    }
    return memory_kv, state

  def decode_step(self, tokens: jax.Array, position: jax.Array, memory_kv: list[jax.Array],
                  memory_mask: jax.Array, state: dict) -> tuple[jax.Array, dict]:
    """One token per hypothesis at ``position``: ``tokens [B, G]`` -> ``(logits [B, G, C], state)``.

    Logits are float32; ``state`` as from ``init_decode``.
    """
    batch = memory_mask.shape[0]
    flat_mask = memory_mask.reshape(batch, -1)
    x = self._inputs(tokens[:, :, None], jnp.asarray(position)[None])
    new_state = {key: [] for key in state}
    for index, layer in enumerate(self.layers):
      refine = None
      if self.coverage is not None and index > 0:
        def refine(raw_attention, index=index):
          coverage = self._coverage_inputs(state["attention_sum"][index - 1][:, :, :, None],
                                           state["raw_attention_sum"][index][:, :, :, None])
          return self.coverage(coverage, memory_mask, train=False)
      cache = {"keys": state["keys"][index], "values": state["values"][index]}
      x, raw_attention, attention, cache = layer(x, memory_kv[index], flat_mask, cache=cache,
                                                 position=position, refine=refine)
      new_state["keys"].append(cache["keys"])
      new_state["values"].append(cache["values"])
      new_state["raw_attention_sum"].append(state["raw_attention_sum"][index]
                                            + raw_attention[:, :, :, 0])
      new_state["attention_sum"].append(state["attention_sum"][index] + attention[:, :, :, 0])
    return self.head(x[:, :, 0]).astype(jnp.float32), new_state


# --- the model ---------------------------------------------------------------------------


class AttentionModel(nn.Module):
  """Encoder + decoder; see the module docstring. Methods for ``apply(..., method=...)``:

  ``__call__`` (teacher-forced logits), ``encode``, ``decode``, ``init_decode``,
  ``decode_step``.
  """

  num_classes: int
  d_model: int = 256
  growth_rate: int = 24
  dense_layers: int = 16
  dense_blocks: int = 3
  compression: float = 0.5
  encoder_dropout: float = 0.2
  scan_dense_layers: bool = False
  remat_dense_layers: bool = False
  conv_gradient: str = "auto"
  num_heads: int = 8
  decoder_layers: int = 3
  ffn_dim: int = 1024
  decoder_dropout: float = 0.3
  cross_coverage: bool = True
  self_coverage: bool = True
  coverage_channels: int = 32
  coverage_kernel: int = 5
  dtype: Any = jnp.float32

  def setup(self):
    self.encoder = Encoder(self.d_model, self.growth_rate, self.dense_layers, self.dense_blocks,
                           self.compression, self.encoder_dropout, self.scan_dense_layers,
                           remat_layers=self.remat_dense_layers, dtype=self.dtype,
                           conv_gradient=self.conv_gradient)
    self.decoder = Decoder(self.num_classes, self.d_model, self.num_heads, self.decoder_layers,
                           self.ffn_dim, self.decoder_dropout, self.cross_coverage,
                           self.self_coverage, self.coverage_channels, self.coverage_kernel,
                           dtype=self.dtype, conv_gradient=self.conv_gradient)

  @property
  def downsample(self) -> int:
    return densenet.downsample_factor(self.dense_blocks)

  def __call__(self, images: jax.Array, image_widths: jax.Array, tokens: jax.Array, *,
               image_heights: jax.Array | None = None, target_mask: jax.Array | None = None,
               train: bool = False) -> jax.Array:
    """``images [B, H, W, 1]``, ``image_widths [B]``, ``tokens [B, G, T]`` -> ``[B, G, T, C]``."""
    memory, memory_mask = self.encode(images, image_widths, image_heights, train=train)
    return self.decode(tokens, memory, memory_mask, target_mask, train=train)

  def encode(self, images: jax.Array, image_widths: jax.Array,
             image_heights: jax.Array | None = None, train: bool = False):
    """-> ``(memory [B, h, w, D], memory_mask [B, h, w] bool)``."""
    if images.ndim != 4 or images.shape[-1] != 1:
      raise ValueError(f"Expected greyscale images [B, H, W, 1], got shape {images.shape}.")
    mask = pixel_mask(images.shape, image_widths, image_heights)
    return self.encoder(images, mask, train=train)

  def decode(self, tokens, memory, memory_mask, target_mask=None, train: bool = False):
    return self.decoder(tokens, memory, memory_mask, target_mask, train=train)

  def init_decode(self, memory, memory_mask, num_hypotheses: int, cache_length: int):
    return self.decoder.init_decode(memory, memory_mask, num_hypotheses, cache_length)

  def decode_step(self, tokens, position, memory_kv, memory_mask, state):
    return self.decoder.decode_step(tokens, position, memory_kv, memory_mask, state)


def create_attention_model(model_config, num_classes: int,
                           dtype: Any = jnp.float32) -> AttentionModel:
  """The model that ``config.model`` describes (its attention fields, configs/default.py).

  Args:
    model_config: ``config.model``.
    num_classes: vocabulary size with the seq2seq specials (``len(vocab)``).
    dtype: compute dtype; parameters are float32.
  """
  cfg = model_config
  stride = densenet.downsample_factor(cfg.dense_blocks)
  if cfg.width_downsample != stride:
    raise ValueError(
        f"config.model.width_downsample={cfg.width_downsample} does not match the DenseNet "
        f"encoder's stride {stride} (2 ** (dense_blocks + 1)); set width_downsample={stride} "
        "(configs/attention.py does).")
  return AttentionModel(
      num_classes=num_classes,
      d_model=int(cfg.d_model),
      growth_rate=int(cfg.growth_rate),
      dense_layers=int(cfg.dense_layers),
      dense_blocks=int(cfg.dense_blocks),
      compression=float(cfg.compression),
      encoder_dropout=float(cfg.encoder_dropout),
      scan_dense_layers=bool(cfg.scan_dense_layers),
      remat_dense_layers=bool(cfg.remat_dense_layers),
      conv_gradient=conv_lib.resolve_gradient(cfg.conv_gradient),
      num_heads=int(cfg.num_heads),
      decoder_layers=int(cfg.decoder_layers),
      ffn_dim=int(cfg.ffn_dim),
      decoder_dropout=float(cfg.decoder_dropout),
      cross_coverage=bool(cfg.cross_coverage),
      self_coverage=bool(cfg.self_coverage),
      coverage_channels=int(cfg.coverage_channels),
      coverage_kernel=int(cfg.coverage_kernel),
      dtype=dtype)
