"""The import graph of the packages, read with ``ast``: layers without cycles.

Every import counts, at module level or inside a function: a deferred import
hides a dependency but does not remove it.
"""

import ast
import pathlib

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
  assert "hme_jax.decoding" in graph["hme_jax.families"]
  assert "hme_jax.grammar" in graph["hme_jax.latex"]
  assert "hme_jax.models.attention" in graph["hme_jax.seq2seq"]
  assert "tfds_crohme.crohme.vocabulary_metadata" in graph["tfds_crohme"]
  assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
  assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_hme_jax_and_tfds_crohme_import_without_cycles():
  assert find_cycle(import_graph()) is None


def test_tfds_crohme_imports_nothing_from_hme_jax():
  leaks = {module: sorted(m for m in imports if m.split(".")[0] == "hme_jax")
           for module, imports in import_graph().items() if module.startswith("tfds_crohme")}
  assert {module: found for module, found in leaks.items() if found} == {}
