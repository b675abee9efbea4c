"""The import order of the package: the data path runs one way, with no cycles.

contract (with config, fixed, atomic, paths) <- rtl; contract <- formats <- compress <- gen
<- sim <- flows <- bench <- cli/demo. A module may import its own package or a lower level;
rtl and formats, side by side on level 1, never import each other. Deferred imports (inside
functions) count like any other.
"""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

#: Level of each top-level module or package of ``slimnfu``.
LEVELS = {"__init__": 0, "config": 0, "contract": 0, "fixed": 0, "atomic": 0, "paths": 0,
          "rtl": 1, "formats": 1, "compress": 2, "gen": 3, "sim": 4, "flows": 5, "bench": 6,
          "cli": 7, "demo": 7}


def _modules():
    """``{dotted name: path}`` of every module of the package (tests excluded)."""
    out = {}
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT)
        if rel.parts[0] in ("tests", "build", ".venv") or rel.parts[0].startswith("."):
            continue
        parts = list(rel.with_suffix("").parts)
        if parts[-1] == "__init__" and len(parts) > 1:
            parts = parts[:-1]
        out[".".join(["slimnfu"] + parts)] = path
    return out


def _imports(path, modules):
    """The ``slimnfu`` modules ``path`` imports (at any depth of the file), with line numbers."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # ``from pkg import sub`` depends on the submodule, ``from mod import name`` on mod
            subs = [f"{node.module}.{a.name}" for a in node.names]
            names = [n for n in subs if n in modules]
            if len(names) < len(subs):
                names.append(node.module)
        for name in names:
            if name.startswith("slimnfu") and name in modules:
                found.append((name, node.lineno))
    return found


def _level(module):
    parts = module.split(".")
    top = parts[1] if len(parts) > 1 else "__init__"
    if top not in LEVELS:
        raise AssertionError(f"{module}: no level for slimnfu.{top}; add it to LEVELS")
    return LEVELS[top], top


MODULES = _modules()
GRAPH = {m: _imports(p, MODULES) for m, p in MODULES.items()}


def test_every_module_has_a_level():
    for m in MODULES:
        _level(m)


def test_imports_run_one_way():
    bad = []
    for m, imports in GRAPH.items():
        lv, top = _level(m)
        for target, line in imports:
            tlv, ttop = _level(target)
            if tlv > lv or (tlv == lv and ttop != top and lv > 0):
                bad.append(f"{MODULES[m].relative_to(ROOT)}:{line}: {m} (level {lv}) imports "
                           f"{target} (level {tlv})")
    assert not bad, "imports against the layer order:\n" + "\n".join(bad)


def test_no_import_cycles():
    state, stack, cycles = {}, [], []

    def visit(m):
        state[m] = "open"
        stack.append(m)
        for target, _ in GRAPH[m]:
            if target == m or target == "slimnfu":
                continue
            if state.get(target) == "open":
                cycles.append(" -> ".join(stack[stack.index(target):] + [target]))
            elif target not in state:
                visit(target)
        stack.pop()
        state[m] = "done"

    for m in sorted(GRAPH):
        if m not in state:
            visit(m)
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


@pytest.mark.parametrize("name", ["ikr", "perm_index", "perm_affine", "slim"])
def test_format_names_are_branches_only_in_formats(name):
    """Outside :mod:`slimnfu.formats`, no code tests a layer's format by its name."""
    bad = []
    for m, path in MODULES.items():
        if _level(m)[1] in ("formats",) or m.endswith((".cli_bench", ".cli_cosim")):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Compare):
                consts = [c for c in [node.left, *node.comparators]
                          if isinstance(c, ast.Constant) and c.value == name]
                if consts:
                    bad.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert not bad, f"branches on format {name!r} outside slimnfu.formats: {bad}"
