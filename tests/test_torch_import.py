"""ImageNet weight import (hme_jax.models.torch_import) and the torch twin of the CRNN.

torchvision cannot be installed here, so benchmarks/torch_crnn.py rebuilds its
backbones with plain torch.nn under torchvision's state-dict keys; these tests
check those keys against torchvision's known layout, load random "checkpoints"
into the Flax model and compare the forward passes.
"""

import importlib.util
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import default
from hme_jax.models import backbones, crnn, torch_import
from hme_jax.models import create_crnn

REPO = pathlib.Path(__file__).resolve().parents[1]
HEIGHT, WIDTH = 32, 64


def model_config(backbone, **overrides):
  config = default.get_config().model
  config.backbone = backbone
  config.width_downsample = 4  # the shapes below are written for 4 columns per frame
  config.lstm_hidden = 8
  config.lstm_layers = 1
  config.update(overrides)
  return config


def load_torch_crnn():
  pytest.importorskip("torch")
  spec = importlib.util.spec_from_file_location("torch_crnn", REPO / "benchmarks" / "torch_crnn.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def randomize_batch_norms(module, seed=0):
  """Non-trivial BatchNorm statistics, so that a mix-up of scale/mean/var shows."""
  import torch
  generator = torch.Generator().manual_seed(seed)
  for layer in module.modules():
    if isinstance(layer, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
      shape = layer.running_mean.shape
      layer.running_mean.copy_(torch.rand(shape, generator=generator) - 0.5)
      layer.running_var.copy_(torch.rand(shape, generator=generator) + 0.5)
      layer.weight.data.copy_(torch.rand(shape, generator=generator) + 0.5)
      layer.bias.data.copy_(torch.rand(shape, generator=generator) - 0.5)


def images_and_widths(batch=2, seed=0):
  rng = np.random.default_rng(seed)
  images = rng.random((batch, HEIGHT, WIDTH, 1), dtype=np.float32)
  widths = np.array([WIDTH, 24, 40, 13][:batch], np.int32)
  return images, widths


def init(model, images, widths):
  """Zero variables of the right shapes (every test overwrites what it uses).

  Shapes only: compiling the initialisers of VGG16 would cost more than the test.
  """
  shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.asarray(images), jnp.asarray(widths))
  return jax.tree_util.tree_map(lambda leaf: np.zeros(leaf.shape, leaf.dtype), shapes)


def flax_backbone_features(config, variables, images, widths):
  """The Flax backbone output ``[B, H', W', C]`` on normalised, masked images."""
  backbone = backbones.create_backbone(config)
  x = crnn.normalize_images(jnp.asarray(images))
  x = jnp.where(backbones.width_mask(jnp.asarray(widths), images.shape[2]), x, 0.0)
  features, _ = jax.jit(backbone.apply)(
      {"params": variables["params"]["backbone"],
       "batch_stats": variables["batch_stats"].get("backbone", {})}, x, jnp.asarray(widths))
  return np.asarray(features)


def torch_backbone_features(torch_backbone, images, widths):
  """The torch backbone on the same input, fed as RGB (three equal channels)."""
  import torch
  x = crnn.normalize_images(images)
  x = np.where(np.arange(images.shape[2])[None, None, :, None] < widths[:, None, None, None], x, 0)
  x = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2))).repeat(1, 3, 1, 1)
  with torch.no_grad():
    features, _ = torch_backbone.eval()(x, torch.from_numpy(widths).long())
  return features.numpy().transpose(0, 2, 3, 1)


# --- torchvision layout -------------------------------------------------------

# Known keys and shapes of torchvision's vgg16, vgg16_bn and resnet18 state dicts.
TORCHVISION_KEYS = {
    ("vgg16", False): {"features.0.weight": (64, 3, 3, 3), "features.2.weight": (64, 64, 3, 3),
                       "features.5.bias": (128,), "features.28.weight": (512, 512, 3, 3)},
    ("vgg16", True): {"features.0.weight": (64, 3, 3, 3), "features.1.running_var": (64,),
                      "features.3.weight": (64, 64, 3, 3), "features.7.weight": (128, 64, 3, 3),
                      "features.40.weight": (512, 512, 3, 3), "features.41.running_mean": (512,)},
    ("resnet18", True): {"conv1.weight": (64, 3, 7, 7), "bn1.running_mean": (64,),
                         "layer1.0.conv1.weight": (64, 64, 3, 3),
                         "layer2.0.downsample.0.weight": (128, 64, 1, 1),
                         "layer2.0.downsample.1.running_var": (128,),
                         "layer3.1.bn2.weight": (256,)},
}
NUM_KEYS = {("vgg16", False): 26, ("vgg16", True): 13 * 2 + 13 * 5,
            # stem 1+5, 6 blocks x (2 convs + 2 bns x5), 2 downsamples x (1 + 5)
            ("resnet18", True): 6 + 6 * 12 + 2 * 6}


def save_checkpoint(torch_crnn, config, path, seed=0):
  """A random torchvision-layout backbone (3 input channels) saved as a state dict."""
  import torch
  torch.manual_seed(seed)
  backbone = torch_crnn.build_torch_backbone(config, in_channels=3)
  randomize_batch_norms(backbone, seed)
  state = backbone.state_dict()
  key = (config.backbone, bool(config.batch_norm) or config.backbone == "resnet18")
  assert len(state) == NUM_KEYS[key]
  for name, shape in TORCHVISION_KEYS[key].items():
    assert tuple(state[name].shape) == shape, name
  # Parts of the torchvision model that the backbone drops must be skipped.
  if config.backbone == "vgg16":
    state["classifier.0.weight"] = torch.zeros(8, 4)
  else:
    state["layer4.0.conv1.weight"] = torch.zeros(512, 256, 3, 3)
    state["fc.weight"] = torch.zeros(1000, 512)
  torch.save(state, path)
  return backbone


@pytest.mark.parametrize("backbone, batch_norm", [("vgg16", True), ("vgg16", False),
                                                  ("resnet18", True)])
def test_imported_backbone_matches_torch(tmp_path, backbone, batch_norm):
  torch_crnn = load_torch_crnn()
  path = tmp_path / f"{backbone}{'_bn' if batch_norm else ''}-test.pth"
  config = model_config(backbone, batch_norm=batch_norm, pretrained_path=str(path))
  torch_backbone = save_checkpoint(torch_crnn, config, path)

  images, widths = images_and_widths()
  model = create_crnn(config, num_classes=5)
  variables = init(model, images, widths)
  loaded = torch_import.load_torchvision_weights(variables, config)

  expected = torch_backbone_features(torch_backbone, images, widths)
  actual = flax_backbone_features(config, loaded, images, widths)
  assert actual.shape == expected.shape == (2, HEIGHT // 16, WIDTH // 4,
                                            512 if backbone == "vgg16" else 256)
  scale = np.abs(expected).max()
  assert scale > 0.1
  np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=1e-4 * scale)
  # The RGB kernel was summed into the greyscale one; the sequence model is untouched.
  first = "conv1_1" if backbone == "vgg16" else "conv1"
  assert loaded["params"]["backbone"][first]["kernel"].shape[2] == 1
  jax.tree_util.tree_map(np.testing.assert_array_equal, loaded["params"]["sequence"],
                         variables["params"]["sequence"])


def test_mismatched_checkpoint_names_the_keys(tmp_path):
  torch_crnn = load_torch_crnn()
  path = tmp_path / "vgg16-test.pth"
  save_checkpoint(torch_crnn, model_config("vgg16", batch_norm=False), path)
  config = model_config("vgg16", batch_norm=True, pretrained_path=str(path))  # wants vgg16_bn
  images, widths = images_and_widths()
  variables = init(create_crnn(config, num_classes=5), images, widths)
  with pytest.raises(ValueError, match="Missing keys") as error:
    torch_import.load_torchvision_weights(variables, config)
  message = str(error.value)
  assert "features.1.running_mean" in message and "vgg16_bn" in message


def test_missing_file_is_a_clear_error(tmp_path):
  pytest.importorskip("torch")
  config = model_config("resnet18", pretrained_path=str(tmp_path / "resnet18-absent.pth"))
  with pytest.raises(FileNotFoundError, match="resnet18-absent.pth"):
    torch_import.load_torchvision_weights({"params": {"backbone": {}}}, config)


def test_without_torch_is_a_clear_error(tmp_path, monkeypatch):
  monkeypatch.setitem(sys.modules, "torch", None)  # makes `import torch` fail
  config = model_config("vgg16", pretrained_path=str(tmp_path / "vgg16_bn-x.pth"))
  with pytest.raises(ImportError, match="pip install torch"):
    torch_import.load_torchvision_weights({"params": {"backbone": {}}}, config)


def test_small_backbone_has_no_imagenet_weights(tmp_path):
  config = model_config("small", pretrained_path=str(tmp_path / "x.pth"))
  with pytest.raises(ValueError, match="no torchvision ImageNet weights"):
    torch_import.load_torchvision_weights({"params": {"backbone": {}}}, config)


# --- the torch twin used by the throughput benchmark ---------------------------

@pytest.mark.parametrize("backbone", ["small", "resnet18"])
def test_torch_crnn_matches_flax_crnn(backbone):
  """Same weights -> same logits at every content frame, padded batch, eval mode."""
  torch = pytest.importorskip("torch")
  torch_crnn = load_torch_crnn()
  config = model_config(backbone, lstm_layers=2, lstm_hidden=12)
  torch.manual_seed(0)
  torch_model = torch_crnn.build_torch_crnn(config, num_classes=7, input_height=HEIGHT)
  randomize_batch_norms(torch_model)
  with torch.no_grad():
    torch_model.classifier.weight.mul_(10.0)  # logits of order 1, so that errors show
  images, widths = images_and_widths(batch=4)
  model = create_crnn(config, num_classes=7)
  variables = torch_crnn.copy_to_flax(torch_model, init(model, images, widths), config)

  logits, paddings = jax.jit(model.apply)(variables, jnp.asarray(images), jnp.asarray(widths))
  with torch.no_grad():
    torch_logits, frame_lengths = torch_model.eval()(
        torch.from_numpy(images.transpose(0, 3, 1, 2)), torch.from_numpy(widths).long())
  np.testing.assert_array_equal(np.sum(1 - np.asarray(paddings), axis=1), frame_lengths.numpy())
  valid = np.asarray(paddings) == 0
  expected = torch_logits.numpy()[valid]
  assert np.abs(expected).max() > 0.5
  np.testing.assert_allclose(np.asarray(logits)[valid], expected, rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_torch_train_step_learns():
  """The benchmark's torch step lowers the CTC loss on a fixed tiny batch."""
  torch = pytest.importorskip("torch")
  torch_crnn = load_torch_crnn()
  config = model_config("small", small_channels=(8, 16), lstm_hidden=16, spatial_dropout=0.0,
                        lstm_dropout=0.0, classifier_dropout=0.0)
  torch.manual_seed(0)
  model = torch_crnn.build_torch_crnn(config, num_classes=5, input_height=16)
  optimizer = torch_crnn.make_torch_optimizer(model, learning_rate=1e-2)
  images = torch.rand(4, 1, 16, 32)
  widths = torch.tensor([32, 32, 24, 16])
  labels = torch.tensor([[1, 2, 3], [2, 2, 0], [4, 0, 0], [3, 1, 0]])
  label_lengths = torch.tensor([3, 2, 1, 2])
  losses = [float(torch_crnn.torch_train_step(model, optimizer, images, widths, labels,
                                              label_lengths)) for _ in range(30)]
  assert np.isfinite(losses).all()
  assert losses[-1] < 0.5 * losses[0]
