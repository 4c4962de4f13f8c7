"""A small CRNN on the synthetic dataset: trains in minutes on 2 CPU cores, offline.

The ``crohme_synthetic`` dataset is rendered on first use (about a minute), so
this needs neither CROHME nor a network. 10 epochs take about 12 CPU-minutes
and reach ExpRate ~12%, token error rate ~0.48 on its test split.

  python train.py --config configs/quickstart.py --workdir workdirs/quickstart
"""

import ml_collections

from configs import default


def use_synthetic_data(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Data, geometry and augmentation for the synthetic dataset at CPU scale."""
  config.dataset.name = "crohme_synthetic"
  config.dataset.eval_split = "test"
  config.dataset.test_splits = ("test",)

  config.input.height = 32
  config.input.max_width = 384
  config.input.bucket_widths = (64, 128, 192, 256, 384)  # multiples of 16 for the attention encoder
  config.input.canvases = ()
  config.input.sort_window = 16

  config.augment.rotation_degrees = 2.0
  config.augment.elastic_alpha = 2.0
  config.augment.elastic_sigma = 4.0
  return config


def get_config():
  config = use_synthetic_data(default.get_config())
  config.model.backbone = "small"
  config.model.small_channels = (16, 32, 64)
  # Two columns per frame: stacked fractions make short, dense images at height 32.
  config.model.width_downsample = 2
  config.model.lstm_hidden = 128
  config.model.lstm_layers = 1
  config.model.lstm_dropout = 0.2
  config.model.classifier_dropout = 0.2
  config.model.spatial_dropout = 0.1

  config.train.batch_size = 32
  config.train.num_epochs = 10
  config.train.learning_rate = 2e-3
  config.train.log_every_steps = 10
  config.eval.batch_size = 100
  return config
