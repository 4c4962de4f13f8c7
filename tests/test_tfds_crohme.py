"""The `crohme` TFDS builder: dummy data, bad archives, a slice of the real archive.

Everything runs without TensorFlow (TFDS in its NumPy mode); a subprocess test
checks that TensorFlow is never imported.
"""

import io
import json
import os
import pathlib
import subprocess
import sys
import textwrap
import zipfile

import numpy as np
from PIL import Image
import pytest
import tensorflow_datasets as tfds

import tfds_crohme
from hme_jax.text.vocab import Vocabulary
from tfds_crohme.crohme import comer_archive
from tfds_crohme.crohme import crohme_dataset_builder
from tfds_crohme.crohme import make_dummy_data

REPO_ROOT = pathlib.Path(__file__).parents[1]
DUMMY_DIR = REPO_ROOT / "tfds_crohme" / "crohme" / "dummy_data"
REAL_ARCHIVE = REPO_ROOT.parent / "shared" / "crohme" / "data.zip"
requires_real_archive = pytest.mark.skipif(
    not REAL_ARCHIVE.exists(), reason=f"no CROHME archive at {REAL_ARCHIVE}")


def build(data_dir, config=None, manual_dir=None):
  builder = tfds.builder("crohme", data_dir=os.fspath(data_dir), config=config)
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
      manual_dir=os.fspath(manual_dir) if manual_dir else None))
  return builder


def build_from_archive(data_dir, archive_path, name="from_path"):
  config = tfds_crohme.CrohmeConfig(name=name, archive_path=os.fspath(archive_path), url="")
  return build(data_dir, config=config)


def archive_pixels(archive_path, split, name) -> np.ndarray:
  with zipfile.ZipFile(archive_path) as archive:
    data = archive.read(f"data/{split}/img/{name}.bmp")
  return np.asarray(Image.open(io.BytesIO(data)))


def read_split(data_dir, name, split):
  source = tfds.data_source(name, split=split, data_dir=os.fspath(data_dir))
  return [source[i] for i in range(len(source))]


# --- the dummy archive -------------------------------------------------------


@pytest.fixture(scope="module")
def dummy_data_dir(tmp_path_factory):
  data_dir = tmp_path_factory.mktemp("tfds")
  build(data_dir, manual_dir=DUMMY_DIR)
  return data_dir


def test_dummy_data_is_what_the_script_writes(tmp_path):
  # The committed file must stay reproducible from make_dummy_data.py.
  make_dummy_data.write_archive(tmp_path / "data.zip")
  assert (tmp_path / "data.zip").read_bytes() == (DUMMY_DIR / "data.zip").read_bytes()


def test_counts_per_split(dummy_data_dir):
  builder = tfds.builder("crohme", data_dir=os.fspath(dummy_data_dir))
  counts = {split: info.num_examples for split, info in builder.info.splits.items()}
  assert counts == {split: len(samples) for split, samples in make_dummy_data.SAMPLES.items()}


def test_records_match_the_archive(dummy_data_dir):
  for split, samples in make_dummy_data.SAMPLES.items():
    expected = dict(samples)
    records = read_split(dummy_data_dir, "crohme", split)
    assert sorted(r["id"] for r in records) == sorted(name.encode() for name in expected)
    for record in records:
      # data_source gives text features as bytes.
      name = record["id"].decode()
      assert record["latex"].decode() == expected[name]
      image = record["image"]
      assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[-1] == 1
      # Pixels exactly as in the BMP: white ink (255) on black (0).
      np.testing.assert_array_equal(
          image[..., 0], archive_pixels(DUMMY_DIR / "data.zip", split, name))
      assert np.median(image) == 0 and image.max() == 255


def test_features_and_file_format(dummy_data_dir):
  builder = tfds.builder("crohme", data_dir=os.fspath(dummy_data_dir))
  features = builder.info.features
  assert set(features.keys()) == {"image", "latex", "id"}
  assert features["image"].shape == (None, None, 1)
  assert features["image"].encoding_format == "png"
  assert builder.info.file_format == tfds.core.FileFormat.ARRAY_RECORD
  assert list(pathlib.Path(builder.data_dir).glob("crohme-train.array_record-*"))


def test_vocabulary_is_saved_and_survives_reloading(dummy_data_dir):
  expected = Vocabulary.from_captions(c for _, c in make_dummy_data.SAMPLES["train"])
  data_path = tfds.builder("crohme", data_dir=os.fspath(dummy_data_dir)).data_path
  saved = json.loads((data_path / "metadata.json").read_text())
  assert Vocabulary.from_json(saved["vocab"]) == expected
  # A fresh builder (from the code) and a read-only one (from the files alone).
  assert tfds_crohme.load_vocabulary(
      tfds.builder("crohme", data_dir=os.fspath(dummy_data_dir))) == expected.to_json()
  from_files = tfds.builder_from_directory(os.fspath(data_path))
  assert tfds_crohme.load_vocabulary(from_files.info) == expected.to_json()


def test_the_stored_vocabulary_is_a_vocab_file_of_hme_jax():
  from tfds_crohme.crohme import vocabulary_metadata
  captions = ["x ^ { 2 }", "\\frac { a } { b } <blank>", "", "b a"]
  assert vocabulary_metadata.vocabulary_json(captions) == \
      Vocabulary.from_captions(captions).to_json()


def test_load_vocabulary_of_an_unprepared_dataset_says_so(tmp_path):
  with pytest.raises(ValueError, match="no vocabulary"):
    tfds_crohme.load_vocabulary(tfds.builder("crohme", data_dir=os.fspath(tmp_path)))


# --- where the archive comes from --------------------------------------------


def test_archive_path_in_the_config(tmp_path):
  builder = build_from_archive(tmp_path / "tfds", DUMMY_DIR / "data.zip", name="local")
  assert builder.info.splits["train"].num_examples == len(make_dummy_data.SAMPLES["train"])
  # Read back by name, from the files (the custom config is not in the code).
  assert len(tfds.data_source("crohme/local", split="2014", data_dir=os.fspath(tmp_path / "tfds"))) \
      == len(make_dummy_data.SAMPLES["2014"])


def test_missing_archive_says_where_to_put_it(tmp_path):
  manual_dir = tmp_path / "manual"
  config = tfds_crohme.CrohmeConfig(name="offline", url="")
  with pytest.raises(FileNotFoundError) as error:
    build(tmp_path / "tfds", config=config, manual_dir=manual_dir)
  message = str(error.value)
  assert str(manual_dir / "data.zip") in message
  assert crohme_dataset_builder.ARCHIVE_URL in message


def test_missing_archive_without_network_fails_fast(tmp_path, monkeypatch):
  monkeypatch.setattr(crohme_dataset_builder, "can_reach", lambda url: False)
  with pytest.raises(FileNotFoundError, match="cannot be reached") as error:
    build(tmp_path / "tfds", manual_dir=tmp_path / "empty")
  assert str(tmp_path / "empty" / "data.zip") in str(error.value)


def test_missing_archive_path(tmp_path):
  with pytest.raises(FileNotFoundError, match="no such file"):
    build_from_archive(tmp_path / "tfds", tmp_path / "nope.zip")


# --- bad archive content fails loudly, naming the sample ---------------------

SMALL_SAMPLES = {
    "train": [("good_one", "x + 1"), ("victim", r"\frac { a } { b }")],
    "2014": [("test_one", "x")],
}


def _rewrite_zip(path, drop=(), replace=None, add=None):
  """Copies the zip at ``path`` without ``drop``, with ``replace``d and ``add``ed members."""
  replace, add = replace or {}, add or {}
  with zipfile.ZipFile(path) as archive:
    members = {name: archive.read(name) for name in archive.namelist()}
  for name in drop:
    del members[name]
  members.update(replace)
  members.update(add)
  with zipfile.ZipFile(path, "w") as archive:
    for name, data in members.items():
      archive.writestr(name, data)


def _caption_file(samples):
  return "".join(f"{name}\t{caption}\n" for name, caption in samples).encode()


BAD_ARCHIVES = {
    "unreadable_image": dict(replace={"data/train/img/victim.bmp": b"not a bitmap"}),
    "caption_without_image": dict(drop=["data/train/img/victim.bmp"]),
    "empty_caption": dict(replace={"data/train/caption.txt": _caption_file(
        [("good_one", "x + 1"), ("victim", "  ")])}),
    "caption_line_without_tab": dict(replace={"data/train/caption.txt": b"good_one\tx\nvictim\n"}),
    "image_without_caption": dict(replace={"data/train/caption.txt": _caption_file(
        [("good_one", "x + 1")])}),
    "duplicated_caption": dict(replace={"data/train/caption.txt": _caption_file(
        [("good_one", "x"), ("victim", "y"), ("victim", "z")])}),
}


@pytest.mark.parametrize("case", sorted(BAD_ARCHIVES))
def test_bad_archive_names_the_sample(tmp_path, case):
  archive_path = tmp_path / "data.zip"
  make_dummy_data.write_archive(archive_path, SMALL_SAMPLES)
  _rewrite_zip(archive_path, **BAD_ARCHIVES[case])
  with pytest.raises(comer_archive.ArchiveError, match="'victim'"):
    build_from_archive(tmp_path / "tfds", archive_path)


def test_archive_without_train_split_is_refused(tmp_path):
  archive_path = tmp_path / "data.zip"
  make_dummy_data.write_archive(archive_path, {"2014": SMALL_SAMPLES["2014"]})
  with pytest.raises(comer_archive.ArchiveError, match="train"):
    build_from_archive(tmp_path / "tfds", archive_path)


def test_splits_are_those_present_known_ones_first(tmp_path):
  archive_path = tmp_path / "data.zip"
  make_dummy_data.write_archive(archive_path, {
      "2019": [("a", "x")], "train": [("b", "y")], "extra": [("c", "z")], "2014": [("d", "x")]})
  with zipfile.ZipFile(archive_path) as archive:
    assert comer_archive.list_splits(archive) == ["train", "2014", "2019", "extra"]


# --- a slice of the real archive ---------------------------------------------


def _real_subset(archive_path, per_split):
  """Copies the first ``per_split`` samples of each split into a new zip."""
  with zipfile.ZipFile(REAL_ARCHIVE) as source, zipfile.ZipFile(archive_path, "w") as target:
    counts = {}
    for split in comer_archive.list_splits(source):
      captions = list(comer_archive.read_captions(source, split).items())[:per_split]
      target.writestr(f"data/{split}/caption.txt", _caption_file(captions))
      for name, _ in captions:
        member = f"data/{split}/img/{name}.bmp"
        target.writestr(member, source.read(member))
      counts[split] = len(captions)
  return counts


@requires_real_archive
def test_real_archive_subset(tmp_path):
  archive_path = tmp_path / "data.zip"
  counts = _real_subset(archive_path, per_split=50)
  assert {"train", "2014", "2016"} <= set(counts)
  builder = build_from_archive(tmp_path / "tfds", archive_path, name="real_subset")
  assert {s: i.num_examples for s, i in builder.info.splits.items()} == counts

  with zipfile.ZipFile(REAL_ARCHIVE) as archive:
    full_train = comer_archive.read_captions(archive, "train").values()
  full_vocabulary = Vocabulary.from_captions(full_train)
  subset_vocabulary = Vocabulary.from_json(tfds_crohme.load_vocabulary(builder))
  assert set(subset_vocabulary.tokens) <= set(full_vocabulary.tokens)
  for split in counts:
    for record in read_split(tmp_path / "tfds", "crohme/real_subset", split):
      tokens = record["latex"].decode().split()
      assert tokens and all(token in full_vocabulary for token in tokens)
      if split == "train":
        assert all(token in subset_vocabulary for token in tokens)
      image = record["image"][..., 0]
      # Background dark, strokes bright and a minority of the pixels.
      assert np.median(image) == 0 and image.max() == 255
      assert 0.0 < (image > 127).mean() < 0.5
  record = read_split(tmp_path / "tfds", "crohme/real_subset", "2016")[0]
  np.testing.assert_array_equal(
      record["image"][..., 0], archive_pixels(REAL_ARCHIVE, "2016", record["id"].decode()))


# --- no TensorFlow -------------------------------------------------------------

_NO_TF_SCRIPT = textwrap.dedent("""
    import json, sys
    import tensorflow_datasets as tfds
    import tfds_crohme
    data_dir, dummy_dir = sys.argv[1], sys.argv[2]
    tfds.builder("crohme", data_dir=data_dir).download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=dummy_dir))
    config = tfds_crohme.SyntheticConfig(name="micro", num_train=6, num_test=2)
    tfds.builder("crohme_synthetic", config=config, data_dir=data_dir).download_and_prepare()
    shapes = [tfds.data_source(name, split=split, data_dir=data_dir)[0]["image"].shape
              for name, split in [("crohme", "2016"), ("crohme_synthetic/micro", "test")]]
    print(json.dumps({"tensorflow": sorted(m for m in sys.modules if m.split(".")[0] == "tensorflow"),
                      "ranks": [len(s) for s in shapes]}))
""")


@pytest.mark.timeout(600)  # its subprocess is allowed 300 s
def test_builders_and_data_source_never_import_tensorflow(tmp_path):
  env = dict(os.environ, PYTHONPATH=os.pathsep.join(
      filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])))
  result = subprocess.run(
      [sys.executable, "-c", _NO_TF_SCRIPT, str(tmp_path), str(DUMMY_DIR)],
      capture_output=True, text=True, env=env, cwd=REPO_ROOT, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  report = json.loads(result.stdout.strip().splitlines()[-1])
  assert report == {"tensorflow": [], "ranks": [3, 3]}


@pytest.mark.timeout(600)  # its subprocess is allowed 300 s
def test_tfds_build_command_runs_without_tensorflow(tmp_path):
  """`python -m tfds_crohme.build` is `tfds build` minus the TensorFlow import."""
  import subprocess
  import sys
  root = pathlib.Path(__file__).resolve().parents[1]
  code = ("import sys, runpy; sys.argv = ['build', 'tfds_crohme/crohme', '--manual_dir', "
          f"{str(root / 'tfds_crohme/crohme/dummy_data')!r}, '--data_dir', {str(tmp_path)!r}]; "
          "runpy.run_module('tfds_crohme.build', run_name='__main__'); "
          "assert 'tensorflow' not in sys.modules, 'tensorflow was imported'")
  result = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True,
                          timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  import tensorflow_datasets as tfds
  builder = tfds.builder_from_directory(str(tmp_path / "crohme" / "default" / "1.0.0"))
  assert {name: split.num_examples for name, split in builder.info.splits.items()} == {
      "train": 4, "2014": 2, "2016": 2}
