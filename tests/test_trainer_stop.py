"""SIGTERM (``timeout``, a preempted VM) stops training with a checkpoint of the step reached."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import REPO_ROOT
from hme_jax.train import checkpoints


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_sigterm_saves_a_checkpoint_of_the_step_reached(synthetic_data_dir, tmp_path):
  workdir = tmp_path / "workdir"
  command = [sys.executable, "train.py", "--config", "configs/quickstart.py",
             f"--workdir={workdir}", "--config.dataset.name=crohme_synthetic/tiny",
             f"--config.dataset.data_dir={synthetic_data_dir}",
             "--config.model.small_channels=(8,16,32)", "--config.model.lstm_hidden=32",
             "--config.train.batch_size=16", "--config.train.num_epochs=1000",
             "--config.train.progress_bar=false", "--config.train.compilation_cache_dir="]
  log_path = tmp_path / "train.log"
  with open(log_path, "w") as log:
    process = subprocess.Popen(command, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT,
                               env={**os.environ, "PYTHONUNBUFFERED": "1"})
    deadline = time.time() + 180
    while "First training step done" not in log_path.read_text():
      assert process.poll() is None and time.time() < deadline, log_path.read_text()[-3000:]
      time.sleep(0.5)
    time.sleep(2.0)  # some steps after the first
    process.send_signal(signal.SIGTERM)
    process.wait(timeout=60)
  output = log_path.read_text()
  assert "terminated (SIGTERM)" in output, output[-3000:]
  metrics = json.loads((workdir / "metrics.json").read_text())
  stopped_at = metrics["steps"]
  assert 1 <= stopped_at < 1000 * metrics["steps_per_epoch"]
  assert checkpoints.Checkpoints(str(workdir), read_only=True).latest_step() == stopped_at

