"""The one 2-D convolution module of every backbone, with a fast kernel gradient on CPU.

XLA:CPU computes a convolution's kernel gradient several times slower than
its forward pass (``benchmarks/conv_gradient.py``; figures in
``results/README.md``), and that gradient dominates CPU training. With
``gradient="matmul"`` the backward pass is written by hand from what XLA:CPU
does fast: the input gradient is a forward convolution of the output gradient
with the flipped kernel, and the kernel gradient is one batched matmul per
kernel tap (or a single one over all taps when the input has few channels).
No library offers this for JAX, hence the hand-written VJP; the result is the
same gradient (tested against XLA's to float32 rounding).

``Conv`` has the parameters of ``flax.linen.Conv`` (``kernel [kh, kw, C_in,
C_out]``, ``bias [C_out]``), so checkpoints and the torchvision import do not
depend on the switch.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

GRADIENTS = ("auto", "matmul", "xla")
_DIMENSIONS = ("NHWC", "HWIO", "NHWC")
# Below this many kernel taps x input channels one im2col matmul beats a matmul per tap.
_IM2COL_MAX_DEPTH = 64

Padding = tuple[tuple[int, int], tuple[int, int]]


def resolve_gradient(gradient: str) -> str:
  """``"auto"`` -> ``"matmul"`` on the CPU backend, ``"xla"`` elsewhere; checks the name."""
  if gradient not in GRADIENTS:
    raise ValueError(f"Unknown config.model.conv_gradient={gradient!r}; choose one of "
                     f"{GRADIENTS}.")
  if gradient == "auto":
    return "matmul" if jax.default_backend() == "cpu" else "xla"
  return gradient


def _forward(x, kernel, strides, padding):
  return lax.conv_general_dilated(x, kernel, strides, padding, dimension_numbers=_DIMENSIONS)


def _input_gradient(dy, kernel, strides, padding, input_shape):
  """``dL/dx [B, H, W, C_in]`` as a forward convolution of ``dy`` with the flipped kernel."""
  flipped = jnp.flip(kernel, (0, 1)).transpose(0, 1, 3, 2)
  pads = []
  for axis in range(2):
    size = kernel.shape[axis]
    dilated = (dy.shape[1 + axis] - 1) * strides[axis] + 1
    low = size - 1 - padding[axis][0]
    pads.append((low, input_shape[1 + axis] + size - 1 - dilated - low))
  return lax.conv_general_dilated(dy, flipped, (1, 1), pads, lhs_dilation=strides,
                                  dimension_numbers=_DIMENSIONS)


def _kernel_gradient(x, dy, kernel_shape, strides, padding):
  """``dL/dkernel [kh, kw, C_in, C_out]``: per tap, the shifted input times ``dy``, batched over B."""
  height, width, in_channels, out_channels = kernel_shape
  batch, out_height, out_width, _ = dy.shape
  padded = jnp.pad(x, ((0, 0), padding[0], padding[1], (0, 0)))
  taps = [lax.slice(padded, (0, i, j, 0),
                    (batch, i + strides[0] * (out_height - 1) + 1,
                     j + strides[1] * (out_width - 1) + 1, in_channels),
                    (1, strides[0], strides[1], 1))
          for i in range(height) for j in range(width)]
  dy = dy.reshape(batch, -1, out_channels)
  # [B, N, K] x [B, N, C_out] -> [B, K, C_out], summed over B: B parallel matmuls.
  contract = lambda lhs: jnp.sum(lax.dot_general(  # noqa: E731
      lhs.reshape(batch, -1, lhs.shape[-1]), dy, (((1,), (1,)), ((0,), (0,))),
      preferred_element_type=jnp.float32), axis=0)
  if height * width * in_channels <= _IM2COL_MAX_DEPTH:
    gradient = contract(jnp.concatenate(taps, axis=-1))
  else:
    gradient = jnp.stack([contract(tap) for tap in taps])
  return gradient.reshape(kernel_shape).astype(dy.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def conv2d_matmul_gradient(x: jax.Array, kernel: jax.Array, strides: tuple[int, int],
                           padding: Padding) -> jax.Array:
  """``lax.conv_general_dilated`` (NHWC, HWIO) whose VJP is built from convs and matmuls."""
  return _forward(x, kernel, strides, padding)


def _vjp_forward(x, kernel, strides, padding):
  return _forward(x, kernel, strides, padding), (x, kernel)


def _vjp_backward(strides, padding, residuals, dy):
  x, kernel = residuals
  return (_input_gradient(dy, kernel, strides, padding, x.shape).astype(x.dtype),
          _kernel_gradient(x, dy, kernel.shape, strides, padding).astype(kernel.dtype))


conv2d_matmul_gradient.defvjp(_vjp_forward, _vjp_backward)


def conv2d(x: jax.Array, kernel: jax.Array, strides: Sequence[int] = (1, 1),
           padding: Padding | str = "SAME", gradient: str = "auto") -> jax.Array:
  """``x [B, H, W, C_in]`` * ``kernel [kh, kw, C_in, C_out]`` -> ``[B, H', W', C_out]``.

  ``padding`` is ``((top, bottom), (left, right))``, ``"SAME"`` or ``"VALID"``;
  ``gradient`` picks the backward pass (see the module docstring).
  """
  strides = tuple(int(s) for s in strides)
  if isinstance(padding, str):
    padding = lax.padtype_to_pads(x.shape[1:3], kernel.shape[:2], strides, padding)
  padding = tuple((int(low), int(high)) for low, high in padding)
  if resolve_gradient(gradient) == "matmul":
    return conv2d_matmul_gradient(x, kernel, strides, padding)
  return _forward(x, kernel, strides, padding)


class Conv(nn.Module):
  """2-D convolution with ``flax.linen.Conv``'s parameters; ``gradient`` as in ``conv2d``."""

  features: int
  kernel_size: tuple[int, int]
  strides: tuple[int, int] = (1, 1)
  padding: Padding | str = "SAME"
  use_bias: bool = True
  dtype: Any = None
  param_dtype: Any = jnp.float32
  kernel_init: Any = nn.initializers.lecun_normal()
  bias_init: Any = nn.initializers.zeros_init()
  gradient: str = "auto"

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """``x [B, H, W, C_in]`` -> ``[B, H', W', features]``."""
    kernel = self.param("kernel", self.kernel_init,
                        (*self.kernel_size, x.shape[-1], self.features), self.param_dtype)
    bias = (self.param("bias", self.bias_init, (self.features,), self.param_dtype)
            if self.use_bias else None)
    x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
    y = conv2d(x, kernel, self.strides, self.padding, self.gradient)
    return y if bias is None else y + bias
