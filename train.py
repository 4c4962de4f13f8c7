"""Trains a model: ``python train.py --config configs/vgg16.py --workdir DIR``.

See ``hme_jax/train/main.py`` for the flags.
"""

from hme_jax.train import main

if __name__ == "__main__":
  main.run()
