"""Orbax checkpoints of a work dir: train state, data iterator, config and vocabulary.

A work dir belongs to one model, one vocabulary and one order of the training
data (``check_compatible``). Each checkpoint step holds:

  state    the train state (params, batch stats, optimiser and plateau state, step)
  data     the training data iterator's state (so a resume sees the same batches)
  meta     {"config": ..., "vocab": ..., "epoch": ...} as JSON

The latest ``keep`` checkpoints are kept, and the best by validation ExpRate.
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint.checkpoint_managers import preservation_policy

from hme_jax.text.vocab import Vocabulary

BEST_METRIC = "exprate"
CHECKPOINT_DIR = "checkpoints"
# Config fields that define the parameters' meaning: a checkpoint is only
# compatible with a run that agrees on all of them.
ARCHITECTURE_FIELDS = ("model", "input.height")
# Config fields that define the order of the training data: the saved iterator
# position only resumes the same batches in a run that agrees on all of them.
DATA_ORDER_FIELDS = ("seed", "train.batch_size", "input.sort_window", "dataset.max_train_samples",
                     "train.steps_per_dispatch")
# Fields added after some work dirs and exported models were saved, with the value
# that reproduces how those runs behaved (not always today's default): a saved
# config without one reads this value (``config_from_json``).
FIELDS_ADDED_LATER = {
    "input.canvases": (),
    "input.sort_window": 0,
    "input.cache_in_memory": False,
    "input.device_resident": False,
    "train.max_seconds": 0.0,
    "train.init_from": "",
    "train.steps_per_dispatch": 1,
    "train.compilation_cache_dir": "",
    "model.scan_dense_layers": False,
    "model.remat_dense_layers": False,
    "eval.max_length": 0,
}


def shape_differences(found, wanted) -> list[str]:
  """Where pytree ``found`` differs from ``wanted`` (keys, leaf shapes), one line each."""
  flat_found = dict(jax.tree_util.tree_flatten_with_path(found)[0])
  flat_wanted = dict(jax.tree_util.tree_flatten_with_path(wanted)[0])
  keystr = jax.tree_util.keystr
  return ([f"{keystr(key)}: missing" for key in flat_wanted if key not in flat_found]
          + [f"{keystr(key)}: not in the model" for key in flat_found if key not in flat_wanted]
          + [f"{keystr(key)}: found {np.shape(flat_found[key])}, expected {np.shape(leaf)}"
             for key, leaf in flat_wanted.items()
             if key in flat_found and np.shape(flat_found[key]) != np.shape(leaf)])


class CheckpointMismatchError(RuntimeError):
  """The work dir holds a checkpoint of another model or vocabulary."""


class NoCheckpointError(FileNotFoundError):
  """The work dir has no checkpoint."""


def _field(config_dict: dict, dotted: str):
  value = config_dict
  for key in dotted.split("."):
    value = value.get(key) if isinstance(value, dict) else None
  return value


def _normalise(value):
  """JSON round trip, so tuples and lists compare equal."""
  return json.loads(json.dumps(value, default=str))


def _leaves(value, prefix: str) -> dict[str, Any]:
  """``{"a": {"b": 1}}`` -> ``{"prefix.a.b": 1}``."""
  if isinstance(value, dict):
    return {name: leaf for key, item in value.items()
            for name, leaf in _leaves(item, f"{prefix}.{key}").items()}
  return {prefix: _normalise(value)}


def config_to_json(config: ml_collections.ConfigDict) -> dict:
  return json.loads(config.to_json_best_effort())


def with_fields_added_later(data: dict) -> dict:
  """A saved config (JSON) with each of ``FIELDS_ADDED_LATER`` it lacks set to its old value."""
  data = json.loads(json.dumps(data))
  for dotted, value in FIELDS_ADDED_LATER.items():
    group, name = dotted.split(".")
    if isinstance(data.get(group), dict):
      data[group].setdefault(name, _normalise(value))
  return data


def config_from_json(data: dict) -> ml_collections.ConfigDict:
  """A saved config (``config_to_json``, or one saved by an older version) as a ConfigDict."""
  def tuples(value):
    if isinstance(value, dict):
      return {key: tuples(item) for key, item in value.items()}
    if isinstance(value, list):
      return tuple(tuples(item) for item in value)
    return value
  return ml_collections.ConfigDict(tuples(with_fields_added_later(data)))


def _differences(saved: dict, wanted: dict, fields: tuple[str, ...]) -> list[tuple[str, Any, Any]]:
  """``(name, saved value, wanted value)`` of each leaf of ``fields`` that differs.

  A field the saved config lacks (one added since, without an old value) is not compared.
  """
  differences = []
  for field in fields:
    saved_leaves = _leaves(_field(saved, field), field)
    wanted_leaves = _leaves(_field(wanted, field), field)
    differences += [(name, saved_leaves[name], wanted_leaves.get(name))
                    for name in sorted(saved_leaves)
                    if saved_leaves[name] != wanted_leaves.get(name)]
  return differences


def _describe(differences: list[tuple[str, Any, Any]]) -> list[str]:
  return [f"{name}: checkpoint has {saved!r}, this run has {wanted!r}"
          for name, saved, wanted in differences]


class Checkpoints:
  """The checkpoints of one work dir (a thin layer over ``ocp.CheckpointManager``)."""

  def __init__(self, workdir: str, keep: int = 3, save_interval_steps: int = 1,
               read_only: bool = False):
    self.directory = os.path.join(os.path.abspath(workdir), CHECKPOINT_DIR)
    if read_only and not os.path.isdir(self.directory):
      raise NoCheckpointError(
          f"No checkpoint in work dir {workdir!r} (no {CHECKPOINT_DIR}/ folder). Train one "
          f"first: python train.py --config configs/quickstart.py --workdir {workdir}")
    policy = preservation_policy.AnyPreservationPolicy([
        preservation_policy.LatestN(n=keep),
        preservation_policy.BestN(get_metric_fn=lambda metrics: metrics[BEST_METRIC],
                                  reverse=False, n=1, keep_checkpoints_without_metrics=False),
    ])
    options = ocp.CheckpointManagerOptions(
        preservation_policy=policy,
        best_fn=lambda metrics: metrics[BEST_METRIC], best_mode="max",
        save_interval_steps=save_interval_steps, read_only=read_only,
        create=not read_only, enable_async_checkpointing=not read_only)
    self.manager = ocp.CheckpointManager(self.directory, options=options,
                                         item_names=("state", "data", "meta"))

  # --- queries ----------------------------------------------------------------

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def resolve(self, which: str | int = "latest") -> int:
    """``"best"``, ``"latest"`` or a step number -> a saved step."""
    steps = self.manager.all_steps()
    if not steps:
      raise NoCheckpointError(
          f"No checkpoint in {self.directory}. Train one first with train.py --workdir.")
    if which == "latest":
      return self.manager.latest_step()
    if which == "best":
      return self.manager.best_step() or self.manager.latest_step()
    step = int(which)
    if step not in steps:
      raise NoCheckpointError(f"No checkpoint at step {step} in {self.directory}; saved "
                              f"steps: {sorted(steps)}.")
    return step

  def read_meta(self, step: int) -> dict[str, Any]:
    restored = self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
    return restored["meta"]

  def config_and_vocab(self, which: str | int = "latest"):
    meta = self.read_meta(self.resolve(which))
    return config_from_json(meta["config"]), Vocabulary.from_json(meta["vocab"])

  def check_compatible(self, config: ml_collections.ConfigDict, vocab: Vocabulary) -> None:
    """Refuses a work dir whose checkpoints belong to another model, vocabulary or data order."""
    step = self.latest_step()
    if step is None:
      return
    meta = self.read_meta(step)
    saved, wanted = with_fields_added_later(meta["config"]), config_to_json(config)
    differences = _describe(_differences(saved, wanted, ARCHITECTURE_FIELDS))
    saved_vocab = Vocabulary.from_json(meta["vocab"])
    if saved_vocab != vocab:
      differences.append(f"vocabulary: checkpoint has {len(saved_vocab)} entries "
                         f"({saved_vocab.fingerprint()}), this run has {len(vocab)} "
                         f"({vocab.fingerprint()})")
    if differences:
      raise CheckpointMismatchError(
          f"The work dir {os.path.dirname(self.directory)} holds checkpoints (latest step "
          f"{step}) of a different model or vocabulary, so they are neither loaded nor "
          "overwritten:\n  " + "\n  ".join(differences) +
          "\nUse a new --workdir, or run with the config saved in that work dir.")
    order = _differences(saved, wanted, DATA_ORDER_FIELDS)
    if order:
      flags = " ".join(f"--config.{name}={saved_value}" for name, saved_value, _ in order)
      raise CheckpointMismatchError(
          f"The work dir {os.path.dirname(self.directory)} was trained (to step {step}) with "
          "another order of the training data, so its saved data position would resume "
          "other batches:\n  " + "\n  ".join(_describe(order)) +
          f"\nRe-run with {flags}, or use a new --workdir.")

  # --- save / restore -----------------------------------------------------------

  def save(self, step: int, state, data_state: dict, meta: dict,
           metrics: dict | None = None, force: bool = False) -> bool:
    saved = self.manager.save(
        step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state),
            meta=ocp.args.JsonSave(meta)),
        metrics=metrics, force=force)
    return saved  # written in the background; the next save, a restore or close() waits for it

  def restore(self, step: int, abstract_state, with_data: bool = True):
    """Restores ``(state, data_state, meta)``; ``abstract_state`` gives shapes and shardings."""
    self.manager.wait_until_finished()
    items = {"state": ocp.args.StandardRestore(abstract_state), "meta": ocp.args.JsonRestore()}
    if with_data:
      items["data"] = ocp.args.JsonRestore()
    restored = self.manager.restore(step, args=ocp.args.Composite(**items))
    return restored["state"], restored.get("data") if with_data else None, restored["meta"]

  def restore_variables(self, step: int, abstract_variables: dict) -> dict:
    """Restores only the model variables (params, batch stats) of a saved train state.

    ``abstract_variables``: ``{"params": ..., **extra}`` of ``jax.ShapeDtypeStruct``
    (with shardings), as ``jax.eval_shape(family.init, ...)`` gives.
    """
    abstract = {"params": abstract_variables["params"],
                "extra_variables": {k: v for k, v in abstract_variables.items() if k != "params"}}
    restored = self.manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.PyTreeRestore(
            item=abstract, restore_args=ocp.checkpoint_utils.construct_restore_args(abstract),
            partial_restore=True)))["state"]
    return {"params": restored["params"], **restored["extra_variables"]}

  def close(self) -> None:
    self.manager.close()
