"""The hand-written convolution VJP gives XLA's own gradients, in every case the models use."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from hme_jax.models import conv, create_crnn, densenet

# (input [B, H, W, C_in], C_out, kernel, strides, padding): VGG/small 3x3, ResNet's strided
# 3x3 / 1x1 / 7x7 stem, DenseNet's 1x1 and 5x5 coverage; odd sizes leave a stride remainder.
CASES = [
    ((2, 9, 13, 1), 4, (3, 3), (1, 1), ((1, 1), (1, 1))),
    ((2, 8, 12, 16), 8, (3, 3), (1, 1), ((1, 1), (1, 1))),
    ((2, 9, 11, 6), 5, (3, 3), (2, 1), ((1, 1), (1, 1))),
    ((2, 9, 11, 6), 5, (3, 3), (2, 2), ((1, 1), (1, 1))),
    ((2, 8, 10, 12), 7, (1, 1), (2, 1), ((0, 0), (0, 0))),
    ((2, 15, 17, 1), 6, (7, 7), (2, 2), ((3, 3), (3, 3))),
    ((3, 7, 9, 4), 3, (5, 5), (1, 1), "SAME"),
    ((2, 7, 9, 10), 3, (3, 3), (1, 2), "VALID"),
    ((2, 6, 8, 3), 4, (2, 3), (1, 1), ((0, 1), (2, 0))),
]


def _gradients(gradient, x, kernel, strides, padding, dtype):
  def loss(x, kernel):
    y = conv.conv2d(x.astype(dtype), kernel.astype(dtype), strides, padding, gradient)
    weights = jnp.cos(jnp.arange(y.size, dtype=jnp.float32)).reshape(y.shape)
    return jnp.sum(y.astype(jnp.float32) * weights)
  return jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))(x, kernel)


@pytest.mark.parametrize("shape,features,kernel_size,strides,padding", CASES)
def test_matmul_gradient_equals_xla(shape, features, kernel_size, strides, padding):
  rng = np.random.default_rng(sum(shape) + features)
  x = jnp.asarray(rng.standard_normal(shape), jnp.float32)
  kernel = jnp.asarray(rng.standard_normal((*kernel_size, shape[-1], features)), jnp.float32)
  value, (dx, dkernel) = _gradients("matmul", x, kernel, strides, padding, jnp.float32)
  ref_value, (ref_dx, ref_dkernel) = _gradients("xla", x, kernel, strides, padding, jnp.float32)
  assert dx.shape == x.shape and dkernel.shape == kernel.shape
  np.testing.assert_allclose(value, ref_value, rtol=1e-6)
  scale = lambda a: float(jnp.max(jnp.abs(a)))  # noqa: E731
  np.testing.assert_allclose(dx, ref_dx, atol=2e-5 * scale(ref_dx), rtol=0)
  np.testing.assert_allclose(dkernel, ref_dkernel, atol=2e-5 * scale(ref_dkernel), rtol=0)
  assert scale(ref_dx) > 0 and scale(ref_dkernel) > 0


def test_matmul_gradient_bfloat16():
  rng = np.random.default_rng(3)
  x = jnp.asarray(rng.standard_normal((2, 8, 12, 16)), jnp.float32)
  kernel = jnp.asarray(rng.standard_normal((3, 3, 16, 8)), jnp.float32)
  padding = ((1, 1), (1, 1))
  _, (dx, dkernel) = _gradients("matmul", x, kernel, (2, 1), padding, jnp.bfloat16)
  _, (ref_dx, ref_dkernel) = _gradients("xla", x, kernel, (2, 1), padding, jnp.float32)
  for ours, ref in ((dx, ref_dx), (dkernel, ref_dkernel)):
    error = float(jnp.max(jnp.abs(ours.astype(jnp.float32) - ref)) / jnp.max(jnp.abs(ref)))
    assert error < 3e-2


def test_conv_module_matches_flax_conv():
  """Same parameter tree and output as ``flax.linen.Conv`` (checkpoints, torchvision import)."""
  import flax.linen as nn
  x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 9, 11, 3)), jnp.float32)
  ours = conv.Conv(5, (3, 3), strides=(2, 1), padding=((1, 1), (1, 1)), gradient="matmul")
  flax_conv = nn.Conv(5, (3, 3), strides=(2, 1), padding=((1, 1), (1, 1)))
  variables = flax_conv.init(jax.random.PRNGKey(0), x)
  assert (jax.tree.map(jnp.shape, ours.init(jax.random.PRNGKey(0), x))
          == jax.tree.map(jnp.shape, variables))
  np.testing.assert_allclose(ours.apply(variables, x), flax_conv.apply(variables, x),
                             rtol=1e-5, atol=1e-5)


def test_unknown_gradient_is_a_clear_error():
  with pytest.raises(ValueError, match="conv_gradient='fast'.*auto"):
    conv.resolve_gradient("fast")
  assert conv.resolve_gradient("auto") == ("matmul" if jax.default_backend() == "cpu" else "xla")


def _model_gradients(build, variables, inputs):
  def loss(params):
    outputs, _ = build.apply({**variables, "params": params}, *inputs, train=True,
                             rngs={"dropout": jax.random.PRNGKey(1)}, mutable=["batch_stats"])
    first = outputs[0] if isinstance(outputs, tuple) else outputs
    return jnp.sum(jnp.sin(first))
  return jax.jit(jax.grad(loss))(variables["params"])


@pytest.mark.parametrize("backbone", ["small", "resnet18"])
def test_crnn_gradient_same_with_switch_on_and_off(backbone):
  config = ml_collections.ConfigDict({
      "name": "crnn", "backbone": backbone, "batch_norm": True, "width_downsample": 4,
      "height_collapse": "mean", "spatial_dropout": 0.0, "lstm_hidden": 16, "lstm_layers": 1,
      "lstm_dropout": 0.0, "classifier_dropout": 0.0, "small_channels": (4, 8, 8, 8),
      "freeze_stages": 0, "conv_gradient": "xla"})
  images = jnp.asarray(np.random.default_rng(0).uniform(size=(2, 16, 48, 1)), jnp.float32)
  widths = jnp.array([48, 30])
  reference = create_crnn(config, 7)
  variables = jax.jit(reference.init)(jax.random.PRNGKey(0), images, widths)
  expected = _model_gradients(reference, variables, (images, widths))
  config.conv_gradient = "matmul"
  got = _model_gradients(create_crnn(config, 7), variables, (images, widths))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-4,
                                                       atol=2e-5 * float(jnp.max(jnp.abs(b)))),
               got, expected)


def test_densenet_gradient_same_with_switch_on_and_off():
  images = jnp.asarray(np.random.default_rng(1).uniform(size=(2, 32, 40, 1)), jnp.float32)
  mask = jnp.ones((2, 32, 40), bool).at[1, :, 24:].set(False)
  make = lambda gradient: densenet.DenseNet(growth_rate=4, num_layers=2, num_blocks=2,  # noqa: E731
                                            dropout_rate=0.0, conv_gradient=gradient)
  variables = jax.jit(make("xla").init)(jax.random.PRNGKey(0), images, mask)
  expected = _model_gradients(make("xla"), variables, (images, mask))
  got = _model_gradients(make("matmul"), variables, (images, mask))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-4,
                                                       atol=2e-5 * float(jnp.max(jnp.abs(b)))),
               got, expected)
