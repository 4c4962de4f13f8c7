"""The training split in device memory: batches gathered and augmented inside the jitted step.

With ``config.input.device_resident`` every training example is decoded, cropped
and fitted once (``input_pipeline``'s examples and ``FitImage``, no augmentation),
grouped by the batch shape that holds it (``BatchShapes`` size classes; a class
with fewer samples than a batch joins the next larger one) and put on the
devices, replicated. A step then receives only the ``[B]`` indices of its
samples within one group: ``gather`` and ``augment`` run on the device, so the
host does no per-step image work and sends a few hundred bytes.

Batch order: every epoch shuffles each group's samples and cuts them into full
batches (a group's remainder waits for another epoch's shuffle), cuts each
group's batches into runs of ``steps_per_dispatch`` (the last one shorter),
then shuffles the epoch's runs: a run is consecutive steps of one batch shape,
which one program dispatch can train (``train.steps_per_dispatch``). It is a
function of ``(seed, epoch, steps_per_dispatch)`` alone, so the step number is
the position in the data: resuming needs no iterator state.
"""

from __future__ import annotations

import dataclasses
import functools
import os

import grain
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from hme_jax import ctc
from hme_jax.data import input_pipeline, preprocessing
from hme_jax.text.vocab import Vocabulary

# Per sample, as stored on the device (``images`` is ``uint8 [N, H, W, 1]``).
GROUP_KEYS = ("images", "image_heights", "image_widths", "labels", "label_lengths", "min_frames")


@dataclasses.dataclass
class DeviceTrainData:
  """One array dict per group (``GROUP_KEYS``), each group one batch shape ``(H, W, L)``."""

  groups: list[dict[str, jax.Array]]
  shapes: list[tuple[int, int, int]]
  group_sizes: list[int]
  batch_size: int
  seed: int
  index_sharding: NamedSharding
  steps_per_dispatch: int = 1
  # (epoch, group of each step [S], sample indices [S, B], end of each step's run [S])
  _plan: tuple[int, np.ndarray, np.ndarray, np.ndarray] | None = None

  @property
  def steps_per_epoch(self) -> int:
    return sum(size // self.batch_size for size in self.group_sizes)

  @property
  def num_samples(self) -> int:
    return sum(self.group_sizes)

  @property
  def nbytes(self) -> int:
    return sum(array.nbytes for group in self.groups for array in group.values())

  def epoch_plan(self, epoch: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(group of each step [S], sample indices within it [S, B], end of its run [S])`` of
    epoch ``epoch`` (0-based); a run is ``steps_per_dispatch`` steps or fewer, in one group,
    and ends at the step (within the epoch) it gives."""
    rng = np.random.default_rng([self.seed, epoch])
    runs = []  # (group, indices [R, B]) of each run, R <= steps_per_dispatch
    for group, size in enumerate(self.group_sizes):
      steps = size // self.batch_size
      order = rng.permutation(size)[: steps * self.batch_size]
      batches = order.reshape(steps, self.batch_size)
      runs += [(group, batches[start: start + self.steps_per_dispatch])
               for start in range(0, steps, self.steps_per_dispatch)]
    shuffled = [runs[i] for i in rng.permutation(len(runs))]
    lengths = np.array([len(indices) for _, indices in shuffled], dtype=np.int64)
    groups = np.repeat([group for group, _ in shuffled], lengths)
    indices = np.concatenate([indices for _, indices in shuffled]).astype(np.int32)
    return groups, indices, np.repeat(np.cumsum(lengths), lengths)

  def batches_at(self, step: int, stop: int) -> tuple[int, np.ndarray]:
    """The group and the sample indices ``[R, B]`` of training steps ``step, ...``: the rest of
    ``step``'s run, ending before step ``stop`` (0-based, global)."""
    epoch, position = divmod(step, self.steps_per_epoch)
    if self._plan is None or self._plan[0] != epoch:
      self._plan = (epoch, *self.epoch_plan(epoch))
    _, groups, indices, run_ends = self._plan
    end = min(int(run_ends[position]), stop - epoch * self.steps_per_epoch)
    if end <= position:
      raise ValueError(f"No training step between step {step} and step {stop}.")
    return int(groups[position]), indices[position:end]

  def dispatch_at(self, step: int, stop: int) -> tuple[int, jax.Array, int]:
    """``(group, device sample indices, steps)`` of the dispatch that starts at step ``step``
    and ends before ``stop``: indices ``[B]`` with one step per dispatch, else ``[K, B]``
    (rows past ``steps`` repeat the last: valid indices, never trained on)."""
    group, indices = self.batches_at(step, stop)
    steps = len(indices)
    if self.steps_per_dispatch == 1:
      return group, jax.device_put(indices[0], self.index_sharding), 1
    padded = np.concatenate([indices, np.repeat(indices[-1:], self.steps_per_dispatch - steps, 0)])
    return group, jax.device_put(padded, self.abstract_indices().sharding), steps

  def abstract_indices(self) -> jax.ShapeDtypeStruct:
    """What ``dispatch_at`` gives as indices: ``[B]``, or ``[K, B]`` with K steps per dispatch."""
    if self.steps_per_dispatch == 1:
      return jax.ShapeDtypeStruct((self.batch_size,), jnp.int32, sharding=self.index_sharding)
    return jax.ShapeDtypeStruct(
        (self.steps_per_dispatch, self.batch_size), jnp.int32,
        sharding=NamedSharding(self.index_sharding.mesh, PartitionSpec(None, "data")))


def _fitted_examples(config, examples: grain.MapDataset) -> list[dict]:
  threads = max(os.cpu_count() or 1, 1)
  fitted = input_pipeline.fitted(config, examples)
  return list(fitted.to_iter_dataset(grain.ReadOptions(num_threads=threads)))


def group_classes(classes: np.ndarray, batch_size: int) -> np.ndarray:
  """Moves every size class with fewer than ``batch_size`` samples into the next larger class
  that has samples (the largest one into the next smaller). Returns the new class of each sample."""
  classes = classes.copy()
  present = sorted(set(classes.tolist()))
  for position, size_class in enumerate(present):
    count = int(np.sum(classes == size_class))
    if count >= batch_size or len(present) == 1:
      continue
    larger = [c for c in present[position + 1:] if np.any(classes == c)]
    smaller = [c for c in present[:position] if np.any(classes == c)]
    if larger:
      classes[classes == size_class] = larger[0]
    elif smaller:
      classes[classes == size_class] = smaller[-1]
  return classes


def build(config: ml_collections.ConfigDict, source, vocab: Vocabulary,
          mesh: Mesh) -> DeviceTrainData:
  """Fits the training split once and puts it on the devices of ``mesh``, grouped by shape."""
  if jax.process_count() > 1:
    raise ValueError("config.input.device_resident=True is for one JAX process (it replicates "
                     "the split on every device); set it to False for multi-host training.")
  shapes = input_pipeline.check_shapes(config)
  input_pipeline.check_augment(config.augment)
  if config.augment.enabled and config.augment.get("paper_probability", 0.0) > 0:
    raise ValueError("config.augment.paper_probability > 0 draws pages and normalises them on the "
                     "host (OpenCV), which config.input.device_resident=True skips: set one of "
                     "them off.")
  batch_size = input_pipeline.per_process_batch_size(config.train.batch_size)
  examples = _fitted_examples(
      config, input_pipeline.encoded_examples(config, source, vocab, config.dataset.max_train_samples))
  heights = np.array([e["image"].shape[0] for e in examples])
  widths = np.array([e["image"].shape[1] for e in examples])
  lengths = np.array([len(e["labels"]) for e in examples])
  if len(examples) < batch_size:
    raise ValueError(f"The training split has {len(examples)} samples, fewer than one batch of "
                     f"{config.train.batch_size}: lower config.train.batch_size.")
  classes = group_classes(shapes.size_class(heights, widths, lengths), batch_size)
  replicated = NamedSharding(mesh, PartitionSpec())
  groups, group_shapes, sizes = [], [], []
  for size_class in sorted(set(classes.tolist())):
    members = np.flatnonzero(classes == size_class)
    height, width, label_length = shapes.shape_for(heights[members], widths[members],
                                                   lengths[members])
    images = np.zeros((len(members), height, width, 1), np.uint8)
    labels = np.zeros((len(members), label_length), np.int32)
    min_frames = np.zeros(len(members), np.int32)
    for row, index in enumerate(members):
      image, label = examples[index]["image"], examples[index]["labels"]
      images[row, : image.shape[0], : image.shape[1], 0] = image
      labels[row, : len(label)] = label
      min_frames[row] = ctc.min_ctc_frames(label)
    arrays = {"images": images, "image_heights": heights[members].astype(np.int32),
              "image_widths": widths[members].astype(np.int32), "labels": labels,
              "label_lengths": lengths[members].astype(np.int32), "min_frames": min_frames}
    groups.append(jax.device_put(arrays, replicated))
    group_shapes.append((height, width, label_length))
    sizes.append(len(members))
  return DeviceTrainData(groups, group_shapes, sizes, batch_size, config.seed,
                         NamedSharding(mesh, PartitionSpec("data")),
                         # Absent from configs saved before it existed.
                         steps_per_dispatch=config.train.get("steps_per_dispatch", 1))


# --- inside the jitted step ----------------------------------------------------


def make_batch(group: dict[str, jax.Array], indices: jax.Array, rng: jax.Array | None,
               augment_config: ml_collections.ConfigDict, fixed_height: int,
               ctc_width_downsample: int | None) -> dict:
  """The pipeline's batch layout (``input_pipeline``) of samples ``indices [B]`` of ``group``,
  augmented unless ``rng`` is None."""
  batch = {key: group[key][indices] for key in GROUP_KEYS}
  if rng is not None:
    batch = augment(batch, rng, augment_config, fixed_height)
  min_frames = batch.pop("min_frames")
  if ctc_width_downsample:
    frames = ctc.frame_lengths(batch["image_widths"], ctc_width_downsample)
    feasible = (min_frames <= frames).astype(jnp.float32)
  else:
    feasible = jnp.ones(min_frames.shape, jnp.float32)
  return {**batch, "ctc_feasible": feasible, "sample_mask": jnp.ones(min_frames.shape, jnp.float32)}


def _pool3(image: jax.Array, op) -> jax.Array:
  init = -jnp.inf if op is jax.lax.max else jnp.inf
  return jax.lax.reduce_window(image, init, op, (3, 3), (1, 1), "SAME")


def _augment_one(rng: jax.Array, image: jax.Array, height: jax.Array, width: jax.Array, *,
                 augment_config, fixed_height: int):
  """``preprocessing.augment`` + ``fit_image`` of one padded ``float32 [H, W]`` image on the device.

  Stroke width, then one bilinear resampling for the affine map, the refit to
  the model's geometry and the elastic field, then brightness and contrast.
  Returns ``(image [H, W] float32 in [0, 255], content height, content width)``.
  """
  cfg = augment_config
  canvas_h, canvas_w = image.shape
  keys = jax.random.split(rng, 8)
  uniform = lambda key, low, high, shape=(): jax.random.uniform(key, shape, jnp.float32, low, high)  # noqa: E731

  if cfg.stroke_probability > 0:
    thicker = _pool3(image, jax.lax.max)
    thinner = _pool3(image, jax.lax.min)
    changed = jnp.where(uniform(keys[0], 0, 1) < 0.5, thicker, thinner)
    # Thinning can erase thin strokes entirely; keep the original then.
    keep = ~jnp.any(changed > preprocessing.INK_THRESHOLD)
    apply = (uniform(keys[1], 0, 1) < cfg.stroke_probability) & ~keep
    image = jnp.where(apply, changed, image)

  # The augmentation's affine map A (output = A @ input, in (x, y)), on the content box.
  angle = jnp.deg2rad(uniform(keys[2], -cfg.rotation_degrees, cfg.rotation_degrees))
  zoom = uniform(keys[3], 1.0 - cfg.scale, 1.0 + cfg.scale)
  skew = uniform(keys[4], -cfg.shear, cfg.shear)
  cos, sin = jnp.cos(angle), jnp.sin(angle)
  forward = zoom * jnp.array([[cos, -sin], [sin, cos]]) @ jnp.array([[1.0, skew], [0.0, 1.0]])
  h, w = height.astype(jnp.float32), width.astype(jnp.float32)
  corners = jnp.array([[0.0, 0.0], [w, 0.0], [0.0, h], [w, h]]) @ forward.T
  low = corners.min(axis=0)
  out_w, out_h = jnp.maximum(jnp.ceil(corners.max(axis=0) - low), 1.0)
  # Then the refit (fit_image) of the warped box into this group's canvas.
  if fixed_height:
    scale_y = canvas_h / out_h
    scale_x = jnp.minimum(scale_y, canvas_w / out_w)  # squeezed to the canvas, as to max_width
  else:
    scale_y = scale_x = jnp.minimum(1.0, jnp.minimum(canvas_h / out_h, canvas_w / out_w))
  new_h = jnp.clip(jnp.round(out_h * scale_y), 1, canvas_h)
  new_w = jnp.clip(jnp.round(out_w * scale_x), 1, canvas_w)

  ys, xs = jnp.meshgrid(jnp.arange(canvas_h, dtype=jnp.float32),
                        jnp.arange(canvas_w, dtype=jnp.float32), indexing="ij")
  # Back to the warped box's pixels, where preprocessing.warp adds its elastic field.
  xs, ys = xs / scale_x, ys / scale_y
  if cfg.elastic_alpha > 0:
    grid = (2, max(2, int(canvas_h / cfg.elastic_sigma) + 2),
            max(2, int(canvas_w / cfg.elastic_sigma) + 2))
    coarse = uniform(keys[5], -cfg.elastic_alpha, cfg.elastic_alpha, grid)
    field = jax.image.resize(coarse, (2, canvas_h, canvas_w), "linear")
    xs, ys = xs + field[0], ys + field[1]
  inverse = jnp.array([[forward[1, 1], -forward[0, 1]],
                       [-forward[1, 0], forward[0, 0]]]) / (
      forward[0, 0] * forward[1, 1] - forward[0, 1] * forward[1, 0])
  source_x = inverse[0, 0] * (xs + low[0]) + inverse[0, 1] * (ys + low[1])
  source_y = inverse[1, 0] * (xs + low[0]) + inverse[1, 1] * (ys + low[1])
  inside_source = (source_x > -1) & (source_x < w) & (source_y > -1) & (source_y < h)
  warped = jax.scipy.ndimage.map_coordinates(image, [source_y, source_x], order=1,
                                             mode="constant", cval=0.0)
  warped = jnp.where(inside_source, warped, 0.0)

  content = ((jnp.arange(canvas_h)[:, None] < new_h) & (jnp.arange(canvas_w)[None, :] < new_w))
  gain = uniform(keys[6], 1.0 - cfg.contrast, 1.0 + cfg.contrast)
  offset = uniform(keys[7], -cfg.brightness, cfg.brightness) * 255.0 * 0.5
  warped = jnp.where(content, jnp.clip(warped * gain + offset, 0.0, 255.0), 0.0)
  return warped, new_h.astype(jnp.int32), new_w.astype(jnp.int32)


def augment(batch: dict, rng: jax.Array, augment_config: ml_collections.ConfigDict,
            fixed_height: int) -> dict:
  """Augments a gathered batch (``images uint8 [B, H, W, 1]``) on the device, per sample;
  ``image_heights`` and ``image_widths`` follow the warped content."""
  images = batch["images"][..., 0].astype(jnp.float32)
  keys = jax.random.split(rng, images.shape[0])
  one = functools.partial(_augment_one, augment_config=augment_config, fixed_height=fixed_height)
  images, heights, widths = jax.vmap(one)(keys, images, batch["image_heights"],
                                          batch["image_widths"])
  images = jnp.round(images).astype(jnp.uint8)[..., None]
  return {**batch, "images": images, "image_heights": heights, "image_widths": widths}
