"""The `crohme` dataset: CROHME offline handwritten math, from the CoMER archive.

Splits are whichever of ``train``, ``2014``, ``2016``, ``2019`` the archive holds
(train 8,835 / 2014 986 / 2016 1,147 expressions in the usual copy, 2019 1,199
when present). Features: see `dataset_conventions` (image white ink on black,
exactly the archive's pixels; latex tokens; id). The vocabulary of the train
captions is stored in the dataset's metadata (`tfds_crohme.load_vocabulary`).

Where the archive comes from, first match wins:

1. ``CrohmeConfig(archive_path=...)``, a custom config (it needs its own name,
   e.g. ``"local"``; read it back as ``"crohme/local"``);
2. ``<manual_dir>/data.zip`` (TFDS manual dir, by default
   ``<data_dir>/downloads/manual/``);
3. a download of `ARCHIVE_URL`, when a network is there.

Preparing, without TensorFlow (the ``tfds`` command of tensorflow-datasets
4.9.x imports TensorFlow at start-up, so ``tfds build`` needs it; see the
`tfds_crohme` docstring for a TF-free way to run its build subcommand)::

  import tensorflow_datasets as tfds
  import tfds_crohme  # registers the builders

  builder = tfds.builder("crohme", data_dir="~/tensorflow_datasets")
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
      manual_dir="/path/to/dir/with/data.zip"))

With TensorFlow installed, the CLI does the same::

  tfds build tfds_crohme/crohme --manual_dir /path/to/dir --data_dir ~/tensorflow_datasets

On the 2-core development machine the full archive (10,968 images) prepares in
about 25 s.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import urllib.parse
import zipfile

from etils import epath
import tensorflow_datasets as tfds

from tfds_crohme.crohme import comer_archive
from tfds_crohme.crohme import dataset_conventions
from tfds_crohme.crohme import vocabulary_metadata

ARCHIVE_NAME = "data.zip"
ARCHIVE_URL = "https://github.com/Green-Wood/CoMER/raw/master/data.zip"
HOMEPAGE = "https://github.com/Green-Wood/CoMER"

_INSTRUCTIONS = f"""\
Put the CROHME archive in the CoMER layout, named {ARCHIVE_NAME}, in the TFDS
manual directory (by default <data_dir>/downloads/manual/, or the directory given
with --manual_dir / DownloadConfig(manual_dir=...)). Get it from
{ARCHIVE_URL}
(the same archive as BTTR, CoMER, ICAL, TAMER and PosFormer). It holds
data/<split>/caption.txt and data/<split>/img/<name>.bmp for the splits train,
2014, 2016 and (in newer copies) 2019.
"""


@dataclasses.dataclass(eq=False)
class CrohmeConfig(tfds.core.BuilderConfig):
  """Where to read the archive from.

  Attributes:
    archive_path: a ``data.zip`` to read instead of the manual dir.
    url: where to download the archive from when no local copy is found; ""
      never downloads.
  """
  archive_path: str = ""
  url: str = ARCHIVE_URL


class Builder(tfds.core.GeneratorBasedBuilder):
  """CROHME (CoMER data.zip) as image / LaTeX-token pairs."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = _INSTRUCTIONS
  BUILDER_CONFIGS = [
      CrohmeConfig(name="default", description="The archive from the manual "
                   "dir, else downloaded from the CoMER repository."),
  ]

  def __init__(self, *, file_format=None, **kwargs):
    super().__init__(file_format=file_format, **kwargs)
    dataset_conventions.set_default_file_format(self, file_format)

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        features=dataset_conventions.features(),
        supervised_keys=("image", "latex"),
        homepage=HOMEPAGE,
        metadata=tfds.core.MetadataDict(),
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    archive_path = self._find_archive(dl_manager)
    with zipfile.ZipFile(archive_path) as archive:
      splits = comer_archive.list_splits(archive)
      if "train" not in splits:
        raise comer_archive.ArchiveError(
            f"{archive_path} has no data/train/caption.txt (found splits: "
            f"{splits}); the vocabulary is built from the train captions.")
      train_captions = comer_archive.read_captions(archive, "train")
    vocabulary_metadata.store_vocabulary(self.info, train_captions.values())
    return {split: self._generate_examples(archive_path, split)
            for split in splits}

  def _generate_examples(self, archive_path: str, split: str):
    for name, png, caption in comer_archive.iter_samples(archive_path, split):
      yield name, {"image": png, "latex": caption, "id": name}

  def _find_archive(self, dl_manager: tfds.download.DownloadManager) -> str:
    """The local path of data.zip; see the module docstring for the order."""
    config = self.builder_config
    if config.archive_path:
      path = epath.Path(config.archive_path).expanduser()
      if not path.exists():
        raise FileNotFoundError(
            f"CrohmeConfig(archive_path={config.archive_path!r}): no such file.\n"
            + _INSTRUCTIONS)
      return os.fspath(path)

    manual_dir = _manual_dir(dl_manager)
    if manual_dir is not None and (manual_dir / ARCHIVE_NAME).exists():
      return os.fspath(manual_dir / ARCHIVE_NAME)

    where = (f"{manual_dir / ARCHIVE_NAME}" if manual_dir is not None
             else f"<manual_dir>/{ARCHIVE_NAME}")
    if not config.url:
      raise FileNotFoundError(f"No CROHME archive at {where}.\n" + _INSTRUCTIONS)
    if not can_reach(config.url):
      # Fail at once: TFDS would retry an unreachable host for minutes.
      raise FileNotFoundError(
          f"No CROHME archive at {where}, and {config.url} cannot be reached "
          "(no network?).\n" + _INSTRUCTIONS)
    try:
      return os.fspath(dl_manager.download(config.url))
    except Exception as error:  # no network, HTTP error, bad redirect...
      raise FileNotFoundError(
          f"No CROHME archive at {where}, and downloading {config.url} failed "
          f"({type(error).__name__}: {error}).\n" + _INSTRUCTIONS) from error


def can_reach(url: str, timeout_s: float = 5.0) -> bool:
  """Whether a TCP connection to the host of ``url`` opens within the timeout."""
  parsed = urllib.parse.urlsplit(url)
  port = parsed.port or (443 if parsed.scheme == "https" else 80)
  try:
    with socket.create_connection((parsed.hostname, port), timeout=timeout_s):
      return True
  except OSError:
    return False


def _manual_dir(dl_manager: tfds.download.DownloadManager) -> epath.Path | None:
  """The manual dir, whether or not it exists yet (None if none is set)."""
  try:
    return dl_manager.manual_dir
  except AssertionError:
    # TFDS refuses a missing or empty manual dir; we still want its path for
    # the error message.
    manual_dir = getattr(dl_manager, "_manual_dir", None)
    return epath.Path(manual_dir) if manual_dir else None
