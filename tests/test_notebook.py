"""notebooks/train_on_colab.ipynb, run top to bottom on CPU as on a TPU v2-8's 8 devices.

The parameters go in a cell after the one tagged ``parameters`` (as papermill
injects them): the quickstart config shrunk to ``conftest.tiny_config``, the tiny
synthetic dataset, 8 host devices (``XLA_FLAGS`` in the kernel's environment,
before JAX is imported).
"""

import json
import math
import os
import re

import nbformat
import pytest
from conftest import REPO_ROOT, tiny_config

NOTEBOOK = REPO_ROOT / "notebooks" / "train_on_colab.ipynb"
SAMPLE_IMAGE = REPO_ROOT / "examples" / "formula.png"
DEVICES = 8


def tiny_overrides(data_dir) -> dict:
  """The fields where ``tiny_config`` differs from configs/quickstart.py, as dotted names."""
  from configs import quickstart
  tiny = tiny_config(data_dir).to_dict()
  base = quickstart.get_config().to_dict()

  def flat(tree, prefix=""):
    for key, value in tree.items():
      if isinstance(value, dict):
        yield from flat(value, f"{prefix}{key}.")
      else:
        yield f"{prefix}{key}", value
  base = dict(flat(base))
  return {name: value for name, value in flat(tiny) if base[name] != value}


def with_parameters(notebook, parameters: dict):
  """``notebook`` with a cell setting ``parameters`` after its ``parameters`` cell."""
  tagged = [i for i, cell in enumerate(notebook.cells)
            if "parameters" in cell.get("metadata", {}).get("tags", [])]
  assert len(tagged) == 1, "the notebook needs exactly one cell tagged 'parameters'"
  source = "\n".join(f"{name} = {value!r}" for name, value in parameters.items())
  cell = nbformat.v4.new_code_cell(source)
  cell.metadata["tags"] = ["injected-parameters"]
  notebook.cells.insert(tagged[0] + 1, cell)
  return notebook


def run_twice(notebook, snippet: str):
  """``notebook`` with the code cell holding ``snippet`` run a second time right after it."""
  index = notebook.cells.index(cell_running(notebook, snippet))
  again = nbformat.v4.new_code_cell(notebook.cells[index].source)
  again.metadata["tags"] = ["run-again"]
  notebook.cells.insert(index + 1, again)
  return notebook


def text_of(cell) -> str:
  return "".join(output.get("text", "") for output in cell.get("outputs", [])
                 if output["output_type"] == "stream")


def cell_running(notebook, snippet: str):
  """The one code cell of the notebook (parameters and re-runs aside) holding ``snippet``."""
  matches = [cell for cell in notebook.cells if cell.cell_type == "code"
             and snippet in cell.source and "run-again" not in cell.metadata.get("tags", [])]
  assert len(matches) == 1, snippet
  return matches[0]


def test_notebook_is_committed_without_outputs():
  notebook = nbformat.read(NOTEBOOK, as_version=4)
  nbformat.validate(notebook)
  for cell in notebook.cells:
    if cell.cell_type == "code":
      assert not cell.outputs and cell.execution_count is None, cell.source[:80]


@pytest.mark.slow
@pytest.mark.timeout(900)  # 60-100 s idle; a kernel compiling for 8 devices on 2 busy cores: 300+
def test_notebook_trains_evaluates_and_exports_on_8_host_devices(tmp_path, synthetic_data_dir):
  from nbclient import NotebookClient

  work_root = tmp_path / "runs"
  overrides = tiny_overrides(synthetic_data_dir)
  overrides["train.compilation_cache_dir"] = str(tmp_path / "jax_cache")
  notebook = with_parameters(nbformat.read(NOTEBOOK, as_version=4), {
      "repository": str(REPO_ROOT), "install": False, "config_file": "configs/quickstart.py",
      "config_overrides": overrides, "mount_drive": False, "work_root": str(work_root),
      "run_name": "tiny", "data_source": "synthetic", "show_tensorboard": False,
      "beam_width": 3, "grid_size": 4, "image_to_read": str(SAMPLE_IMAGE)})
  train_cell = "trainer.train_and_evaluate(config, work_dir)"
  notebook = run_twice(notebook, train_cell)  # as after a disconnect: it resumes
  env = {**os.environ, "JAX_PLATFORMS": "cpu",
         "XLA_FLAGS": f"--xla_force_host_platform_device_count={DEVICES}"}
  client = NotebookClient(notebook, timeout=600, kernel_name="python3",
                          resources={"metadata": {"path": str(tmp_path)}})
  client.execute(env=env)
  work_dir = work_root / "tiny"

  devices = text_of(cell_running(notebook, "jax.devices()"))
  assert re.search(rf"backend cpu, {DEVICES} devices", devices), devices
  assert f"global batch 16 = {DEVICES} devices x 2 images" in devices

  trained, resumed = (text_of(cell) for cell in notebook.cells
                      if cell.cell_type == "code" and train_cell in cell.source)
  losses = re.findall(r"train loss (\S+), validation loss (\S+),", trained)
  assert losses, trained
  assert all(math.isfinite(float(value)) for pair in losses for value in pair)
  history = json.loads((work_dir / "metrics.json").read_text())["history"]
  assert f"train loss {history[-1]['train_loss']:.4f}" in trained
  assert f"Resumed from the checkpoint at step {history[-1]['step']}" in resumed
  assert resumed.splitlines()[-1] == trained.splitlines()[-1]  # the same last epoch

  # The evaluation table shows the scores of the report evaluate wrote.
  report = json.loads((work_dir / "eval" / "report_best_beam.json").read_text())
  assert report["decoder"] == "beam" and report["beam_width"] == 3
  scores = report["splits"]["test"]["raw"]
  tables = [output["data"]["text/markdown"]
            for output in cell_running(notebook, "evaluate_lib.evaluate(").outputs
            if "text/markdown" in output.get("data", {})]
  assert len(tables) == 2, tables  # the scores, the seed's length-split table
  assert f"| test | {scores['num_samples']} | {100 * scores['exprate']:.2f} | " in tables[0]
  assert "short (<=14)" in tables[1] and "long (>14)" in tables[1]

  grid = cell_running(notebook, "draw_formula(prediction_axis")
  assert any("image/png" in output.get("data", {}) for output in grid.outputs)
  assert re.search(r"test: 4 shown, \d correct", text_of(grid))

  # The export has the shipped model's format and files, and predict reads with it.
  from hme_jax.infer import predict, saved_model
  export_dir = work_dir / "export"
  shipped = json.loads((REPO_ROOT / "hme_jax" / "pretrained" / "crohme_cpu" /
                        saved_model.MODEL_FILE).read_text())
  exported = json.loads((export_dir / saved_model.MODEL_FILE).read_text())
  assert exported["format"] == shipped["format"] == saved_model.EXPORT_FORMAT
  assert set(exported) == set(shipped)
  assert exported["config"]["eval"]["decoder"] == "beam"
  assert (export_dir / saved_model.PARAMS_FILE).stat().st_size > 0
  read = text_of(cell_running(notebook, "hme_jax.Recognizer.from_workdir(export_dir)"))
  assert re.search(r"LaTeX: ", read), read
  recognizer = predict.Recognizer.from_workdir(str(export_dir))
  assert recognizer.decoder == "beam" and recognizer.beam_width == 3
  tokens = recognizer(str(SAMPLE_IMAGE)).split()
  assert set(tokens) <= set(recognizer.model.vocab.tokens), tokens


def test_a_batch_that_does_not_split_over_the_devices_is_refused_before_any_work(
    tmp_path, monkeypatch):
  """The check the notebook's devices cell and the trainer make (8 devices: a TPU v2-8)."""
  import jax

  from hme_jax.train import trainer
  monkeypatch.setattr(jax, "device_count", lambda: DEVICES)
  trainer.check_batch_size(16)
  config = tiny_config(tmp_path / "no_data")
  config.train.batch_size = 12
  with pytest.raises(ValueError, match=r"batch_size=12 does not divide by the 8 .* multiple of "
                                       r"8, e\.g\. --config\.train\.batch_size=16"):
    trainer.train_and_evaluate(config, str(tmp_path / "workdir"))
  assert not (tmp_path / "workdir").exists() and not (tmp_path / "no_data").exists()
