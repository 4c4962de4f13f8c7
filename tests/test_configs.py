"""Every config field is declared once, in configs/default.py, and the code reads only those.

* Each config file (each of its variants) has exactly the fields of
  ``default.get_config()``: it changes values, it declares nothing.
* Each field of configs/default.py has a comment.
* An ``ast`` scan of hme_jax/ finds every read of a config field
  (``config.model.d_model``, ``model_config.get("d_model")``, ``cfg.scale`` after
  ``cfg = augment_config``, ...) and each is declared.
* Saved configs of older versions load: fields added since read their old value.
"""

import ast
import dataclasses
import importlib
import inspect
import json
import pathlib

import ml_collections
import pytest
from conftest import REPO_ROOT

from configs import default
from hme_jax.infer import saved_model, serve
from hme_jax.train import checkpoints

CONFIG_DIR = REPO_ROOT / "configs"
# ConfigDict methods: ``config.dataset.to_dict()`` reads no field called to_dict.
CONFIG_METHODS = {"get", "to_dict", "to_json", "to_json_best_effort", "items", "keys", "values",
                  "update", "lock", "unlock", "copy_and_resolve_references"}


def field_paths(config: ml_collections.ConfigDict, prefix: str = "") -> set[str]:
  """Dotted names of every field, groups included: ``{"model", "model.name", ...}``."""
  paths = set()
  for key, value in config.items():
    paths.add(prefix + key)
    if isinstance(value, ml_collections.ConfigDict):
      paths |= field_paths(value, f"{prefix}{key}.")
  return paths


DECLARED = field_paths(default.get_config())
GROUPS = {key for key, value in default.get_config().items()
          if isinstance(value, ml_collections.ConfigDict)}


def config_files() -> list[tuple[str, str]]:
  """``(module name, variant)`` of each config file with ``get_config``, each of its variants."""
  cases = []
  for path in sorted(CONFIG_DIR.glob("*.py")):
    module = importlib.import_module(f"configs.{path.stem}")
    if not hasattr(module, "get_config"):
      continue
    variants = [""]
    if inspect.signature(module.get_config).parameters:
      # configs/crohme_cpu.py:NAME takes its CANDIDATES; the others configs/variants.py's.
      named = getattr(module, "CANDIDATES", None) or getattr(
          getattr(module, "variants", None), "VARIANTS", ())
      variants += list(named)
    cases += [(path.stem, variant) for variant in variants]
  return cases


def test_config_files_are_found():
  names = {name for name, _ in config_files()}
  assert {"default", "quickstart", "vgg16", "attention", "crohme_cpu"} <= names
  assert ("crohme_cpu", "attention") in config_files()


@pytest.mark.parametrize("name, variant", config_files())
def test_a_config_file_overrides_only_declared_fields(name, variant):
  module = importlib.import_module(f"configs.{name}")
  config = module.get_config(variant) if variant else module.get_config()
  paths = field_paths(config)
  assert sorted(paths - DECLARED) == [], "declared outside configs/default.py"
  assert sorted(DECLARED - paths) == [], "removed from the defaults"


def test_every_default_field_has_a_comment():
  source = (CONFIG_DIR / "default.py").read_text()
  tree = ast.parse(source)
  lines = source.splitlines()
  uncommented = []
  for node in ast.walk(tree):
    if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Attribute):
      if isinstance(node.value, ast.Call) and ast.unparse(node.value.func).endswith("ConfigDict"):
        continue  # a group
      statement = lines[node.lineno - 1:node.end_lineno]
      if not any("#" in line for line in statement):
        uncommented.append(ast.unparse(node.targets[0]))
  assert uncommented == []


# --- what the code reads -----------------------------------------------------------


def attribute_names(node) -> list[str] | None:
  """``a.b.c`` -> ``["a", "b", "c"]``; None if it does not start at a name."""
  names = []
  while isinstance(node, ast.Attribute):
    names.append(node.attr)
    node = node.value
  return [node.id, *reversed(names)] if isinstance(node, ast.Name) else None


def config_path(names: list[str], aliases: dict[str, list[str]]) -> list[str] | None:
  """The config field an attribute chain reads (``[group, field, ...]``), or None."""
  if names[0] in aliases:
    return aliases[names[0]] + names[1:]
  for index, name in enumerate(names):
    if name == "config" and names[index - 1:index] != ["jax"]:  # not jax.config
      return names[index + 1:]
    group = {"evaluation": "eval"}.get(name.removesuffix("_config"), name.removesuffix("_config"))
    if name.endswith("_config") and group in GROUPS:
      return [group, *names[index + 1:]]
  return None


def config_reads(path: pathlib.Path) -> list[tuple[int, str]]:
  """``(line, dotted field)`` of each config read in a source file."""
  tree = ast.parse(path.read_text())
  parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
  scopes = [tree] + [n for n in ast.walk(tree)
                     if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
  reads = {}
  for scope in scopes:
    aliases = {}  # ``cfg = train_config`` and the like, in this function
    for node in ast.walk(scope):
      if (isinstance(node, ast.Assign) and len(node.targets) == 1
          and isinstance(node.targets[0], ast.Name)
          and (names := attribute_names(node.value))
          and (path := config_path(names, {})) is not None and len(path) == 1):
        aliases[node.targets[0].id] = path
    for node in ast.walk(scope):
      if not isinstance(node, (ast.Attribute, ast.Name)) or isinstance(parents.get(node),
                                                                       ast.Attribute):
        continue
      names = attribute_names(node)
      if not names or (path := config_path(names, aliases)) is None:
        continue
      call = parents.get(node)
      if (path and path[-1] == "get" and isinstance(call, ast.Call) and call.func is node
          and call.args and isinstance(call.args[0], ast.Constant)):
        path = path[:-1] + [call.args[0].value]  # config.eval.get("max_length", 0)
      while path and path[-1] in CONFIG_METHODS:
        path = path[:-1]
      if path:
        reads[(node.lineno, node.col_offset)] = ".".join(path)
  return [(line, field) for (line, _), field in sorted(reads.items())]


def is_declared(field: str) -> bool:
  """Declared, or an attribute of a declared leaf (``config.input.canvases[0]`` is not a read)."""
  parts = field.split(".")
  return any(".".join(parts[:n]) in DECLARED and (n == len(parts) or ".".join(parts[:n])
                                                  not in GROUPS)
             for n in range(1, len(parts) + 1))


def test_the_scan_finds_config_reads(tmp_path):
  source = tmp_path / "example.py"
  source.write_text(
      "def f(config, model_config, augment_config):\n"
      "  cfg = augment_config\n"
      "  return (config.eval.beam_width, model_config.get('d_model', 1), cfg.scale,\n"
      "          self.config.train.batch_size, jax.config.update, config.dataset.to_dict())\n")
  assert {field for _, field in config_reads(source)} == {
      "augment", "eval.beam_width", "model.d_model", "augment.scale", "train.batch_size",
      "dataset"}
  assert is_declared("input.canvases") and not is_declared("model.depth")
  assert not is_declared("eval.max_len")


def test_the_code_reads_only_declared_fields():
  serve_fields = {field.name for field in dataclasses.fields(serve.ServeConfig)}
  undeclared, count = [], 0
  for path in sorted((REPO_ROOT / "hme_jax").rglob("*.py")):
    for line, field in config_reads(path):
      count += 1
      if path.name == "serve.py" and field.split(".")[0] in serve_fields:
        continue  # the web server's own ServeConfig
      if not is_declared(field):
        undeclared.append(f"{path.relative_to(REPO_ROOT)}:{line}: config.{field}")
  assert undeclared == []
  assert count > 150  # the scan sees the code's reads


# --- saved configs -------------------------------------------------------------------


def test_fields_added_later_are_declared_and_read_back_from_old_saved_configs():
  assert set(checkpoints.FIELDS_ADDED_LATER) <= DECLARED
  with open(pathlib.Path(saved_model.pretrained_path()) / saved_model.MODEL_FILE) as f:
    shipped = json.load(f)["config"]
  old = json.loads(json.dumps(shipped))
  for dotted in checkpoints.FIELDS_ADDED_LATER:
    group, name = dotted.split(".")
    old[group].pop(name, None)
  config = checkpoints.config_from_json(old)
  for dotted, value in checkpoints.FIELDS_ADDED_LATER.items():
    group, name = dotted.split(".")
    assert config[group][name] == value
  # A value the saved config has is kept.
  assert checkpoints.config_from_json(shipped).input.sort_window == shipped["input"]["sort_window"]
