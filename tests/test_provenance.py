"""A model's history (`modify.io.provenance`): one record, replayed by `modify.load`, whatever
surgeries it holds and in whatever order; checkpoints of the earlier formats still load."""

from __future__ import annotations

import pytest
import torch

import modify
from modify.baselines import delete_blocks
from modify.errors import CheckpointError
from modify.io import provenance
from modify.io.checkpoint import FORMAT

SIZE = 32


def _same_outputs(a: torch.nn.Module, b: torch.nn.Module) -> None:
    x = torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(a.eval()(x), b.eval()(x), atol=0, rtol=0)


def test_the_record_is_plain_data_that_round_trips() -> None:
    p = provenance.Provenance(source={"kind": "name", "name": "resnet18", "kwargs": {"num_classes": 10}})
    p = p.then("convert", {"recipe": {"version": 1, "rules": [{"index": "odd"}]}}).then(
        "delete", {"blocks": ["layer4.1"]}
    )
    assert p.methods() == ("convert", "delete")
    assert provenance.Provenance.from_dict(p.as_dict()) == p
    assert provenance.of(object()) == provenance.Provenance()


def test_every_surgery_appends_to_the_history_of_the_model_it_started_from() -> None:
    base = modify.get_model("resnet18", num_classes=10)
    converted = modify.convert(
        base, recipe={"version": 1, "defaults": {"c": 64}, "rules": [{"name": "layer1.1"}]}, input_size=SIZE
    ).model
    deleted = delete_blocks(converted, blocks=["layer4.1"], input_size=SIZE).model
    assert provenance.of(base).methods() == ()
    assert provenance.of(converted).methods() == ("convert",)
    assert provenance.of(deleted).methods() == ("convert", "delete")
    assert provenance.of(deleted).source == provenance.of(base).source


def test_convert_then_delete_saves_and_loads_bit_identical(tmp_path) -> None:
    base = modify.get_model("resnet18", num_classes=10)
    converted = modify.convert(
        base, recipe={"version": 1, "defaults": {"c": 64}, "rules": [{"name": "layer1.1"}]}, input_size=SIZE
    ).model
    model = delete_blocks(converted, blocks=["layer4.1"], input_size=SIZE).model
    path = modify.save(model, tmp_path / "both.pt")
    data = torch.load(path, weights_only=True)
    assert data["format_version"] == 3 and [s["method"] for s in data["steps"]] == ["convert", "delete"]
    loaded = modify.load(path)
    assert type(loaded.layer1[1]).__name__ == "MoDBlock"
    assert type(loaded.layer4[1]).__name__ == "Identity"
    _same_outputs(loaded, model)


@pytest.mark.parametrize("version", [1, 2])
def test_checkpoints_of_the_earlier_formats_still_load(tmp_path, version: int) -> None:
    result = modify.convert(modify.get_model("resnet18", num_classes=10), input_size=SIZE)
    step = provenance.of(result.model).steps[0]
    payload = {
        "format": FORMAT,
        "format_version": version,
        "modify_version": "0.1.0",
        "source": {"kind": "name", "name": "resnet18", "kwargs": {"num_classes": 10}},
        "conversion": dict(step.data),
        "state_dict": result.model.state_dict(),
    }
    if version == 2:
        payload["baseline"] = None
    path = tmp_path / f"v{version}.pt"
    torch.save(payload, path)
    _same_outputs(modify.load(path), result.model)


def test_a_version_2_deletion_checkpoint_still_loads(tmp_path) -> None:
    model = delete_blocks(modify.get_model("resnet18", num_classes=10), blocks=["layer3.1"], input_size=SIZE).model
    payload = {
        "format": FORMAT,
        "format_version": 2,
        "modify_version": "0.1.0",
        "source": {"kind": "name", "name": "resnet18", "kwargs": {"num_classes": 10}},
        "conversion": None,
        "baseline": {"method": "delete", **provenance.of(model).steps[0].data},
        "state_dict": model.state_dict(),
    }
    torch.save(payload, tmp_path / "v2.pt")
    _same_outputs(modify.load(tmp_path / "v2.pt"), model)


def test_an_unknown_step_is_one_line_naming_it(tmp_path) -> None:
    model = modify.get_model("resnet18", num_classes=10)
    provenance.record(model, "teleport", {"where": "elsewhere"})
    path = modify.save(model, tmp_path / "odd.pt")
    with pytest.raises(CheckpointError, match="'teleport' is not known to this modify"):
        modify.load(path)


def test_a_registered_replay_loads_and_a_second_registration_is_refused(tmp_path) -> None:
    def halve_fc(model: torch.nn.Module, data: dict) -> torch.nn.Module:
        model.fc = torch.nn.Linear(model.fc.in_features, data["classes"])
        return provenance.record(model, "new_head", data)

    provenance.register_replay("new_head", halve_fc)
    try:
        with pytest.raises(CheckpointError, match="registered already"):
            provenance.register_replay("new_head", halve_fc)
        model = halve_fc(modify.get_model("resnet18", num_classes=10), {"classes": 5})
        loaded = modify.load(modify.save(model, tmp_path / "head.pt"))
        assert loaded.fc.out_features == 5
        _same_outputs(loaded, model)
    finally:
        provenance.REPLAYS.pop("new_head")


def test_checkpoint_and_baselines_import_nothing_of_each_other() -> None:
    import ast
    import inspect

    import modify.baselines.delete as delete_module
    import modify.baselines.prune as prune_module
    import modify.io.checkpoint as checkpoint_module

    def imported(module: object) -> set[str]:
        tree = ast.parse(inspect.getsource(module))  # function-level imports included
        names = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        return names | {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}

    assert not any(name.startswith("modify.baselines") for name in imported(checkpoint_module))
    for module in (delete_module, prune_module):
        assert "modify.io.checkpoint" not in imported(module)
    assert "import torch" not in inspect.getsource(provenance)
