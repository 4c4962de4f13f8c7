"""Two JAX processes on localhost train one model, as the hosts of a TPU pod slice would.

Each process is started with ``config.distributed`` and an explicit coordinator
(``jax.distributed.initialize(coordinator_address, num_processes, process_id)``),
has one CPU device, and reads its own shard of the data; the step's all-reduce
keeps the replicated parameters identical.

  python tests/test_multihost.py DATA_DIR WORKDIR OUTPUT PORT PROCESS_ID   # one process
"""

import json
import os
import pathlib
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from conftest import REPO_ROOT, tiny_config

from hme_jax.data import input_pipeline
from hme_jax.train import checkpoints, trainer

NUM_PROCESSES = 2
STEPS = 2
BATCH_SIZE = 16  # global: 8 per process


def run_process(data_dir: str, workdir: str, output: str, port: int, process_id: int) -> None:
  """Trains ``STEPS`` steps as process ``process_id``; writes what it read and its parameters."""
  read_ids: list[str] = []

  class RecordingIterator:
    """The training iterator, noting the ids of every batch the trainer takes."""

    def __init__(self, iterator):
      self.iterator = iterator

    def __next__(self):
      batch = next(self.iterator)
      read_ids.extend(str(i) for i in batch["ids"])
      return batch

    def get_state(self):
      return self.iterator.get_state()

    def set_state(self, state):
      self.iterator.set_state(state)

  to_iterator = input_pipeline.to_iterator
  input_pipeline.to_iterator = lambda *args, **kwargs: RecordingIterator(
      to_iterator(*args, **kwargs))
  saved = {}
  save = checkpoints.Checkpoints.save

  def save_and_keep(self, step, state, *args, **kwargs):
    # This process's replica of the parameters it saves.
    saved["params"] = jax.tree.map(lambda x: np.asarray(x.addressable_data(0)), state.params)
    saved["step"] = int(state.step.addressable_data(0))
    return save(self, step, state, *args, **kwargs)

  checkpoints.Checkpoints.save = save_and_keep

  config = tiny_config(data_dir)
  config.distributed = True
  config.coordinator_address = f"localhost:{port}"
  config.num_processes = NUM_PROCESSES
  config.process_id = process_id
  config.train.batch_size = BATCH_SIZE
  config.train.max_steps = STEPS  # then validates (gathered from both processes) and saves
  config.dataset.max_eval_samples = 16  # one eval batch
  config.train.compilation_cache_dir = ""
  result = trainer.train_and_evaluate(config, workdir)
  leaves = jax.tree_util.tree_flatten_with_path(saved["params"])[0]
  np.savez(output + ".npz", **{jax.tree_util.keystr(key): leaf for key, leaf in leaves})
  with open(output + ".json", "w") as f:
    json.dump({"process_index": jax.process_index(), "process_count": jax.process_count(),
               "device_count": jax.device_count(), "local_device_count": jax.local_device_count(),
               "read_ids": read_ids, "step": saved["step"], "steps": result["steps"],
               "val_loss": result["history"][-1]["val_loss"]}, f)


def free_port() -> int:
  with socket.socket() as sock:
    sock.bind(("localhost", 0))
    return sock.getsockname()[1]


@pytest.mark.slow
@pytest.mark.timeout(600)  # the two training processes get 240 s
def test_two_processes_read_their_shards_and_end_with_identical_parameters(
    tmp_path, synthetic_data_dir):
  port = free_port()
  # The processes run this file, whose folder is tests/: the root on the path finds hme_jax
  # (installed or not) and configs/.
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(REPO_ROOT),
         "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
  outputs = [str(tmp_path / f"process{i}") for i in range(NUM_PROCESSES)]
  processes = [subprocess.Popen(
      [sys.executable, __file__, str(synthetic_data_dir), str(tmp_path / "workdir"), output,
       str(port), str(i)], cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT, text=True) for i, output in enumerate(outputs)]
  logs, deadline = [], time.monotonic() + 240
  try:
    for process in processes:
      logs.append(process.communicate(timeout=max(deadline - time.monotonic(), 1))[0])
  finally:
    for process in processes:
      if process.poll() is None:
        process.kill()
  for process, log in zip(processes, logs):
    assert process.returncode == 0, log[-4000:]

  reports = [json.loads(pathlib.Path(output + ".json").read_text()) for output in outputs]
  source = input_pipeline.data_source(
      input_pipeline.dataset_builder(tiny_config(synthetic_data_dir).dataset), "train")
  ids = [record["id"].decode() for record in source]
  for i, report in enumerate(reports):
    assert report["process_index"] == i
    assert (report["process_count"], report["device_count"], report["local_device_count"]) == (
        NUM_PROCESSES, NUM_PROCESSES, 1)
    assert report["steps"] == report["step"] == STEPS
    assert np.isfinite(report["val_loss"])
    # Its own batches (half the global batch) from its own shard, records i, i + 2, ... only.
    assert len(report["read_ids"]) == STEPS * BATCH_SIZE // NUM_PROCESSES
    assert set(report["read_ids"]) <= set(ids[i::NUM_PROCESSES])

  first, second = (np.load(output + ".npz") for output in outputs)
  assert sorted(first) == sorted(second) and len(first) > 0
  for name in first:
    np.testing.assert_array_equal(first[name], second[name], err_msg=name)


if __name__ == "__main__":
  data_dir, workdir, output, port, process_id = sys.argv[1:]
  run_process(data_dir, workdir, output, int(port), int(process_id))
