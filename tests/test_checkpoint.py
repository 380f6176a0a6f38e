"""Checkpoints: save and load give the same model (no pickled module: the model is rebuilt from
its history and the weights loaded), refusals are one line and write nothing, written files
follow the umask, and what a conversion keeps (dense-task backbones, leaf classes) survives."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
import torchvision
from torch import nn

import modify
from modify.conversion.backbones import convert_backbone
from modify.conversion.pipeline import convert
from modify.errors import CheckpointError
from modify.io import provenance
from test_user_models import Net
from toy_models import PreActBlock

SIZE = 64


def test_save_then_load_gives_identical_outputs(tmp_path) -> None:
    result = modify.convert(modify.get_model("resnet18", num_classes=10), input_size=SIZE)
    path = modify.save(result, tmp_path / "r18_mod.pt")
    loaded = modify.load(path)
    x = torch.randn(2, 3, SIZE, SIZE)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), result.model.eval()(x), atol=0, rtol=0)
    data = torch.load(path, weights_only=True)  # plain data only
    assert data["source"] == {"kind": "name", "name": "resnet18", "kwargs": {"num_classes": 10}}
    assert [step["method"] for step in data["steps"]] == ["convert"]
    assert data["steps"][0]["recipe"]["rules"] == [{"index": "odd"}]
    assert data["modify_version"] == modify.__version__


def test_save_refuses_to_overwrite_and_writes_atomically(tmp_path) -> None:
    result = modify.convert(modify.get_model("resnet18"), input_size=SIZE)
    path = tmp_path / "m.pt"
    path.write_bytes(b"precious")
    with pytest.raises(CheckpointError, match="exists; pass --force"):
        modify.save(result, path)
    assert path.read_bytes() == b"precious"
    modify.save(result, path, force=True)
    assert [p.name for p in tmp_path.iterdir()] == ["m.pt"]  # no temporary file left behind


def test_a_path_that_cannot_be_written_is_a_one_line_checkpoint_error(tmp_path) -> None:
    """`atomic_write` (behind save, export and every report) checks like the CLI: one line, not a
    FileExistsError or NotADirectoryError, before anything is written."""
    from modify.errors import OutputPathError
    from modify.io.files import atomic_write

    (tmp_path / "notes.txt").write_text("a file")
    calls: list[str] = []
    for path, match in [
        (tmp_path / "notes.txt" / "m.pt", "notes.txt' is a file, not a folder"),
        (tmp_path / ("x" * 300) / "m.pt", "cannot be made"),
        (tmp_path, "is a directory"),
    ]:
        with pytest.raises(OutputPathError, match=match) as error:
            atomic_write(path, calls.append)
        assert isinstance(error.value, CheckpointError) and "\n" not in str(error.value)
    assert calls == [] and [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


@pytest.mark.parametrize("umask", [0o022, 0o027, 0o077])
def test_written_files_follow_the_umask(tmp_path, umask: int) -> None:
    import os

    previous = os.umask(umask)
    try:
        path = modify.save(modify.get_model("resnet18"), tmp_path / "m.pt")
    finally:
        os.umask(previous)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask  # as a plain open() would create it


class _Boom:
    def __reduce__(self):
        return (exec, ("open('/tmp/modify_pwned', 'w').write('ran')",))


def test_a_pickled_checkpoint_is_refused_and_nothing_runs(tmp_path) -> None:
    import os

    path = tmp_path / "evil.pt"
    with open(path, "wb") as f:
        pickle.dump({"format": "modify.checkpoint", "payload": _Boom()}, f)
    if os.path.exists("/tmp/modify_pwned"):
        os.remove("/tmp/modify_pwned")
    with pytest.raises(CheckpointError, match="pickled Python objects.*nothing in it was run"):
        modify.load(path)
    assert not os.path.exists("/tmp/modify_pwned")
    torch.save(copy.deepcopy(nn.Linear(2, 2)), tmp_path / "module.pt")  # a pickled module
    with pytest.raises(CheckpointError, match="pickled Python objects"):
        modify.load(tmp_path / "module.pt")


def test_save_needs_a_rebuildable_model(tmp_path) -> None:
    result = modify.convert(torchvision.models.resnet18(weights=None), input_size=SIZE)
    with pytest.raises(CheckpointError, match="does not say how to rebuild"):
        modify.save(result, tmp_path / "x.pt")


def test_a_converted_backbone_saves_and_loads(tmp_path) -> None:
    torch.manual_seed(0)
    model = modify.get_model("fcn_resnet50", weights_backbone=None, num_classes=3).eval()
    result = convert_backbone(model, input_size=64)
    path = modify.save(result, tmp_path / "fcn_mod.pt")
    loaded = modify.load(path)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(loaded(x)["out"], result.model.eval()(x)["out"])
    assert type(loaded.backbone.layer3[1]).__name__ == "MoDBlock"


class Gate(nn.Module):
    """Control flow on a tensor value: torch.fx cannot trace it, so it must be a leaf."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x if x.mean() > 0 else -x


def gated_net() -> nn.Module:
    """A model that converts only with ``leaf_modules=[Gate]`` (an importable factory for checkpoints)."""
    model = Net(PreActBlock(16, 16), PreActBlock(16, 16))
    model.stem.append(Gate())
    return provenance.attach(
        model, provenance.Provenance(source={"kind": "import", "name": "test_checkpoint:gated_net", "kwargs": {}})
    )


def test_leaf_classes_survive_a_checkpoint(tmp_path) -> None:
    model = gated_net().eval()
    result = convert(model, k=4, input_size=16, leaf_modules=[Gate, "stem.0"])
    assert provenance.of(result.model).steps[-1].data["leaf_modules"] == ["test_checkpoint:Gate", "stem.0"]
    loaded = modify.load(modify.save(result, tmp_path / "gated.pt"))
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(loaded(x), result.model.eval()(x))


def test_a_leaf_class_that_cannot_be_imported_is_a_clear_error(tmp_path) -> None:
    class Local(Gate):
        pass

    model = gated_net().eval()
    model.stem[-1] = Local()
    path = modify.save(convert(model, k=4, input_size=16, leaf_modules=[Local]), tmp_path / "local.pt")
    with pytest.raises(CheckpointError, match=r"Local.*cannot be imported.*top level"):
        modify.load(path)
