"""CRNN: convolutional backbone -> bidirectional LSTM -> per-frame class scores for CTC.

    images [B, H, W, 1] in [0, 1]  (white ink on black, right-padded)
      -> normalise (ImageNet grey statistics), zero the padding
      -> backbone                              [B, H/16, W/d, C]
      -> collapse the height (mean | max | flatten)   [B, T, F],  T = W / d
      -> BatchNorm over content frames, spatial (channel) dropout
      -> lstm_layers x bidirectional LSTM (seq_lengths: padding never reaches the
         backward direction), dropout between layers
      -> dropout, Dense                        logits [B, T, num_classes] float32

What is guaranteed about padding (see tests/test_models.py):
  * The sequence model only ever reads content frames for content frames: the
    logits at frames ``t < frame_lengths(image_widths, d)`` do not depend on the
    backbone features of later frames.
  * The input is zeroed beyond ``image_widths`` and the backbone zeroes
    everything beyond the (downsampled) content width after every convolution
    unit, which is what the convolutions' border padding shows too. So the
    logits at content frames equal (up to float rounding) those of the same
    image cropped to ``ceil(w / d) * d`` columns, whatever the padding holds and
    however wide the bucket is.
  * In training mode BatchNorm statistics exclude the padding, so the same
    holds for a batch of one with dropout off.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from hme_jax import ctc
from hme_jax.models import backbones

# ImageNet RGB statistics averaged over the channels: the greyscale image is
# fed where torchvision models expect the (normalised) RGB image.
IMAGENET_GREY_MEAN = (0.485 + 0.456 + 0.406) / 3
IMAGENET_GREY_STD = (0.229 + 0.224 + 0.225) / 3

HEIGHT_COLLAPSE = ("mean", "max", "flatten")


def normalize_images(images: jax.Array) -> jax.Array:
  """``[B, H, W, 1]`` in [0, 1] -> zero mean, unit variance under ImageNet grey statistics."""
  return (images - IMAGENET_GREY_MEAN) / IMAGENET_GREY_STD


def frame_paddings(frame_lengths: jax.Array, num_frames: int) -> jax.Array:
  """``[B]`` ints -> ``[B, T]`` float32, 1.0 on padded frames."""
  return (jnp.arange(num_frames)[None, :] >= frame_lengths[:, None]).astype(jnp.float32)


def reverse_within_lengths(x: jax.Array, lengths: jax.Array) -> jax.Array:
  """``x [B, T, ...]`` with each sequence's first ``lengths[b]`` steps reversed (padding stays)."""
  steps = jnp.arange(x.shape[1])[None, :]
  index = jnp.where(steps < lengths[:, None], lengths[:, None] - 1 - steps, steps)
  return jnp.take_along_axis(x, index.reshape(index.shape + (1,) * (x.ndim - 2)), axis=1)


def _recurrent_init(key, shape, dtype=jnp.float32):
  """``[directions, H, 4H]``: an orthogonal ``[H, H]`` block per direction and gate."""
  directions, hidden, _ = shape
  keys = jax.random.split(key, directions * 4)
  # One QR at a time, not a batched one: jaxlib runs a batched QR's matrices as tasks on
  # XLA:CPU's thread pool and waits for them, so two layers' initialisers running at once
  # on a 2-thread pool wait on each other for ever.
  blocks = jax.lax.map(lambda k: nn.initializers.orthogonal()(k, (hidden, hidden), dtype), keys)
  return blocks.reshape(directions, 4, hidden, hidden).transpose(0, 2, 1, 3).reshape(shape)


class BidirectionalLSTM(nn.Module):
  """One bidirectional LSTM layer; outputs ``[B, T, 2 * hidden]`` (forward, backward).

  Both directions run in one ``lax.scan`` whose step is only the recurrent
  matmul: the input projections of all frames are one matmul before it (on
  CPU the per-step cost, not the FLOPs, is what limits an LSTM). Gates in
  PyTorch's order (input, forget, cell, output); the parameters are
  ``input_kernel [F, 2, 4H]``, ``recurrent_kernel [2, H, 4H]`` and ``bias [2, 4H]``
  (direction 0 forward, 1 backward), initialised as ``flax.linen.OptimizedLSTMCell``.
  """

  hidden: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, inputs: jax.Array, seq_lengths: jax.Array) -> jax.Array:
    """``inputs [B, T, F]``, ``seq_lengths [B]`` int -> ``[B, T, 2 * hidden]``.

    The backward direction starts at each sequence's last content frame; the
    outputs at padded frames are meaningless.
    """
    hidden, gates = self.hidden, 4 * self.hidden
    input_kernel = self.param(
        "input_kernel", nn.initializers.variance_scaling(1.0, "fan_in", "truncated_normal",
                                                         in_axis=0, out_axis=-1,
                                                         batch_axis=(1,)),
        (inputs.shape[-1], 2, gates), jnp.float32)
    recurrent_kernel = self.param("recurrent_kernel", _recurrent_init, (2, hidden, gates),
                                  jnp.float32)
    bias = self.param("bias", nn.initializers.zeros_init(), (2, gates), jnp.float32)
    inputs, input_kernel, recurrent_kernel, bias = nn.dtypes.promote_dtype(
        inputs, input_kernel, recurrent_kernel, bias, dtype=self.dtype)

    projected = jnp.einsum("btf,fdg->btdg", inputs, input_kernel) + bias  # [B, T, 2, 4H]
    projected = jnp.stack([projected[:, :, 0],
                           reverse_within_lengths(projected[:, :, 1], seq_lengths)], axis=2)

    def step(carry, projected_t):  # projected_t [2, B, 4H]
      h, c = carry
      z = projected_t + jnp.einsum("dbh,dhg->dbg", h, recurrent_kernel)
      i, f, g, o = jnp.split(z, 4, axis=-1)
      c = nn.sigmoid(f) * c + nn.sigmoid(i) * jnp.tanh(g)
      h = nn.sigmoid(o) * jnp.tanh(c)
      return (h, c), h

    batch = inputs.shape[0]
    zeros = jnp.zeros((2, batch, hidden), projected.dtype)
    _, outputs = jax.lax.scan(step, (zeros, zeros), projected.transpose(1, 2, 0, 3))
    outputs = outputs.transpose(2, 0, 1, 3)  # [B, T, 2, H]
    backward = reverse_within_lengths(outputs[:, :, 1], seq_lengths)
    return jnp.concatenate([outputs[:, :, 0], backward], axis=-1)


class SequenceModel(nn.Module):
  """Stacked bidirectional LSTMs and the classifier: features -> logits."""

  num_classes: int
  lstm_hidden: int = 256
  lstm_layers: int = 2
  lstm_dropout: float = 0.5
  classifier_dropout: float = 0.3
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, features: jax.Array, frame_lengths: jax.Array, train: bool = False):
    """``features [B, T, F]``, ``frame_lengths [B]`` -> logits ``[B, T, C]`` float32."""
    x = features
    for layer in range(self.lstm_layers):
      if layer > 0:
        x = nn.Dropout(self.lstm_dropout, deterministic=not train)(x)
      x = BidirectionalLSTM(self.lstm_hidden, dtype=self.dtype, name=f"lstm{layer}")(
          x, frame_lengths)
    x = nn.Dropout(self.classifier_dropout, deterministic=not train)(x)
    logits = nn.Dense(self.num_classes, dtype=self.dtype, param_dtype=jnp.float32,
                      name="classifier")(x)
    return logits.astype(jnp.float32)


class CRNN(nn.Module):
  """See the module docstring. Build it with ``create_crnn(config.model, num_classes)``."""

  num_classes: int
  backbone: nn.Module
  width_downsample: int = 4
  height_collapse: str = "mean"
  spatial_dropout: float = 0.3
  lstm_hidden: int = 256
  lstm_layers: int = 2
  lstm_dropout: float = 0.5
  classifier_dropout: float = 0.3
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, images: jax.Array, image_widths: jax.Array, train: bool = False):
    """Scores every CTC frame.

    Args:
      images: ``[B, H, W, 1]`` float in [0, 1]; ``W`` a multiple of ``width_downsample``.
      image_widths: ``[B]`` int, content width of each image before right-padding.
      train: dropout on, BatchNorm on batch statistics (pass ``mutable=['batch_stats']``
        and ``rngs={'dropout': key}``).

    Returns:
      ``(logits [B, T, num_classes] float32, frame_paddings [B, T] float32)``
      with ``T = W // width_downsample`` and 1.0 on padded frames.
    """
    batch, height, width, channels = images.shape
    if channels != 1 or width % self.width_downsample:
      raise ValueError(
          f"CRNN expects greyscale images [B, H, W, 1] with W a multiple of "
          f"width_downsample={self.width_downsample}; got shape {images.shape}.")
    num_frames = width // self.width_downsample
    image_widths = jnp.clip(image_widths.astype(jnp.int32), 0, width)
    frame_lengths = ctc.frame_lengths(image_widths, self.width_downsample)

    x = normalize_images(images.astype(jnp.float32)).astype(self.dtype)
    x = jnp.where(backbones.width_mask(image_widths, width), x, jnp.zeros((), x.dtype))
    x, _ = self.backbone(x, image_widths, train)
    if x.shape[2] != num_frames:
      raise ValueError(f"The backbone made {x.shape[2]} frames from width {width}; expected "
                       f"{num_frames}. Check config.model.width_downsample.")

    # [B, H', T, C] -> [B, T, F]
    if self.height_collapse == "mean":
      x = jnp.mean(x, axis=1)
    elif self.height_collapse == "max":
      x = jnp.max(x, axis=1)
    elif self.height_collapse == "flatten":
      x = jnp.transpose(x, (0, 2, 1, 3)).reshape(batch, num_frames, -1)
    else:
      raise ValueError(f"Unknown height_collapse={self.height_collapse!r}; choose one of "
                       f"{HEIGHT_COLLAPSE}.")

    frame_mask = (jnp.arange(num_frames)[None, :] < frame_lengths[:, None])[..., None]
    x = nn.BatchNorm(use_running_average=not train, momentum=backbones.BATCH_NORM_MOMENTUM,
                     epsilon=backbones.BATCH_NORM_EPSILON, dtype=self.dtype,
                     param_dtype=jnp.float32, name="feature_norm")(x, mask=frame_mask)
    # Spatial dropout: whole channels, the same mask for every frame of a sample.
    x = nn.Dropout(self.spatial_dropout, broadcast_dims=(1,), deterministic=not train)(x)

    logits = SequenceModel(self.num_classes, lstm_hidden=self.lstm_hidden,
                           lstm_layers=self.lstm_layers, lstm_dropout=self.lstm_dropout,
                           classifier_dropout=self.classifier_dropout, dtype=self.dtype,
                           name="sequence")(x, frame_lengths, train)
    return logits, frame_paddings(frame_lengths, num_frames)


def create_crnn(model_config, num_classes: int, dtype: Any = jnp.float32) -> CRNN:
  """The CRNN described by ``config.model`` (see configs/default.py)."""
  if num_classes < 2:
    raise ValueError(f"num_classes={num_classes}: a CTC model needs the blank and at least "
                     "one token (use len(vocabulary)).")
  height_collapse = model_config.get("height_collapse", "mean")
  if height_collapse not in HEIGHT_COLLAPSE:
    raise ValueError(f"Unknown config.model.height_collapse={height_collapse!r}; choose one "
                     f"of {HEIGHT_COLLAPSE}.")
  if int(model_config.lstm_layers) < 1:
    raise ValueError(f"config.model.lstm_layers={model_config.lstm_layers} must be >= 1.")
  return CRNN(
      num_classes=int(num_classes),
      backbone=backbones.create_backbone(model_config, dtype=dtype),
      width_downsample=int(model_config.width_downsample),
      height_collapse=height_collapse,
      spatial_dropout=float(model_config.spatial_dropout),
      lstm_hidden=int(model_config.lstm_hidden),
      lstm_layers=int(model_config.lstm_layers),
      lstm_dropout=float(model_config.lstm_dropout),
      classifier_dropout=float(model_config.classifier_dropout),
      dtype=dtype,
  )


def trainable_mask(params, model_config):
  """Pytree of bools like ``params``: False for the frozen backbone stages.

  For ``optax.multi_transform`` / ``optax.masked``. ``params`` is the ``'params'``
  collection of a model built from the same ``model_config``.
  """
  freeze_stages = int(model_config.get("freeze_stages", 0))
  backbone = model_config.backbone

  def trainable(path, _):
    keys = [getattr(entry, "key", getattr(entry, "name", None)) for entry in path]
    if freeze_stages == 0 or len(keys) < 2 or keys[0] != "backbone":
      return True
    stage = backbones.stage_of(backbone, str(keys[1]))
    if stage is None:
      raise ValueError(f"Parameter {'/'.join(map(str, keys))} belongs to no stage of "
                       f"backbone {backbone!r}; was the model built from this config?")
    return stage >= freeze_stages

  return jax.tree_util.tree_map_with_path(trainable, params)
