"""A mixed model (some blocks MoD, some narrowed, some deleted, the rest kept, as a plan makes it)
does everything a converted model does: it saves and loads bit-identical, profiles, benches,
exports, fine-tunes and shows its routes. And the two ends of a MoD block are exact: k = C is
the original (the identity configuration), a zero update in the branch form is the deletion."""

from __future__ import annotations

import importlib.util

import pytest
import torch
import torchvision

import modify
from modify.baselines import delete_blocks
from modify.measure.benchmark import BenchCase, bench
from modify.measure.profiling import profile_model
from modify.measure.routes import routes

MIXED = {
    "resnet18": (
        32,
        {
            "version": 2,
            "mod": {"form": "branch", "fusion": "original"},
            "init": "importance",
            "zero_update": True,
            "rules": [
                {"name": "layer1.1", "action": "mod", "k": 16},
                {"name": "layer2.1", "action": "narrow", "fraction": 0.25},
                {"name": "layer3.1", "action": "delete"},
                {"name": "layer4.1", "action": "keep"},
            ],
        },
    ),
    "mobilenet_v2": (
        64,
        {
            "version": 2,
            "rules": [
                {"name": "features.3", "action": "mod", "fraction": 0.25},
                {"name": "features.5", "action": "narrow", "fraction": 0.5},
                {"name": "features.6", "action": "delete"},
            ],
        },
    ),
}


def _mixed(name: str) -> tuple[modify.ConversionResult, int]:
    size, recipe = MIXED[name]
    torch.manual_seed(0)
    base = modify.get_model(name, num_classes=10).eval()
    return modify.convert(base, recipe=recipe, input_size=size), size


@pytest.mark.parametrize("name", list(MIXED))
def test_a_mixed_model_saves_and_loads_bit_identical(tmp_path, name: str) -> None:
    result, size = _mixed(name)
    assert {b.action for b in result.converted} == {"mod", "narrow", "delete"}
    path = modify.save(result, tmp_path / "mixed.pt")
    loaded = modify.load(path)
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        assert torch.equal(loaded(x), result.model.eval()(x))
    data = torch.load(path, weights_only=True)
    assert [s["method"] for s in data["steps"]] == ["convert"] and data["steps"][0]["recipe"]["version"] == 2


@pytest.mark.parametrize("name", list(MIXED))
def test_a_mixed_model_profiles_benches_and_has_gradients_everywhere(name: str) -> None:
    result, size = _mixed(name)
    model = result.model
    before = profile_model(modify.get_model(name, num_classes=10), input_size=size)
    after = profile_model(model, input_size=size)
    assert after.macs < before.macs and after.params < before.params
    report = bench(
        model,
        modify.get_model(name, num_classes=10),
        cases=[BenchCase(1, 1)],
        input_size=size,
        rounds=1,
        min_run_time=0.01,
    )
    assert report.results[0].speedup > 0
    model.train()
    model(torch.randn(2, 3, size, size)).sum().backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, missing  # the selector included


def test_a_mixed_model_fine_tunes_and_shows_its_routes() -> None:
    from modify.train.finetune import FinetuneConfig, finetune

    result, size = _mixed("resnet18")
    teacher = modify.get_model("resnet18", num_classes=10).eval()
    data = [(torch.randn(8, 3, size, size), torch.randint(0, 10, (8,))) for _ in range(3)]
    run = finetune(result.model, data, teacher=teacher, config=FinetuneConfig(lr=0.01), steps=3)
    assert run.steps == 3 and all(torch.isfinite(torch.tensor(run.losses)))
    report = routes(result.model, data)
    assert [b.module for b in report.blocks] == ["layer1.1"]


@pytest.mark.skipif(importlib.util.find_spec("onnxruntime") is None, reason="needs the [onnx] extra")
def test_a_mixed_model_exports_to_onnx_and_runs_the_same(tmp_path) -> None:
    from modify.deploy.export import export_onnx

    result, size = _mixed("resnet18")
    report = export_onnx(result.model.eval(), tmp_path / "mixed.onnx", input_size=size, dynamic_batch=True)
    assert report.max_abs_diff < 1e-4 and report.batch_sizes == (1, 2)


DELETION_ZOO = [
    ("resnet18", 32),
    ("resnet50", 64),
    ("mobilenet_v2", 64),
    ("efficientnet_b0", 64),
    ("convnext_tiny", 64),
]


@pytest.mark.parametrize(("name", "size"), DELETION_ZOO, ids=[z[0] for z in DELETION_ZOO])
def test_a_zero_update_in_the_branch_form_is_the_deletion_bit_for_bit(name: str, size: int) -> None:
    torch.manual_seed(0)
    base = torchvision.models.get_model(name, num_classes=10).eval()
    deleted = delete_blocks(base, recipe="every_other", input_size=size).model.eval()
    for init in ("copy", "importance", "zero"):
        recipe = {
            "version": 1,
            "defaults": {"fraction": 0.25},
            "mod": {"form": "branch", "fusion": "original"},
            "rules": [{"index": "odd"}],
        }
        converted = modify.convert(base, recipe=recipe, input_size=size, init=init, zero_update=True).model.eval()
        x = torch.randn(2, 3, size, size)
        with torch.no_grad():
            assert torch.equal(converted(x), deleted(x)), f"{name}, init={init}"


def test_a_version_2_deletion_is_delete_blocks_bit_for_bit() -> None:
    base = modify.get_model("resnet50", num_classes=10).eval()
    by_recipe = modify.convert(
        base, recipe={"version": 2, "rules": [{"name": ["layer2.2", "layer3.*"], "action": "delete"}]}, input_size=64
    ).model.eval()
    blocks = ["layer2.2", *[f"layer3.{i}" for i in range(1, 6)]]
    by_baseline = delete_blocks(base, blocks=blocks, input_size=64).model.eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(by_recipe(x), by_baseline(x))


def test_after_a_mod_block_a_deleted_block_keeps_its_relu() -> None:
    """A MoD block's output is no ReLU's: the next block's deletion must not drop its post-add ReLU."""
    base = modify.get_model("resnet18", num_classes=10).eval()
    recipe = {
        "version": 2,
        "rules": [{"name": "layer1.0", "action": "mod", "fraction": 0.5}, {"name": "layer1.1", "action": "delete"}],
    }
    model = modify.convert(base, recipe=recipe, input_size=32).model
    assert type(model.layer1[1]).__name__ == "Shortcut"
    assert type(delete_blocks(base, blocks=["layer1.1"], input_size=32).model.layer1[1]).__name__ == "Identity"
