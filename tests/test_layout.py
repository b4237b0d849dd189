"""The package's shape, checked from its source: the stages import only downwards (so the layout reads as the
pipeline), no import cycle, no module reaching into another's private names, and no function too long to read
top to bottom. docs/architecture.md draws the same stages."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "genrec"
# lowest first: a module may import from its own layer and the layers below it, never above
LAYERS = [{"errors", "files", "config", "metrics"}, {"data"}, {"items"}, {"model_dir"}, {"prompts"}, {"infer"},
          {"train"}, {"eval"}, {"serve"}, {"cli"}]
MAX_FUNCTION_LINES = 90


def modules() -> dict[str, ast.Module]:
    out = {}
    for path in sorted(ROOT.rglob("*.py")):
        name = ".".join(("genrec", *path.relative_to(ROOT).with_suffix("").parts)).removesuffix(".__init__")
        out[name] = ast.parse(path.read_text(), str(path))
    return out


def imports(mods: dict[str, ast.Module]) -> dict[str, set[str]]:
    """module -> the genrec modules it imports anywhere (function-level imports too: a cycle hidden in a function
    is still a cycle)."""
    edges: dict[str, set[str]] = {}
    for name, tree in mods.items():
        deps = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "genrec":
                assert node.level == 0, f"{name}: relative import"
                for alias in node.names:
                    full = f"{node.module}.{alias.name}"
                    deps.add(full if full in mods else node.module)
            elif isinstance(node, ast.Import):
                deps |= {a.name for a in node.names if a.name.split(".")[0] == "genrec"}
        edges[name] = {d for d in deps if d in mods and d != name}
    return edges


def layer(module: str) -> int:
    stage = module.split(".")[1] if module.count(".") else module
    return next(n for n, names in enumerate(LAYERS) if stage in names)


def test_every_module_has_a_layer():
    unplaced = [m for m in modules() if m != "genrec" and not any(
        (m.split(".")[1]) in names for names in LAYERS)]
    assert not unplaced


def test_stages_import_only_downwards():
    upward = [f"{m} -> {d}" for m, deps in imports(modules()).items() if m != "genrec"
              for d in deps if d != "genrec" and layer(d) > layer(m)]
    assert not upward


def test_no_import_cycle():
    edges = imports(modules())
    state: dict[str, int] = {}
    cycles = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(edges[node]):
            if state.get(nxt) == 1:
                cycles.append(path[path.index(nxt):] + [nxt] if nxt in path else [node, nxt])
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for m in sorted(edges):
        if m not in state:
            visit(m, [m])
    assert not cycles


def test_no_module_reaches_into_another_modules_private_names():
    mods = modules()
    found = []
    for name, tree in mods.items():
        aliases = {}
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("genrec"):
                for a in node.names:
                    if a.name.startswith("_"):
                        found.append(f"{name} imports {node.module}.{a.name}")
                    if f"{node.module}.{a.name}" in mods:
                        aliases[a.asname or a.name] = a.name
            elif isinstance(node, ast.Import):
                for a in node.names:
                    if a.name.startswith("genrec") and a.asname:
                        aliases[a.asname] = a.name
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases
                    and node.attr.startswith("_") and not node.attr.startswith("__")):
                found.append(f"{name} reads {node.value.id}.{node.attr}")
    assert not found


def test_functions_read_top_to_bottom():
    long = []
    for name, tree in modules().items():
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    long.append(f"{name}.{node.name}: {n} lines")
    assert not long


def test_the_layer_test_catches_what_it_is_for(tmp_path):
    """The checks above fail on the faults they look for (a test that cannot fail proves nothing)."""
    tree = ast.parse("from genrec.serve.app import create_app\nfrom genrec.items import _hidden\n")
    edges = imports({"genrec.data.x": tree, "genrec.serve.app": ast.parse(""),
                     "genrec.items": ast.parse("")})
    assert edges["genrec.data.x"] == {"genrec.serve.app", "genrec.items"}
    assert layer("genrec.serve.app") > layer("genrec.data.x")


def test_every_module_and_benchmark_imports():
    """A moved name is found here, not by the first user who runs that command."""
    import importlib
    import pkgutil

    import genrec

    names = [m.name for m in pkgutil.walk_packages(genrec.__path__, "genrec.")]
    names += [f"benchmarks.{p.stem}" for p in (ROOT.parent / "benchmarks").glob("*.py") if p.stem != "__init__"]
    for name in names:
        importlib.import_module(name)
    assert len(names) > 40
