"""DenseNet-B image encoder of the WAP/DWAP, BTTR and CoMER recognisers, with padding masks.

    images [B, H, W, 1]
      -> 7x7 conv, stride 2 (2 * growth_rate channels), BatchNorm, ReLU, 2x2 max-pool
      -> num_blocks dense blocks of num_layers bottleneck layers
         (1x1 conv to 4 * growth_rate, 3x3 conv to growth_rate, each conv -> BN -> ReLU
         -> dropout, the output concatenated to the input), a transition
         (1x1 conv to floor(compression * C), BN, ReLU, dropout, 2x2 average pool)
         between consecutive blocks
      -> BatchNorm                         features [B, ceil(H / d), ceil(W / d), C]

with ``d = downsample_factor(num_blocks)`` (16 for the published three blocks)
and, with the published sizes (growth 24, 16 layers, compression 0.5),
``C = 684``. Pools use ceiling semantics (as ``ceil_mode=True`` in PyTorch).

Padding: ``pixel_mask [B, H, W]`` marks the content pixels. After every
convolution unit the features outside the (downsampled) mask are set to zero,
BatchNorm statistics in training cover content positions only, and the average
pools average content positions only. Zero is also what the convolutions' own
border padding shows, so the features at content positions are the same,
up to float rounding, whatever the amount of padding around the content (for
a mask that keeps the content top-left, as right-padding does). The PyTorch
originals let padding leak into BatchNorm statistics and pooled averages.
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from hme_jax.models import conv

# PyTorch defaults (the published models are PyTorch).
BATCH_NORM_MOMENTUM = 0.9
BATCH_NORM_EPSILON = 1e-5


def conv_kernel_init(scale: float = 2.0, distribution: str = "normal"):
  """Fan-in variance scaling for ``[kh, kw, C_in, C_out]`` kernels, drawn as a matrix.

  The distribution is that of ``nn.initializers.variance_scaling(scale,
  "fan_in", distribution)``; drawing it as ``[kh * kw * C_in, C_out]`` only
  saves compile time (see ``Dropout``). The default, 2.0 / normal, is
  torchvision's DenseNet initialisation (``kaiming_normal_``).
  """
  matrix_init = nn.initializers.variance_scaling(scale, "fan_in", distribution)

  def init(key, shape, dtype=jnp.float32):
    return matrix_init(key, (math.prod(shape[:-1]), shape[-1]), dtype).reshape(shape)

  return init


def downsample_factor(num_blocks: int) -> int:
  """Total stride of the encoder: stem conv, max-pool and one pool per transition."""
  return 2 ** (num_blocks + 1)


def output_channels(growth_rate: int, num_layers: int, num_blocks: int,
                    compression: float) -> int:
  """Channels of the final feature map (684 for 24 / 16 / 3 / 0.5)."""
  channels = 2 * growth_rate
  for block in range(num_blocks):
    channels += num_layers * growth_rate
    if block < num_blocks - 1:
      channels = int(math.floor(channels * compression))
  return channels


def downsample_mask(mask: jax.Array) -> jax.Array:
  """``[B, H, W]`` -> ``[B, ceil(H / 2), ceil(W / 2)]``: content where the top-left pixel is."""
  return mask[:, ::2, ::2]


def _pad_to_even(x: jax.Array) -> jax.Array:
  """Zero-pads ``[B, H, W, C]`` at the bottom and right to even ``H`` and ``W``."""
  _, height, width, _ = x.shape
  return jnp.pad(x, ((0, 0), (0, height % 2), (0, width % 2), (0, 0)))


def masked_average_pool(x: jax.Array, mask: jax.Array) -> jax.Array:
  """2x2 average pool (ceiling semantics) over content positions only.

  Args:
    x: ``[B, H, W, C]``, zero outside ``mask``.
    mask: ``[B, H, W]`` bool.

  Returns:
    ``[B, ceil(H / 2), ceil(W / 2), C]``; zero where a window holds no content.
  """
  total = nn.avg_pool(_pad_to_even(x), (2, 2), strides=(2, 2))
  count = nn.avg_pool(_pad_to_even(mask[..., None].astype(x.dtype)), (2, 2), strides=(2, 2))
  return total / jnp.maximum(count, jnp.asarray(0.25, x.dtype))


class Dropout(nn.Module):
  """``nn.Dropout`` that draws its mask as a flat vector.

  Same distribution; the reason is compile time: with
  ``jax_threefry_partitionable`` (JAX's default) XLA:CPU takes seconds to
  compile each random draw of a high-rank shape (ten rank-5 draws: about a
  minute on a busy 2-core machine), and a small fraction of that for flat ones.
  """

  rate: float

  @nn.compact
  def __call__(self, x: jax.Array, deterministic: bool) -> jax.Array:
    if deterministic or self.rate == 0.0:
      return x
    keep = 1.0 - self.rate
    mask = jax.random.bernoulli(self.make_rng("dropout"), keep, (x.size,)).reshape(x.shape)
    return jnp.where(mask, x * jnp.asarray(1.0 / keep, x.dtype), jnp.zeros((), x.dtype))


def _zero_outside(x: jax.Array, mask: jax.Array) -> jax.Array:
  return jnp.where(mask[..., None], x, jnp.zeros((), x.dtype))


class ConvUnit(nn.Module):
  """conv -> BN (content statistics) -> ReLU -> dropout -> zero the padding."""

  features: int
  kernel_size: tuple[int, int]
  dropout_rate: float
  dtype: Any = jnp.float32
  conv_gradient: str = "auto"  # see hme_jax.models.conv

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array, train: bool) -> jax.Array:
    pad = self.kernel_size[0] // 2
    x = conv.Conv(self.features, self.kernel_size, padding=((pad, pad), (pad, pad)),
                  use_bias=False, dtype=self.dtype, param_dtype=jnp.float32,
                  kernel_init=conv_kernel_init(), gradient=self.conv_gradient)(x)
    x = nn.BatchNorm(use_running_average=not train, momentum=BATCH_NORM_MOMENTUM,
                     epsilon=BATCH_NORM_EPSILON, dtype=self.dtype,
                     param_dtype=jnp.float32)(x, mask=mask[..., None])
    x = Dropout(self.dropout_rate)(nn.relu(x), deterministic=not train)
    return _zero_outside(x, mask)


class Bottleneck(nn.Module):
  """A dense layer: 1x1 conv unit to ``4 * growth_rate``, 3x3 conv unit to ``growth_rate``."""

  growth_rate: int
  dropout_rate: float
  dtype: Any = jnp.float32
  conv_gradient: str = "auto"

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array, train: bool) -> jax.Array:
    """``[B, h, w, C]`` -> the new features ``[B, h, w, growth_rate]``."""
    y = ConvUnit(4 * self.growth_rate, (1, 1), self.dropout_rate, self.dtype,
                 self.conv_gradient, name="bottleneck")(x, mask, train)
    return ConvUnit(self.growth_rate, (3, 3), self.dropout_rate, self.dtype,
                    self.conv_gradient, name="conv")(y, mask, train)


def _bottleneck_class(remat: bool, prevent_cse: bool = True):
  """``Bottleneck``, or with ``remat`` its ``nn.remat`` (same variables and function).

  Rematerialised, a layer's activations are recomputed in the backward pass
  instead of being kept: less memory for about one more forward pass of the
  dense layers. ``train`` (argument 3, counting ``self``) stays a Python bool.
  """
  if not remat:
    return Bottleneck
  return nn.remat(Bottleneck, static_argnums=(3,), prevent_cse=prevent_cse)


class BufferedBottleneck(nn.Module):
  """A dense layer writing into a preallocated block buffer: the body of ``nn.scan``.

  The buffer has the block's final width and zeros in the channels not yet
  written, so the 1x1 convolution over the whole buffer equals the one over the
  layer's input channels (the kernel rows of later channels meet zeros and get
  no gradient). One compiled layer then serves the whole block: a 3 times
  smaller HLO that compiles faster, for about 45% more encoder FLOPs (the 1x1
  convolutions run over the full width). Compile and step times against the
  unrolled layers: results/README.md.
  """

  growth_rate: int
  dropout_rate: float
  dtype: Any = jnp.float32
  conv_gradient: str = "auto"
  remat: bool = False            # nn.remat around the layer (see _bottleneck_class)

  @nn.compact
  def __call__(self, buffer: jax.Array, offset: jax.Array, mask: jax.Array, train: bool):
    # Inside a scan XLA cannot merge the recomputation back into the forward
    # pass, so CSE prevention is unneeded there (jax.checkpoint's docs) and only costs.
    layer = _bottleneck_class(self.remat, prevent_cse=False)
    y = layer(self.growth_rate, self.dropout_rate, self.dtype, self.conv_gradient,
              name="layer")(buffer, mask, train)
    return jax.lax.dynamic_update_slice_in_dim(buffer, y, offset, axis=-1), None


class DenseNet(nn.Module):
  """DenseNet-B (bottleneck + compression) as in DWAP/BTTR/CoMER; see the module docstring."""

  growth_rate: int = 24
  num_layers: int = 16           # bottleneck layers per dense block
  num_blocks: int = 3
  compression: float = 0.5       # channel fraction kept by each transition
  dropout_rate: float = 0.2
  scan_layers: bool = False      # the same function, compiled once per block: BufferedBottleneck
  remat_layers: bool = False     # the same function, each dense layer in nn.remat
  dtype: Any = jnp.float32
  conv_gradient: str = "auto"    # see hme_jax.models.conv

  @nn.compact
  def __call__(self, images: jax.Array, pixel_mask: jax.Array,
               train: bool = False) -> tuple[jax.Array, jax.Array]:
    """``images [B, H, W, C_in]``, ``pixel_mask [B, H, W]`` bool -> ``(features, mask)``.

    ``features [B, ceil(H / d), ceil(W / d), C]`` (zero outside the mask) and
    ``mask [B, ceil(H / d), ceil(W / d)]`` bool.
    """
    if self.num_blocks < 1 or self.num_layers < 1 or self.growth_rate < 1:
      raise ValueError(
          f"DenseNet needs num_blocks, num_layers and growth_rate >= 1, got "
          f"{self.num_blocks}, {self.num_layers}, {self.growth_rate}.")
    batch_norm = lambda name: nn.BatchNorm(  # noqa: E731
        use_running_average=not train, momentum=BATCH_NORM_MOMENTUM,
        epsilon=BATCH_NORM_EPSILON, dtype=self.dtype, param_dtype=jnp.float32, name=name)

    x = _zero_outside(images.astype(self.dtype), pixel_mask)
    mask = downsample_mask(pixel_mask)
    x = conv.Conv(2 * self.growth_rate, (7, 7), strides=(2, 2), padding=((3, 3), (3, 3)),
                  use_bias=False, dtype=self.dtype, param_dtype=jnp.float32,
                  kernel_init=conv_kernel_init(), gradient=self.conv_gradient, name="stem")(x)
    x = _zero_outside(nn.relu(batch_norm("stem_norm")(x, mask=mask[..., None])), mask)
    # Padding is zero and content is >= 0 after the ReLU, so a zero-padded
    # max-pool equals one over content only.
    x = nn.max_pool(_pad_to_even(x), (2, 2), strides=(2, 2))
    mask = downsample_mask(mask)

    for block in range(self.num_blocks):
      if self.scan_layers:
        start = x.shape[-1]
        x = jnp.pad(x, ((0, 0),) * 3 + ((0, self.num_layers * self.growth_rate),))
        layers = nn.scan(BufferedBottleneck, variable_axes={"params": 0, "batch_stats": 0},
                         split_rngs={"params": True, "dropout": True},
                         in_axes=(0, nn.broadcast, nn.broadcast), length=self.num_layers)
        offsets = start + self.growth_rate * jnp.arange(self.num_layers)
        x, _ = layers(self.growth_rate, self.dropout_rate, self.dtype, self.conv_gradient,
                      self.remat_layers, name=f"dense_block_{block}")(x, offsets, mask, train)
      else:
        bottleneck = _bottleneck_class(self.remat_layers)
        for layer in range(self.num_layers):
          y = bottleneck(self.growth_rate, self.dropout_rate, self.dtype, self.conv_gradient,
                         name=f"dense_block_{block}_layer_{layer}")(x, mask, train)
          x = jnp.concatenate([x, y], axis=-1)
      if block < self.num_blocks - 1:
        channels = int(math.floor(x.shape[-1] * self.compression))
        x = ConvUnit(channels, (1, 1), self.dropout_rate, self.dtype, self.conv_gradient,
                     name=f"transition_{block}")(x, mask, train)
        x = masked_average_pool(x, mask)
        mask = downsample_mask(mask)

    x = _zero_outside(batch_norm("final_norm")(x, mask=mask[..., None]), mask)
    return x, mask
