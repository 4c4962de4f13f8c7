"""Tests of the attention encoder-decoder (hme_jax/models/attention.py, densenet.py)."""

import functools
import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from configs import default

from hme_jax.models import attention, densenet

NUM_CLASSES = 9


def tiny_config(**overrides) -> ml_collections.ConfigDict:
  config = dict(name="attention", d_model=32, growth_rate=4, dense_layers=1, dense_blocks=3,
                compression=0.5, encoder_dropout=0.0, num_heads=4, decoder_layers=3, ffn_dim=32,
                decoder_dropout=0.0, cross_coverage=True, self_coverage=True,
                coverage_channels=4, coverage_kernel=5)
  config.update(overrides)
  model_config = default.get_config().model  # every field declared, as the models read them
  model_config.update(width_downsample=2 ** (config["dense_blocks"] + 1), **config)
  return model_config


def jitted(model, method=None, **kwargs):
  """``model.apply`` compiled as a whole (op-by-op it is several times slower)."""
  return jax.jit(functools.partial(model.apply, method=method, **kwargs))


@pytest.fixture(scope="module")
def model():
  return attention.create_attention_model(tiny_config(), NUM_CLASSES)


@pytest.fixture(scope="module")
def variables(model):
  images = jnp.zeros((2, 32, 64, 1))
  tokens = jnp.ones((2, 2, 5), jnp.int32)
  init = jax.jit(lambda rng: model.init(rng, images, jnp.array([64, 40]), tokens))
  variables = init(jax.random.PRNGKey(0))
  # Non-trivial BatchNorm statistics, so that inference mode is not the identity.
  rng = np.random.default_rng(0)
  return {"params": variables["params"],
          "batch_stats": jax.tree.map(
              lambda x: jnp.asarray(rng.uniform(0.5, 1.5, x.shape), x.dtype),
              variables["batch_stats"])}


def _random_images(rng, batch, height, width):
  return rng.uniform(0.0, 1.0, (batch, height, width, 1)).astype(np.float32)


def test_published_densenet_width():
  # DWAP/BTTR/CoMER: growth 24, 16 layers, 3 blocks, compression 0.5 -> 684 channels.
  assert densenet.output_channels(24, 16, 3, 0.5) == 684
  assert densenet.downsample_factor(3) == 16


def test_encoder_shapes_and_mask(model, variables):
  images = _random_images(np.random.default_rng(1), 2, 40, 100)
  widths = jnp.array([100, 37])
  memory, mask = jitted(model, "encode")(variables, images, widths)
  assert memory.shape == (2, math.ceil(40 / 16), math.ceil(100 / 16), 32)
  expected_columns = [math.ceil(100 / 16), math.ceil(37 / 16)]   # 7, 3
  for row, columns in enumerate(expected_columns):
    np.testing.assert_array_equal(mask[row], np.broadcast_to(np.arange(7) < columns, (3, 7)))

  features, _ = jax.jit(densenet.DenseNet(growth_rate=4, num_layers=1).apply)(
      {"params": variables["params"]["encoder"]["densenet"],
       "batch_stats": variables["batch_stats"]["encoder"]["densenet"]},
      jnp.asarray(images), attention.pixel_mask(images.shape, widths))
  assert features.shape[-1] == densenet.output_channels(4, 1, 3, 0.5)


def _unrolled_from_scanned(scanned: dict, growth_rate: int, num_layers: int, num_blocks: int,
                           compression: float) -> dict:
  """The unrolled DenseNet's variables holding the same function as scanned ones."""
  unrolled = {key: value for key, value in scanned.items() if not key.startswith("dense_block_")}
  channels = 2 * growth_rate
  for block in range(num_blocks):
    for layer in range(num_layers):
      variables = jax.tree.map(lambda leaf, i=layer: leaf[i], scanned[f"dense_block_{block}"]["layer"])
      if "Conv_0" in variables["bottleneck"]:  # the 1x1 kernel sees only the channels so far
        kernel = variables["bottleneck"]["Conv_0"]["kernel"]
        variables["bottleneck"]["Conv_0"]["kernel"] = kernel[:, :, :channels + layer * growth_rate]
      unrolled[f"dense_block_{block}_layer_{layer}"] = variables
    channels += num_layers * growth_rate
    if block < num_blocks - 1:
      channels = int(math.floor(channels * compression))
  return unrolled


@pytest.mark.parametrize("train", [False, True])
def test_scanned_dense_layers_compute_the_published_densenet(train):
  """scan_layers (one compiled layer per block) is the same function as the unrolled network."""
  kwargs = dict(growth_rate=4, num_layers=3, num_blocks=2, compression=0.5, dropout_rate=0.0)
  rng = np.random.default_rng(5)
  images = jnp.asarray(_random_images(rng, 2, 37, 70))
  mask = attention.pixel_mask(images.shape, jnp.array([70, 41]), jnp.array([37, 30]))
  scanned_model = densenet.DenseNet(scan_layers=True, **kwargs)
  variables = jax.jit(scanned_model.init)(jax.random.PRNGKey(0), images, mask)
  # Non-trivial BatchNorm statistics and scales, so that every parameter matters.
  variables = jax.tree.map(lambda leaf: leaf * jnp.asarray(rng.uniform(0.5, 1.5, leaf.shape),
                                                           leaf.dtype), variables)
  unrolled = {collection: _unrolled_from_scanned(tree, **{k: kwargs[k] for k in (
      "growth_rate", "num_layers", "num_blocks", "compression")})
              for collection, tree in variables.items()}
  unrolled_model = densenet.DenseNet(scan_layers=False, **kwargs)
  assert jax.tree.structure(unrolled) == jax.tree.structure(
      jax.eval_shape(unrolled_model.init, jax.random.PRNGKey(0), images, mask))

  @functools.partial(jax.jit, static_argnums=0)
  def run(model, model_variables):
    if train:
      (features, _), updates = model.apply(model_variables, images, mask, train=True,
                                           mutable=["batch_stats"])
      return features, updates["batch_stats"]
    return model.apply(model_variables, images, mask)[0], None

  scanned_features, scanned_stats = run(scanned_model, variables)
  unrolled_features, unrolled_stats = run(unrolled_model, unrolled)
  np.testing.assert_allclose(scanned_features, unrolled_features, atol=1e-5, rtol=1e-5)
  assert float(jnp.abs(unrolled_features).max()) > 0.1
  if train:  # the same BatchNorm statistics are learned
    expected = _unrolled_from_scanned(scanned_stats, **{k: kwargs[k] for k in (
        "growth_rate", "num_layers", "num_blocks", "compression")})
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5),
                 expected, unrolled_stats)


@pytest.mark.parametrize("scan", [False, True])
def test_remat_dense_layers_give_the_same_loss_and_gradients(scan):
  """remat_layers (recompute each dense layer in the backward pass) changes no number.

  With dropout on: the recomputation must draw the same masks.
  """
  kwargs = dict(growth_rate=4, num_layers=2, num_blocks=1, dropout_rate=0.2, scan_layers=scan)
  rng = np.random.default_rng(6)
  images = jnp.asarray(_random_images(rng, 2, 24, 40))
  mask = attention.pixel_mask(images.shape, jnp.array([40, 25]))
  plain_model = densenet.DenseNet(**kwargs)
  variables = jax.jit(plain_model.init)(jax.random.PRNGKey(0), images, mask)

  def loss_and_grads(model):
    def loss(params):
      (features, _), updates = model.apply(
          {"params": params, "batch_stats": variables["batch_stats"]}, images, mask, train=True,
          rngs={"dropout": jax.random.PRNGKey(3)}, mutable=["batch_stats"])
      # A fixed random projection, so that every feature gets its own gradient.
      weights = jnp.asarray(np.random.default_rng(7).normal(size=features.shape), features.dtype)
      return jnp.sum(features * weights), updates["batch_stats"]
    return jax.jit(jax.value_and_grad(loss, has_aux=True))(variables["params"])

  (plain_loss, plain_stats), plain_grads = loss_and_grads(plain_model)
  (remat_loss, remat_stats), remat_grads = loss_and_grads(
      densenet.DenseNet(remat_layers=True, **kwargs))
  np.testing.assert_allclose(remat_loss, plain_loss, rtol=1e-6)
  assert max(float(jnp.abs(leaf).max()) for leaf in jax.tree.leaves(plain_grads)) > 0.1
  # Gradients up to ~20: the recomputed forward pass may round differently.
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-4, rtol=1e-4),
               remat_grads, plain_grads)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6, rtol=1e-5),
               remat_stats, plain_stats)

  # config.model.remat_dense_layers reaches the dense layers, and only with it is there a remat.
  for remat in (False, True):
    model = attention.create_attention_model(
        tiny_config(dense_blocks=1, decoder_layers=1, scan_dense_layers=scan,
                    remat_dense_layers=remat), NUM_CLASSES)
    images, widths = jnp.zeros((1, 16, 16, 1)), jnp.array([16])
    tokens = jnp.ones((1, 1, 2), jnp.int32)
    shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), images, widths, tokens)
    jaxpr = jax.make_jaxpr(lambda v: model.apply(v, images, widths, tokens, train=True,
                                                 mutable=["batch_stats"]))(shapes)
    assert ("remat" in str(jaxpr)) == remat


@pytest.mark.parametrize("train", [False, True])
def test_encoder_ignores_padding(model, variables, train):
  """Content positions see the same features whatever the padding width and content."""
  rng = np.random.default_rng(2)
  content = _random_images(rng, 2, 32, 70)
  widths = jnp.array([70, 45])
  content[1, :, 45:] = 0.0
  narrow = np.zeros((2, 32, 80, 1), np.float32)
  narrow[:, :, :70] = content
  wide = rng.uniform(0.0, 1.0, (2, 32, 160, 1)).astype(np.float32)   # garbage padding
  wide[:, :, :70] = content
  wide[1, :, 45:70] = rng.uniform(0.0, 1.0, (32, 25, 1))

  def encode(images):
    if train:
      (memory, mask), updates = jitted(model, "encode", train=True, mutable=["batch_stats"])(
          variables, images, widths)
      return memory, mask, updates["batch_stats"]
    memory, mask = jitted(model, "encode")(variables, images, widths)
    return memory, mask, None

  memory_narrow, mask_narrow, stats_narrow = encode(narrow)
  memory_wide, mask_wide, stats_wide = encode(wide)
  columns = mask_narrow.shape[2]
  np.testing.assert_array_equal(mask_narrow, mask_wide[:, :, :columns])
  content_mask = np.asarray(mask_narrow)
  np.testing.assert_allclose(np.asarray(memory_narrow)[content_mask],
                             np.asarray(memory_wide[:, :, :columns])[content_mask],
                             atol=2e-5, rtol=1e-5)
  if train:  # BatchNorm statistics come from content only
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5),
                 stats_narrow, stats_wide)


def test_encoder_ignores_bottom_padding(model, variables):
  rng = np.random.default_rng(3)
  content = _random_images(rng, 1, 32, 64)
  tall = rng.uniform(0.0, 1.0, (1, 64, 64, 1)).astype(np.float32)
  tall[:, :32] = content
  widths, heights = jnp.array([64]), jnp.array([32])
  encode = jitted(model, "encode")
  memory, mask = encode(variables, content, widths, heights)
  memory_tall, mask_tall = encode(variables, tall, widths, heights)
  np.testing.assert_array_equal(mask_tall[:, :2], mask)
  assert not np.any(mask_tall[:, 2:])
  np.testing.assert_allclose(memory_tall[:, :2], memory, atol=2e-5, rtol=1e-5)


def _memory(rng, batch=2, height=2, width=5, dim=32):
  memory = jnp.asarray(rng.normal(size=(batch, height, width, dim)), jnp.float32)
  mask = np.ones((batch, height, width), bool)
  mask[1, :, 3:] = False
  return memory, jnp.asarray(mask)


def test_decoder_ignores_padded_memory(model, variables):
  rng = np.random.default_rng(4)
  memory, mask = _memory(rng)
  tokens = jnp.asarray(rng.integers(1, NUM_CLASSES, (2, 3, 6)), jnp.int32)
  decode = jitted(model, "decode")
  logits = decode(variables, tokens, memory, mask)
  changed = jnp.where(mask[..., None], memory, 100.0 * memory + 7.0)
  np.testing.assert_allclose(decode(variables, tokens, changed, mask), logits, atol=1e-5,
                             rtol=1e-5)
  # ... while content memory matters.
  assert not np.allclose(decode(variables, tokens, memory * 2.0, mask), logits, atol=1e-3)


def test_decoder_is_causal(model, variables):
  rng = np.random.default_rng(5)
  memory, mask = _memory(rng)
  tokens = rng.integers(1, NUM_CLASSES, (2, 2, 7)).astype(np.int32)
  decode = jitted(model, "decode")
  logits = decode(variables, jnp.asarray(tokens), memory, mask)
  later = tokens.copy()
  later[:, :, 4:] = rng.integers(1, NUM_CLASSES, later[:, :, 4:].shape)
  logits_later = decode(variables, jnp.asarray(later), memory, mask)
  np.testing.assert_allclose(logits_later[:, :, :4], logits[:, :, :4], atol=1e-5, rtol=1e-5)
  assert not np.allclose(logits_later[:, :, 4:], logits[:, :, 4:], atol=1e-3)


def test_step_decoding_matches_parallel_decoding(model, variables):
  """One-token steps with cached keys/values and coverage sums == the teacher-forced pass."""
  rng = np.random.default_rng(6)
  memory, mask = _memory(rng)
  tokens = jnp.asarray(rng.integers(1, NUM_CLASSES, (2, 3, 6)), jnp.int32)
  expected = jitted(model, "decode")(variables, tokens, memory, mask)

  @jax.jit
  def stepwise(variables):
    memory_kv, state = model.apply(variables, memory, mask, 3, 8, method="init_decode")

    def step(state, position):
      logits, state = model.apply(variables, tokens[:, :, position], position, memory_kv, mask,
                                  state, method="decode_step")
      return state, logits

    _, logits = jax.lax.scan(step, state, jnp.arange(tokens.shape[-1]))
    return jnp.moveaxis(logits, 0, 2)

  np.testing.assert_allclose(stepwise(variables), expected, atol=1e-4, rtol=1e-4)


def test_mixed_precision(variables):
  model16 = attention.create_attention_model(tiny_config(), NUM_CLASSES, dtype=jnp.bfloat16)
  model32 = attention.create_attention_model(tiny_config(), NUM_CLASSES)
  rng = np.random.default_rng(7)
  images = _random_images(rng, 2, 32, 64)
  widths = jnp.array([64, 40])
  tokens = jnp.asarray(rng.integers(1, NUM_CLASSES, (2, 2, 5)), jnp.int32)
  memory, _ = jax.eval_shape(jitted(model16, "encode"), variables, images, widths)
  assert memory.dtype == jnp.bfloat16
  logits16 = jitted(model16)(variables, images, widths, tokens)
  logits32 = jitted(model32)(variables, images, widths, tokens)
  assert logits16.dtype == jnp.float32
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(variables))
  scale = float(jnp.std(logits32))
  assert float(jnp.max(jnp.abs(logits16 - logits32))) < 0.1 * scale + 0.05


def test_dropout():
  x = jnp.ones((4, 8, 16, 8))
  dropout = densenet.Dropout(0.25)
  np.testing.assert_array_equal(dropout.apply({}, x, deterministic=True), x)
  apply = jax.jit(functools.partial(dropout.apply, deterministic=False))
  y = np.asarray(apply({}, x, rngs={"dropout": jax.random.PRNGKey(0)}))
  np.testing.assert_allclose(np.unique(y), [0.0, 1.0 / 0.75], rtol=1e-6)
  assert abs(np.mean(y == 0.0) - 0.25) < 0.03
  z = np.asarray(apply({}, x, rngs={"dropout": jax.random.PRNGKey(1)}))
  assert not np.array_equal(y, z)


def test_masked_average_pool_averages_content_only():
  rng = np.random.default_rng(8)
  x = rng.normal(size=(1, 3, 5, 2)).astype(np.float32)
  mask = np.zeros((1, 3, 5), bool)
  mask[:, :, :3] = True
  x = np.where(mask[..., None], x, 0.0)
  pooled = np.asarray(densenet.masked_average_pool(jnp.asarray(x), jnp.asarray(mask)))
  assert pooled.shape == (1, 2, 3, 2)
  for row in range(2):
    for column in range(3):
      window = (slice(2 * row, 2 * row + 2), slice(2 * column, 2 * column + 2))
      content = mask[0][window]
      expected = x[0][window][content].mean(axis=0) if content.any() else np.zeros(2)
      np.testing.assert_allclose(pooled[0, row, column], expected, rtol=1e-5, atol=1e-6)


def test_position_encodings():
  dim = 8
  encoding = np.asarray(attention.sinusoid_1d(jnp.arange(5), dim))
  for position in range(5):
    for i in range(dim // 2):
      angle = position / 10000 ** (2 * i / dim)
      np.testing.assert_allclose(encoding[position, 2 * i], math.sin(angle), atol=1e-5)
      np.testing.assert_allclose(encoding[position, 2 * i + 1], math.cos(angle), atol=1e-5)
  # The 2-D encoding depends on the content extent only, not on the padding.
  mask = np.zeros((1, 2, 6), bool)
  mask[:, :, :4] = True
  wider = np.zeros((1, 2, 9), bool)
  wider[:, :, :4] = True
  np.testing.assert_allclose(attention.sinusoid_2d(jnp.asarray(wider), 16)[:, :, :4],
                             attention.sinusoid_2d(jnp.asarray(mask), 16)[:, :, :4], atol=1e-6)


def test_bad_input_shape_is_explained(model, variables):
  with pytest.raises(ValueError, match="greyscale"):
    model.apply(variables, jnp.zeros((1, 32, 64, 3)), jnp.array([64]), method="encode")
