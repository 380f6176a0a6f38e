"""The house layout, checked: the import graph of modify/ has no cycle (read from the source,
function-level imports included) and no module imports another's private names, every module
imports on its own, files stay under about 500 lines and functions under about 80 lines of code,
docs/architecture.md names every module, and the CLI's `modify --help` loads no torch.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from collections.abc import Collection
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "modify"
MODULES = sorted(
    ".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__") for p in PACKAGE.rglob("*.py")
)
MAX_FILE_LINES = 500
MAX_FUNCTION_LINES = 80  # code lines, the docstring not counted


# ---------------------------------------------------------------------------------------------
# The import graph, from the source


def module_files(root: Path, package: str) -> dict[str, Path]:
    """Dotted module name -> file, for every module of ``package`` under ``root``."""
    files = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return files


def _type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imports_of(name: str, path: Path, modules: Collection[str]) -> list[tuple[str, str | None]]:
    """(module imported, name taken from it or None) for every import in the file that reaches one
    of ``modules``, at any depth (function-level imports too). Imports under ``if TYPE_CHECKING:``
    never run and are left out; ``from pkg import sub`` reaches the package and its module ``sub``."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: list[tuple[str, str | None]] = []

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _type_checking(child):
                for other in child.orelse:
                    visit_one(other)
                continue
            visit_one(child)

    def visit_one(node: ast.AST) -> None:
        if isinstance(node, ast.Import):
            found.extend((alias.name, None) for alias in node.names if alias.name in modules)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                source = ".".join(parts[: len(parts) - node.level + 1] + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            for alias in node.names:
                if f"{source}.{alias.name}" in modules:
                    found.append((f"{source}.{alias.name}", None))
                elif source in modules:
                    found.append((source, alias.name))
        visit(node)

    visit(ast.parse(path.read_text()))
    return [(module, taken) for module, taken in found if module != name]


def import_graph(root: Path, package: str) -> dict[str, set[str]]:
    """Module -> the modules of ``package`` it imports."""
    files = module_files(root, package)
    return {name: {module for module, _ in imports_of(name, path, files)} for name, path in files.items()}


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The import cycles of ``graph``: its strongly connected components of more than one module
    (Tarjan's algorithm), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while not component or component[-1] != v:
                component.append(stack.pop())
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return cycles


def test_the_import_graph_of_modify_has_no_cycle() -> None:
    graph = import_graph(ROOT, "modify")
    assert len(graph) == len(MODULES)
    assert import_cycles(graph) == []


def test_the_cycle_check_finds_a_planted_cycle(tmp_path: Path) -> None:
    package = tmp_path / "planted"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "first.py").write_text("from planted.second import helper\n")
    (package / "second.py").write_text("def helper():\n    from planted import first  # a function-level import\n")
    (package / "third.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from planted import first\n"
    )
    graph = import_graph(tmp_path, "planted")
    assert graph["planted.third"] == set()  # never runs
    assert import_cycles(graph) == [["planted.first", "planted.second"]]


def test_no_module_imports_another_modules_private_names() -> None:
    # ruff's PLC2701 skips imports inside the package itself, so the border is checked here.
    files = module_files(ROOT, "modify")
    private = [
        f"{name} imports {taken} from {module}"
        for name, path in files.items()
        for module, taken in imports_of(name, path, files)
        if taken is not None and taken.startswith("_") and not taken.startswith("__")
    ]
    assert private == []


IMPORT_EACH = """
import importlib, json, sys, traceback
failures = {}
for name in json.loads(sys.argv[1]):
    for loaded in [m for m in sys.modules if m == "modify" or m.startswith("modify.")]:
        del sys.modules[loaded]  # each module imported first, as a user's script would
    try:
        importlib.import_module(name)
    except Exception as e:
        failures[name] = f"{type(e).__name__}: {e}"
print(json.dumps(failures))
"""


def test_every_module_imports_on_its_own() -> None:
    importable = [m for m in MODULES if m != "modify.__main__"]  # `python -m modify` runs the CLI
    out = subprocess.run(
        [sys.executable, "-c", IMPORT_EACH, json.dumps(importable)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout.strip().splitlines()[-1]) == {}


def _function_lengths(path: Path) -> list[tuple[str, int]]:
    long = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            first = node.body[0]
            docstring = (
                isinstance(first, ast.Expr)
                and isinstance(first.value, ast.Constant)
                and isinstance(first.value.value, str)
            )
            start = first.end_lineno + 1 if docstring and len(node.body) > 1 else node.lineno
            length = (node.end_lineno or start) - start + 1
            if length > MAX_FUNCTION_LINES:
                long.append((node.name, length))
    return long


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: str(p.relative_to(ROOT)))
def test_files_and_functions_stay_small(path: Path) -> None:
    assert path.read_text().count("\n") <= MAX_FILE_LINES
    assert _function_lengths(path) == []


def test_the_architecture_page_names_every_module() -> None:
    page = (ROOT / "docs" / "architecture.md").read_text()
    missing = [
        m
        for m in MODULES
        if m.count(".") >= 1
        and not m.startswith(("modify._", "modify.cli."))
        and m.rsplit(".", 1)[-1] + ("/" if (PACKAGE / Path(*m.split(".")[1:])).is_dir() else ".py") not in page
    ]
    assert missing == []


def test_help_loads_no_torch() -> None:
    code = (
        "import sys; from modify.cli import app; from typer.testing import CliRunner; "
        "CliRunner().invoke(app, ['--help']); sys.exit('torch' in sys.modules)"
    )
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT, timeout=120).returncode == 0


def test_batchnorm_folding_traces_with_the_one_tracer_and_says_why_it_cannot() -> None:
    import torch
    from torch import nn

    from modify.deploy.optimize import fold_batchnorm
    from modify.errors import TraceError

    class Gate(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x if x.mean() > 0 else -x  # control flow on a value: torch.fx cannot trace it

    with pytest.raises(TraceError, match="Gate"):
        fold_batchnorm(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), Gate()))


def test_locate_reuses_what_find_blocks_found() -> None:
    import torchvision

    from modify.conversion.discover import find_blocks, locate
    from modify.conversion.tracing import trace

    gm = trace(torchvision.models.resnet18(weights=None), input_size=32)
    sites = find_blocks(gm)
    first, again = locate(gm, sites[1]), locate(gm, sites[1])
    assert first is again  # no second analysis of the graph
    assert first.add.name == sites[1].node
