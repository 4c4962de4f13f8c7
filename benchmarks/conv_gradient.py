"""Convolution forward and gradient speed: XLA's own VJP vs hme_jax's ``matmul`` VJP.

  python benchmarks/conv_gradient.py            # the layer shapes of the CRNN backbones
  python benchmarks/conv_gradient.py --batch 16 --repeats 10

For each shape prints GFLOP/s of the forward convolution and of forward +
backward (input and kernel gradients) with ``gradient="xla"`` and
``gradient="matmul"`` (``hme_jax/models/conv.py``), and the largest relative
difference between the two gradients. FLOPs: 2 x output elements x kernel
taps x input channels for the forward pass, three times that with the gradients.
"""

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

from hme_jax.models import conv  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_integer("batch", 32, "Batch size.")
flags.DEFINE_integer("repeats", 5, "Timed calls per measurement (after one warm-up call).")

# (height, width, C_in, C_out, kernel, strides): VGG16 / small CNN 3x3 layers at a 64 px
# high input, ResNet18's strided 3x3, 1x1 shortcut and 7x7 stem.
SHAPES = [
    (64, 256, 1, 32, 3, (1, 1)),
    (64, 256, 64, 64, 3, (1, 1)),
    (32, 128, 128, 128, 3, (1, 1)),
    (16, 128, 256, 256, 3, (1, 1)),
    (32, 128, 64, 128, 3, (2, 1)),
    (32, 128, 64, 128, 1, (2, 1)),
    (64, 256, 1, 64, 7, (2, 2)),
]


def seconds(function, *args) -> float:
  jax.block_until_ready(function(*args))
  start = time.perf_counter()
  for _ in range(FLAGS.repeats):
    result = function(*args)
  jax.block_until_ready(result)
  return (time.perf_counter() - start) / FLAGS.repeats


def main(argv):
  del argv
  print(f"{jax.device_count()} x {jax.devices()[0].device_kind}, batch {FLAGS.batch}")
  print(f"{'shape':>34} {'forward':>9} {'xla f+b':>9} {'matmul f+b':>11} {'rel. diff':>9}")
  rng = np.random.default_rng(0)
  for height, width, in_channels, out_channels, size, strides in SHAPES:
    pad = (size - 1) // 2
    padding = ((pad, pad), (pad, pad))
    x = jnp.asarray(rng.standard_normal((FLAGS.batch, height, width, in_channels)), jnp.float32)
    kernel = jnp.asarray(rng.standard_normal((size, size, in_channels, out_channels)) * 0.1,
                         jnp.float32)
    forward = jax.jit(lambda x, k: conv.conv2d(x, k, strides, padding, "xla"))
    output_size = forward(x, kernel).size
    flops = 2.0 * output_size * size * size * in_channels
    grads = {}
    rates = {}
    for gradient in ("xla", "matmul"):
      loss = lambda x, k, g=gradient: jnp.sum(conv.conv2d(x, k, strides, padding, g) ** 2)  # noqa: E731
      step = jax.jit(jax.grad(loss, argnums=(0, 1)))
      rates[gradient] = 3 * flops / seconds(step, x, kernel) / 1e9
      grads[gradient] = step(x, kernel)
    difference = max(float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(b)))
                     for a, b in zip(grads["matmul"], grads["xla"]))
    name = f"{height}x{width} {in_channels}->{out_channels} k{size} s{strides[0]}{strides[1]}"
    print(f"{name:>34} {flops / seconds(forward, x, kernel) / 1e9:9.1f} {rates['xla']:9.1f} "
          f"{rates['matmul']:11.1f} {difference:9.1e}", flush=True)
  print("GFLOP/s")


if __name__ == "__main__":
  app.run(main)
