"""The shape of the code, kept true: ARCHITECTURE.md's layer table lists every module, imports flow
down the layers only (and never in a cycle), `import undiffuse` loads nothing heavy, and modules and
functions stay short."""
import ast
import re
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "undiffuse"
MAX_MODULE_LINES = 400
MAX_MEDIAN_FUNCTION_LINES = 15


def layers() -> dict[str, int]:
    """ARCHITECTURE.md's table: `| n | layer | `a`, `b/` | ... |` -> {top-level module or package: n}."""
    table = {}
    for line in (ROOT / "ARCHITECTURE.md").read_text().splitlines():
        m = re.match(r"\|\s*(\d+)\s*\|[^|]+\|([^|]+)\|", line)
        if m:
            for name in re.findall(r"`([\w.]+)/?`", m.group(2)):
                table[name.removesuffix(".py")] = int(m.group(1))
    return table


def modules() -> dict[str, Path]:
    """Every module of the package by dotted name relative to it: 'cli.sample', 'schedule', ..."""
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        found[".".join(p for p in parts if p != "__init__") or "__init__"] = path
    return found


def imports_of(name: str, path: Path) -> set[str]:
    """The package modules `name` imports, at its top or inside functions, as dotted names."""
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package[:len(package) - (node.level - 1)] if node.level > 1 else package
            target = [*base, *(node.module.split(".") if node.module else [])]
            for alias in node.names:  # `from . import edit` names a module; `from .x import f` a function
                found.add(".".join([*target, alias.name]) if not node.module else ".".join(target))
    known = modules()
    return {t if t in known else t.rsplit(".", 1)[0] for t in found if t not in ("", name)} & set(known) - {name}


def top(name: str) -> str:
    return name.split(".")[0]


def test_every_module_is_in_the_layer_table():
    table = layers()
    tops = {top(m) for m in modules()} - {"__init__", "__main__"}
    assert tops - set(table) == set(), "modules missing from ARCHITECTURE.md"
    assert set(table) - tops == set(), "ARCHITECTURE.md names modules that do not exist"


@pytest.mark.parametrize("name", sorted(modules()))
def test_imports_flow_down_the_layers(name):
    table = layers()
    if top(name) in ("__init__", "__main__"):
        return
    for target in imports_of(name, modules()[name]):
        if top(target) == top(name):
            continue  # inside one package: the acyclicity test below covers it
        assert table[top(target)] <= table[top(name)], \
            f"{name} (layer {table[top(name)]}) imports {target} (layer {table[top(target)]})"


def test_the_import_graph_has_no_cycle():
    graph = {name: imports_of(name, path) for name, path in modules().items()}
    state: dict[str, int] = {}

    def visit(node, trail):
        if state.get(node) == 1:
            pytest.fail("import cycle: " + " -> ".join([*trail, node]))
        if state.get(node) == 2:
            return
        state[node] = 1
        for nxt in graph.get(node, ()):
            if not (nxt == top(nxt) and node.startswith(nxt + ".")):  # a package's own submodules
                visit(nxt, [*trail, node])
        state[node] = 2

    for name in graph:
        visit(name, [])


def test_import_undiffuse_stays_light():
    code = ("import sys, undiffuse; heavy = {'torch', 'numpy', 'PIL', 'scipy', 'starlette', 'tqdm'}; "
            "print(sorted(heavy & {m.split('.')[0] for m in sys.modules}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_the_lazy_names_of_the_package_resolve_to_their_objects_whatever_was_imported_first():
    """Each exported name is the object its module defines, even after every submodule was imported (a
    submodule of the same name as an export would replace it on the package: `ud.generate` was once the
    module `undiffuse.generate` after `ud.load_run`, and the README's example failed)."""
    code = """
import importlib, pkgutil, undiffuse
for info in pkgutil.walk_packages(undiffuse.__path__, "undiffuse."):
    if not info.name.startswith(("undiffuse.serve.app", "undiffuse.__main__")):
        importlib.import_module(info.name)
wrong = [n for n, m in undiffuse._EXPORTS.items()
         if getattr(undiffuse, n) is not getattr(importlib.import_module("undiffuse." + m), n)]
print(wrong)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
    import undiffuse

    shadowed = [n for n in undiffuse.__all__ if (PACKAGE / n).is_dir() or (PACKAGE / f"{n}.py").is_file()]
    assert not shadowed, f"submodules named like an exported name: {shadowed}"


def test_modules_and_functions_stay_short():
    lengths, long_modules = [], []
    for name, path in modules().items():
        text = path.read_text()
        if len(text.splitlines()) > MAX_MODULE_LINES:
            long_modules.append(f"{name}: {len(text.splitlines())} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lengths.append(node.end_lineno - node.lineno + 1)
    assert not long_modules
    assert statistics.median(lengths) <= MAX_MEDIAN_FUNCTION_LINES
