"""The Flax CRNN (hme_jax.models): shapes, padding invariance, dtypes, frozen stages."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import default
from hme_jax import ctc
from hme_jax.models import create_crnn, crnn, trainable_mask


def model_config(backbone="small", **overrides):
  config = default.get_config().model
  config.backbone = backbone
  config.width_downsample = 4  # the shapes below are written for 4 columns per frame
  config.small_channels = (8, 16, 16)
  config.lstm_hidden = 8
  config.update(overrides)
  return config


def no_dropout(**overrides):
  return dict(spatial_dropout=0.0, lstm_dropout=0.0, classifier_dropout=0.0, **overrides)


def random_images(shape, seed=0):
  return jnp.asarray(np.random.default_rng(seed).random(shape, dtype=np.float32))


def init(model, *inputs, seed=0):
  """Random variables of the model's shapes, drawn with NumPy.

  Stands in for ``model.init``, whose compiled initialisers (orthogonal LSTM
  kernels, VGG-sized convs) would cost more time than the tests themselves.
  Kernels ~ N(0, 1/fan_in), small random biases, BatchNorm scale ~ 1 and
  non-trivial running statistics (so eval-mode BatchNorm is not the identity).
  """
  rng = np.random.default_rng(seed)
  shapes = jax.eval_shape(model.init, jax.random.key(0), *inputs)

  def draw(path, leaf):
    name = path[-1].key
    if name == "kernel":
      value = rng.normal(size=leaf.shape) / np.sqrt(np.prod(leaf.shape[:-1]))
    elif name in ("scale", "var"):
      value = rng.uniform(0.5, 2.0, leaf.shape)
    else:  # bias, mean
      value = rng.uniform(-0.5, 0.5, leaf.shape)
    return jnp.asarray(value, leaf.dtype)

  return jax.tree_util.tree_map_with_path(draw, shapes)


# --- shapes ---------------------------------------------------------------------

@pytest.mark.parametrize("backbone, height, width, width_downsample, height_collapse", [
    ("small", 32, 64, 4, "mean"),
    ("small", 16, 48, 8, "flatten"),
    ("vgg16", 32, 64, 4, "mean"),
    ("vgg16", 48, 64, 8, "max"),
    ("vgg16", 64, 32, 16, "flatten"),
    ("resnet18", 32, 64, 4, "mean"),
    ("resnet18", 48, 32, 2, "flatten"),
])
def test_output_shapes(backbone, height, width, width_downsample, height_collapse):
  config = model_config(backbone, width_downsample=width_downsample,
                        height_collapse=height_collapse)
  model = create_crnn(config, num_classes=11)
  images = jnp.zeros((3, height, width, 1))
  widths = jnp.array([width, width // 2, 5])

  def init_and_apply(key):
    variables = model.init(key, images, widths)
    return variables, model.apply(variables, images, widths, train=True,
                                  rngs={"dropout": key}, mutable=["batch_stats"])

  variables, ((logits, paddings), _) = jax.eval_shape(init_and_apply, jax.random.key(0))
  num_frames = width // width_downsample
  assert logits.shape == (3, num_frames, 11) and logits.dtype == jnp.float32
  assert paddings.shape == (3, num_frames) and paddings.dtype == jnp.float32
  channels = {"small": 16, "vgg16": 512, "resnet18": 256}[backbone]
  height_out = height // (8 if backbone == "small" else 16)
  lstm_input = channels * height_out if height_collapse == "flatten" else channels
  kernel = variables["params"]["sequence"]["lstm0"]["input_kernel"]
  assert kernel.shape == (lstm_input, 2, 4 * 8)


def test_frame_paddings_follow_image_widths():
  config = model_config(width_downsample=4)
  model = create_crnn(config, num_classes=7)
  images = random_images((4, 32, 64, 1))
  widths = jnp.array([64, 37, 4, 1])
  variables = init(model, images, widths)
  logits, paddings = jax.jit(model.apply)(variables, images, widths)
  expected_lengths = ctc.frame_lengths(np.array([64, 37, 4, 1]), 4)
  np.testing.assert_array_equal(expected_lengths, [16, 10, 1, 1])
  np.testing.assert_array_equal(paddings, np.arange(16)[None] >= expected_lengths[:, None])
  assert np.isfinite(np.asarray(logits)).all()


def test_width_not_multiple_of_downsample_is_rejected():
  model = create_crnn(model_config(width_downsample=4), num_classes=5)
  with pytest.raises(ValueError, match="multiple of width_downsample"):
    model.init(jax.random.key(0), jnp.zeros((1, 32, 30, 1)), jnp.array([30]))


@pytest.mark.parametrize("overrides, message", [
    (dict(width_downsample=3), "width_downsample=3"),
    (dict(backbone="small", width_downsample=16), "width_downsample=16"),
    (dict(backbone="resnet18", freeze_stages=5), "freeze_stages=5"),
    (dict(backbone="small", freeze_stages=1), "freeze_stages=1"),
    (dict(backbone="vgg19"), "vgg19"),
    (dict(height_collapse="sum"), "height_collapse"),
])
def test_bad_config_is_a_clear_error(overrides, message):
  with pytest.raises(ValueError, match=message):
    create_crnn(model_config(**overrides), num_classes=5)


# --- padding ----------------------------------------------------------------------

def test_sequence_model_ignores_padded_frames():
  """Valid-frame logits depend only on valid frames, in both LSTM directions."""
  model = crnn.SequenceModel(num_classes=5, lstm_hidden=8, lstm_layers=2)
  rng = np.random.default_rng(0)
  features = rng.normal(size=(2, 10, 6)).astype(np.float32)
  lengths = jnp.array([10, 6])
  variables = init(model, features, lengths)
  apply = jax.jit(model.apply)
  other = features.copy()
  other[1, 6:] = rng.normal(size=(4, 6)) * 100  # different padding
  logits = np.asarray(apply(variables, features, lengths))
  logits_other = np.asarray(apply(variables, other, lengths))
  alone = np.asarray(apply(variables, features[1:, :6], jnp.array([6])))
  np.testing.assert_allclose(logits_other[1, :6], logits[1, :6], atol=1e-6)
  np.testing.assert_allclose(alone[0], logits[1, :6], atol=1e-6)
  np.testing.assert_array_equal(logits_other[0], logits[0])
  # Without lengths the backward direction reads the padding: the check is not vacuous.
  unmasked = np.asarray(apply(variables, other, jnp.array([10, 10])))
  assert np.abs(unmasked[1, :6] - logits[1, :6]).max() > 1e-3


@pytest.mark.parametrize("backbone, train", [("small", True), ("resnet18", False)])
def test_crnn_logits_do_not_depend_on_padding(backbone, train):
  """Same logits as the image cropped to the next multiple of width_downsample.

  Content width 30 (frames 0..7, the last one partly padding): the 32-column crop
  and a 64-column bucket whose padding holds other noise give the same logits at
  the 8 content frames. Holds in eval mode and, with dropout off, in train mode
  (BatchNorm statistics exclude the padding). (Train mode is checked on one
  backbone only, to keep the test fast; the masking is shared.)
  """
  config = model_config(backbone, **no_dropout())
  model = create_crnn(config, num_classes=6)
  content = random_images((1, 32, 32, 1), seed=1)  # columns 30, 31 are padding
  noise = random_images((1, 32, 34, 1), seed=2)
  padded = jnp.concatenate([content[:, :, :30], noise], axis=2)
  widths = jnp.array([30])
  variables = init(model, content, widths)
  apply = jax.jit(model.apply)

  alone, _ = apply(variables, content, widths)
  with_padding, paddings = apply(variables, padded, widths)
  np.testing.assert_array_equal(paddings[0], np.arange(16) >= 8)
  scale = np.abs(np.asarray(alone)).max()
  np.testing.assert_allclose(with_padding[:, :8], alone, atol=1e-5 * max(scale, 1.0))
  if not train:
    return
  train_apply = jax.jit(lambda v, x, w: model.apply(v, x, w, train=True,
                                                    mutable=["batch_stats"]))
  (alone, _), stats_alone = train_apply(variables, content, widths)
  (with_padding, _), stats_padded = train_apply(variables, padded, widths)
  np.testing.assert_allclose(with_padding[:, :8], alone, atol=1e-4 * max(scale, 1.0))
  jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5),
                         stats_padded, stats_alone)


# --- dtypes -----------------------------------------------------------------------

def test_bfloat16_compute_keeps_float32_params_and_logits():
  config = model_config(**no_dropout())
  images = random_images((2, 32, 64, 1))
  widths = jnp.array([64, 40])
  model_f32 = create_crnn(config, num_classes=9)
  model_bf16 = create_crnn(config, num_classes=9, dtype=jnp.bfloat16)
  variables = init(model_bf16, images, widths)
  for leaf in jax.tree_util.tree_leaves(variables):
    assert leaf.dtype == jnp.float32
  train_apply = lambda model: lambda v, x, w: model.apply(v, x, w, train=True,
                                                         mutable=["batch_stats"])
  assert "bf16" in str(jax.make_jaxpr(train_apply(model_bf16))(variables, images, widths))
  (logits, paddings), updates = jax.jit(train_apply(model_bf16))(variables, images, widths)
  assert logits.dtype == paddings.dtype == jnp.float32
  assert np.isfinite(np.asarray(logits)).all()
  for leaf in jax.tree_util.tree_leaves(updates):
    assert leaf.dtype == jnp.float32
  # bf16 compute approximates the float32 model with the same weights.
  (reference, _), _ = jax.jit(train_apply(model_f32))(variables, images, widths)
  scale = np.abs(np.asarray(reference)).max()
  assert scale > 0.1
  assert np.abs(np.asarray(logits) - np.asarray(reference)).max() < 0.05 * scale


# --- frozen stages ----------------------------------------------------------------

def abstract_params(config):
  model = create_crnn(config, num_classes=5)
  images, widths = jnp.zeros((1, 32, 32, 1)), jnp.array([32])
  return jax.eval_shape(model.init, jax.random.key(0), images, widths)["params"]


@pytest.mark.parametrize("backbone, freeze_stages, frozen", [
    ("resnet18", 0, set()),
    ("resnet18", 1, {"conv1", "bn1"}),
    ("resnet18", 2, {"conv1", "bn1", "layer1_0", "layer1_1"}),
    ("resnet18", 4, {"conv1", "bn1", "layer1_0", "layer1_1", "layer2_0", "layer2_1",
                     "layer3_0", "layer3_1"}),
    ("vgg16", 1, {"conv1_1", "conv1_2", "bn1_1", "bn1_2"}),
    ("vgg16", 2, {"conv1_1", "conv1_2", "bn1_1", "bn1_2", "conv2_1", "conv2_2", "bn2_1",
                  "bn2_2"}),
])
def test_trainable_mask_freezes_early_stages(backbone, freeze_stages, frozen):
  config = model_config(backbone, freeze_stages=freeze_stages)
  mask = trainable_mask(abstract_params(config), config)
  for name, subtree in mask["backbone"].items():
    assert set(jax.tree_util.tree_leaves(subtree)) == {name not in frozen}, name
  for name in ("feature_norm", "sequence"):
    assert all(jax.tree_util.tree_leaves(mask[name]))


def test_frozen_stages_get_no_gradient_and_keep_their_statistics():
  config = model_config("resnet18", freeze_stages=2, **no_dropout())
  model = create_crnn(config, num_classes=5)
  images = random_images((2, 32, 32, 1))
  widths = jnp.array([32, 20])
  variables = init(model, images, widths)

  @jax.jit
  def gradients_and_stats(params):
    def loss(params):
      (logits, _), updates = model.apply({**variables, "params": params}, images, widths,
                                         train=True, mutable=["batch_stats"])
      return jnp.sum(logits**2), updates
    return jax.grad(loss, has_aux=True)(params)

  grads, updates = gradients_and_stats(variables["params"])
  mask = trainable_mask(variables["params"], config)
  for trainable, grad in zip(jax.tree_util.tree_leaves(mask), jax.tree_util.tree_leaves(grads)):
    assert (np.abs(np.asarray(grad)).max() > 0) == trainable
  old, new = variables["batch_stats"]["backbone"], updates["batch_stats"]["backbone"]
  for name in old:
    changed = not all(np.array_equal(a, b) for a, b in zip(jax.tree_util.tree_leaves(old[name]),
                                                            jax.tree_util.tree_leaves(new[name])))
    assert changed == (name.startswith("layer2") or name.startswith("layer3")), name


def primitives_with_inputs(jaxpr) -> list[tuple[str, list[tuple[int, ...]]]]:
  """``(primitive name, input shapes)`` of every equation, inner jaxprs (scan bodies) included."""
  found = []
  for eqn in jaxpr.eqns:
    found.append((eqn.primitive.name, [tuple(v.aval.shape) for v in eqn.invars]))
    for param in eqn.params.values():
      inner = getattr(param, "jaxpr", param)
      if hasattr(inner, "eqns"):
        found += primitives_with_inputs(inner)
  return found


def test_the_lstm_initialiser_is_orthogonal_one_qr_at_a_time():
  # A batched QR runs its matrices as tasks on XLA:CPU's thread pool and waits for them: two
  # of them at once (two layers' initialisers) deadlocked a 2-thread pool.
  directions, hidden = 2, 16
  shape = (directions, hidden, 4 * hidden)
  key = jax.random.PRNGKey(0)
  kernel = np.asarray(jax.jit(crnn._recurrent_init, static_argnums=1)(key, shape))
  for direction in range(directions):
    for gate in range(4):
      block = kernel[direction, :, gate * hidden:(gate + 1) * hidden]
      np.testing.assert_allclose(block @ block.T, np.eye(hidden), atol=1e-5)
  qrs = [shapes for name, shapes in primitives_with_inputs(
      jax.make_jaxpr(crnn._recurrent_init, static_argnums=1)(key, shape).jaxpr)
         if "qr" in name or "householder" in name]
  assert qrs and all(len(s) == 2 for shapes in qrs for s in shapes), qrs
