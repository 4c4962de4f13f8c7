"""The import graph of the packages, read with ``ast``: layers without cycles.

Every import counts, at module level or inside a function: a deferred import
hides a dependency but does not remove it. The layers are the README's layout
table: its rows name every module and folder of ``hme_jax/``, in an order in
which each module imports only its own folder and rows above it.
"""

import ast
import pathlib
import re

from conftest import REPO_ROOT

PACKAGES = ("hme_jax", "tfds_crohme")


def module_name(path: pathlib.Path) -> str:
  parts = path.relative_to(REPO_ROOT).with_suffix("").parts
  return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: pathlib.Path, modules: set[str]) -> set[str]:
  """The modules of ``modules`` that the file at ``path`` imports."""
  name = module_name(path)
  package = name if path.name == "__init__.py" else name.rpartition(".")[0]
  found = set()
  for node in ast.walk(ast.parse(path.read_text(), str(path))):
    if isinstance(node, ast.Import):
      targets = [alias.name for alias in node.names]
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:
        anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
        base = ".".join(anchor + ([base] if base else []))
      # ``from a import b``: the module a.b if there is one, else a name of a.
      targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                 for alias in node.names]
    else:
      continue
    for target in targets:
      # ``import a.b.c`` depends on a.b.c (and runs a, a.b); the deepest known module counts.
      while target and target not in modules:
        target = target.rpartition(".")[0]
      if target and target != name:
        found.add(target)
  return found


def import_graph() -> dict[str, set[str]]:
  paths = [p for package in PACKAGES for p in (REPO_ROOT / package).rglob("*.py")]
  modules = {module_name(p) for p in paths}
  return {module_name(p): imported_modules(p, modules) for p in paths}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
  """One cycle of ``graph`` as ``[a, b, ..., a]``, or None."""
  state: dict[str, str] = {}  # "open" while on the path, "done" after

  def visit(node, path):
    state[node] = "open"
    for child in sorted(graph.get(node, ())):
      if state.get(child) == "open":
        return path[path.index(child):] + [child]
      if child not in state and (cycle := visit(child, path + [child])):
        return cycle
    state[node] = "done"
    return None

  for node in sorted(graph):
    if node not in state and (cycle := visit(node, [node])):
      return cycle
  return None


def test_the_import_graph_is_read_correctly():
  graph = import_graph()
  assert "hme_jax.families.ctc_decoding" in graph["hme_jax.families.registry"]
  assert "hme_jax.text.grammar" in graph["hme_jax.text.latex"]
  assert "hme_jax.models.attention" in graph["hme_jax.families.seq2seq"]
  assert "tfds_crohme.crohme.vocabulary_metadata" in graph["tfds_crohme"]
  assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
  assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_hme_jax_and_tfds_crohme_import_without_cycles():
  assert find_cycle(import_graph()) is None


def test_tfds_crohme_imports_nothing_from_hme_jax():
  leaks = {module: sorted(m for m in imports if m.split(".")[0] == "hme_jax")
           for module, imports in import_graph().items() if module.startswith("tfds_crohme")}
  assert {module: found for module, found in leaks.items() if found} == {}


# --- the README's layout table: the tree, and the layers in order ----------------------


def layout_rows() -> list[list[str]]:
  """The paths (in backquotes) of the first column of each row of the README's layout table."""
  readme = (REPO_ROOT / "README.md").read_text()
  section = readme.split("\n## Layout\n", 1)[1].split("\n## ", 1)[0]
  return [re.findall(r"`([^`]+)`", line.split("|")[1])
          for line in section.splitlines() if line.startswith("| `")]


def module_rows() -> dict[str, int]:
  """Each module or package of ``hme_jax`` named in the table -> its row."""
  rows = {}
  for index, paths in enumerate(layout_rows()):
    for path in paths:
      if path.endswith(".py"):
        rows[module_name(REPO_ROOT / path)] = index
      elif path.endswith("/") and (REPO_ROOT / path / "__init__.py").is_file():
        rows[path.rstrip("/").replace("/", ".")] = index
  return rows


def folder(module: str) -> str:
  """The package that holds ``module`` (a package's ``__init__`` is in its own folder)."""
  is_package = (REPO_ROOT / module.replace(".", "/") / "__init__.py").is_file()
  return module if is_package else module.rpartition(".")[0]


def layering_violations(graph: dict[str, set[str]], rows: dict[str, int]) -> list[str]:
  """The imports of a module from another folder that is not in a row above the module's."""
  return sorted(f"{module} -> {target}" for module, targets in graph.items() for target in targets
                if folder(target) != folder(module) and rows[target] >= rows[module])


def test_the_layout_table_names_every_module_and_folder_of_the_tree():
  root = REPO_ROOT / "hme_jax"
  tree = {path.relative_to(REPO_ROOT).as_posix() for path in root.rglob("*.py")
          if path.name != "__init__.py" or path.parent == root}
  tree |= {init.parent.relative_to(REPO_ROOT).as_posix() + "/"
           for init in root.rglob("*/__init__.py")}
  named = {path for paths in layout_rows() for path in paths if path.startswith("hme_jax")}
  assert sorted(tree - named) == []
  assert sorted(path for path in named if not (REPO_ROOT / path).exists()) == []


def test_each_module_imports_only_its_own_folder_and_the_rows_above_it():
  graph = {module: {target for target in targets if target.startswith("hme_jax")}
           for module, targets in import_graph().items() if module.startswith("hme_jax")}
  rows = module_rows()
  assert sorted(set(graph) - set(rows)) == []
  assert rows["hme_jax.families.registry"] < rows["hme_jax.data.input_pipeline"]
  assert layering_violations(graph, rows) == []
  assert layering_violations({"a.x": {"b.y", "a.z"}, "b.y": set(), "a.z": set()},
                             {"a.x": 0, "b.y": 1, "a.z": 2}) == ["a.x -> b.y"]
