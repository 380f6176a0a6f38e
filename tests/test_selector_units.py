"""Selector hidden units that never fire (`modify.conversion.selector_units`): found, revived, trained.

The dead units are counted here by hand, from the selector's input and fc1 (``relu(W1 p) = 0`` for
every image), not with the module's own `dead_units`.
"""

from __future__ import annotations

import copy

import pytest
import torch

import modify
from modify.conversion.init import initialize, mod_blocks, revive_dead_selectors
from modify.conversion.selector_units import dead_units
from modify.layers import ChannelSelector

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
