r"""The `crohme_synthetic` dataset: rendered random expressions in CROHME tokens.

Expressions come from a small grammar over the CROHME vocabulary
(`grammar.sample_expression`), are typeset with matplotlib mathtext and
distorted to look hand-written (`render.render_expression`). The features are
those of `crohme` (image white ink on black, latex tokens, id), and so is the
vocabulary metadata (read it with `tfds_crohme.load_vocabulary`). The vocabulary
is every token the grammar can emit -- the 109 CROHME tokens -- rather than
those a small train split happens to draw, so that no test caption holds an
unknown token and a model trained here shares CROHME's 110 class ids.
Splits: ``train`` and ``test``.

Every sample is a pure function of ``(seed, split, index)``: the same config
gives byte-identical records in any process and with any number of workers.

Preparing, without TensorFlow::

  import tensorflow_datasets as tfds
  import tfds_crohme  # registers the builders

  tfds.builder("crohme_synthetic/tiny", data_dir=data_dir).download_and_prepare()

Other sizes: ``config=SyntheticConfig(name="big", num_train=..., ...)``, read
back as ``"crohme_synthetic/big"``.
"""

from __future__ import annotations

import dataclasses

import tensorflow_datasets as tfds

from tfds_crohme.crohme import dataset_conventions
from tfds_crohme.crohme import vocabulary_metadata
from tfds_crohme.crohme_synthetic import grammar
from tfds_crohme.crohme_synthetic import samples

@dataclasses.dataclass(eq=False)
class SyntheticConfig(tfds.core.BuilderConfig):
  """Sizes and seed of a synthetic dataset.

  Attributes:
    num_train: samples in the train split.
    num_test: samples in the test split.
    seed: the root of every random choice; same seed, same bytes.
    max_tokens: longest expression, in tokens.
  """
  num_train: int = 3000
  num_test: int = 300
  seed: int = 0
  max_tokens: int = 25


class Builder(tfds.core.GeneratorBasedBuilder):
  """Synthetic hand-written-looking math, in the CROHME token convention."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  BUILDER_CONFIGS = [
      SyntheticConfig(name="default", description="3,000 train / 300 test."),
      SyntheticConfig(name="tiny", num_train=96, num_test=32,
                      description="96 train / 32 test, for tests."),
  ]

  def __init__(self, *, file_format=None, **kwargs):
    super().__init__(file_format=file_format, **kwargs)
    dataset_conventions.set_default_file_format(self, file_format)

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        features=dataset_conventions.features(),
        supervised_keys=("image", "latex"),
        metadata=tfds.core.MetadataDict(),
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    del dl_manager  # nothing to download
    config = self.builder_config
    if config.num_train < 1 or config.num_test < 1 or config.max_tokens < 1:
      raise ValueError(f"Invalid SyntheticConfig sizes: {config}")
    vocabulary_metadata.store_vocabulary(self.info, [" ".join(sorted(grammar.TOKENS))])
    return {"train": self._generate_examples("train", config.num_train),
            "test": self._generate_examples("test", config.num_test)}

  def _generate_examples(self, split: str, num_samples: int):
    # One process: about 20 ms of CPU per sample (mostly mathtext parsing), so
    # the default config takes about a minute. A worker pool would need spawn
    # (fork is unsafe once JAX is imported), and spawn re-imports the caller's
    # __main__, which breaks scripts without a main guard.
    config = self.builder_config
    for index in range(num_samples):
      example = samples.make_sample(config.seed, split, index, config.max_tokens)
      yield example["id"], example
