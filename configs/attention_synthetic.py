"""A small attention encoder-decoder on the synthetic dataset: minutes on 2 CPU cores, offline.

The same architecture as configs/attention.py (DenseNet-B encoder, Transformer
decoder with coverage, bidirectional training and beam search), shrunk: growth
rate 8 with 3 layers per dense block, d_model 64, 2 decoder layers of 4 heads.
Images are scaled to height 32 (a memory of 2 rows by at most 24 columns).

This is a smoke test of the whole pipeline, not a useful model: attention
models need far more steps than the CRNN. Measured with this model on the
default synthetic split (3,000 images, 93 steps per epoch) on a busy 2-core
CPU: 40-60 s per epoch; after 6 epochs (AdamW 5e-3, cosine) teacher-forced
token accuracy 0.39 and greedy ExpRate on the test split 3%.

  python train.py --config configs/attention_synthetic.py --workdir workdirs/attention_synthetic
"""

from configs import attention, quickstart


def get_config():
  config = quickstart.use_synthetic_data(attention.get_config("cpu"))

  config.model.growth_rate = 8
  config.model.dense_layers = 3
  config.model.encoder_dropout = 0.1
  config.model.d_model = 64
  config.model.num_heads = 4
  config.model.decoder_layers = 2
  config.model.ffn_dim = 128
  config.model.decoder_dropout = 0.1
  config.model.coverage_channels = 8
  config.model.max_decode_length = 40     # synthetic captions have at most 25 tokens

  config.train.batch_size = 32
  config.train.num_epochs = 10
  config.train.learning_rate = 5e-3
  config.train.weight_decay = 0.01
  config.train.warmup_epochs = 1.0
  config.train.log_every_steps = 10

  config.eval.batch_size = 100
  config.eval.beam_width = 5
  return config
