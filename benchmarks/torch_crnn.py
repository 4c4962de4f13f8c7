"""The CRNN of hme_jax.models.crnn in PyTorch, for throughput comparisons and as a reference.

Same backbones (vgg16 / resnet18 / small, same downsampling schedule, same
content-width masking after every conv unit), same height collapse, BatchNorm +
channel dropout, bidirectional LSTM (packed sequences, so padding never reaches
the backward direction), dropout and linear classifier. Input layout is NCHW:
``images [B, 1, H, W]`` float in [0, 1].

Backbone state-dict keys are torchvision's (``features.N.*`` for vgg16,
``conv1`` / ``bn1`` / ``layer1.0.conv1`` ... for resnet18), so a torchvision
checkpoint loads with ``load_state_dict(strict=False)`` and
tests/test_torch_import.py can check ``hme_jax.models.torch_import`` against it.

Differences from the Flax model, all immaterial for throughput: torch's training-mode
BatchNorm takes statistics over the padding columns too (Flax excludes them), and
initialisers differ in detail.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn

VGG16_LAYOUT = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M",
                512, 512, 512)
GREY_MEAN = (0.485 + 0.456 + 0.406) / 3
GREY_STD = (0.229 + 0.224 + 0.225) / 3


def width_strides(width_downsample: int, num_steps: int) -> list[int]:
  """Width stride of each stride-2 step (the first log2(d) halve the width)."""
  halvings = int(width_downsample).bit_length() - 1
  if 2**halvings != width_downsample or halvings > num_steps:
    raise ValueError(f"width_downsample={width_downsample}: use a power of two up to "
                     f"{2**num_steps}.")
  return [2 if step < halvings else 1 for step in range(num_steps)]


def width_mask(widths: torch.Tensor, width: int, dtype) -> torch.Tensor:
  """``[B, 1, 1, width]``, 1 on content columns."""
  columns = torch.arange(width, device=widths.device)
  return (columns[None, :] < widths[:, None]).to(dtype)[:, None, None, :]


def ceil_div(widths: torch.Tensor, stride: int) -> torch.Tensor:
  return (widths + stride - 1) // stride


def _init(module: nn.Module) -> None:
  for layer in module.modules():
    if isinstance(layer, nn.Conv2d):
      nn.init.kaiming_normal_(layer.weight, mode="fan_out", nonlinearity="relu")
      if layer.bias is not None:
        nn.init.zeros_(layer.bias)


class TorchVGG16(nn.Module):
  """torchvision's ``vgg16[_bn].features`` up to conv5_3 (same indices), masked."""

  def __init__(self, batch_norm: bool = True, width_downsample: int = 4, in_channels: int = 1):
    super().__init__()
    strides = iter(width_strides(width_downsample, 4))
    layers, channels = [], in_channels
    for item in VGG16_LAYOUT:
      if item == "M":
        stride = next(strides)
        layers.append(nn.MaxPool2d((2, stride), (2, stride)))
        continue
      layers.append(nn.Conv2d(channels, item, 3, padding=1))
      if batch_norm:
        layers.append(nn.BatchNorm2d(item))
      layers.append(nn.ReLU(inplace=True))
      channels = item
    self.features = nn.Sequential(*layers)
    self.out_channels = 512
    _init(self)

  def stages(self) -> list[list[nn.Module]]:
    """The five conv blocks (for freezing), split at the pools."""
    stages, current = [], []
    for layer in self.features:
      if isinstance(layer, nn.MaxPool2d):
        stages.append(current)
        current = []
      else:
        current.append(layer)
    return stages + [current]

  def forward(self, x, widths):
    mask = width_mask(widths, x.shape[-1], x.dtype)
    for layer in self.features:
      x = layer(x)
      if isinstance(layer, nn.ReLU):
        x = x * mask
      elif isinstance(layer, nn.MaxPool2d):
        widths = ceil_div(widths, layer.stride[1])
        mask = width_mask(widths, x.shape[-1], x.dtype)
    return x, widths


class BasicBlock(nn.Module):
  """torchvision's ResNet BasicBlock with a (height, width) stride, masked."""

  def __init__(self, in_channels: int, channels: int, stride=(1, 1)):
    super().__init__()
    self.conv1 = nn.Conv2d(in_channels, channels, 3, stride, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(channels)
    self.conv2 = nn.Conv2d(channels, channels, 3, 1, 1, bias=False)
    self.bn2 = nn.BatchNorm2d(channels)
    self.downsample = None
    if tuple(stride) != (1, 1) or in_channels != channels:
      self.downsample = nn.Sequential(nn.Conv2d(in_channels, channels, 1, stride, bias=False),
                                      nn.BatchNorm2d(channels))

  def forward(self, x, mask):
    residual = x if self.downsample is None else self.downsample(x)
    y = F.relu(self.bn1(self.conv1(x))) * mask
    y = self.bn2(self.conv2(y))
    return F.relu(y + residual) * mask


class TorchResNet18(nn.Module):
  """torchvision's resnet18 stem + layer1..layer3 (same keys), masked."""

  def __init__(self, width_downsample: int = 4, in_channels: int = 1):
    super().__init__()
    self.strides = width_strides(width_downsample, 4)
    self.conv1 = nn.Conv2d(in_channels, 64, 7, (2, self.strides[0]), 3, bias=False)
    self.bn1 = nn.BatchNorm2d(64)
    self.maxpool = nn.MaxPool2d(3, (2, self.strides[1]), 1)
    self.layer1 = nn.ModuleList([BasicBlock(64, 64), BasicBlock(64, 64)])
    self.layer2 = nn.ModuleList([BasicBlock(64, 128, (2, self.strides[2])), BasicBlock(128, 128)])
    self.layer3 = nn.ModuleList([BasicBlock(128, 256, (2, self.strides[3])), BasicBlock(256, 256)])
    self.out_channels = 256
    _init(self)

  def stages(self) -> list[list[nn.Module]]:
    return [[self.conv1, self.bn1], [self.layer1], [self.layer2], [self.layer3]]

  def forward(self, x, widths):
    x = self.conv1(x)
    widths = ceil_div(widths, self.strides[0])
    x = F.relu(self.bn1(x)) * width_mask(widths, x.shape[-1], x.dtype)
    x = self.maxpool(x)
    widths = ceil_div(widths, self.strides[1])
    x = x * width_mask(widths, x.shape[-1], x.dtype)  # overlapping windows reach the padding
    for layer, stride in ((self.layer1, 1), (self.layer2, self.strides[2]),
                          (self.layer3, self.strides[3])):
      widths = ceil_div(widths, stride)
      mask = width_mask(widths, -(-x.shape[-1] // stride), x.dtype)
      for block in layer:
        x = block(x, mask)
    return x, widths


class TorchSmallCNN(nn.Module):
  """conv -> [BN] -> ReLU -> pool per entry of ``channels``, masked."""

  def __init__(self, channels=(32, 64, 128), batch_norm: bool = True, width_downsample: int = 4,
               in_channels: int = 1):
    super().__init__()
    self.strides = width_strides(width_downsample, len(channels))
    self.convs = nn.ModuleList()
    self.norms = nn.ModuleList()
    for features in channels:
      self.convs.append(nn.Conv2d(in_channels, features, 3, padding=1, bias=not batch_norm))
      self.norms.append(nn.BatchNorm2d(features) if batch_norm else nn.Identity())
      in_channels = features
    self.out_channels = channels[-1]
    _init(self)

  def stages(self) -> list[list[nn.Module]]:
    return []

  def forward(self, x, widths):
    for conv, norm, stride in zip(self.convs, self.norms, self.strides):
      x = F.relu(norm(conv(x))) * width_mask(widths, x.shape[-1], x.dtype)
      x = F.max_pool2d(x, (2, stride), (2, stride))
      widths = ceil_div(widths, stride)
    return x, widths


def build_torch_backbone(model_config, in_channels: int = 1) -> nn.Module:
  backbone = model_config.backbone
  if backbone == "vgg16":
    return TorchVGG16(bool(model_config.batch_norm), int(model_config.width_downsample),
                      in_channels)
  if backbone == "resnet18":
    return TorchResNet18(int(model_config.width_downsample), in_channels)
  if backbone == "small":
    return TorchSmallCNN(tuple(model_config.small_channels), bool(model_config.batch_norm),
                         int(model_config.width_downsample), in_channels)
  raise ValueError(f"Unknown backbone {backbone!r}.")


class TorchCRNN(nn.Module):
  """``forward(images [B, 1, H, W], image_widths [B]) -> (logits [B, T, C], frame_lengths [B])``."""

  def __init__(self, model_config, num_classes: int, input_height: int = 64):
    super().__init__()
    self.width_downsample = int(model_config.width_downsample)
    self.height_collapse = model_config.get("height_collapse", "mean")
    self.backbone = build_torch_backbone(model_config)
    channels = self.backbone.out_channels
    if self.height_collapse == "flatten":
      small = model_config.backbone == "small"
      height_downsample = 2 ** len(model_config.small_channels) if small else 16
      channels *= -(-input_height // height_downsample)
    self.feature_norm = nn.BatchNorm1d(channels)
    self.feature_dropout = nn.Dropout1d(float(model_config.spatial_dropout))
    num_layers = int(model_config.lstm_layers)
    self.lstm = nn.LSTM(channels, int(model_config.lstm_hidden), num_layers, batch_first=True,
                        bidirectional=True,
                        dropout=float(model_config.lstm_dropout) if num_layers > 1 else 0.0)
    self.classifier_dropout = nn.Dropout(float(model_config.classifier_dropout))
    self.classifier = nn.Linear(2 * int(model_config.lstm_hidden), num_classes)
    frozen_stages = self.backbone.stages()[:int(model_config.get("freeze_stages", 0))]
    self.frozen = [module for stage in frozen_stages for module in stage]
    for module in self.frozen:
      module.requires_grad_(False)

  def train(self, mode: bool = True):
    super().train(mode)
    for module in self.frozen:  # frozen stages keep their running statistics
      module.eval()
    return self

  def forward(self, images, image_widths):
    width = images.shape[-1]
    image_widths = image_widths.clamp(0, width)
    x = (images - GREY_MEAN) / GREY_STD
    x = x * width_mask(image_widths, width, x.dtype)
    x, _ = self.backbone(x, image_widths)  # [B, C, H', T]
    if self.height_collapse == "mean":
      x = x.mean(dim=2)
    elif self.height_collapse == "max":
      x = x.amax(dim=2)
    else:
      x = x.transpose(1, 2).flatten(1, 2)  # [B, H' * C, T], the Flax model's feature order
    x = self.feature_dropout(self.feature_norm(x))  # [B, C, T]
    frame_lengths = (image_widths + self.width_downsample - 1) // self.width_downsample
    num_frames = x.shape[-1]
    packed = nn.utils.rnn.pack_padded_sequence(
        x.transpose(1, 2), frame_lengths.clamp(min=1).cpu(), batch_first=True,
        enforce_sorted=False)
    x, _ = self.lstm(packed)
    x, _ = nn.utils.rnn.pad_packed_sequence(x, batch_first=True, total_length=num_frames)
    logits = self.classifier(self.classifier_dropout(x))
    return logits.float(), frame_lengths


def build_torch_crnn(model_config, num_classes: int, input_height: int = 64) -> TorchCRNN:
  """The torch twin of ``hme_jax.models.create_crnn(model_config, num_classes)``."""
  return TorchCRNN(model_config, num_classes, input_height)


def make_torch_optimizer(model: nn.Module, learning_rate: float = 5e-4) -> torch.optim.Optimizer:
  """Adam over the trainable parameters (as the seed)."""
  return torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=learning_rate)


def torch_train_step(model: nn.Module, optimizer: torch.optim.Optimizer, images, image_widths,
                     labels, label_lengths, *, grad_clip_norm: float = 5.0,
                     autocast_dtype: torch.dtype | None = None, blank_id: int = 0) -> torch.Tensor:
  """One CTC training step; returns the (detached, not synchronised) mean loss.

  Args:
    images: ``[B, 1, H, W]`` float in [0, 1]; image_widths: ``[B]`` int.
    labels: ``[B, L]`` int, blank-padded; label_lengths: ``[B]`` int.
    autocast_dtype: e.g. ``torch.bfloat16`` for mixed precision (logits stay float32).
  """
  model.train()
  optimizer.zero_grad(set_to_none=True)
  autocast = (torch.autocast(images.device.type, dtype=autocast_dtype)
              if autocast_dtype is not None else contextlib.nullcontext())
  with autocast:
    logits, frame_lengths = model(images, image_widths)
  log_probs = logits.float().log_softmax(-1).transpose(0, 1)  # [T, B, C]
  loss = F.ctc_loss(log_probs, labels, frame_lengths, label_lengths, blank=blank_id,
                    reduction="mean", zero_infinity=True)
  loss.backward()
  if grad_clip_norm:
    nn.utils.clip_grad_norm_(model.parameters(), grad_clip_norm)
  optimizer.step()
  return loss.detach()


def copy_to_flax(torch_model: TorchCRNN, variables, model_config) -> dict:
  """Flax CRNN variables holding ``torch_model``'s weights (for parity checks).

  ``variables`` come from ``create_crnn(model_config, ...).init``; returns new ones.
  """
  import numpy as np

  from hme_jax.models import torch_import

  state = {key: value.detach().cpu().float().numpy()
           for key, value in torch_model.state_dict().items()}
  backbone_state = {key[len("backbone."):]: value for key, value in state.items()
                    if key.startswith("backbone.")}
  if model_config.backbone == "small":  # not a torchvision layout: rename to vgg-style keys
    renamed = {}
    for key, value in backbone_state.items():
      kind, index, name = key.split(".")
      renamed[f"{'conv' if kind == 'convs' else 'bn'}{index}.{name}"] = value
    variables = _copy_small_backbone(renamed, variables)
  else:
    variables = torch_import.convert_state_dict(backbone_state, variables, model_config,
                                                source="the torch model")
  params, batch_stats = variables["params"], variables["batch_stats"]
  params["feature_norm"] = {"scale": state["feature_norm.weight"],
                            "bias": state["feature_norm.bias"]}
  batch_stats["feature_norm"] = {"mean": state["feature_norm.running_mean"],
                                 "var": state["feature_norm.running_var"]}
  sequence = dict(params["sequence"])
  for layer in range(torch_model.lstm.num_layers):
    suffixes = ("", "_reverse")  # forward, backward: hme_jax's direction axis
    sequence[f"lstm{layer}"] = {
        "input_kernel": np.stack([state[f"lstm.weight_ih_l{layer}{s}"].T for s in suffixes], 1),
        "recurrent_kernel": np.stack([state[f"lstm.weight_hh_l{layer}{s}"].T for s in suffixes]),
        "bias": np.stack([state[f"lstm.bias_ih_l{layer}{s}"] + state[f"lstm.bias_hh_l{layer}{s}"]
                          for s in suffixes]),
    }
  sequence["classifier"] = {"kernel": np.ascontiguousarray(state["classifier.weight"].T),
                            "bias": state["classifier.bias"]}
  params["sequence"] = sequence
  return variables


def _copy_small_backbone(state, variables) -> dict:
  params = {key: dict(value) for key, value in variables["params"].items()}
  batch_stats = {key: dict(value) for key, value in variables["batch_stats"].items()}
  backbone, stats = dict(params["backbone"]), dict(batch_stats.get("backbone", {}))
  for name in list(backbone):
    if name.startswith("conv"):
      leaf = {"kernel": state[f"{name}.weight"].transpose(2, 3, 1, 0)}
      if f"{name}.bias" in state:
        leaf["bias"] = state[f"{name}.bias"]
    else:
      leaf = {"scale": state[f"{name}.weight"], "bias": state[f"{name}.bias"]}
      stats[name] = {"mean": state[f"{name}.running_mean"], "var": state[f"{name}.running_var"]}
    backbone[name] = leaf
  params["backbone"], batch_stats["backbone"] = backbone, stats
  return {**variables, "params": params, "batch_stats": batch_stats}
