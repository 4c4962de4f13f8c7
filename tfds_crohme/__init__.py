"""TFDS builders for handwritten math: `crohme` and `crohme_synthetic`.

Importing this package registers both builders with TFDS::

  import tensorflow_datasets as tfds
  import tfds_crohme

  builder = tfds.builder("crohme", data_dir=data_dir)   # or "crohme_synthetic/tiny"
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
      manual_dir="/dir/holding/data.zip"))             # crohme only
  vocabulary = tfds_crohme.load_vocabulary(builder)    # the JSON of a vocab.json file
  source = tfds.data_source("crohme", split="2014", data_dir=data_dir)
  record = source[0]

Everything works without TensorFlow (TFDS's NumPy mode), preparing included.

Records of ``tfds.data_source`` (and ``builder.as_data_source``):
  image   np.uint8 ``[H, W, 1]``: white ink (255) on black (0)
  latex   **bytes**, e.g. ``b"\\frac { 1 } { x }"``: ``.decode()`` it
  id      **bytes**, the sample name
TFDS returns `Text` features undecoded as bytes in this mode. Records come in
TFDS's order (shuffled by a hash of the id at preparation, the same every
time), not the archive's.

Requirements worth knowing (tensorflow-datasets 4.9.x without TensorFlow):
  * ``importlib_resources`` must be installed: TFDS imports it to locate the
    code of a builder defined in a package, but declares it only for
    Python < 3.9.
  * Images are decoded with OpenCV when installed, else with Pillow (TFDS logs
    a one-time warning recommending OpenCV); Pillow is enough.
  * The ``tfds`` command line imports TensorFlow at start-up (its
    ``convert_format`` subcommand), so ``tfds build`` fails without it. Prepare
    from Python as above, or run TFDS's ``build`` subcommand directly, which
    does not need TensorFlow::

      python -c "import sys, simple_parsing; from tensorflow_datasets.scripts.cli import build; simple_parsing.parse(build.Args, args=sys.argv[1:]).execute()" \\
          tfds_crohme/crohme --manual_dir DIR_WITH_DATA_ZIP --data_dir DATA_DIR
"""

from tfds_crohme.crohme.crohme_dataset_builder import Builder as Crohme
from tfds_crohme.crohme.crohme_dataset_builder import CrohmeConfig
from tfds_crohme.crohme.vocabulary_metadata import load_vocabulary
from tfds_crohme.crohme_synthetic.crohme_synthetic_dataset_builder import Builder as CrohmeSynthetic
from tfds_crohme.crohme_synthetic.crohme_synthetic_dataset_builder import SyntheticConfig
from tfds_crohme.crohme_synthetic.grammar import sample_expression
from tfds_crohme.crohme_synthetic.render import render_expression

__all__ = [
    "Crohme", "CrohmeConfig", "CrohmeSynthetic", "SyntheticConfig", "load_vocabulary",
    "render_expression", "sample_expression",
]
