"""Bad command lines, as a new user types them: each ends with one line on stderr naming the
value and the next step, exit code 1, and no traceback anywhere; nothing is written.

Usage errors (a missing argument, an unknown option, a value of the wrong type) follow the same
rule as bad values: one line, exit code 1, and where to read the command's help.

An output that cannot be written is refused the same way by every command that writes (and by
the examples' scripts), before any model is built: `OUTPUTS` below, commands x cases.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import modify.io.resolve
import modify.train.data
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
    plans = {
        "plan_wrong": "version: 2\nrules:\n  - {name: layer9.1, action: delete}\n",
        "plan_v1_action": "version: 1\nrules:\n  - {name: layer4.1, action: delete}\n",
        "plan_bad_action": "version: 2\nrules:\n  - {name: layer4.1, action: prune}\n",
        "plan_narrow_c": "version: 2\nrules:\n  - {name: layer4.1, action: narrow, c: 64}\n",
    }
    for name, text_ in plans.items():
        (root / f"{name}.yaml").write_text(text_)
    return {
        "weights": str(weights),
        "text": str(text),
        "recipe": str(recipe),
        "empty": str(empty),
        "exists": str(existing),
        "fresh": str(root / "fresh.pt"),
        **{name: str(root / f"{name}.yaml") for name in plans},
    }


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
    (
        "bench resnet18 --vs resnet18 --engine tensorrt",
        "--engine 'tensorrt' is not one of eager, compile, onnxruntime, aoti",
    ),
    ("export /nonexistent.pt", "/nonexistent.pt"),
    ("export {weights}", "not a modify checkpoint"),
    ("export resnet18_mod --format tflite", "tflite"),
    ("export resnet18_mod --format aoti --device tpu", "--device 'tpu' is not one of cpu, cuda"),
    ("export resnet18_mod --format onnx --device cuda", "--device cuda applies to --format aoti only"),
    ("" if torch.cuda.is_available() else "export resnet18_mod --format aoti --device cuda", "needs a CUDA device"),
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
    # modify plan, and convert's one-step form of it
    ("plan resnet18 --data fashion-mnist --speedup 0.8", "--speedup 0.8 is not above 1"),
    ("plan resnet18 --data fashion-mnist --speedup 1", "--speedup 1 is not above 1"),
    ("plan resnet18 --data fashion-mnist --speedup abc", "--speedup"),
    ("plan resnet18 --speedup 1.5", "Missing option '--data'"),
    ("plan resnet18 --data fashion-mnist", "Missing option '--speedup'"),
    ("plan resnet18 --data fashion-mnist --speedup 1.5 --engine tensorrt", "--engine 'tensorrt'"),
    ("plan resnet18 --data fashion-mnist --speedup 1.5 --fractions 0.5,1.5", "--fractions '0.5,1.5'"),
    ("plan resnet18 --data fashion-mnist --speedup 1.5 --fractions half", "--fractions 'half'"),
    ("plan resnet18 --data fashion-mnist --speedup 1.5 --actions delete,prune", "--actions 'delete,prune'"),
    ("plan resnet18 --data fashion-mnist --speedup 1.5 --selection random", "--selection 'random'"),
    ("plan resnet18 --data fashion-mnist --speedup 1.5 --batch 0", "--batch"),
    ("plan resnet18 --data fashion-mnist --speedup 1.5 --threads -1", "--threads"),
    ("plan resnet18 --data fashion-mnist --speedup 1.5 --limit 100 --calib-images 500", "500 calibration images"),
    ("plan resnet05 --data fashion-mnist --speedup 1.5", "Unknown model 'resnet05'"),
    ("plan resnet18 --data /nonexistent --speedup 1.5", "does not exist"),
    ("plan resnet18 --data fashion-mnist --speedup 1.5 --weights /nonexistent/w.pt", "/nonexistent/w.pt"),
    ("plan resnet18 --data fashion-mnist --speedup 1.5 --weights {weights} --num-classes 10", "'fc.weight' has shape"),
    ("plan vgg16 --data fashion-mnist --speedup 1.5 --limit 100 --calib-images 10", "nothing to plan"),
    ("plan resnet18 --data fashion-mnist --speedup 1.5 -o {exists}", "exists"),
    ("plan resnet18 --data fashion-mnist --speedup 1.5 -o {empty}", "directory"),
    (
        "plan resnet18 --data fashion-mnist --speedup 1.5 --limit 100 --calib-images 10 --table {text}",
        "holds no measured choices",
    ),
    ("convert resnet18 --speedup 1.5", "--speedup and --data go together"),
    ("convert resnet18 --data fashion-mnist", "--speedup and --data go together"),
    ("convert resnet18 --speedup 1.5 --data fashion-mnist -k 4 -o {fresh}", "drop --recipe, -k and -c"),
    ("convert resnet18 --speedup 1.5 --data fashion-mnist", "give -o FILE"),
    ("convert resnet18 --speedup 0.5 --data fashion-mnist -o {fresh}", "--speedup 0.5 is not above 1"),
    ("convert resnet18 --recipe {plan_wrong}", "{name: layer9.1, action: delete} matches no block"),
    ("convert resnet18 --recipe {plan_v1_action}", "need `version: 2`"),
    ("convert resnet18 --recipe {plan_bad_action}", "'prune' is not an action"),
    ("convert resnet18 --recipe {plan_narrow_c}", "action narrow takes a fraction"),
    ("blocks resnet18 --recipe {plan_wrong}", "matches no block"),
    ("compare resnet18 --data fashion-mnist --plan-speedups 0.9", "--plan-speedups '0.9'"),
    ("compare resnet18 --data fashion-mnist --plan-speedups a,b", "--plan-speedups 'a,b'"),
    ("compare resnet18 --data fashion-mnist --prune-speedups 1.5,0.5", "--prune-speedups '1.5,0.5'"),
    ("finetune resnet18_mod --data fashion-mnist --teacher-weights {weights}", "pass --teacher MODEL too"),
    ("profile resnet18 --weights /nonexistent/w.pt", "/nonexistent/w.pt"),
    ("bench resnet18 --vs resnet18 --weights {text}", "notes.txt"),
    ("export resnet18_mod --weights /nonexistent/w.pt", "/nonexistent/w.pt"),
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
    assert len([b for b in BAD if b[0].startswith("plan ") or "--speedup" in b[0] or "plan_" in b[0]]) >= 20


def test_no_command_shows_the_help() -> None:
    result = runner.invoke(app, [])
    assert "Usage" in result.output and "Traceback" not in result.output
    assert result.exit_code == 2 and "error:" not in result.output  # the help, not an error line


def test_nothing_the_user_had_is_overwritten(files) -> None:
    runner.invoke(app, ["convert", "resnet18", "-o", files["exists"]])
    with open(files["exists"], "rb") as f:
        assert f.read() == b"keep me"


# -- Outputs that cannot be written --------------------------------------------------------------
# Every command that writes checks where it writes before any work: one line naming the path and
# the next step, exit code 1, no model built, and nothing written or removed (the check makes the
# missing folders to see that it can, and removes them again).

WRITERS = {
    # name: (command line, what {out} is: a file or a folder)
    "convert": ("convert resnet18 -o {out}", "file"),
    "export": ("export resnet18_mod -o {out}", "file"),
    "export aoti": ("export resnet18_mod --format aoti -o {out}", "file"),
    "finetune": ("finetune resnet18_mod --data fashion-mnist -o {out}", "file"),
    "finetune state": (
        "finetune resnet18_mod --data fashion-mnist -o {root}/ft.pt --checkpoint-every 5 --checkpoint-dir {out}",
        "folder",
    ),
    "finetune resume": (
        "finetune resnet18_mod --data fashion-mnist -o {root}/ft.pt --resume --checkpoint-dir {out}",
        "folder",
    ),
    "compare": ("compare resnet18 --data fashion-mnist --methods mod -o {out}", "folder"),
    "routes": ("routes resnet18_mod --data fashion-mnist -o {out}", "folder"),
    "plan": ("plan resnet18 --speedup 1.5 --data fashion-mnist -o {out}", "file"),
    "convert by plan": ("convert resnet18 --speedup 1.5 --data fashion-mnist -o {out}", "file"),
}
LONG = "x" * 300  # longer than any file system allows a name to be (255 bytes)
CASES = {
    # case: ({out} for a file, {out} for a folder (None: not a case there), a phrase the line must hold)
    "parent is a file": ("{text}/model.pt", "{text}/out", "'{text}' is a file, not a folder"),
    "a file further up": ("{text}/sub/model.pt", "{text}/sub/out", "'{text}' is a file, not a folder"),
    "parent cannot be made: name too long": (
        "{root}/" + LONG + "/model.pt",
        "{root}/" + LONG + "/out",
        "cannot be made",
    ),
    "parent cannot be made: read-only folder": (
        "{readonly}/new/model.pt",
        "{readonly}/new",
        "'{readonly}/new' cannot be made",
    ),
    "folder not writable": ("{readonly}/model.pt", "{readonly}", "cannot write"),
    "exists without --force": ("{exists}", None, "'{exists}' exists; pass --force"),
    "output is a folder": ("{empty}", None, "'{empty}' is a directory"),
    "output folder is a file": (None, "{text}", "'{text}' is a file, not a folder"),
}
OUTPUTS = [
    (f"{writer} / {case}", line.replace("{out}", out), phrase)
    for writer, (line, kind) in WRITERS.items()
    for case, (file_out, folder_out, phrase) in CASES.items()
    if (out := file_out if kind == "file" else folder_out) is not None
]


class WorkStarted(Exception):
    """Raised where a command would start building a model or reading data."""


@pytest.fixture
def no_work(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every command resolves its MODEL (`resolve_model`) or loads its data first: both raise."""

    def refuse(*args, **kwargs):
        raise WorkStarted(f"work started before the output was checked: {args}")

    monkeypatch.setattr(modify.io.resolve, "resolve_model", refuse)
    monkeypatch.setattr(modify.train.data, "load_dataset", refuse)


def _can_create_in(folder: Path) -> bool:
    try:
        fd = os.open(folder / ".probe", os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except OSError:
        return False
    os.close(fd)
    os.unlink(folder / ".probe")
    return True


@pytest.fixture
def readonly(tmp_path: Path):
    """A folder in which no file can be created, whoever runs the tests: mode 0555 for a user;
    root ignores permission bits, so for root the folder is made immutable (``chattr +i``)."""
    folder = tmp_path / "readonly"
    folder.mkdir()
    folder.chmod(0o555)
    immutable = False
    if _can_create_in(folder):  # root
        folder.chmod(0o755)
        immutable = (
            shutil.which("chattr") is not None
            and subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode == 0
        )
        if not immutable or _can_create_in(folder):
            if immutable:
                subprocess.run(["chattr", "-i", str(folder)], check=True)
            pytest.skip(
                "running as root, which ignores permission bits, and `chattr +i` does not work here (not installed, "
                "a file system without the immutable flag, or no CAP_LINUX_IMMUTABLE): no folder root cannot write"
            )
    yield folder
    if immutable:
        subprocess.run(["chattr", "-i", str(folder)], check=True)
    folder.chmod(0o755)


@pytest.fixture
def spots(tmp_path: Path, request: pytest.FixtureRequest):
    """Places to write to, in a fresh folder per test: a text file, an existing checkpoint, an
    empty folder, and (for the cases that name it) a folder that cannot be written."""
    (tmp_path / "notes.txt").write_text("not a folder\n")
    (tmp_path / "exists.pt").write_bytes(b"keep me")
    (tmp_path / "empty").mkdir()
    names = {
        "root": str(tmp_path),
        "text": str(tmp_path / "notes.txt"),
        "exists": str(tmp_path / "exists.pt"),
        "empty": str(tmp_path / "empty"),
    }
    needs_readonly = any("{readonly}" in str(v) for v in request.node.callspec.params.values())
    if needs_readonly:
        names["readonly"] = str(request.getfixturevalue("readonly"))
    return names


def _tree(root: str) -> dict[str, bytes | None]:
    """Every path under root, with each file's bytes: what must be the same after a refusal."""
    out: dict[str, bytes | None] = {}
    for folder, dirs, files in os.walk(root):
        for d in dirs:
            out[os.path.relpath(os.path.join(folder, d), root)] = None
        for f in files:
            out[os.path.relpath(os.path.join(folder, f), root)] = Path(folder, f).read_bytes()
    return out


@pytest.mark.parametrize(("line", "phrase"), [o[1:] for o in OUTPUTS], ids=[o[0] for o in OUTPUTS])
def test_an_output_that_cannot_be_written_is_one_line_before_any_work(spots, no_work, line: str, phrase: str) -> None:
    before = _tree(spots["root"])
    result = runner.invoke(app, line.format(**spots).split())
    assert not isinstance(result.exception, WorkStarted), "the command started its work before checking its output"
    assert result.exit_code == 1, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    assert phrase.format(**spots) in lines[0], lines[0]
    assert result.stdout == ""
    assert _tree(spots["root"]) == before  # nothing written, nothing removed, no folder left behind


@pytest.mark.parametrize("writer", list(WRITERS))
def test_a_good_output_reaches_the_work_and_leaves_nothing_behind(tmp_path: Path, no_work, writer: str) -> None:
    """The other half of the test above: with a path that can be written, each command gets as
    far as `no_work`'s tripwire, so the refusals above did come before the work."""
    line, kind = WRITERS[writer]
    out = tmp_path / "new" / "deeper" / ("model.pt" if kind == "file" else "out")
    result = runner.invoke(app, line.format(out=out, root=tmp_path).split())
    assert isinstance(result.exception, WorkStarted), result.output
    assert os.listdir(tmp_path) == []  # the folders the check made to try them are gone


def test_every_command_that_writes_meets_every_case() -> None:
    """The table above: each writer x each case that applies to what it writes (a file or a folder)."""
    writers = {w.split(" ")[0] for w in WRITERS}
    assert writers == {"convert", "export", "finetune", "compare", "routes", "plan"}
    for writer, (_, kind) in WRITERS.items():
        cases = {case for case, (f, d, _) in CASES.items() if (f if kind == "file" else d) is not None}
        assert cases == {i.split(" / ")[1] for i, _, _ in OUTPUTS if i.split(" / ")[0] == writer}
        assert len(cases) == (7 if kind == "file" else 6)


# The examples' scripts that write (habit 14: examples are run by tests): the same cases, with the
# file cases they meet (they replace an existing file on purpose, so "exists" is not one).
EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
EXAMPLE_WRITERS = {
    # name: (script, arguments with {out}, the name in the script that starts the work)
    "train_fashion_mnist -o": ("train_fashion_mnist", "-o {out}", "fashion_mnist"),
    "fashion_mnist --save-baseline": ("fashion_mnist", "--save-baseline {out}", "fashion_mnist"),
    "fashion_mnist --json": ("fashion_mnist", "--json {out}", "fashion_mnist"),
    "own_weights_image_folder -o": (
        "own_weights_image_folder",
        "--model resnet18 --weights {root}/w.pth --data {root}/images -o {out}",
        "load_dataset",
    ),
    # its output is CHECKPOINT.onnx: the cases whose {out} ends in model.pt move it to model.onnx
    "serve_onnxruntime": ("serve_onnxruntime", "{out}", "modify"),
}
EXAMPLE_OUTPUTS = [
    (f"{writer} / {case}", script, args.replace("{out}", file_out), tripwire, phrase)
    for writer, (script, args, tripwire) in EXAMPLE_WRITERS.items()
    for case, (file_out, _, phrase) in CASES.items()
    if file_out is not None
    and case != "exists without --force"
    and (script != "serve_onnxruntime" or file_out.endswith("model.pt"))
]


class _Tripwire:
    """Stands in for the function (or module: serve_onnxruntime's `modify.load`) a script's work starts with."""

    def __call__(self, *args, **kwargs):
        raise WorkStarted("the example started its work before checking its output")

    def __getattr__(self, name: str) -> _Tripwire:
        return self


def _load_example(name: str):
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    ("script", "args", "tripwire", "phrase"), [o[1:] for o in EXAMPLE_OUTPUTS], ids=[o[0] for o in EXAMPLE_OUTPUTS]
)
def test_an_example_refuses_an_output_that_cannot_be_written(
    spots, monkeypatch, script: str, args: str, tripwire: str, phrase: str
) -> None:
    if script == "serve_onnxruntime":
        pytest.importorskip("onnxruntime", reason="the [onnx] extra")
    example = _load_example(script)
    monkeypatch.setattr(example, tripwire, _Tripwire())
    before = _tree(spots["root"])
    with pytest.raises(SystemExit) as exit:
        example.main(args.format(**spots).split())
    message = str(exit.value.code)
    assert message.startswith("error:") and "\n" not in message, message  # printed as one line, exit code 1
    assert phrase.format(**spots) in message, message
    assert _tree(spots["root"]) == before


@pytest.mark.parametrize("writer", list(EXAMPLE_WRITERS))
def test_an_example_with_a_good_output_reaches_the_work(tmp_path: Path, monkeypatch, writer: str) -> None:
    """The tripwires above are where each script's work starts."""
    script, args, tripwire = EXAMPLE_WRITERS[writer]
    if script == "serve_onnxruntime":
        pytest.importorskip("onnxruntime", reason="the [onnx] extra")
    example = _load_example(script)
    monkeypatch.setattr(example, tripwire, _Tripwire())
    with pytest.raises(WorkStarted):
        example.main(args.format(out=tmp_path / "new" / "deeper" / "model.pt", root=tmp_path).split())
    assert os.listdir(tmp_path) == []
