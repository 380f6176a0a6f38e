"""modify.train.finetune and modify.conversion.init: the loop, its pieces, resuming after SIGKILL,
torchrun/DDP, the CLI."""

from __future__ import annotations

import copy
import itertools
import json
import math
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import modify
import modify.io.names
from modify.conversion.init import initialize, mod_blocks
from modify.conversion.pipeline import convert_identity
from modify.errors import ModifyError
from modify.layers import MoDBlock
from modify.layers.selector import StaticSelector
from modify.train.finetune import (
    FinetuneConfig,
    distillation_loss,
    evaluate,
    finetune,
    lr_at,
    mixed_loss,
    recalibrate_bn,
)

REPO = Path(__file__).resolve().parents[1]


# -- tiny models and data ------------------------------------------------------------------------


class Block(nn.Module):
    """A BasicBlock-like residual block; without BatchNorm when ``bn=False``."""

    def __init__(self, c: int, bn: bool = True) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1, bias=not bn)
        self.bn1 = nn.BatchNorm2d(c) if bn else nn.Identity()
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(c, c, 3, padding=1, bias=not bn)
        self.bn2 = nn.BatchNorm2d(c) if bn else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(x + self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x))))))


class Tiny(nn.Module):
    def __init__(self, c: int = 16, classes: int = 4, bn: bool = True) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, c, 3, padding=1), nn.ReLU())
        self.layer = nn.Sequential(Block(c, bn), Block(c, bn))
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.layer(self.stem(x)))


def synthetic(n: int = 128, size: int = 8, seed: int = 1) -> TensorDataset:
    """Four classes a small CNN learns quickly: the sign of the mean of channels 0 and 1."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, size, size, generator=g)
    y = (x[:, 0].mean((1, 2)) > 0).long() + 2 * (x[:, 1].mean((1, 2)) > 0).long()
    return TensorDataset(x, y)


def converted_tiny(bn: bool = True) -> tuple[nn.Module, modify.ConversionResult]:
    torch.manual_seed(0)
    model = Tiny(bn=bn)
    return model, modify.convert(model, k=4, input_size=8)


# -- pure pieces ---------------------------------------------------------------------------------


def test_schedule_warmup_middle_end() -> None:
    kw = dict(total_steps=110, base_lr=0.1, warmup_steps=10, min_lr=0.0)
    assert lr_at(0, **kw) == pytest.approx(0.01)  # linear warm-up: (s + 1) / warmup
    assert lr_at(4, **kw) == pytest.approx(0.05)
    assert lr_at(9, **kw) == pytest.approx(0.1)  # peak at the end of the warm-up
    assert lr_at(10, **kw) == pytest.approx(0.1)  # cosine starts at the peak
    assert lr_at(60, **kw) == pytest.approx(0.05)  # half-way through the cosine: half the peak
    assert lr_at(109, **kw) == pytest.approx(0.1 * 0.5 * (1 + math.cos(math.pi * 99 / 100)))
    assert lr_at(110, **kw) == pytest.approx(0.0)  # the end: min_lr
    assert lr_at(60, total_steps=110, base_lr=0.1, warmup_steps=10, min_lr=0.02) == pytest.approx(0.06)
    assert lr_at(0, total_steps=4, base_lr=1.0) == 1.0  # no warm-up
    values = [lr_at(s, **kw) for s in range(10, 110)]
    assert all(a >= b for a, b in itertools.pairwise(values))  # monotone decay


def test_distillation_loss_matches_hand_computed() -> None:
    student = torch.tensor([[0.0, 0.0], [1.0, -1.0]])
    teacher = torch.tensor([[math.log(3.0) * 2, 0.0], [0.0, 0.0]])
    t = 2.0
    # Row 0: q = softmax([ln 3, 0]) = [3/4, 1/4], p = [1/2, 1/2]; row 1: q = [1/2, 1/2], p = softmax([1/2, -1/2]).
    kl0 = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)
    p1 = 1 / (1 + math.exp(-1.0))
    kl1 = 0.5 * math.log(0.5 / p1) + 0.5 * math.log(0.5 / (1 - p1))
    expected = (kl0 + kl1) / 2 * t * t
    assert float(distillation_loss(student, teacher, t)) == pytest.approx(expected, rel=1e-6)
    labels = torch.tensor([0, 1])
    ce = (math.log(2.0) + -math.log(1 - 1 / (1 + math.exp(-2.0)))) / 2  # -log softmax of the true class
    mixed = float(mixed_loss(student, labels, teacher, alpha=0.25, temperature=t))
    assert mixed == pytest.approx(0.25 * expected + 0.75 * ce, rel=1e-6)
    assert float(mixed_loss(student, labels, None, alpha=0.25, temperature=t)) == pytest.approx(ce, rel=1e-6)


def test_config_rejects_bad_values_in_one_line() -> None:
    with pytest.raises(ModifyError, match=r"alpha=1.5 must lie in 0..1"):
        FinetuneConfig(alpha=1.5)
    with pytest.raises(ModifyError, match=r"expected one of 'sgd', 'adamw'"):
        FinetuneConfig(optimizer="adam")


def test_bn_recalibration_changes_running_stats_and_nothing_else() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.BatchNorm2d(3), nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.LazyLinear(2))
    model(torch.randn(2, 3, 8, 8))
    model.eval()
    before = copy.deepcopy(model.state_dict())
    batches = [(torch.randn(4, 3, 8, 8) * 3 + 1, torch.zeros(4, dtype=torch.long)) for _ in range(3)]
    used = recalibrate_bn(model, batches, batches=2)
    assert used == 2
    after = model.state_dict()
    for key, value in before.items():
        if key.endswith(("running_mean", "running_var", "num_batches_tracked")):
            assert not torch.equal(value, after[key]), key
        else:
            assert torch.equal(value, after[key]), key  # parameters untouched
    # Cumulative average (momentum=None): the input BN's mean is the mean of the two batch means.
    expected = torch.stack([b[0].mean((0, 2, 3)) for b in batches[:2]]).mean(0)
    assert torch.allclose(after["0.running_mean"], expected, atol=1e-6)
    assert int(after["0.num_batches_tracked"]) == 2
    assert not model.training and model[0].momentum == 0.1  # mode and momentum restored


# -- the loop ------------------------------------------------------------------------------------


def test_finetune_lowers_the_loss_and_reports() -> None:
    teacher, result = converted_tiny()
    data = DataLoader(synthetic(), batch_size=16, shuffle=True)
    steps_seen = []
    out = finetune(
        result.model,
        data,
        teacher=teacher,
        config=FinetuneConfig(lr=0.05, alpha=0.2),
        epochs=4,
        eval_data=DataLoader(synthetic(), batch_size=64),
        on_step=steps_seen.append,
    )
    assert out.steps == out.total_steps == 32 and out.epochs == 4 and len(out.losses) == 32
    assert sum(out.losses[-5:]) / 5 < 0.8 * sum(out.losses[:5]) / 5
    assert out.eval_accuracy_after > out.eval_accuracy_before
    assert out.images_per_second > 0 and out.precision == "fp32" and out.world_size == 1
    assert [s.step for s in steps_seen] == list(range(1, 33)) and steps_seen[-1].total_steps == 32
    assert steps_seen[0].lr == pytest.approx(out.lrs[0]) and out.lrs[0] < max(out.lrs)  # warm-up
    assert not result.model.training and all(p.requires_grad for p in teacher.parameters())


def test_finetune_accepts_a_generator_with_steps() -> None:
    _, result = converted_tiny()
    ds = synthetic(64)
    gen = ((ds.tensors[0][i : i + 8], ds.tensors[1][i : i + 8]) for i in range(0, 64, 8))
    out = finetune(result.model, gen, steps=5)
    assert out.steps == 5 and math.isnan(out.epochs)
    gen = ((ds.tensors[0][i : i + 8], ds.tensors[1][i : i + 8]) for i in range(0, 64, 8))
    assert finetune(result.model, gen, steps=20).steps == 8  # a one-pass generator that runs out ends the run
    with pytest.raises(ModifyError, match=r"pass steps= instead"):
        finetune(result.model, iter([]), epochs=1)


def test_freezing_leaves_unconverted_modules_bit_identical() -> None:
    teacher, result = converted_tiny()
    model = result.model
    before = copy.deepcopy(model.state_dict())
    mod_prefixes = tuple(f"{c.module}." for c in result.converted)
    finetune(
        model,
        DataLoader(synthetic(), batch_size=16),
        teacher=teacher,
        config=FinetuneConfig(lr=0.1, freeze_unconverted=True),
        steps=4,
    )
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed, "the MoD blocks should have trained"
    assert all(k.startswith(mod_prefixes) for k in changed), sorted(changed)
    assert any(k.startswith(mod_prefixes) and "selector" in k for k in changed)
    assert all(p.requires_grad for p in model.parameters())  # flags restored afterwards


def test_bn_recalibration_runs_after_training() -> None:
    _, result = converted_tiny()
    out = finetune(
        result.model, DataLoader(synthetic(), batch_size=16), config=FinetuneConfig(bn_recalibration_batches=3), steps=2
    )
    assert out.steps == 2
    assert int(result.model.stem[0].weight.shape[0]) == 16
    bn = result.model.layer[0].bn1
    assert int(bn.num_batches_tracked) == 3 and bn.momentum == 0.1


def test_resume_refuses_a_state_with_other_settings(tmp_path: Path) -> None:
    _, result = converted_tiny()
    data = DataLoader(synthetic(32), batch_size=8)
    finetune(result.model, data, steps=3, checkpoint_dir=tmp_path, checkpoint_every=1)
    assert (tmp_path / "finetune_state.pt").is_file()
    with pytest.raises(ModifyError, match=r"written with lr=0.01, this run has lr=0.5"):
        finetune(result.model, data, steps=3, config=FinetuneConfig(lr=0.5), checkpoint_dir=tmp_path, resume=True)
    done = finetune(result.model, data, steps=3, checkpoint_dir=tmp_path, resume=True)
    assert done.resumed_from == 3 and done.steps == 3 and len(done.losses) == 3
    with pytest.raises(ModifyError, match=r"needs checkpoint_dir"):
        finetune(result.model, data, steps=3, checkpoint_every=1)


def test_resume_refuses_another_models_state(tmp_path: Path) -> None:
    """A state written by another model is one line naming the state file, not a load_state_dict traceback."""
    _, result = converted_tiny()
    data = DataLoader(synthetic(32), batch_size=8)
    finetune(result.model, data, steps=2, checkpoint_dir=tmp_path, checkpoint_every=1)
    _, other = converted_tiny(bn=False)  # no BatchNorm: the state has weights this model lacks
    with pytest.raises(ModifyError, match=r"finetune_state.pt.*holds another model's weights.*drop resume"):
        finetune(other.model, data, steps=2, checkpoint_dir=tmp_path, resume=True)


def test_evaluate_counts_top1() -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(2, 2, bias=False))
    with torch.no_grad():
        model[1].weight.copy_(torch.eye(2))
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0]])
    assert evaluate(model, [(x, torch.tensor([0, 1, 1, 1]))]) == 0.75


# -- init strategies -----------------------------------------------------------------------------

BRANCH_FORM = {"version": 1, "defaults": {"k": 4}, "mod": {"form": "branch"}, "rules": [{"index": "odd"}]}


def test_zero_init_branch_form_is_exactly_the_original_minus_the_block() -> None:
    torch.manual_seed(0)
    model = Tiny().eval()
    result = modify.convert(model, recipe=BRANCH_FORM, input_size=8)
    report = initialize(result, "zero")
    assert [(b.name, b.zeroed, b.exact_zero) for b in report.blocks] == [("layer.1", "bn2", True)]
    reference = copy.deepcopy(model)
    reference.layer[1] = nn.ReLU()  # the block minus its residual branch: relu(x)
    x = torch.randn(4, 3, 8, 8)
    assert torch.equal(result.model.eval()(x), reference(x))
    result.model.train()(x).sum().backward()  # still trainable: the zeroed norm gets a gradient
    assert result.model.layer[1].block.bn2.weight.grad.abs().sum() > 0


def test_zero_init_whole_form_adds_the_scored_shortcut_only() -> None:
    torch.manual_seed(0)
    model = Tiny().eval()
    result = modify.convert(model, k=4, input_size=8)
    report = initialize(result, "zero")
    assert report.blocks[0].exact_zero is False
    mod = result.model.layer[1].eval()
    x = torch.relu(torch.randn(2, 16, 8, 8))
    scores, idx = mod.selector(x)
    picked = torch.gather(x, 1, idx[:, :, None, None].expand(-1, -1, 8, 8))
    expected = x.clone()
    expected[:, :4] += scores[:, :, None, None] * torch.relu(picked)  # s * post(x_sel) into the first k
    assert torch.allclose(mod(x), expected, atol=1e-6)


def test_importance_init_copies_the_top_channels_and_the_selector_prefers_them() -> None:
    torch.manual_seed(0)
    model = Tiny().eval()
    with torch.no_grad():
        model.layer[1].conv1.weight[:, [5, 9, 2]] *= torch.tensor([30.0, 20.0, 10.0])[None, :, None, None]
    result = modify.convert(model, k=4, input_size=8)
    x = torch.randn(8, 3, 8, 8)
    report = initialize(result, "importance", original=model, data=x)
    preferred = report.blocks[0].preferred
    assert preferred[:3] == (5, 9, 2) and len(preferred) == 4
    mod = result.model.layer[1]
    orig = model.layer[1]
    rows = torch.tensor(preferred)  # BasicBlock: inner width = C, so one ranking for every dimension
    assert torch.equal(mod.block.branch.conv1.weight, orig.conv1.weight[rows][:, rows])
    assert torch.equal(mod.block.branch.bn2.running_var, orig.bn2.running_var[rows])
    seen = {}
    mod.selector.register_forward_hook(lambda m, a, out: seen.update(idx=out[1], scores=out[0]))
    result.model.eval()(x)
    assert (seen["idx"] == rows).all()  # every image picks the preferred channels, in order
    assert (seen["scores"] > 0.8).all()
    with pytest.raises(ModifyError, match=r"pass original="):
        initialize(result, "importance")


@pytest.mark.parametrize("selection", ["dynamic", "static"])
@pytest.mark.parametrize(
    ("name", "size"), [("resnet18", 32), ("mobilenet_v2", 32), ("efficientnet_b0", 64), ("timm:convnext_atto", 64)]
)
def test_importance_init_at_k_c_in_the_identity_configuration_is_the_original(
    name: str, size: int, selection: str
) -> None:
    """At k = C every channel is selected, so ``importance`` must reproduce the original block: slot
    j's weights are those of the channel slot j receives. The identity configuration feeds channels
    in ascending index, as a static selector does; a copy in importance order (what ``importance``
    did before) permutes inputs against weights: 8.0 off at this ResNet-18's logits, 0.04-0.9 at the others'."""
    pytest.importorskip("timm") if name.startswith("timm:") else None
    torch.manual_seed(0)
    model = modify.get_model(name, num_classes=10).eval()
    norms = [m for m in model.modules() if isinstance(m, (nn.modules.batchnorm._NormBase, nn.LayerNorm))]
    scales = [p for n, p in model.named_parameters() if n.endswith("gamma")]  # ConvNeXt's layer scale
    with torch.no_grad():  # distinct scales (rankings that are not the identity), and outputs far from 0
        for weight in [m.weight for m in norms] + scales:
            weight.uniform_(0.2, 2.0)
        for m in norms:
            if getattr(m, "running_mean", None) is not None:
                m.running_mean.normal_()
    x = torch.randn(2, 3, size, size)
    result = convert_identity(model, example_inputs=x[:1])
    for _, _, block in mod_blocks(result):
        if selection == "static":
            block.selector = StaticSelector(block.channels, block.k)
    initialize(result, "importance", original=model)
    with torch.no_grad():
        torch.testing.assert_close(result.model.eval()(x), model(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(("lr", "steps", "weight"), [(0.02, 1, 1.0), (0.02, 5, 0.1), (0.002, 3, 1.0)])
def test_importance_prior_survives_steps_that_push_every_score_down(lr: float, steps: int, weight: float) -> None:
    """The regression behind the collapsed selectors: SGD steps on a loss that wants every selected
    score lower (what a block that hurts at first gives) must not kill hidden unit 0, the unit that
    carries the prior; before the factors were balanced one step at lr 0.02 did, and every score
    was 0.5 from then on (hidden unit 0 dead for all 16 inputs in each of these cases)."""
    import torchvision

    net = torchvision.models.resnet18(num_classes=10).eval()
    result = modify.convert(net, k=0.25, input_size=32)
    x = torch.randn(16, 3, 32, 32).abs()
    initialize(result, "importance", original=net, data=x)
    sel = result.model.layer4[1].selector
    pooled = {}
    result.model.layer4[1].register_forward_pre_hook(lambda m, a: pooled.update(p=a[0].mean((2, 3)).detach()))
    result.model(x)
    p = pooled["p"]  # (16, 512): the selector's input
    optimizer = torch.optim.SGD(sel.parameters(), lr=lr, momentum=0.9)
    for _ in range(steps):
        scores, _ = sel(p[:, :, None, None])
        optimizer.zero_grad()
        (weight * scores.sum(1).mean()).backward()  # push every selected score down
        optimizer.step()
    hidden0 = torch.relu(p @ sel.fc1.weight[0])  # (16,)
    assert (hidden0 > 0).all(), "the prior's hidden unit died"
    assert sel(p[:, :, None, None])[0].mean() > 0.85


def test_scratch_init_redraws_the_mod_blocks_only() -> None:
    model, result = converted_tiny()
    result2 = modify.convert(model, k=4, input_size=8, init="copy")
    before = copy.deepcopy(result2.model.state_dict())
    initialize(result2, "scratch")
    after = result2.model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith("layer.1.") for k in changed)
    assert [p for p, _, b in mod_blocks(result2) if isinstance(b, MoDBlock)] == ["layer.1"]


@pytest.mark.parametrize("model_name", ["resnet18", "timm:convnext_atto"])
def test_copy_init_after_convert_equals_converting_with_copy(model_name: str) -> None:
    # One vocabulary: initialize(result, "copy") on a scratch conversion gives the reduced blocks
    # convert(init="copy") cuts (the selector, fresh in both, aside).
    pytest.importorskip("timm") if model_name.startswith("timm:") else None
    model = modify.get_model(model_name, num_classes=10).eval()
    copied = modify.convert(model, input_size=64, init="copy")
    later = modify.convert(model, input_size=64, init="scratch")
    initialize(later, "copy", original=model)
    for (path, _, a), (_, _, b) in zip(mod_blocks(copied), mod_blocks(later), strict=True):
        torch.testing.assert_close(a.block.state_dict(), b.block.state_dict(), msg=path)


@pytest.mark.parametrize("init", ["zero", "importance"])
def test_convert_applies_every_init_of_the_vocabulary(init: str) -> None:
    model, _ = converted_tiny()
    direct = modify.convert(model, k=4, input_size=8, init=init)
    assert direct.init.value == init
    torch.manual_seed(0)
    later = modify.convert(model, k=4, input_size=8)
    report = initialize(later, init, original=model)
    if init == "importance":  # the same channels preferred, the same reduced block
        (block,) = report.blocks
        assert torch.equal(
            direct.model.get_submodule(block.module).block.branch.conv1.weight,
            later.model.get_submodule(block.module).block.branch.conv1.weight,
        )
    else:
        (block,) = [b for _, _, b in mod_blocks(direct)]
        assert all(float(p.detach().abs().sum()) == 0 for p in block.block.branch.bn2.parameters())


# -- subprocesses: SIGKILL and resume, torchrun ----------------------------------------------------

WORKER = textwrap.dedent(
    """
    import json, os, sys, time
    import torch
    from torch.utils.data import DataLoader
    sys.path.insert(0, {tests!r})
    from test_finetune import Tiny, synthetic
    import modify
    from modify.train.finetune import FinetuneConfig, finetune

    opts = json.loads(sys.argv[1])
    torch.set_num_threads(1)
    torch.manual_seed(0)
    teacher = Tiny(bn=opts["bn"])
    model = modify.convert(teacher, k=4, input_size=8).model
    loader = DataLoader(synthetic(opts["n"]), batch_size=opts["batch"], shuffle=opts["shuffle"])

    def on_step(info):
        print("step", info.step, flush=True)
        time.sleep(opts.get("sleep", 0))

    out = finetune(
        model, loader, teacher=teacher, config=FinetuneConfig(lr=0.05, weight_decay=1e-3, seed=3),
        epochs=opts["epochs"], checkpoint_dir=opts.get("dir"), checkpoint_every=opts.get("every"),
        resume=opts.get("resume", False), on_step=on_step,
    )
    if int(os.environ.get("RANK", "0")) == 0:
        torch.save({{"state": model.state_dict(), "losses": list(out.losses), "resumed_from": out.resumed_from,
                    "steps": out.steps, "world": out.world_size}}, opts["out"])
    """
)


def _worker(tmp_path: Path) -> Path:
    path = tmp_path / "worker.py"
    path.write_text(WORKER.format(tests=str(REPO / "tests")))
    return path


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    env.setdefault("GLOO_SOCKET_IFNAME", "lo")
    return env


def _run(cmd: list[str], timeout: float = 240) -> None:
    done = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]


@pytest.mark.slow
def test_sigkill_mid_run_then_resume_matches_an_uninterrupted_run(tmp_path: Path) -> None:
    worker = _worker(tmp_path)
    base = dict(bn=True, n=64, batch=4, shuffle=True, epochs=2)  # 16 steps per epoch, 32 in all
    _run([sys.executable, str(worker), json.dumps({**base, "out": str(tmp_path / "straight.pt")})])

    state_dir = tmp_path / "state"
    killed = dict(base, dir=str(state_dir), every=4, sleep=0.3, out=str(tmp_path / "killed.pt"))
    proc = subprocess.Popen(
        [sys.executable, str(worker), json.dumps(killed)], env=_env(), stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith("step") and int(line.split()[1]) >= 18:  # into the second epoch
                break
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert (state_dir / "finetune_state.pt").is_file() and not (tmp_path / "killed.pt").exists()
    assert not list(state_dir.glob("*.tmp"))  # no half-written file left visible

    _run([sys.executable, str(worker), json.dumps(dict(killed, sleep=0, resume=True))])
    straight = torch.load(tmp_path / "straight.pt", weights_only=True)
    resumed = torch.load(tmp_path / "killed.pt", weights_only=True)
    assert (
        resumed["resumed_from"] is not None and resumed["resumed_from"] % 4 == 0 and 16 <= resumed["resumed_from"] < 32
    )
    assert resumed["steps"] == straight["steps"] == 32
    assert resumed["losses"] == pytest.approx(straight["losses"], rel=1e-5)
    for key, value in straight["state"].items():
        assert torch.allclose(resumed["state"][key].float(), value.float(), atol=1e-6), key


@pytest.mark.slow
def test_torchrun_two_processes_match_one_process_with_the_same_global_batch(tmp_path: Path) -> None:
    """gloo on CPU, two processes with 4 images each vs one process with 8. The model has no
    BatchNorm (plain DDP keeps BN statistics per process, so with BN the two would differ by design);
    the data is not shuffled, so DistributedSampler's interleaving gives each step the same 8 images."""
    worker = _worker(tmp_path)
    base = dict(bn=False, n=64, shuffle=False, epochs=1)
    _run([sys.executable, str(worker), json.dumps({**base, "batch": 8, "out": str(tmp_path / "one.pt")})])
    _run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node=2",
            str(worker),
            json.dumps({**base, "batch": 4, "out": str(tmp_path / "two.pt")}),
        ]
    )
    one = torch.load(tmp_path / "one.pt", weights_only=True)
    two = torch.load(tmp_path / "two.pt", weights_only=True)
    assert two["world"] == 2 and one["steps"] == two["steps"] == 8
    for key, value in one["state"].items():
        assert torch.allclose(two["state"][key], value, rtol=1e-4, atol=1e-5), key  # stated tolerance


# -- the CLI -------------------------------------------------------------------------------------


def test_cli_finetune_on_a_tiny_checkpoint(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from modify.cli.finetune import app
    from test_data import write_fashion_mnist

    write_fashion_mnist(tmp_path / "idx", n_train=24, n_test=16)
    original = modify.io.names.from_import_path("test_finetune:Tiny", classes=10)  # rebuilt by import path on load
    modify.save(original, tmp_path / "orig.pt")
    modify.save(modify.convert(original, k=4, input_size=32), tmp_path / "mod.pt")
    runner = CliRunner()
    args = [
        str(tmp_path / "mod.pt"),
        "--data",
        "fashion-mnist",
        "--data-dir",
        str(tmp_path / "idx"),
        "--teacher",
        str(tmp_path / "orig.pt"),
        "--steps",
        "2",
        "--batch-size",
        "8",
        "--eval-data",
        "fashion-mnist",
        "--init",
        "importance",
        "--checkpoint-every",
        "1",
        "-o",
        str(tmp_path / "out.pt"),
    ]
    done = runner.invoke(app, [*args, "--json"])
    assert done.exit_code == 0, done.output
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["steps"] == 2 and report["eval_accuracy_after"] is not None
    assert (tmp_path / "out.pt").is_file() and (tmp_path / "out.pt.state" / "finetune_state.pt").is_file()
    assert isinstance(modify.load(tmp_path / "out.pt").layer[1], MoDBlock)

    again = runner.invoke(app, args)  # OUT exists: refused before any training, one line
    assert (
        again.exit_code == 1 and "exists; pass --force" in again.stderr and len(again.stderr.strip().splitlines()) == 1
    )
    resumed = runner.invoke(app, [*args, "--resume", "--force"])  # the table and the progress bar
    assert resumed.exit_code == 0, resumed.output
    assert "resumed from step" in resumed.stdout and "eval accuracy after" in resumed.stdout

    no_teacher = runner.invoke(
        app,
        [
            str(tmp_path / "mod.pt"),
            "--data",
            "fashion-mnist",
            "--data-dir",
            str(tmp_path / "idx"),
            "--init",
            "importance",
            "-o",
            str(tmp_path / "x.pt"),
        ],
    )
    assert no_teacher.exit_code == 1 and "--teacher" in no_teacher.stderr
    missing = runner.invoke(
        app,
        [
            str(tmp_path / "mod.pt"),
            "--data",
            "fashion-mnist",
            "--data-dir",
            str(tmp_path / "none"),
            "-o",
            str(tmp_path / "y.pt"),
        ],
    )
    assert missing.exit_code == 1 and "apt-get install -y dataset-fashion-mnist" in missing.stderr


def test_a_state_of_another_version_is_refused_on_resume(tmp_path) -> None:
    from modify.train.state import STATE_FILE, read_state as _read_state

    torch.save({"format": "modify.finetune_state", "version": 99}, tmp_path / STATE_FILE)
    with pytest.raises(modify.ModifyError, match="version 99.*delete the state"):
        _read_state(tmp_path / STATE_FILE)
