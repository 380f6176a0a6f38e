"""Bad command lines, as a new user types them: each ends with one line on stderr naming the
value and the next step, exit code 1, and no traceback anywhere; nothing is written.

Usage errors (a missing argument, an unknown option, a value of the wrong type) follow the same
rule as bad values: one line, exit code 1, and where to read the command's help.
"""

from __future__ import annotations

import pytest
import torch
from typer.testing import CliRunner

from modify.cli import app

runner = CliRunner()


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, str]:
    """A few real files to misuse: a plain state_dict, a text file, a folder that is no data set."""
    root = tmp_path_factory.mktemp("bad")
    weights = root / "r18.pt"
    import torchvision

    torch.save(torchvision.models.resnet18(weights=None).state_dict(), weights)
    text = root / "notes.txt"
    text.write_text("not a model\n")
    recipe = root / "bad.yaml"
    recipe.write_text("version: 1\nrules:\n  - {index: odd, kk: 3}\n")
    empty = root / "empty"
    empty.mkdir()
    existing = root / "exists.pt"
    existing.write_bytes(b"keep me")
    return {"weights": str(weights), "text": str(text), "recipe": str(recipe), "empty": str(empty), "exists": str(existing)}


BAD = [
    # (command line, a phrase the one line must hold)
    ("", "Usage"),  # no command at all: the help, exit code 0 is not an error -> checked apart
    ("convert", "Missing argument 'model'"),
    ("convert resnet05", "Unknown model 'resnet05'"),
    ("convert resnet18 --init bogus", "'bogus'"),
    ("convert os:system", "os:system"),
    ("convert nosuchpackage:factory", "Cannot import 'nosuchpackage'"),
    ("convert torchvision.models:nothing_here", "has no attribute"),
    ("convert resnet18 -k abc", "-k 'abc'"),
    ("convert resnet18 -k 0", "k"),
    ("convert resnet18 -k 1.5", "k"),
    ("convert resnet18 -k 10000", "k=10000"),
    ("convert resnet18 -c 0", "c"),
    ("convert resnet18 -k 4 -c 64", "at most one"),
    ("convert resnet18 --recipe nonexistent.yaml", "nonexistent.yaml"),
    ("convert resnet18 --recipe {recipe}", "kk"),
    ("convert resnet18 --recipe {text}", "notes.txt"),
    ("convert resnet18 --weights /nonexistent/w.pt", "/nonexistent/w.pt"),
    ("convert resnet18 --weights {text}", "notes.txt"),
    ("convert resnet18 --weights {weights} --num-classes 10", "'fc.weight' has shape"),
    ("convert resnet18 --input-size 3", "--input-size"),
    ("convert resnet18 --input-size abc", "--input-size"),
    ("convert resnet18 --num-classes 0", "--num-classes"),
    ("convert resnet18 --leaf layer9", "layer9"),
    ("convert resnet18 -o {exists}", "exists"),
    ("convert resnet18 -o {empty}", "directory"),
    ("convert resnet18 --bogus-option", "No such option"),
    ("convert vgg16", "No residual Conv-Block"),
    ("convert timm:resnet18x", "timm:resnet18"),
    ("convert resnet18.pt", "No checkpoint file"),
    ("convert {weights}", "not a modify checkpoint"),
    ("blocks resnet18 -k -3", "k"),
    ("profile resnet05", "Unknown model"),
    ("profile resnet18 --input-size 0", "--input-size"),
    ("profile {text}", "notes.txt"),
    ("bench resnet18", "Missing option '--vs'"),
    ("bench resnet18 --vs resnet05", "Unknown model"),
    ("bench resnet18 --vs resnet18 --case 1y1", "1y1"),
    ("export /nonexistent.pt", "/nonexistent.pt"),
    ("export {weights}", "not a modify checkpoint"),
    ("export resnet18_mod --format tflite", "tflite"),
    ("finetune resnet18_mod", "Missing option '--data'"),
    ("finetune resnet18_mod --data /nonexistent", "does not exist"),
    ("finetune resnet18_mod --data {empty}", "empty"),
    ("finetune resnet18_mod --data fashion-mnist --optimizer rmsprop", "rmsprop"),
    ("finetune resnet18_mod --data fashion-mnist --init bogus", "'bogus'"),
    ("finetune resnet18_mod --data fashion-mnist --precision fp8", "fp8"),
    ("finetune resnet18_mod --data fashion-mnist --epochs 1 --steps 10", "--epochs"),
    ("compare resnet18 --data /nonexistent", "does not exist"),
    ("compare resnet18 --data fashion-mnist --methods mod,magic", "magic"),
    ("compare resnet18 --data fashion-mnist --seeds a,b", "seeds"),
    ("routes resnet18_mod --data /nonexistent", "does not exist"),
    ("routes resnet18_mod --data fashion-mnist --split val", "val"),
    ("models --bogus", "No such option"),
    ("nonsense", "No such command 'nonsense'"),
]


@pytest.mark.parametrize(("line", "phrase"), [b for b in BAD if b[0]], ids=[b[0] for b in BAD if b[0]])
def test_a_bad_command_line_is_one_line_and_exit_code_1(files, line: str, phrase: str) -> None:
    args = line.format(**files).split()
    result = runner.invoke(app, args)
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output and result.exception is None or isinstance(result.exception, SystemExit)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    assert phrase in lines[0], lines[0]
    assert result.stdout == ""


def test_the_table_is_long_enough() -> None:
    assert len([b for b in BAD if b[0]]) >= 40


def test_no_command_shows_the_help() -> None:
    result = runner.invoke(app, [])
    assert "Usage" in result.output and "Traceback" not in result.output
    assert result.exit_code == 2 and "error:" not in result.output  # the help, not an error line


def test_nothing_the_user_had_is_overwritten(files) -> None:
    runner.invoke(app, ["convert", "resnet18", "-o", files["exists"]])
    with open(files["exists"], "rb") as f:
        assert f.read() == b"keep me"
