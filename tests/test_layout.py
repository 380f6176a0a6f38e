"""The house layout, checked: every module imports on its own (no import cycle), files stay
under about 500 lines and functions under about 80 lines of code, docs/architecture.md names
every module, and the CLI's `modify --help` loads no torch.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "modify"
MODULES = sorted(
    ".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__") for p in PACKAGE.rglob("*.py")
)
MAX_FILE_LINES = 500
MAX_FUNCTION_LINES = 80  # code lines, the docstring not counted

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
    out = subprocess.run([sys.executable, "-c", IMPORT_EACH, json.dumps(importable)], cwd=ROOT, capture_output=True, text=True,
                         timeout=600)  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout.strip().splitlines()[-1]) == {}


def _function_lengths(path: Path) -> list[tuple[str, int]]:
    long = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            first = node.body[0]
            docstring = isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str)
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
    missing = [m for m in MODULES if m.count(".") >= 1 and not m.startswith(("modify._", "modify.cli."))
               and m.rsplit(".", 1)[-1] + ("/" if (PACKAGE / Path(*m.split(".")[1:])).is_dir() else ".py") not in page]  # fmt: skip
    assert missing == []


def test_help_loads_no_torch() -> None:
    code = "import sys; from modify.cli import app; from typer.testing import CliRunner; " \
           "CliRunner().invoke(app, ['--help']); sys.exit('torch' in sys.modules)"  # fmt: skip
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
