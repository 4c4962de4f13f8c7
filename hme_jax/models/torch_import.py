"""ImageNet initialisation from a local torchvision checkpoint (no network access).

Supported files (torchvision's own downloads, e.g. from ``~/.cache/torch/hub/checkpoints``):

  backbone="vgg16", batch_norm=False   vgg16-397923af.pth
  backbone="vgg16", batch_norm=True    vgg16_bn-6c64b313.pth
  backbone="resnet18"                  resnet18-f37072fd.pth

Conversion: conv kernels OIHW -> HWIO; the first conv's three RGB input
channels are summed into one, since the model reads a greyscale image normalised
with the channel-averaged ImageNet statistics (``crnn.normalize_images``);
BatchNorm weight/bias -> params scale/bias and running_mean/running_var ->
batch_stats mean/var. The parts of the torchvision model that the backbone does
not use (VGG's classifier, ResNet's layer4 and fc) are skipped. Only the
backbone is touched; the LSTM and the classifier keep their initial values.

torch is needed only here, and only to read the file (``pip install torch``).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping

import numpy as np

from hme_jax.models import backbones

# Checkpoint keys under these prefixes belong to layers the backbone drops.
UNUSED_PREFIXES = {
    "vgg16": ("classifier.",),
    "resnet18": ("layer4.", "fc."),
}

EXPECTED_FILES = {
    ("vgg16", False): "vgg16-*.pth",
    ("vgg16", True): "vgg16_bn-*.pth",
    ("resnet18", False): "resnet18-*.pth",
    ("resnet18", True): "resnet18-*.pth",
}


def _vgg16_torch_indices(batch_norm: bool) -> dict[str, int]:
  """Flax module name (``conv3_2``, ``bn3_2``) -> index in torchvision's ``features``."""
  indices, index, block, position = {}, 0, 1, 1
  for item in backbones.VGG16_LAYOUT:
    if item == "M":
      index, block, position = index + 1, block + 1, 1
      continue
    indices[f"conv{block}_{position}"] = index
    if batch_norm:
      indices[f"bn{block}_{position}"] = index + 1
    index += 3 if batch_norm else 2  # conv, [bn,] relu
    position += 1
  return indices


def torch_prefix(backbone: str, path: tuple[str, ...], batch_norm: bool = True) -> str:
  """The torchvision state-dict prefix of one Flax backbone module (path under ``backbone``)."""
  if backbone == "vgg16":
    (name,) = path
    return f"features.{_vgg16_torch_indices(batch_norm)[name]}"
  if backbone == "resnet18":
    parts = []
    for part in path:
      match = re.fullmatch(r"layer(\d)_(\d)", part)
      if match:
        parts += [f"layer{match.group(1)}", match.group(2)]
      elif part == "downsample_conv":
        parts += ["downsample", "0"]
      elif part == "downsample_bn":
        parts += ["downsample", "1"]
      else:
        parts.append(part)
    return ".".join(parts)
  raise ValueError(f"There are no torchvision ImageNet weights for backbone {backbone!r}; "
                   "set config.model.pretrained_path='' or use vgg16 / resnet18.")


def _modules(tree: Mapping, path: tuple[str, ...] = ()):
  """Yields ``(path, leaf dict)`` for every conv (has 'kernel') or norm (has 'scale')."""
  if "kernel" in tree or "scale" in tree:
    yield path, tree
    return
  for name, subtree in tree.items():
    yield from _modules(subtree, path + (name,))


def read_state_dict(path: str) -> dict[str, np.ndarray]:
  """A torch checkpoint file -> ``{key: float32 array}`` (needs torch, reads on CPU)."""
  try:
    import torch
  except ImportError as error:
    raise ImportError(
        "Loading torchvision ImageNet weights needs PyTorch to read the .pth file: "
        "`pip install torch` (the CPU build is enough), or set "
        "config.model.pretrained_path='' to train from scratch.") from error
  if not os.path.isfile(path):
    raise FileNotFoundError(
        f"config.model.pretrained_path={path!r} does not exist. Download the torchvision "
        "checkpoint (e.g. vgg16_bn-6c64b313.pth, resnet18-f37072fd.pth) on a machine with "
        "network access and give its local path.")
  state = torch.load(path, map_location="cpu", weights_only=True)
  if isinstance(state, Mapping) and isinstance(state.get("state_dict"), Mapping):
    state = state["state_dict"]  # a training checkpoint that wraps the weights
  if not isinstance(state, Mapping):
    raise ValueError(f"{path} does not hold a state dict (got {type(state).__name__}).")
  return {key: value.detach().cpu().float().numpy() for key, value in state.items()
          if hasattr(value, "detach")}


def convert_state_dict(state: Mapping[str, np.ndarray], variables: Mapping, model_config,
                       source: str = "the checkpoint") -> dict:
  """Returns ``variables`` with the backbone's params and batch_stats taken from ``state``."""
  backbone = model_config.backbone
  batch_norm = bool(model_config.get("batch_norm", True))
  params = _to_dict(variables["params"])
  batch_stats = _to_dict(variables.get("batch_stats", {}))
  if "backbone" not in params:
    raise ValueError("variables['params'] has no 'backbone'; pass the variables of a model "
                     "made by hme_jax.models.create_crnn.")

  used, errors = set(), []

  def take(key: str, shape: tuple[int, ...], convert=lambda array: array) -> np.ndarray | None:
    if key not in state:
      return None
    used.add(key)
    array = convert(state[key])
    if array.shape != tuple(shape):
      errors.append(f"{key}: {state[key].shape} in {source} -> {array.shape}, model needs "
                    f"{tuple(shape)}")
      return None
    return array

  expected = []
  for path, leaf in _modules(params["backbone"]):
    prefix = torch_prefix(backbone, path, batch_norm)
    if "kernel" in leaf:
      in_channels = leaf["kernel"].shape[2]

      def to_hwio(weight, in_channels=in_channels):
        kernel = weight.transpose(2, 3, 1, 0)  # OIHW -> HWIO
        if in_channels == 1 and kernel.shape[2] == 3:
          kernel = kernel.sum(axis=2, keepdims=True)  # RGB -> greyscale input
        return kernel

      names = {"kernel": (f"{prefix}.weight", to_hwio)}
      if "bias" in leaf:
        names["bias"] = (f"{prefix}.bias", lambda array: array)
      stats = {}
    else:
      names = {"scale": (f"{prefix}.weight", lambda a: a), "bias": (f"{prefix}.bias", lambda a: a)}
      stats = {"mean": f"{prefix}.running_mean", "var": f"{prefix}.running_var"}
      used.add(f"{prefix}.num_batches_tracked")
    for flax_name, (key, convert) in names.items():
      expected.append(key)
      array = take(key, leaf[flax_name].shape, convert)
      if array is not None:
        leaf[flax_name] = array
    if stats:
      stat_leaf = _subtree(batch_stats, ("backbone",) + path)
      for flax_name, key in stats.items():
        expected.append(key)
        array = take(key, stat_leaf[flax_name].shape)
        if array is not None:
          stat_leaf[flax_name] = array

  missing = [key for key in expected if key not in state]
  unused_prefixes = UNUSED_PREFIXES.get(backbone, ())
  unexpected = [key for key in state if key not in used and not key.startswith(unused_prefixes)]
  if missing or unexpected or errors:
    hint = EXPECTED_FILES.get((backbone, batch_norm), "a torchvision checkpoint")
    lines = [f"{source} does not match backbone {backbone!r} (batch_norm={batch_norm}); "
             f"expected a torchvision {hint}."]
    if missing:
      lines.append(f"Missing keys ({len(missing)}): {_shorten(missing)}")
    if unexpected:
      lines.append(f"Unexpected keys ({len(unexpected)}): {_shorten(unexpected)}")
    if errors:
      lines.append(f"Shape mismatches ({len(errors)}): {_shorten(errors)}")
    raise ValueError("\n".join(lines))

  converted = dict(variables)
  converted["params"] = params
  if batch_stats:
    converted["batch_stats"] = batch_stats
  return converted


def load_torchvision_weights(variables: Mapping, model_config) -> dict:
  """Fills the backbone of ``variables`` from ``model_config.pretrained_path``.

  Args:
    variables: ``model.init(...)`` output (``'params'`` and ``'batch_stats'``).
    model_config: ``config.model``; ``backbone``, ``batch_norm`` and
      ``pretrained_path`` are read.

  Returns:
    New variables (float32 numpy leaves for the backbone); the rest unchanged.

  Raises:
    ImportError: torch is not installed.
    FileNotFoundError: the file does not exist.
    ValueError: its keys or shapes do not match the backbone (names them).
  """
  path = os.path.expanduser(str(model_config.get("pretrained_path", "")))
  if not path:
    raise ValueError("config.model.pretrained_path is empty: nothing to load.")
  if model_config.backbone not in UNUSED_PREFIXES:
    torch_prefix(model_config.backbone, ())  # raises the "no ImageNet weights" error
  return convert_state_dict(read_state_dict(path), variables, model_config, source=path)


def _to_dict(tree):
  """A mutable deep copy of the nested dict structure (leaves are shared)."""
  if isinstance(tree, Mapping):
    return {key: _to_dict(value) for key, value in tree.items()}
  return tree


def _subtree(tree: dict, path: tuple[str, ...]) -> dict:
  for name in path:
    tree = tree[name]
  return tree


def _shorten(items: list[str], limit: int = 12) -> str:
  shown = ", ".join(items[:limit])
  return shown + (f", ... ({len(items) - limit} more)" if len(items) > limit else "")
