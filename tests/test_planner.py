"""`modify plan`: a toy whose savings and sensitivities are known, planned to the expected choice;
the repair loop when the sums promise too much; a target out of reach; and the command end to end
on data whose test split raises when touched (the plan must never see a test image)."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
import yaml
from torch import nn
from torch.utils.data import TensorDataset
from typer.testing import CliRunner

import modify
import modify.train.data
from modify.cli import app
from modify.errors import PlanError
from modify.study import planner
from modify.study.latency import Setting
from modify.study.planner import PlanConfig, plan
from test_data import write_fashion_mnist

SIZE = 16
QUICK = dict(calib_images=32, repair_images=32, distill_steps=2, bn_batches=1, rounds=3, seconds=0.05, batch_size=16)
QUICK["tune_steps"] = 2  # the finalists' brief fine-tune


class Block(nn.Module):
    """x + scale * bn(conv2(relu(conv1(x)))): a residual block whose importance is ``scale``'s."""

    def __init__(self, width: int, inner: int, gamma: float) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(width, inner, 3, padding=1, bias=False)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(inner, width, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(width)
        with torch.no_grad():
            self.bn.weight.fill_(gamma)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.bn(self.conv2(self.relu(self.conv1(x))))


class TwoBlocks(nn.Module):
    """Two blocks of the same cost: ``idle`` adds almost nothing, ``busy`` changes the output a lot."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 32, 3, padding=1)
        self.idle = Block(32, 128, gamma=1e-3)
        self.busy = Block(32, 128, gamma=2.0)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.busy(self.idle(self.stem(x))))


def _data(n: int = 96) -> TensorDataset:
    g = torch.Generator().manual_seed(0)
    return TensorDataset(torch.randn(n, 3, SIZE, SIZE, generator=g), torch.randint(0, 10, (n,), generator=g))


def _toy() -> nn.Module:
    """The toy with BatchNorm statistics of the data, as a trained model has them."""
    from modify.train.evaluation import recalibrate_bn

    torch.manual_seed(0)
    model = TwoBlocks()
    recalibrate_bn(model, torch.utils.data.DataLoader(_data(), batch_size=32), 3)
    return model.eval()


def test_the_toy_deletes_the_block_that_adds_nothing_and_keeps_the_other() -> None:
    # Each block is about half the time; 1.3x needs one of them gone: the idle one costs no accuracy.
    result = plan(_toy(), speedup=1.3, data=_data(), setting=Setting(input_size=SIZE), actions=("delete",), **QUICK)
    chosen = {r.block: r.action for r in result.chosen}
    assert chosen == {"idle": "delete", "busy": "keep"}
    rows = {(r.block, r.action): r for r in result.rows}
    assert rows["idle", "delete"].kl < rows["busy", "delete"].kl / 5  # the sensitivities the toy was built with
    assert rows["idle", "delete"].saving_ms > 0 and rows["busy", "delete"].saving_ms > 0
    assert result.met and result.measured_speedup >= 1.3
    assert result.recipe == {
        "version": 2,
        "mod": planner.DEFAULT_MOD.as_dict(),
        "rules": [{"name": "idle", "action": "delete"}],
    }
    assert dict((b, label) for b, label, _ in result.runner_up)["idle"] in ("keep", "none reaches the target")


def test_plan_fine_tunes_its_finalists_and_picks_the_fastest_of_the_closest() -> None:
    result = plan(_toy(), speedup=1.3, data=_data(), setting=Setting(input_size=SIZE), actions=("delete",), **QUICK)
    assert len(result.finalists) >= 2  # deleting the idle block, and the best plan without it
    (winner,) = [f for f in result.finalists if f.picked]
    assert winner.chosen == tuple(r.choice.key for r in result.chosen)
    assert {r.block: r.action for r in result.chosen} == {"idle": "delete", "busy": "keep"}
    tuned = [f for f in result.finalists if f.tuned_kl is not None]
    least = min(f.tuned_kl for f in tuned)
    same = [f for f in tuned if (1 - result.config.tune_margin) * f.tuned_kl <= least]  # the score can't part them
    assert winner in same and winner.measured_speedup == max(f.measured_speedup for f in same)
    assert result.measured_kl == pytest.approx(winner.kl)
    untuned = plan(
        _toy(),
        speedup=1.3,
        data=_data(),
        setting=Setting(input_size=SIZE),
        actions=("delete",),
        **QUICK | {"tune_steps": 0},
    )
    assert untuned.finalists == () and len(untuned.chosen) == 2


def test_every_choice_is_measured_and_the_plan_applies_with_convert() -> None:
    model = _toy()
    result = plan(model, speedup=1.2, data=_data(), setting=Setting(input_size=SIZE), fractions=(0.25,), **QUICK)
    assert {(r.block, r.label) for r in result.rows} == {
        (b, label) for b in ("idle", "busy") for label in ("keep", "delete", "static MoD k=8", "narrow 1/4")
    }
    assert all(r.error is None and r.kl is not None and r.kl >= 0 for r in result.rows)
    converted = modify.convert(model, recipe=result.recipe, input_size=SIZE)
    assert {c.name: c.action for c in converted.converted} == {
        r.block: r.action for r in result.chosen if r.action != "keep"
    }


@pytest.mark.parametrize("selection", ["static", "dynamic"])
def test_plan_builds_mod_blocks_from_the_most_read_channels_or_with_the_selector_when_asked(selection: str) -> None:
    """Static by default: one fixed set, the k channels conv1 reads most (the L1 norm of its weights
    per input channel, worked out here), fed their own weights; dynamic: the paper's selector."""
    from modify.layers import ChannelSelector, StaticSelector
    from modify.study.choices import Choice, choice_recipe

    torch.manual_seed(0)
    net = modify.get_model("resnet18", num_classes=10).eval()
    config = PlanConfig.for_selection(selection, speedup=1.2, setting=Setting(input_size=32))
    recipe = choice_recipe([Choice("layer1.1", "mod", 0.25)], {"layer1.1": 64}, config.mod)
    model = planner.build_plan(net, recipe, config, weights=True)
    block = model.get_submodule("layer1.1")
    if selection == "dynamic":
        assert isinstance(block.selector, ChannelSelector) and config.init == "copy"
        return
    read = net.layer1[1].conv1.weight.abs().sum((0, 2, 3))  # (64,) how much conv1 reads each channel
    most = torch.sort(torch.topk(read, 16).indices).values
    assert isinstance(block.selector, StaticSelector) and torch.equal(block.selector.indices, most)
    conv1 = block.block[0] if isinstance(block.block, nn.Sequential) else block.block.conv1
    torch.testing.assert_close(conv1.weight, net.layer1[1].conv1.weight[most][:, most])


def test_a_table_measured_with_another_mod_build_is_refused() -> None:
    """A table keeps how its MoD rows were built; one from before the static default reads as the
    selector build it was, and a plan that builds MoD otherwise does not reuse its scores."""
    from modify.study.planner import ChoiceRow, ChoiceTable

    mod = ChoiceRow("busy", 32, "mod", 0.25, "MoD k=8", saving_ms=0.1, spread_ms=0.0, kl=0.01, agreement=0.9)
    table = ChoiceTable(
        Setting(input_size=SIZE), 1.0, (mod,), 32, 0, PlanConfig.for_selection("dynamic", speedup=2).mod_build()
    )
    raw = table.as_dict()
    assert ChoiceTable.from_dict(raw) == table
    raw.pop("mod_build")
    assert ChoiceTable.from_dict(raw) == table  # written before the field: the selector build, init copy
    refused = r"built MoD blocks as \{'mod': .*'init': 'copy'.*this plan as .*'selection': 'static'"
    with pytest.raises(PlanError, match=refused):
        plan(_toy(), speedup=1.3, data=_data(), setting=Setting(input_size=SIZE), table=table, **QUICK)
    with pytest.raises(PlanError, match=refused):  # nor timed again for another setting
        planner.retime_choices(_toy(), table, PlanConfig(speedup=1.3, setting=Setting(batch=2, input_size=SIZE)))


def test_a_plan_that_measures_below_the_target_asks_for_more(monkeypatch) -> None:
    """The sums promise 1.3x; the first planned model measures less: the solver is asked again for
    what the sums missed, and the next plan is measured."""
    calls: list[dict] = []
    real = planner._measure

    def short_first(original, recipe, config):
        timing = real(original, recipe, config)
        calls.append(recipe)
        if len(calls) == 2:  # the first is the reachability check (every block at its fastest choice)
            return dataclasses.replace(timing, round_speedups=tuple(1.05 for _ in timing.round_speedups))
        return timing

    monkeypatch.setattr(planner, "_measure", short_first)
    result = plan(_toy(), speedup=1.3, data=_data(), setting=Setting(input_size=SIZE), actions=("delete",), **QUICK)
    assert len(result.attempts) >= 2
    assert result.attempts[1].required_ms > result.attempts[0].required_ms
    assert result.attempts[0].measured_speedup == pytest.approx(1.05)


def test_a_target_out_of_reach_says_the_fastest_reachable() -> None:
    """Refused by measuring every block at its fastest choice, not by summing their savings (which
    on a busy machine added up to more than the toy's whole time and let 1000x through)."""
    fastest = r"at its fastest choice measures \d+\.\d\dx \(.* ms now\)\. Ask for at most"
    with pytest.raises(PlanError, match=rf"speed-up 1000x is out of reach .* {fastest}"):
        plan(_toy(), speedup=1000.0, data=_data(), setting=Setting(input_size=SIZE), actions=("delete",), **QUICK)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"speedup": 1.0}, "not above 1"),
        ({"speedup": 1.5, "actions": ("prune",)}, "'prune' is not one the planner knows"),
        ({"speedup": 1.5, "fractions": (0.5, 1.0)}, r"must each lie in \(0, 1\)"),
    ],
)
def test_bad_plan_settings_are_refused(kwargs: dict, match: str) -> None:
    with pytest.raises(PlanError, match=match):
        PlanConfig(**kwargs)


def test_too_few_images_to_hold_out_is_refused() -> None:
    with pytest.raises(modify.ModifyError, match="holds 20 images; scoring needs 32 calibration images"):
        plan(_toy(), speedup=1.3, data=_data(20), setting=Setting(input_size=SIZE), **QUICK)


def test_images_of_another_size_are_refused() -> None:
    with pytest.raises(PlanError, match="images are 16x16 and the plan is for 32x32; pass --input-size 16"):
        plan(_toy(), speedup=1.3, data=_data(), setting=Setting(input_size=32), **QUICK)


def test_the_command_plans_without_reading_a_test_image_and_writes_a_plan_convert_applies(
    tmp_path, monkeypatch
) -> None:
    write_fashion_mnist(tmp_path / "idx", n_train=96, n_test=16)
    real = modify.train.data.fashion_mnist

    def no_test_split(root=None, split="train", *args, **kwargs):
        if split != "train":
            raise AssertionError(f"the planner read the {split} split")
        return real(root, split, *args, **kwargs)

    monkeypatch.setattr(modify.train.data, "fashion_mnist", no_test_split)
    toy = "test_planner:TwoBlocks"  # an import path: the toy, built by the command
    out = tmp_path / "plans" / "plan.yaml"
    runner = CliRunner()
    args = [
        "plan",
        toy,
        "--speedup",
        "1.2",
        "--data",
        "fashion-mnist",
        "--data-dir",
        str(tmp_path / "idx"),
        "-o",
        str(out),
        "--calib-images",
        "32",
        "--distill-steps",
        "2",
        "--tune-steps",
        "2",
        "--rounds",
        "2",
        "--fractions",
        "0.25",
        "--actions",
        "delete,narrow",
    ]
    result = runner.invoke(app, args, env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    assert "runner-up" in result.stdout and "measured" in result.stdout
    assert "finalists" in result.stdout and "picked" in result.stdout
    assert "the fastest within 10% of the least KL" in result.stdout  # the finalists' title on one line
    table = [line for line in result.stdout.splitlines() if any(c in line for c in "│┃┏┡└")]
    assert table and max(len(line) for line in table) <= 80 and "…" not in result.stdout  # whole at 80 columns
    assert out.is_file() and out.with_suffix(".json").is_file() and out.with_suffix(".png").is_file()
    recipe = yaml.safe_load(out.read_text())
    assert recipe["version"] == 2 and {r["name"] for r in recipe["rules"]} == {"idle", "busy"}
    applied = runner.invoke(app, ["convert", toy, "--recipe", str(out), "--input-size", "32", "--json"])
    assert applied.exit_code == 0, applied.output

    def measured_again(*args, **kwargs):
        raise AssertionError("--table should have spared timing and scoring the choices again")

    monkeypatch.setattr(planner, "_measure_choices", measured_again)
    second = [*args[:3], "1.1", *args[4:]]
    second[second.index(str(out))] = str(out.with_name("plan_1.1.yaml"))
    reused = runner.invoke(app, [*second, "--table", str(out.with_suffix(".json"))])
    assert reused.exit_code == 0, reused.output
    assert yaml.safe_load(out.with_name("plan_1.1.yaml").read_text())["version"] == 2

    # Another setting: the same choices timed again there, their scores kept (nothing scored again).
    def scored_again(*args, **kwargs):
        raise AssertionError("a table from another batch should keep its scores")

    monkeypatch.setattr(planner, "_score_choices", scored_again)
    wide = out.with_name("plan_b2.yaml")
    third = [*args, "--batch", "2", "--table", str(out.with_suffix(".json"))]
    third[third.index(str(out))] = str(wide)
    retimed = runner.invoke(app, third)
    assert retimed.exit_code == 0, retimed.output
    assert "timing its choices again" in retimed.output
    before = json.loads(out.with_suffix(".json").read_text())["table"]
    after = json.loads(wide.with_suffix(".json").read_text())["table"]
    assert after["setting"]["batch"] == 2 and before["setting"]["batch"] == 1
    assert [r["kl"] for r in after["rows"]] == [r["kl"] for r in before["rows"]]


def test_compare_plans_once_and_reuses_the_stored_plans_on_resume(tmp_path, monkeypatch) -> None:
    from modify.study import planned

    config = PlanConfig(
        speedup=1.3, setting=Setting(input_size=SIZE), actions=("delete", "narrow"), fractions=(0.25,), **QUICK
    )
    first, problems = planned.planned_candidates(_toy(), _data(), targets=(1.3,), config=config, out_dir=tmp_path)
    assert not problems
    assert [c.label for c in first] == list(planned.plan_labels(1.3))
    assert first[0].method == "plan" and first[0].recipe["version"] == 2 and first[1].method == "delete"
    assert (tmp_path / "plans" / "all-1.3x.yaml").is_file() and (tmp_path / "plans" / "delete-1.3x.json").is_file()
    assert (tmp_path / "plans" / "table.json").is_file()  # every choice measured once for both plans

    def no_planning(*args, **kwargs):
        raise AssertionError("planned again instead of reading the stored plan")

    monkeypatch.setattr(planner, "plan", no_planning)
    again, _ = planned.planned_candidates(_toy(), _data(), targets=(1.3,), config=config, out_dir=tmp_path)
    assert [c.key for c in again] == [c.key for c in first]


@pytest.mark.parametrize("engine", ["onnxruntime", "compile"])
def test_a_plan_for_an_engine_times_its_choices_in_that_engine(engine: str, monkeypatch) -> None:
    if engine == "onnxruntime":
        pytest.importorskip("onnxruntime")
    from modify.deploy.engines import Engine
    from modify.study import latency

    prepared: list[str] = []
    real = latency.prepare

    def spy(model, engine_name, *args, **kwargs):
        prepared.append(Engine.from_str(engine_name).value)
        return real(model, engine_name, *args, **kwargs)

    monkeypatch.setattr(latency, "prepare", spy)
    setting = Setting(input_size=SIZE, engine=engine)
    result = plan(_toy(), speedup=1.3, data=_data(), setting=setting, actions=("delete",), **QUICK)
    assert {r.block: r.action for r in result.chosen} == {"idle": "delete", "busy": "keep"}
    assert result.table is not None and result.table.setting.engine.value == engine
    # the original, each deletion and the measured plan, all run by the engine asked for
    assert len(prepared) >= 4 and set(prepared) == {engine}
