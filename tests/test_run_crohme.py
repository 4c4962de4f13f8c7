"""results/run_crohme.sh end to end on CPU (its ``cpu`` profile: tiny models, synthetic data)."""

import importlib.util
import io
import json
import os
import subprocess
import tarfile

import pytest

from conftest import REPO_ROOT, tiny_config
from hme_jax.data import input_pipeline
from hme_jax.infer import predict

BUDGET = 240
MAX_FILES, MAX_FILE_BYTES = 8, 16 * 2**20
# Every stage but the optional ones: the PyTorch comparison, and the cold-start compile that
# only fills the cache early (COMPILE_AHEAD, off in the cpu profile: on 2 cores it slows the rest).
REQUIRED_STAGES = ("prepare", "train_crnn", "evaluate_crnn", "train_attention_a",
                   "train_attention_b", "evaluate_attention")


@pytest.fixture(scope="module")
def run_output(tmp_path_factory, synthetic_data_dir):
  out, run = tmp_path_factory.mktemp("out"), tmp_path_factory.mktemp("run")
  env = {**os.environ, "PROFILE": "cpu", "BUDGET": str(BUDGET), "OUT": str(out),
         "RUN": str(run), "DATA_DIR": str(synthetic_data_dir)}
  completed = subprocess.run(["bash", "results/run_crohme.sh"], cwd=REPO_ROOT, env=env,
                             capture_output=True, text=True, timeout=BUDGET + 120)
  assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
  return out, input_pipeline.dataset_builder(tiny_config(synthetic_data_dir).dataset)


@pytest.mark.slow
@pytest.mark.timeout(BUDGET + 180)
def test_run_crohme_writes_every_promised_file_within_limits(run_output):
  out, dataset = run_output
  files = sorted(path.name for path in out.iterdir())
  assert len(files) <= MAX_FILES, files
  assert all((out / name).stat().st_size <= MAX_FILE_BYTES for name in files)
  assert {"crohme_gpu.json", "logs.tgz", "models.tar.part00"} <= set(files), files

  summary = json.loads((out / "crohme_gpu.json").read_text())
  assert summary["profile"] == "cpu" and summary["budget_seconds"] == BUDGET
  assert 0 < summary["total_seconds"] <= BUDGET + 15  # the files come after the budget's end
  assert summary["versions"]["backend"] == "cpu" and summary["versions"]["jax"]
  stages = {stage["name"]: stage for stage in summary["stages"]}
  assert all(stages[name]["rc"] == 0 for name in REQUIRED_STAGES), summary["stages"]
  assert "compile_attention" not in stages
  comparison = summary["torch_comparison"]
  assert comparison["jax_img_per_s"] > 0
  if importlib.util.find_spec("torch") is not None and stages["torch_comparison"]["rc"] == 0:
    assert comparison["torch_img_per_s"] > 0 and comparison["jax_over_torch"] > 0

  test_size = dataset.info.splits["test"].num_examples
  for name in ("crnn", "attention"):
    model = summary["models"][name]
    train = model["train"]
    assert train["steps"] >= 1 and train["seconds_to_first_step"] > 0
    assert set(model["eval"]) == {"beam", "greedy"}
    for evaluation in model["eval"].values():
      scores = evaluation["splits"]["test"]["raw"]
      assert scores["num_samples"] == test_size and 0.0 <= scores["exprate"] <= 1.0
    assert model["export"] == f"{name}/export"
  attention = summary["models"]["attention"]["train"]
  assert attention["programs_compiled_ahead"] == 2  # its two canvases
  assert attention["steps"] > attention["stage_a_steps"]  # stage B trained on

  with tarfile.open(out / "logs.tgz") as logs:
    names = set(logs.getnames())
  for name in ("crnn", "attention"):
    assert f"./{name}/workdir/metrics.json" in names
    assert f"./{name}/reports/report_{'best' if name == 'crnn' else 'latest'}_beam.json" in names


@pytest.mark.slow
@pytest.mark.timeout(BUDGET + 180)
def test_run_crohme_exports_load_in_predict(run_output, tmp_path):
  out, dataset = run_output
  archive = b"".join(path.read_bytes() for path in sorted(out.glob("models.tar.part*")))
  with tarfile.open(fileobj=io.BytesIO(archive)) as models:
    models.extractall(tmp_path, filter="data")
  record = input_pipeline.data_source(dataset, "test")[0]
  for name in ("crnn", "attention"):
    recognizer = predict.Recognizer.from_workdir(str(tmp_path / name / "export"))
    assert recognizer.model.is_export
    [result] = recognizer.recognize([255 - record["image"][..., 0]])
    assert all(token in recognizer.model.vocab for token in result.tokens)

