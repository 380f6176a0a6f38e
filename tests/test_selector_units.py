"""Selector hidden units that never fire (`modify.conversion.selector_units`): found, revived, trained,
and selectors dead for good collapsed into the fixed set they pick.

The dead units are counted here by hand, from the selector's input and fc1 (``relu(W1 p) = 0`` for
every image), not with the module's own `dead_units`.
"""

from __future__ import annotations

import copy

import pytest
import torch

import modify
from modify.conversion.init import collapse_dead_selectors, initialize, mod_blocks, revive_dead_selectors
from modify.conversion.selector_units import dead_units
from modify.io import provenance
from modify.layers import ChannelSelector, StaticSelector

SIZE = 32
DEFAULT_MOD_RECIPE = {"form": "branch", "fusion": "original"}  # how `modify plan` builds MoD blocks


def pre_activations(model: torch.nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Selector path -> W1 @ mean-pooled selector input, (N, hidden), in eval mode."""
    seen: dict[str, torch.Tensor] = {}
    handles = [
        m.register_forward_pre_hook(lambda m, a, p=p: seen.update({p: a[0].mean((2, 3)) @ m.fc1.weight.T}))
        for p, m in model.named_modules()
        if isinstance(m, ChannelSelector)
    ]
    with torch.no_grad():
        model.eval()(x)
    for h in handles:
        h.remove()
    return seen


def dead_by_hand(model: torch.nn.Module, x: torch.Tensor) -> dict[str, int]:
    """Selector path -> hidden units at or below 0 for every image that are below 0 for one."""
    return {p: int(((z <= 0).all(0) & (z < 0).any(0)).sum()) for p, z in pre_activations(model, x).items()}


@pytest.mark.parametrize("name", ["resnet18", "resnet50", "regnet_x_400mf"])
def test_a_selector_dead_on_the_data_scores_one_half_then_revived_trains(name: str) -> None:
    """These blocks read a ReLU output, so pooled inputs are >= 0 and a selector whose fc1 is
    negative everywhere is dead: every score 0.5, no gradient into fc1 or fc2. Revived, every unit
    fires, scores differ per image, and every row of fc1 and column of fc2 gets a gradient."""
    torch.manual_seed(0)
    net = modify.get_model(name, num_classes=10).eval()
    result = modify.convert(net, k=0.25, input_size=SIZE, init="copy")
    model = result.model
    selectors = {p: m for p, m in model.named_modules() if isinstance(m, ChannelSelector)}
    with torch.no_grad():
        for sel in selectors.values():
            sel.fc1.weight.copy_(-sel.fc1.weight.abs())
    x = torch.randn(6, 3, SIZE, SIZE)
    scores: dict[str, torch.Tensor] = {}
    for p, sel in selectors.items():
        sel.register_forward_hook(lambda m, a, out, p=p: scores.update({p: out[0].detach()}))
    model.train()(x).square().mean().backward()
    assert all(torch.equal(s, torch.full_like(s, 0.5)) for s in scores.values())  # the symptom
    assert all(not sel.fc1.weight.grad.any() and not sel.fc2.weight.grad.any() for sel in selectors.values())

    before = copy.deepcopy(model.state_dict())
    hidden = {p: sel.fc1.out_features for p, sel in selectors.items()}
    revived = revive_dead_selectors(result, x)
    assert {f"{p}.selector": n for p, n in revived.items()} == hidden
    assert set(dead_by_hand(model, x).values()) == {0}
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert changed == {f"{p}.fc1.weight" for p in selectors}
    assert all(torch.equal(model.state_dict()[k], -before[k]) for k in changed)  # negated, nothing else

    model.zero_grad()
    model.train()(x).square().mean().backward()
    for p, sel in selectors.items():
        assert scores[p].std(0).max() > 0, f"{p}: the same scores for every image"
        assert (sel.fc1.weight.grad.abs().sum(1) > 0).all(), f"{p}: an fc1 row without gradient"
        assert (sel.fc2.weight.grad.abs().sum(0) > 0).all(), f"{p}: an fc2 column without gradient"


def assert_revived_from(drawn: dict[str, torch.Tensor], model: torch.nn.Module, revived: dict[str, int]) -> None:
    """Each selector's fc1 is its draw (``drawn``: selector path -> fc1 weight) with ``revived[path]``
    rows negated and the rest untouched."""
    for path, w0 in drawn.items():
        w1 = model.get_submodule(path).fc1.weight
        negated, same = (w1 == -w0).all(1) & w0.ne(0).any(1), (w1 == w0).all(1)
        assert (negated | same).all(), f"{path}: a row changed other than by its sign"
        assert int(negated.sum()) == revived.get(path, 0), path


@pytest.mark.parametrize("init", ["copy", "scratch", "zero"])
@pytest.mark.parametrize(
    ("name", "size"), [("resnet18", 32), ("mobilenet_v2", 32), ("efficientnet_b0", 64), ("timm:convnext_atto", 64)]
)
def test_initialize_with_data_revives_the_dead_units_and_only_them(name: str, size: int, init: str) -> None:
    """With data, no unit is dead after `initialize`, and each selector is its draw with some rows
    negated. The first block with dead units flips exactly those counted by hand on the draw; the
    blocks after it read inputs the flips changed, so their counts are their own."""
    pytest.importorskip("timm") if name.startswith("timm:") else None
    torch.manual_seed(0)
    net = modify.get_model(name, num_classes=10).eval()
    x = torch.randn(4, 3, size, size)
    result = modify.convert(net, k=0.25, input_size=size)
    torch.manual_seed(1)
    initialize(result, init, original=net)  # no data: selectors as drawn
    expected = dead_by_hand(result.model, x)
    drawn = {p: m.fc1.weight.clone() for p, m in result.model.named_modules() if isinstance(m, ChannelSelector)}
    torch.manual_seed(1)
    report = initialize(result, init, original=net, data=x)  # the same draws, then revived
    revived = {f"{b.module}.selector": b.revived for b in report.blocks}
    assert set(dead_by_hand(result.model, x).values()) == {0}
    assert_revived_from(drawn, result.model, revived)
    first = next((p for p, n in expected.items() if n), None)
    if first is not None:
        assert revived[first] == expected[first]
        assert all(n == 0 for p, n in revived.items() if list(expected).index(p) < list(expected).index(first))
    else:
        assert set(revived.values()) == {0}
    assert dead_units(result.model, [b for _, _, b in mod_blocks(result)], x) == [
        (0, m.selector.fc1.out_features) for _, _, m in mod_blocks(result)
    ]
    if name == "resnet18":  # this draw has dead units: the case is not vacuous
        assert first is not None


def test_the_importance_prior_unit_is_left_as_scaled() -> None:
    torch.manual_seed(0)
    net = modify.get_model("resnet18", num_classes=10).eval()
    x = torch.randn(8, 3, SIZE, SIZE)
    result = modify.convert(net, k=0.25, input_size=SIZE)
    initialize(result, "importance", original=net, data=x)
    for path, z in pre_activations(result.model, x).items():
        assert (z[:, 0] > 0).all(), f"{path}: the prior's unit 0 does not fire"
    assert set(dead_by_hand(result.model, x).values()) == {0}


def test_without_data_nothing_is_revived() -> None:
    torch.manual_seed(0)
    net = modify.get_model("resnet18", num_classes=10).eval()
    result = modify.convert(net, k=0.25, input_size=SIZE)
    report = initialize(result, "copy", original=net)
    assert {b.revived for b in report.blocks} == {0}


def test_the_planner_builds_mod_blocks_with_live_selectors() -> None:
    """`build_candidate` (sweeps, plans, the per-block tables) revives on its calibration images,
    also for init copy, which `modify.convert` applies without data."""
    from modify.study.candidates import Candidate, build_candidate

    torch.manual_seed(0)
    net = modify.get_model("resnet18", num_classes=10).eval()
    x = torch.randn(4, 3, SIZE, SIZE)
    recipe = {"version": 1, "defaults": {"fraction": 0.25}, "rules": [{"index": "odd"}], "mod": DEFAULT_MOD_RECIPE}
    candidate = Candidate("mod", "MoD-OP k=0.25 as modify plan builds it", recipe=recipe, init="copy")
    plain, _ = build_candidate(candidate, net, input_size=SIZE)
    model, details = build_candidate(candidate, net, input_size=SIZE, calib=x)
    assert any(dead_by_hand(plain, x).values()), "this draw has dead units: the case is not vacuous"
    drawn = {p: m.fc1.weight for p, m in plain.named_modules() if isinstance(m, ChannelSelector)}
    assert_revived_from(drawn, model, {f"{p}.selector": n for p, n in details["revived"].items()})
    assert set(dead_by_hand(model, x).values()) == {0}


def test_a_candidate_can_freeze_the_selector_in_block_distillation() -> None:
    """``selector_lr_scale=0``: block-local distillation trains the reduced blocks and leaves every
    selector as built; the candidate has a key of its own and the architecture (speed record) of
    the candidate without it, whose key is what it was before the field existed."""
    import dataclasses

    from modify.study.candidates import Candidate, build_candidate

    torch.manual_seed(0)
    net = modify.get_model("resnet18", num_classes=10).eval()
    x = torch.randn(8, 3, SIZE, SIZE)
    recipe = {"version": 1, "defaults": {"fraction": 0.25}, "rules": [{"index": "odd"}], "mod": DEFAULT_MOD_RECIPE}
    base = Candidate("mod", "MoD-OP k=0.25 + block KD", recipe=recipe, init="copy", block_distill_steps=5)
    frozen = dataclasses.replace(base, selector_lr_scale=0.0)
    assert "selector_lr_scale" not in base.spec() and frozen.spec()["selector_lr_scale"] == 0.0
    assert frozen.key != base.key and frozen.arch_key == base.arch_key
    bare, _ = build_candidate(dataclasses.replace(base, block_distill_steps=0), net, input_size=SIZE, calib=x)
    model, details = build_candidate(frozen, net, input_size=SIZE, calib=x, train_loader=[x])
    assert len(details["block_distill"]) == 4
    built, trained = bare.state_dict(), model.state_dict()
    selectors = [k for k in built if ".selector." in k]
    assert selectors and all(torch.equal(built[k], trained[k]) for k in selectors)
    kept = [b["module"] for b in details["block_distill"] if b["kept"]]
    assert all(any(not torch.equal(built[k], trained[k]) for k in built if k.startswith(f"{m}.block.")) for m in kept)


def _kill(model: torch.nn.Module, paths: list[str]) -> None:
    """fc1 negative everywhere: dead on every input >= 0, as these blocks' inputs (ReLU outputs) are."""
    with torch.no_grad():
        for p in paths:
            fc1 = model.get_submodule(p).selector.fc1.weight
            fc1.copy_(-fc1.abs())


def _picked(model: torch.nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """MoD block path -> the channel indices (N, k) its selector returned on ``x``."""
    seen: dict[str, torch.Tensor] = {}
    handles = [
        m.selector.register_forward_hook(lambda mod, a, out, p=p: seen.update({p: out[1].clone()}))
        for p, m in model.named_modules()
        if isinstance(m, modify.layers.MoDBlock)
    ]
    with torch.no_grad():
        model.eval()(x)
    for h in handles:
        h.remove()
    return seen


@pytest.mark.parametrize(
    ("name", "mod"),
    [
        ("resnet18", {}),  # whole form, first slot, score order
        ("resnet18", {"order": "index"}),
        ("resnet50", DEFAULT_MOD_RECIPE),  # branch form, original slot
    ],
)
def test_a_dead_selector_collapses_to_the_fixed_set_it_picks_and_computes_the_same(name: str, mod: dict) -> None:
    """Half the blocks' selectors are dead on every input; collapsed, each is a StaticSelector at
    score 0.5 holding the indices the dead selector returned (the same for every image, in its
    order), the live ones are untouched, and the model's outputs are bit for bit the same, on the
    calibration images and on others."""
    torch.manual_seed(0)
    net = modify.get_model(name, num_classes=10).eval()
    recipe = {"version": 1, "defaults": {"fraction": 0.25}, "rules": [{"index": "all"}], "mod": mod}
    result = modify.convert(net, recipe=recipe, input_size=SIZE, init="copy")
    model = result.model.eval()
    paths = [p for p, _, _ in mod_blocks(result)]
    dead = paths[::2]
    _kill(model, dead)
    calib, other = torch.randn(8, 3, SIZE, SIZE), torch.randn(5, 3, SIZE, SIZE)
    picked = _picked(model, calib)
    with torch.no_grad():
        before = (model(calib), model(other))

    assert collapse_dead_selectors(result, calib) == dead
    for p in paths:
        sel = model.get_submodule(p).selector
        if p in dead:
            assert isinstance(sel, StaticSelector) and sel.score == 0.5
            assert (picked[p] == picked[p][0]).all(), f"{p}: a dead selector picked different sets"
            assert sel.indices.tolist() == picked[p][0].tolist()
        else:
            assert isinstance(sel, ChannelSelector)
    with torch.no_grad():
        assert torch.equal(model(calib), before[0]) and torch.equal(model(other), before[1])
    assert provenance.of(model).steps[-1] == provenance.Step("collapse", {"blocks": dead, "score": 0.5})
    assert collapse_dead_selectors(result, calib) == []  # nothing left to collapse, no second step
    assert provenance.of(model).methods().count("collapse") == 1


def test_a_selector_with_one_live_unit_is_kept() -> None:
    torch.manual_seed(0)
    result = modify.convert(modify.get_model("resnet18", num_classes=10).eval(), k=0.5, input_size=SIZE, init="copy")
    model = result.model.eval()
    first = mod_blocks(result)[0][0]
    _kill(model, [first])
    with torch.no_grad():
        model.get_submodule(first).selector.fc1.weight[0].abs_()  # one unit fires on inputs >= 0
    assert collapse_dead_selectors(result, torch.randn(4, 3, SIZE, SIZE)) == []


@pytest.mark.parametrize("activation", ["leaky_relu", "gelu"])
def test_a_selector_without_a_relu_is_neither_revived_nor_collapsed(activation: str) -> None:
    """Its units negative on every image still score per image (and learn): nothing to mend."""
    torch.manual_seed(0)
    recipe = {"version": 2, "mod": {**DEFAULT_MOD_RECIPE, "activation": activation}, "rules": [{"stage": 1, "k": 32}]}
    result = modify.convert(modify.get_model("resnet18", num_classes=10).eval(), recipe=recipe, input_size=SIZE)
    model = result.model.eval()
    paths = [p for p, _, _ in mod_blocks(result)]
    _kill(model, paths)
    calib = torch.rand(8, 3, SIZE, SIZE)
    before = model(calib)
    assert all(z.le(0).all() for z in pre_activations(model, calib).values())  # every unit below zero
    assert set(revive_dead_selectors(result, calib).values()) == {0}
    assert collapse_dead_selectors(result, calib) == []
    assert all(isinstance(model.get_submodule(p).selector, ChannelSelector) for p in paths)
    assert torch.equal(model(calib), before)
    assert all(len({tuple(row.tolist()) for row in idx}) > 1 for idx in _picked(model, calib).values())


def test_a_collapsed_model_saves_loads_and_exports_to_onnx_where_the_dead_one_did_not(tmp_path) -> None:
    """Every selector dead: ONNX Runtime's TopK breaks the ties toward the lowest indices, torch's
    CPU topk toward the highest, so the export's parity check fails. Collapsed, the set is a
    constant: the export matches and has no TopK; a checkpoint reloads to the same outputs."""
    pytest.importorskip("onnxruntime", reason="needs the [onnx] extra")
    from modify.deploy.export import export_onnx
    from modify.errors import ExportError

    torch.manual_seed(0)
    result = modify.convert(modify.get_model("resnet18", num_classes=10).eval(), k=0.5, input_size=SIZE, init="copy")
    model = result.model.eval()
    paths = [p for p, _, _ in mod_blocks(result)]
    _kill(model, paths)
    with pytest.raises(ExportError):
        export_onnx(model, tmp_path / "dead.onnx", input_size=SIZE)

    x = torch.randn(3, 3, SIZE, SIZE)
    assert collapse_dead_selectors(result, x) == paths
    report = export_onnx(model, tmp_path / "collapsed.onnx", input_size=SIZE, batch_sizes=(2,))
    assert report.max_abs_diff <= 1e-4 and "TopK" not in report.operators

    loaded = modify.load(modify.save(model, tmp_path / "collapsed.pt"))
    assert [type(loaded.get_submodule(p).selector) for p in paths] == [StaticSelector] * len(paths)
    with torch.no_grad():
        assert torch.equal(loaded.eval()(x), model(x))


def test_a_candidate_collapses_the_selectors_its_block_distillation_killed(monkeypatch) -> None:
    """`build_candidate` collapses, after block distillation, exactly the selectors dead on its
    calibration images (here the distillation is followed by killing the first block's selector,
    what 300 real steps do to every one on the converged ResNet-18: ``benchmarks/selector_fate.py``)."""
    import modify.train.distill as distill
    from modify.study.candidates import Candidate, build_candidate

    real = distill.distill_blocks

    def distill_then_kill(result, *args, **kwargs):
        report = real(result, *args, **kwargs)
        _kill(result.model, [mod_blocks(result)[0][0]])
        return report

    monkeypatch.setattr(distill, "distill_blocks", distill_then_kill)
    torch.manual_seed(0)
    net = modify.get_model("resnet18", num_classes=10).eval()
    x = torch.randn(8, 3, SIZE, SIZE)
    recipe = {"version": 1, "defaults": {"fraction": 0.25}, "rules": [{"index": "odd"}], "mod": DEFAULT_MOD_RECIPE}
    candidate = Candidate("mod", "MoD + block KD", recipe=recipe, init="copy", block_distill_steps=2)
    model, details = build_candidate(candidate, net, input_size=SIZE, calib=x, train_loader=[x])
    selectors = {p: type(m.selector) for p, m in model.named_modules() if isinstance(m, modify.layers.MoDBlock)}
    assert details["collapsed"] == ["layer1.1"]
    assert selectors == {
        "layer1.1": StaticSelector,
        "layer2.1": ChannelSelector,
        "layer3.1": ChannelSelector,
        "layer4.1": ChannelSelector,
    }
