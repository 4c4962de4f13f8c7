"""Hardware variants of a config: ``--config configs/vgg16.py:cpu`` picks the CPU-sized one."""

import ml_collections

VARIANTS = ("gpu", "cpu")


def size_for(config: ml_collections.ConfigDict, variant: str, *, gpu: tuple[int, float],
             cpu: tuple[int, float]) -> ml_collections.ConfigDict:
  """Sets ``(batch size, learning rate)`` and the training feed for ``variant``.

  "gpu" (or "" = the default) keeps the training split in device memory
  (hme_jax/data/device_data.py): an accelerator is then never waiting on the host.
  "cpu" reads batches through the host pipeline, which resumes at the
  iterator position and starts sooner.
  """
  variant = variant or "gpu"
  if variant not in VARIANTS:
    raise ValueError(f"Unknown config variant {variant!r}: use one of {VARIANTS} "
                     "(e.g. --config configs/vgg16.py:cpu).")
  config.train.batch_size, config.train.learning_rate = gpu if variant == "gpu" else cpu
  config.input.device_resident = variant == "gpu"
  return config
