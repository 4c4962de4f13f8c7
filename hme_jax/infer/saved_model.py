"""A trained model read back, from a work dir or from an exported (params-only) model.

An exported model is a directory of two files, small enough to ship in the
package (``hme_jax/pretrained/``):

  model.json      {"format", "config", "vocab", "step", "dtype", "source", "scores"}
  params.msgpack  the variables (params, BatchNorm statistics) in ``dtype``,
                  serialised with ``flax.serialization``

``scores`` holds the figures published for the model (``write_scores``), so
that a test can check that the shipped files still reproduce them.

``LoadedModel(path)`` takes either kind of directory; ``export_model`` writes
the second from the first.

  python -m hme_jax.infer.saved_model --workdir workdirs/crohme_cpu --output hme_jax/pretrained/crohme_cpu
"""

from __future__ import annotations

import importlib.resources
import json
import os
import sys

import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np

from hme_jax import sharding as sharding_lib
from hme_jax.data import input_pipeline
from hme_jax.eval import decode
from hme_jax.families import registry
from hme_jax.text.vocab import Vocabulary
from hme_jax.train import checkpoints as checkpoints_lib

EXPORT_FORMAT = "hme-jax-params-v1"
MODEL_FILE = "model.json"
PARAMS_FILE = "params.msgpack"
PRETRAINED_NAME = "crohme_cpu"


def pretrained_path(name: str = PRETRAINED_NAME) -> str:
  """The directory of a model shipped in the package (``hme_jax/pretrained/NAME``)."""
  path = str(importlib.resources.files("hme_jax") / "pretrained" / name)
  if not os.path.isfile(os.path.join(path, MODEL_FILE)):
    raise checkpoints_lib.NoCheckpointError(
        f"No bundled model {name!r} in this installation ({path} has no {MODEL_FILE}). "
        "Pass --workdir DIR of a model you trained, or reinstall hme-jax.")
  return path


def is_export(path: str) -> bool:
  return os.path.isfile(os.path.join(path, MODEL_FILE))


def _abstract_variables(family, config, sharding) -> dict:
  return jax.tree.map(
      lambda leaf: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=sharding),
      jax.eval_shape(family.init, jax.random.PRNGKey(0), input_pipeline.dummy_batch(config, 1)))


class LoadedModel:
  """Config, vocabulary, family and variables of one trained model, on every device.

  ``path`` is a work dir (``checkpoint``: best | latest | a step) or an
  exported model directory (``checkpoint`` is ignored).
  """

  def __init__(self, path: str, checkpoint: str | int = "best", compute_dtype: str | None = None):
    self.workdir = os.path.abspath(os.path.expanduser(path))
    if not os.path.isdir(self.workdir):
      raise checkpoints_lib.NoCheckpointError(f"The work dir {path!r} does not exist.")
    self.mesh = sharding_lib.make_mesh()
    replicated = jax.sharding.NamedSharding(self.mesh, jax.sharding.PartitionSpec())
    self.is_export = is_export(self.workdir)
    if self.is_export:
      with open(os.path.join(self.workdir, MODEL_FILE)) as f:
        meta = json.load(f)
      if meta.get("format") != EXPORT_FORMAT:
        raise checkpoints_lib.CheckpointMismatchError(
            f"{self.workdir}/{MODEL_FILE} has format {meta.get('format')!r}; this hme-jax "
            f"reads {EXPORT_FORMAT!r}. Export the model again with this version.")
      self.step = int(meta["step"])
      self.scores = meta.get("scores", {})
      self.config = checkpoints_lib.config_from_json(meta["config"])
      self.vocab = Vocabulary.from_json(meta["vocab"])
    else:
      checkpoints = checkpoints_lib.Checkpoints(self.workdir, read_only=True)
      self.step = checkpoints.resolve(checkpoint)
      self.scores = {}
      self.config, self.vocab = checkpoints.config_and_vocab(self.step)
    sharding_lib.use_compilation_cache(self.config.train.get("compilation_cache_dir", ""))
    dtype = sharding_lib.to_jnp_dtype(compute_dtype or self.config.train.compute_dtype)
    self.family = registry.create_family(self.config, self.vocab, dtype)
    abstract = _abstract_variables(self.family, self.config, replicated)
    if self.is_export:
      self.variables = _read_params(os.path.join(self.workdir, PARAMS_FILE), abstract)
    else:
      self.variables = checkpoints.restore_variables(self.step, abstract)
      checkpoints.close()

  def decode(self, batches, **kwargs):
    return decode.decode_batches(self.family, self.variables, batches, self.mesh, **kwargs)


def _read_params(path: str, abstract: dict) -> dict:
  """The variables of ``params.msgpack``, checked against the model's shapes, as float32."""
  with open(path, "rb") as f:
    stored = flax.serialization.msgpack_restore(f.read())
  problems = checkpoints_lib.shape_differences(stored, flax.serialization.to_state_dict(abstract))
  if problems:
    raise checkpoints_lib.CheckpointMismatchError(
        f"{path} does not hold the parameters of the model its {MODEL_FILE} describes ("
        + "; ".join(problems[:5]) + "). Export the model again.")
  variables = flax.serialization.from_state_dict(
      abstract, jax.tree.map(lambda a: np.asarray(a, np.float32), stored))
  return jax.tree.map(lambda value, leaf: jax.device_put(value.astype(leaf.dtype), leaf.sharding),
                      variables, abstract)


def export_model(workdir: str, output_dir: str, *, checkpoint: str | int = "best",
                 dtype: str = "bfloat16", eval_settings: dict | None = None) -> dict:
  """Writes the variables of a work dir's checkpoint (in ``dtype``) with its config and vocabulary.

  ``eval_settings`` replaces fields of the exported ``config.eval`` (the
  defaults of ``predict`` and the web app), e.g. ``{"decoder": "beam"}``.
  Returns the ``model.json`` content.
  """
  model = LoadedModel(workdir, checkpoint, compute_dtype="float32")
  config = model.config
  for name, value in (eval_settings or {}).items():
    if name not in config.eval:
      raise KeyError(f"config.eval has no field {name!r} (fields: {sorted(config.eval)}).")
    config.eval[name] = value
  os.makedirs(output_dir, exist_ok=True)
  variables = jax.tree.map(lambda leaf: np.asarray(jnp.asarray(leaf, dtype)),
                           jax.device_get(model.variables))
  with open(os.path.join(output_dir, PARAMS_FILE), "wb") as f:
    f.write(flax.serialization.msgpack_serialize(flax.serialization.to_state_dict(variables)))
  meta = {"format": EXPORT_FORMAT, "config": checkpoints_lib.config_to_json(config),
          "vocab": model.vocab.to_json(), "step": model.step, "dtype": dtype,
          "source": {"workdir": os.path.basename(model.workdir), "checkpoint": str(checkpoint)},
          "scores": {}}
  with open(os.path.join(output_dir, MODEL_FILE), "w") as f:
    json.dump(meta, f, indent=1)
  return meta


def write_scores(export_dir: str, scores: dict) -> None:
  """Records published figures in an exported model's ``model.json`` (merged by key)."""
  path = os.path.join(export_dir, MODEL_FILE)
  with open(path) as f:
    meta = json.load(f)
  meta["scores"] = {**meta.get("scores", {}), **scores}
  with open(path, "w") as f:
    json.dump(meta, f, indent=1)


def main(argv=None) -> int:
  import argparse
  parser = argparse.ArgumentParser(prog="python -m hme_jax.infer.saved_model",
                                   description="Export a trained work dir as a params-only model.")
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--output", required=True, help="Directory to write the model into.")
  parser.add_argument("--checkpoint", default="best", help="best | latest | a step number.")
  parser.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float32"))
  parser.add_argument("--decoder", choices=("greedy", "beam"),
                      help="The exported model's default decoder (default: the work dir's).")
  parser.add_argument("--beam_width", type=int)
  parser.add_argument("--well_formed", choices=("true", "false"),
                      help="Constrain the beam to well-formed LaTeX by default.")
  args = parser.parse_args(argv)
  eval_settings = {name: value for name, value in (
      ("decoder", args.decoder), ("beam_width", args.beam_width),
      ("well_formed", None if args.well_formed is None else args.well_formed == "true"))
      if value is not None}
  try:
    meta = export_model(args.workdir, args.output, checkpoint=args.checkpoint, dtype=args.dtype,
                        eval_settings=eval_settings)
  except FileNotFoundError as error:
    print(f"error: {error}", file=sys.stderr)
    return 2
  size = sum(os.path.getsize(os.path.join(args.output, name)) for name in (MODEL_FILE, PARAMS_FILE))
  print(f"Exported step {meta['step']} ({args.dtype}) to {args.output}: {size / 1e6:.1f} MB")
  return 0


if __name__ == "__main__":
  sys.exit(main())
