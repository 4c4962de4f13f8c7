import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest
from configs import default

from hme_jax import ctc
from hme_jax.data import input_pipeline
from hme_jax.text.vocab import Vocabulary

CAPTIONS = ["x ^ { 2 }", "a + b", "\\frac { 1 } { 2 }", "1", "x = y"]


def fake_records(count, short_label_wide=True):
  """Records like a TFDS data source yields: bright strokes on black, a caption, an id."""
  rng = np.random.default_rng(0)
  records = []
  for index in range(count):
    height, width = rng.integers(30, 80), rng.integers(20, 400)
    image = np.zeros((height, width, 1), np.uint8)
    image[height // 3: 2 * height // 3, 2: width - 2] = 255
    records.append({"image": image, "latex": CAPTIONS[index % len(CAPTIONS)].encode(),
                    "id": f"sample{index}".encode()})
  return records


def small_config(num_epochs=2, batch_size=4):
  config = default.get_config()
  config.input.height = 32
  config.input.max_width = 256
  config.input.bucket_widths = (64, 128, 256)
  config.train.num_epochs = num_epochs
  config.train.batch_size = batch_size
  config.model.width_downsample = 4
  return config


VOCAB = Vocabulary.from_captions(CAPTIONS)


def test_batches_are_bucketed_and_padded_correctly():
  config = small_config()
  records = fake_records(12)
  dataset = input_pipeline.train_dataset(config, records, VOCAB)
  for batch in dataset:
    batch_size, height, width, channels = batch["images"].shape
    assert (batch_size, height, channels) == (4, 32, 1)
    assert width in config.input.bucket_widths
    assert width >= batch["image_widths"].max()
    # The smallest bucket that fits was chosen.
    smaller = [b for b in config.input.bucket_widths if b < width]
    assert not smaller or smaller[-1] < batch["image_widths"].max()
    for row in range(batch_size):
      assert not batch["images"][row, :, batch["image_widths"][row]:].any()
      length = batch["label_lengths"][row]
      assert not batch["labels"][row, length:].any() and (batch["labels"][row, :length] > 0).all()
      caption = VOCAB.to_latex(batch["labels"][row, :length])
      index = int(batch["ids"][row].removeprefix("sample"))
      assert caption == CAPTIONS[index % len(CAPTIONS)]
    assert batch["labels"].shape[1] >= input_pipeline.MIN_LABEL_BUCKET
    np.testing.assert_array_equal(batch["sample_mask"], 1.0)


def test_every_epoch_is_a_permutation_and_epochs_differ():
  config = small_config(num_epochs=2, batch_size=4)
  config.augment.enabled = False
  records = fake_records(8)
  batches = list(input_pipeline.train_dataset(config, records, VOCAB))
  assert len(batches) == 4 and input_pipeline.steps_per_epoch(config, len(records)) == 2
  epochs = [np.concatenate([b["ids"] for b in batches[:2]]),
            np.concatenate([b["ids"] for b in batches[2:]])]
  for epoch in epochs:
    assert sorted(epoch) == sorted(f"sample{i}" for i in range(8))
  assert list(epochs[0]) != list(epochs[1])


def test_same_seed_same_batches_and_iterator_state_resumes_exactly():
  config = small_config(num_epochs=3)
  records = fake_records(10)
  first = input_pipeline.to_iterator(input_pipeline.train_dataset(config, records, VOCAB))
  for _ in range(2):
    next(first)
  state = first.get_state()
  expected = [next(first) for _ in range(3)]
  resumed = input_pipeline.to_iterator(input_pipeline.train_dataset(config, records, VOCAB))
  resumed.set_state(state)
  for want in expected:
    got = next(resumed)
    np.testing.assert_array_equal(got["images"], want["images"])  # augmentation included
    np.testing.assert_array_equal(got["labels"], want["labels"])
  config.seed = 1
  other = next(input_pipeline.to_iterator(input_pipeline.train_dataset(config, records, VOCAB)))
  assert not np.array_equal(other["ids"], list(input_pipeline.train_dataset(
      small_config(num_epochs=3), records, VOCAB))[0]["ids"])


def test_eval_batches_cover_every_sample_once_with_masked_filler():
  config = small_config()
  config.input.sort_window = 0  # unsorted: the split's own order
  records = fake_records(10)
  batches = list(input_pipeline.eval_dataset(config, records, VOCAB, batch_size=4))
  assert len(batches) == 3
  assert all(b["images"].shape[0] == 4 for b in batches)
  np.testing.assert_array_equal(batches[-1]["sample_mask"], [1, 1, 0, 0])
  ids = [i for b in batches for i, m in zip(b["ids"], b["sample_mask"]) if m]
  assert ids == [f"sample{i}" for i in range(10)]


def test_infeasible_ctc_labels_are_flagged_and_counted():
  config = small_config()
  narrow = np.zeros((40, 8, 1), np.uint8)
  narrow[10:30, 2:6] = 255  # 8 px wide at height 32 -> ~6 px -> 2 CTC frames
  records = [{"image": narrow, "latex": b"x ^ { 2 }", "id": b"narrow"}] + fake_records(3)[1:]
  batch = next(iter(input_pipeline.eval_dataset(config, records, VOCAB, batch_size=4)))
  row = list(batch["ids"]).index("narrow")
  frames = ctc.frame_lengths(batch["image_widths"][row], config.model.width_downsample)
  assert frames < 5 and batch["ctc_feasible"][row] == 0
  assert batch["ctc_feasible"][[r for r in range(3) if r != row]].all()
  count, ids = input_pipeline.count_infeasible(config, records, VOCAB)
  assert (count, ids) == (1, ["narrow"])


def test_unknown_token_names_the_sample():
  records = [{"image": np.full((10, 10, 1), 255, np.uint8), "latex": b"x \\unknowntoken",
              "id": b"bad-sample"}] * 4
  with pytest.raises(ValueError, match=r"\\\\unknowntoken.*bad-sample"):
    # Read when the split is cached in memory, or at the first batch without the cache.
    next(iter(input_pipeline.train_dataset(small_config(batch_size=1), records, VOCAB)))
  # An evaluation split scores it (tests/test_evaluate_predict.py): label id 0 marks the token.
  batch = next(iter(input_pipeline.eval_dataset(small_config(), records[:1], VOCAB, batch_size=1)))
  assert batch["labels"][0, :2].tolist() == [VOCAB.id_of("x"), 0]


def test_each_process_reads_a_disjoint_shard(monkeypatch):
  records = fake_records(10)
  config = small_config()
  seen = []
  for process in range(2):
    monkeypatch.setattr(jax, "process_index", lambda p=process: p)
    monkeypatch.setattr(jax, "process_count", lambda: 2)
    batches = input_pipeline.eval_dataset(config, records, VOCAB, batch_size=2)
    seen.append([i for b in batches for i, m in zip(b["ids"], b["sample_mask"]) if m])
  assert not set(seen[0]) & set(seen[1])
  assert sorted(seen[0] + seen[1]) == sorted(f"sample{i}" for i in range(10))


def test_bad_bucket_config_is_a_clear_error():
  config = small_config()
  config.input.bucket_widths = (64, 130, 256)
  with pytest.raises(ValueError, match="multiple of"):
    input_pipeline.train_dataset(config, fake_records(4), VOCAB)
  config.input.bucket_widths = (64, 128)
  with pytest.raises(ValueError, match="max_width"):
    input_pipeline.train_dataset(config, fake_records(4), VOCAB)


def test_synthetic_dataset_through_tfds_data_source(synthetic_data_dir):
  from conftest import tiny_config
  config = tiny_config(synthetic_data_dir)
  builder = input_pipeline.dataset_builder(config.dataset)
  vocab = input_pipeline.load_vocabulary(builder)
  source = input_pipeline.data_source(builder, "train")
  batch = next(iter(input_pipeline.train_dataset(config, source, vocab)))
  assert batch["images"].shape[:2] == (config.train.batch_size, config.input.height)
  assert batch["images"].dtype == np.uint8 and batch["images"].max() > 128
  # White ink on black: the background (most pixels of the content) is dark.
  row = batch["images"][0, :, : batch["image_widths"][0], 0]
  assert np.median(row) < 64
  with pytest.raises(input_pipeline.DatasetNotFoundError, match="2019"):
    input_pipeline.data_source(builder, "2019")


@pytest.mark.timeout(600)  # its subprocess is allowed 300 s
def test_the_data_layer_never_imports_tensorflow(synthetic_data_dir):
  code = textwrap.dedent(f"""
      import sys
      sys.path.insert(0, "tests")
      from conftest import tiny_config
      from hme_jax.data import input_pipeline
      config = tiny_config({str(synthetic_data_dir)!r})
      builder = input_pipeline.dataset_builder(config.dataset)
      vocab = input_pipeline.load_vocabulary(builder)
      batch = next(iter(input_pipeline.train_dataset(
          config, input_pipeline.data_source(builder, "train"), vocab)))
      assert batch["images"].ndim == 4
      loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow", "tf_keras"))
      print("TF_MODULES", loaded)
      assert "tensorflow" not in sys.modules, loaded
  """)
  import pathlib
  root = pathlib.Path(__file__).resolve().parents[1]
  result = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True,
                          timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "TF_MODULES []" in result.stdout


# --- native scale, canvases, size-sorted batches -------------------------------------


def native_config(num_epochs=2, batch_size=4, sort_window=2):
  config = small_config(num_epochs, batch_size)
  config.model.name = "attention"
  config.input.height = 0
  config.input.max_height = 64
  config.input.max_width = 256
  config.input.canvases = ((48, 128, 8), (64, 256, 16))
  config.input.sort_window = sort_window
  return config


def test_native_scale_keeps_each_image_size_and_pads_to_the_smallest_canvas():
  config = native_config(sort_window=0)
  records = fake_records(12)
  for record in records:  # ink on all but 5 rows at the top and bottom
    record["image"][5:-5, 2:-2] = 255
  shapes = input_pipeline.BatchShapes.from_config(config.input)
  for batch in input_pipeline.eval_dataset(config, records, VOCAB, batch_size=4):
    heights, widths = batch["image_heights"], batch["image_widths"]
    real = batch["sample_mask"] > 0
    canvas = batch["images"].shape[1:3] + batch["labels"].shape[1:]
    assert canvas in config.input.canvases
    # The first canvas holding every image and label of the batch was chosen.
    first = max(shapes.size_class(heights[real], widths[real], batch["label_lengths"][real]))
    assert canvas == config.input.canvases[first]
    for row in np.flatnonzero(real):
      index = int(batch["ids"][row].removeprefix("sample"))
      # Ink-cropped (2 px margin) at the archive's own scale; only what is wider than
      # max_width is shrunk, keeping the aspect ratio.
      source = records[index]["image"][..., 0]
      cropped = (source.shape[0] - 6, source.shape[1])
      scale = min(1.0, 64 / cropped[0], 256 / cropped[1])
      assert (heights[row], widths[row]) == (round(cropped[0] * scale), round(cropped[1] * scale))
      assert not batch["images"][row, heights[row]:].any()
      assert not batch["images"][row, :, widths[row]:].any()
      assert batch["images"][row, : heights[row], : widths[row]].any()


def test_native_scale_shrinks_only_what_exceeds_the_bounds():
  from hme_jax.data import preprocessing
  config = native_config()
  tall = np.full((200, 100), 255, np.uint8)
  wide = np.full((20, 1000), 255, np.uint8)
  tiny = np.full((4, 6), 255, np.uint8)
  assert preprocessing.fit_image(tall, config.input).shape == (64, 32)
  assert preprocessing.fit_image(wide, config.input).shape == (5, 256)
  assert preprocessing.fit_image(tiny, config.input).shape == (16 * 4 // 4, 24)
  assert preprocessing.fit_image(np.full((30, 40), 255, np.uint8), config.input).shape == (30, 40)


def test_labels_longer_than_every_canvas_get_a_power_of_two_length():
  config = native_config()
  long_caption = " ".join(["x"] * 20)
  records = [{"image": np.full((20, 30, 1), 255, np.uint8), "latex": long_caption.encode(),
              "id": b"long"}]
  vocab = Vocabulary.from_captions(CAPTIONS + [long_caption])
  batch = next(iter(input_pipeline.eval_dataset(config, records, vocab, batch_size=2)))
  assert batch["labels"].shape == (2, 32) and batch["images"].shape[1:3] == (64, 256)


def test_sorted_batches_hold_samples_of_one_size_and_cover_each_epoch():
  keys = np.random.default_rng(1).integers(0, 3, 64)
  order = input_pipeline.sorted_batch_order(keys, batch_size=4, num_epochs=3, seed=0, window=8)
  assert order.shape == (3 * 64,)
  for epoch in order.reshape(3, 64):
    assert sorted(epoch) == list(range(64))  # every sample once per epoch (64 = 16 full batches)
  batches = order.reshape(-1, 4)
  # Sorted within windows of 8 batches: most batches are of one size class.
  pure = np.mean([len(set(keys[b])) == 1 for b in batches])
  assert pure > 0.6
  # Unsorted batches of the same keys are rarely pure.
  shuffled = np.random.default_rng(2).permutation(64).reshape(-1, 4)
  assert np.mean([len(set(keys[b])) == 1 for b in shuffled]) < 0.3
  # Epochs differ, and the whole order is a pure function of the seed.
  assert not np.array_equal(order[:64], order[64:128])
  np.testing.assert_array_equal(order, input_pipeline.sorted_batch_order(keys, 4, 3, 0, 8))


def test_size_sorted_training_uses_few_shapes_and_resumes_exactly():
  config = native_config(num_epochs=2, batch_size=4, sort_window=3)
  records = fake_records(24)
  dataset = input_pipeline.train_dataset(config, records, VOCAB)
  batches = list(dataset)
  assert len(batches) == 2 * input_pipeline.steps_per_epoch(config, len(records))
  for epoch in (batches[:6], batches[6:]):
    assert sorted(i for b in epoch for i in b["ids"]) == sorted(f"sample{i}" for i in range(24))
  shapes = {b["images"].shape[1:3] + b["labels"].shape[1:] for b in batches}
  assert shapes <= set(config.input.canvases)
  iterator = input_pipeline.to_iterator(dataset)
  next(iterator), next(iterator)
  state = iterator.get_state()
  expected = next(iterator)
  resumed = input_pipeline.to_iterator(input_pipeline.train_dataset(config, records, VOCAB))
  resumed.set_state(state)
  got = next(resumed)
  np.testing.assert_array_equal(got["images"], expected["images"])
  np.testing.assert_array_equal(got["ids"], expected["ids"])


def test_sorted_eval_reads_every_sample_once_in_size_order():
  config = native_config(sort_window=1)
  records = fake_records(11)
  batches = list(input_pipeline.eval_dataset(config, records, VOCAB, batch_size=4))
  ids = [i for b in batches for i, m in zip(b["ids"], b["sample_mask"]) if m]
  assert sorted(ids) == sorted(f"sample{i}" for i in range(11))
  areas = [h * w for b in batches for h, w, m in
           zip(b["image_heights"], b["image_widths"], b["sample_mask"]) if m]
  classes = [c for b in batches for c, m in zip(input_pipeline.BatchShapes.from_config(
      config.input).size_class(b["image_heights"], b["image_widths"], b["label_lengths"]),
      b["sample_mask"]) if m]
  assert list(zip(classes, areas)) == sorted(zip(classes, areas))


@pytest.mark.parametrize("change, message", [
    (dict(canvases=()), "need config.input.canvases"),
    (dict(canvases=((64, 128, 8), (48, 256, 16))), "at least the one before"),
    (dict(canvases=((48, 128, 8),)), "must hold the largest image"),
])
def test_bad_canvas_config_is_a_clear_error(change, message):
  config = native_config()
  config.input.update(change)
  with pytest.raises(ValueError, match=message):
    input_pipeline.train_dataset(config, fake_records(4), VOCAB)


def test_the_crnn_refuses_native_scale():
  config = native_config()
  config.model.name = "crnn"
  with pytest.raises(ValueError, match="CRNN needs one image height"):
    input_pipeline.eval_dataset(config, fake_records(4), VOCAB, batch_size=2)
