"""A small CRNN on the synthetic dataset: trains in a few minutes on 2 CPU cores, offline.

The ``crohme_synthetic`` dataset is rendered on first use (about a minute), so
this needs neither CROHME nor a network:

  python train.py --config configs/quickstart.py --workdir workdirs/quickstart
"""

from configs import default


def get_config():
  config = default.get_config()
  config.dataset.name = "crohme_synthetic"
  config.dataset.eval_split = "test"
  config.dataset.test_splits = ("test",)

  config.input.height = 32
  config.input.max_width = 384
  config.input.bucket_widths = (64, 128, 192, 256, 384)

  config.augment.rotation_degrees = 2.0
  config.augment.elastic_alpha = 2.0
  config.augment.elastic_sigma = 4.0

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
