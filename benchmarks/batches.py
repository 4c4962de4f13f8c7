"""Random batches for the benchmarks (no flags: importable from any of them)."""

import numpy as np


def random_batch(batch_size, height, width, label_length, num_classes, width_downsample):
  """A fixed random training batch (numpy).

  ``images [B, H, W, 1]`` uint8, ``image_widths``, ``image_heights``,
  ``label_lengths`` ``[B]`` int32, ``labels [B, L]`` int32 (0-padded),
  ``sample_mask [B]`` float32. Widths are drawn in ``[width / 2, width]``,
  label lengths in ``[5, L]`` and at most half the image's frames
  (``ceil(width / width_downsample)``), so that a CTC model can align them.
  """
  rng = np.random.default_rng(0)
  widths = rng.integers(width // 2, width + 1, batch_size).astype(np.int32)
  frames = -(-widths // width_downsample)
  label_lengths = np.minimum(rng.integers(5, label_length + 1, batch_size), frames // 2).astype(np.int32)
  labels = rng.integers(1, num_classes, (batch_size, label_length)).astype(np.int32)
  labels[np.arange(label_length)[None, :] >= label_lengths[:, None]] = 0
  images = rng.integers(0, 256, (batch_size, height, width, 1)).astype(np.uint8)
  return {"images": images, "image_widths": widths,
          "image_heights": np.full(batch_size, height, np.int32), "labels": labels,
          "label_lengths": label_lengths, "sample_mask": np.ones(batch_size, np.float32)}
