"""The devices every layer shares: the data-parallel mesh, batches sharded over it and
results gathered back, the compute dtype and JAX's compilation cache.

Used by the trainer, the decode loop (``hme_jax.eval.decode``) and a loaded model
(``hme_jax.infer.saved_model``).
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

HOST_ONLY_KEYS = ("ids",)


def make_mesh() -> Mesh:
  """A 1-D data-parallel mesh over every device of every process."""
  return Mesh(np.asarray(jax.devices()), ("data",))


def shard_batch(batch: dict, mesh: Mesh) -> dict:
  """Host-local NumPy batch -> global ``jax.Array``s split along the batch axis.

  With several processes each array is first padded to the largest shape any
  process holds (``pad_to_common_shape``), so that all run the same program.
  """
  batch = {key: value for key, value in batch.items() if key not in HOST_ONLY_KEYS}
  if jax.process_count() > 1:
    batch = pad_to_common_shape(batch)
  sharding = NamedSharding(mesh, PartitionSpec("data"))
  return {key: jax.make_array_from_process_local_data(sharding, value)
          for key, value in batch.items()}


def pad_to_common_shape(batch: dict) -> dict:
  """Each array zero-padded at the end of its axes to the largest shape over all processes.

  Zeros are what ``input_pipeline.PadBatch`` pads with (background pixels, no
  token); each process's batch shape comes from its own samples.
  """
  keys = sorted(batch)
  shapes = np.concatenate([np.shape(batch[key]) for key in keys]).astype(np.int64)
  largest = multihost_utils.process_allgather(shapes).max(axis=0)
  padded, start = {}, 0
  for key in keys:
    value = np.asarray(batch[key])
    target = largest[start:start + value.ndim]
    start += value.ndim
    padded[key] = np.pad(value, [(0, int(t) - n) for n, t in zip(value.shape, target)])
  return padded


def gather(tree):
  """Global arrays -> NumPy on every host."""
  if jax.process_count() == 1:
    return jax.tree.map(np.asarray, tree)
  return multihost_utils.process_allgather(tree, tiled=True)


def to_jnp_dtype(name: str):
  """``"auto"`` -> bfloat16 on GPU/TPU, float32 on CPU; else the named dtype."""
  if name == "auto":
    return jnp.bfloat16 if jax.default_backend() in ("gpu", "tpu") else jnp.float32
  return jnp.dtype(name)


def use_compilation_cache(directory: str) -> None:
  """Turns on JAX's persistent compilation cache in ``directory`` (``""``: leaves it off).

  A resumed run, or an evaluation after training, then loads the programs an
  earlier process compiled instead of compiling them again (minutes for the
  attention model's batch shapes on CPU).
  """
  if directory:
    jax.config.update("jax_compilation_cache_dir", os.path.expanduser(directory))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
