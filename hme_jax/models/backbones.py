"""Convolutional backbones: a greyscale image -> a feature map for the CTC frames.

Every backbone maps ``x [B, H, W, C_in]`` (already normalised) and the true
content widths ``widths [B]`` to ``(features [B, H', W // d, C], widths' [B])``,
where ``d`` is ``width_downsample`` and ``widths' = ceil(widths / d)``.

Downsampling schedule: each backbone has a fixed list of stride-2 steps (pools
or strided convs). All of them halve the height; only the first ``log2(d)`` of
them halve the width, the later ones use stride ``(2, 1)`` so that long
expressions keep enough frames for CTC. Heights are only ever halved with
ceiling semantics (strided convs) or flooring (2x2 pools), so any height that
is a multiple of the height downsampling (16 for vgg16/resnet18,
``2 ** len(small_channels)`` for small) gives ``H' = H / 16`` exactly.

Padding invariance: images in a batch are right-padded to the bucket width.
After every convolution unit the columns beyond the (downsampled) content
width are set to zero, and BatchNorm statistics are taken over the content
columns only. Zero is also what the convolutions' own border padding shows, so
for a content width that is a multiple of ``d`` the features of the content
columns are the same whatever the padding holds (up to float rounding), and
the same as those of the unpadded image.

Parameter names follow torchvision where a torchvision model exists (so that
``torch_import`` can map ImageNet weights): vgg16 ``conv{block}_{i}`` /
``bn{block}_{i}``; resnet18 ``conv1``, ``bn1``, ``layer{k}_{i}`` with ``conv1``,
``bn1``, ``conv2``, ``bn2``, ``downsample_conv``, ``downsample_bn``.

Frozen stages (``freeze_stages = k``) are the first ``k`` stages in this order:
  vgg16:    block1 (conv1_*), block2, block3, block4, block5   (k <= 5)
  resnet18: stem (conv1, bn1), layer1, layer2, layer3          (k <= 4)
So for resnet18 ``freeze_stages=1`` freezes the stem only and ``2`` the stem and
layer1. A frozen stage keeps its BatchNorm in inference mode (running
statistics, never updated) and no gradient flows into it; ``trainable_mask``
in ``hme_jax.models.crnn`` masks its parameters out of the optimiser.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from hme_jax.models import conv

BACKBONES = ("vgg16", "resnet18", "small")

# torchvision's VGG16 ("D") feature layout up to the last conv: "M" = 2x2 pool.
VGG16_LAYOUT = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M",
                512, 512, 512)
RESNET18_STAGES = ((64, 1), (128, 2), (256, 2))  # (channels, stride) of layer1..layer3

# torch defaults, so that ImageNet statistics transfer unchanged.
BATCH_NORM_MOMENTUM = 0.9
BATCH_NORM_EPSILON = 1e-5

# torchvision initialises convolutions with kaiming_normal_(mode="fan_out").
conv_kernel_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def num_width_halvings(width_downsample: int, num_steps: int, backbone: str) -> int:
  """``log2(width_downsample)``, checked against the backbone's stride-2 steps."""
  halvings = int(width_downsample).bit_length() - 1
  if width_downsample < 1 or 2**halvings != width_downsample or halvings > num_steps:
    raise ValueError(
        f"config.model.width_downsample={width_downsample} is not supported by backbone "
        f"{backbone!r}: use a power of two up to {2**num_steps} (it has {num_steps} "
        "stride-2 steps).")
  return halvings


def width_strides(width_downsample: int, num_steps: int, backbone: str) -> tuple[int, ...]:
  """Width stride of each stride-2 step: ``2`` for the first ``log2(d)``, then ``1``."""
  halvings = num_width_halvings(width_downsample, num_steps, backbone)
  return tuple(2 if step < halvings else 1 for step in range(num_steps))


def downsample_widths(widths: jax.Array, stride: int) -> jax.Array:
  """Content width after a stride: ``ceil(widths / stride)`` (``[B]`` ints)."""
  return (widths + stride - 1) // stride


def width_mask(widths: jax.Array, width: int) -> jax.Array:
  """``[B, 1, width, 1]`` bool, True on content columns."""
  return (jnp.arange(width)[None, :] < widths[:, None])[:, None, :, None]


def _masked(x: jax.Array, mask: jax.Array) -> jax.Array:
  return jnp.where(mask, x, jnp.zeros((), x.dtype))


class _Layers:
  """Conv/BatchNorm constructors shared by the backbones (not a Module)."""

  def __init__(self, dtype: Any, conv_gradient: str):
    self.conv = functools.partial(conv.Conv, use_bias=False, dtype=dtype,
                                  param_dtype=jnp.float32, kernel_init=conv_kernel_init,
                                  gradient=conv_gradient)
    self.batch_norm = functools.partial(nn.BatchNorm, momentum=BATCH_NORM_MOMENTUM,
                                        epsilon=BATCH_NORM_EPSILON, dtype=dtype,
                                        param_dtype=jnp.float32)


class VGG16(nn.Module):
  """The 13 convolutions of VGG16 (optionally with BatchNorm, as vgg16_bn).

  Four 2x2 max-pools (torchvision's fifth, after conv5_3, is dropped), so the
  height shrinks 16x and the width ``width_downsample``x. Output channels: 512.
  """

  batch_norm: bool = True
  width_downsample: int = 4
  freeze_stages: int = 0
  dtype: Any = jnp.float32
  conv_gradient: str = "auto"  # see hme_jax.models.conv

  num_stages = 5

  @nn.compact
  def __call__(self, x: jax.Array, widths: jax.Array, train: bool = False):
    layers = _Layers(self.dtype, self.conv_gradient)
    strides = iter(width_strides(self.width_downsample, 4, "vgg16"))
    block, index = 1, 1
    mask = width_mask(widths, x.shape[2])
    for item in VGG16_LAYOUT:
      if item == "M":
        if block == self.freeze_stages:
          x = jax.lax.stop_gradient(x)
        stride = next(strides)
        x = nn.max_pool(x, (2, stride), strides=(2, stride))
        widths = downsample_widths(widths, stride)
        mask = width_mask(widths, x.shape[2])
        block, index = block + 1, 1
        continue
      frozen = block <= self.freeze_stages
      # torchvision's VGG convs keep their bias even with BatchNorm (vgg16_bn).
      x = layers.conv(item, (3, 3), padding=((1, 1), (1, 1)), use_bias=True,
                      name=f"conv{block}_{index}")(x)
      if self.batch_norm:
        x = layers.batch_norm(use_running_average=not train or frozen,
                              name=f"bn{block}_{index}")(x, mask=mask)
      x = _masked(nn.relu(x), mask)
      index += 1
    if block == self.freeze_stages:
      x = jax.lax.stop_gradient(x)
    return x, widths


class BasicBlock(nn.Module):
  """torchvision's ResNet BasicBlock, with a (height, width) stride."""

  features: int
  strides: tuple[int, int] = (1, 1)
  frozen: bool = False
  dtype: Any = jnp.float32
  conv_gradient: str = "auto"  # see hme_jax.models.conv

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array, train: bool = False):
    """``x [B, H, W, C]`` (content columns only nonzero); ``mask`` is the output mask."""
    layers = _Layers(self.dtype, self.conv_gradient)
    norm = functools.partial(layers.batch_norm, use_running_average=not train or self.frozen)
    residual = x
    y = layers.conv(self.features, (3, 3), self.strides, padding=((1, 1), (1, 1)),
                    name="conv1")(x)
    y = _masked(nn.relu(norm(name="bn1")(y, mask=mask)), mask)
    y = layers.conv(self.features, (3, 3), padding=((1, 1), (1, 1)), name="conv2")(y)
    y = norm(name="bn2")(y, mask=mask)
    if self.strides != (1, 1) or x.shape[-1] != self.features:
      residual = layers.conv(self.features, (1, 1), self.strides, padding="VALID",
                             name="downsample_conv")(x)
      residual = norm(name="downsample_bn")(residual, mask=mask)
    return _masked(nn.relu(y + residual), mask)


class ResNet18(nn.Module):
  """ResNet18's stem and layer1..layer3 (torchvision layout). Output channels: 256.

  Stride-2 steps: stem conv, stem max-pool, layer2, layer3 (height 16x).
  """

  width_downsample: int = 4
  freeze_stages: int = 0
  dtype: Any = jnp.float32
  conv_gradient: str = "auto"  # see hme_jax.models.conv

  num_stages = 4

  @nn.compact
  def __call__(self, x: jax.Array, widths: jax.Array, train: bool = False):
    layers = _Layers(self.dtype, self.conv_gradient)
    strides = iter(width_strides(self.width_downsample, 4, "resnet18"))
    frozen = self.freeze_stages >= 1

    stride = next(strides)
    widths = downsample_widths(widths, stride)
    x = layers.conv(64, (7, 7), (2, stride), padding=((3, 3), (3, 3)), name="conv1")(x)
    mask = width_mask(widths, x.shape[2])
    x = layers.batch_norm(use_running_average=not train or frozen, name="bn1")(x, mask=mask)
    x = _masked(nn.relu(x), mask)
    # Zero columns never win this max (inputs are >= 0 after the ReLU), so the
    # pool matches torch's -inf padding at the content edge as well. Its windows
    # overlap, so the first padding column picks up content and is zeroed again.
    stride = next(strides)
    x = nn.max_pool(x, (3, 3), strides=(2, stride), padding=((1, 1), (1, 1)))
    widths = downsample_widths(widths, stride)
    x = _masked(x, width_mask(widths, x.shape[2]))
    if self.freeze_stages == 1:
      x = jax.lax.stop_gradient(x)

    for stage, (features, stage_stride) in enumerate(RESNET18_STAGES, start=1):
      frozen = stage + 1 <= self.freeze_stages
      for index in range(2):
        block_strides = (1, 1)
        if index == 0 and stage_stride == 2:
          stride = next(strides)
          block_strides = (2, stride)
          widths = downsample_widths(widths, stride)
        mask = width_mask(widths, -(-x.shape[2] // block_strides[1]))
        x = BasicBlock(features, block_strides, frozen=frozen, dtype=self.dtype,
                       conv_gradient=self.conv_gradient, name=f"layer{stage}_{index}")(x, mask, train)
      if stage + 1 == self.freeze_stages:
        x = jax.lax.stop_gradient(x)
    return x, widths


class SmallCNN(nn.Module):
  """A few conv -> [BatchNorm] -> ReLU -> 2x2 pool units, for CPU quickstarts.

  One pool per entry of ``channels``, so the height shrinks ``2 ** len(channels)``x.
  """

  channels: Sequence[int] = (32, 64, 128)
  batch_norm: bool = True
  width_downsample: int = 4
  dtype: Any = jnp.float32
  conv_gradient: str = "auto"  # see hme_jax.models.conv

  num_stages = 0

  @nn.compact
  def __call__(self, x: jax.Array, widths: jax.Array, train: bool = False):
    layers = _Layers(self.dtype, self.conv_gradient)
    strides = width_strides(self.width_downsample, len(self.channels), "small")
    mask = width_mask(widths, x.shape[2])
    for index, (features, stride) in enumerate(zip(self.channels, strides)):
      x = layers.conv(features, (3, 3), padding=((1, 1), (1, 1)), use_bias=not self.batch_norm,
                      name=f"conv{index}")(x)
      if self.batch_norm:
        x = layers.batch_norm(use_running_average=not train, name=f"bn{index}")(x, mask=mask)
      x = _masked(nn.relu(x), mask)
      x = nn.max_pool(x, (2, stride), strides=(2, stride))
      widths = downsample_widths(widths, stride)
      mask = width_mask(widths, x.shape[2])
    return x, widths


def create_backbone(model_config, dtype: Any = jnp.float32, name: str | None = None) -> nn.Module:
  """The backbone named by ``model_config.backbone``, validated."""
  backbone = model_config.backbone
  freeze_stages = int(model_config.get("freeze_stages", 0))
  # Absent from configs saved before it existed: "auto".
  conv_gradient = conv.resolve_gradient(model_config.get("conv_gradient", "auto"))
  if backbone == "vgg16":
    module = VGG16(batch_norm=bool(model_config.batch_norm),
                   width_downsample=int(model_config.width_downsample),
                   freeze_stages=freeze_stages, dtype=dtype,
                   conv_gradient=conv_gradient, name=name)
  elif backbone == "resnet18":
    module = ResNet18(width_downsample=int(model_config.width_downsample),
                      freeze_stages=freeze_stages, dtype=dtype,
                      conv_gradient=conv_gradient, name=name)
  elif backbone == "small":
    module = SmallCNN(channels=tuple(int(c) for c in model_config.small_channels),
                      batch_norm=bool(model_config.batch_norm),
                      width_downsample=int(model_config.width_downsample), dtype=dtype,
                      conv_gradient=conv_gradient, name=name)
  else:
    raise ValueError(f"Unknown config.model.backbone={backbone!r}; choose one of {BACKBONES}.")
  num_steps = len(module.channels) if backbone == "small" else 4
  width_strides(int(model_config.width_downsample), num_steps, backbone)  # validates
  if not 0 <= freeze_stages <= module.num_stages:
    raise ValueError(
        f"config.model.freeze_stages={freeze_stages} is out of range for backbone "
        f"{backbone!r}: it has {module.num_stages} freezable stages (see "
        "hme_jax/models/backbones.py).")
  return module


def height_downsample(model_config) -> int:
  """How many times the backbone shrinks the height (input heights should be multiples)."""
  if model_config.backbone == "small":
    return 2 ** len(model_config.small_channels)
  return 16


_STAGE_PATTERNS = {
    "vgg16": (re.compile(r"^(?:conv|bn)(\d)_\d+$"), lambda match: int(match.group(1)) - 1),
    "resnet18": (re.compile(r"^(?:conv1|bn1|layer(\d)_\d+)$"),
                 lambda match: int(match.group(1) or 0)),
}


def stage_of(backbone: str, module_name: str) -> int | None:
  """Stage index (0-based, see module docstring) of a top-level backbone module name."""
  if backbone not in _STAGE_PATTERNS:
    return None
  pattern, stage = _STAGE_PATTERNS[backbone]
  match = pattern.match(module_name)
  return stage(match) if match else None
