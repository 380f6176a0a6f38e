"""Deployment: ONNX (checked, run in ONNX Runtime) and torch.export round trips; the inference
fast path (BatchNorm folding, in-place fusion) and torch.compile without graph breaks."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from typer.testing import CliRunner

import modify
from modify.cli import app
from modify.deploy.export import export_onnx, export_program, placement_fusion
from modify.deploy.optimize import enable_inplace_fusion, fold_batchnorm, optimize_for_inference
from modify.layers import MoDBlock

SIZE = 64


def _real_images(n: int = 2) -> torch.Tensor:
    """Fashion-MNIST test images where the Debian package is installed, else natural-ish noise."""
    try:
        from modify.train.data import fashion_mnist

        data = fashion_mnist(split="test", limit=n)
        images = torch.stack([data[i][0] for i in range(n)])  # (n, 3, 32, 32)
        return torch.nn.functional.interpolate(images, size=(SIZE, SIZE), mode="bilinear")
    except Exception:
        torch.manual_seed(1)
        return torch.nn.functional.avg_pool2d(torch.randn(n, 3, SIZE + 6, SIZE + 6), 7, stride=1)


def _with_statistics(model: torch.nn.Module) -> torch.nn.Module:
    """Non-trivial BatchNorm statistics, as a trained model has."""
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
    return model.eval()


MODELS = {
    "resnet50_mod": lambda: modify.get_model("resnet50_mod"),
    "mobilenet_v2": lambda: modify.convert(modify.get_model("mobilenet_v2"), c=16, input_size=SIZE).model,
    "convnext_tiny": lambda: modify.convert(modify.get_model("convnext_tiny"), c=16, input_size=SIZE).model,
}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_onnx_round_trip(name: str, tmp_path) -> None:
    model = _with_statistics(MODELS[name]())
    report = export_onnx(
        model,
        tmp_path / f"{name}.onnx",
        input_size=SIZE,
        dynamic_batch=True,
        batch_sizes=(1, 3),
        real_inputs=_real_images(),
    )
    assert report.max_abs_diff <= 1e-4 and report.batch_sizes == (1, 3)
    assert {"TopK", "Gather"} <= set(report.operators), report.operators  # top-k, then k whole planes a sample
    assert not {"Concat", "Split", "ScatterND"} & set(report.operators)  # fusion as a placement conv


@pytest.mark.parametrize("name", sorted(MODELS))
def test_torch_export_round_trip(name: str, tmp_path) -> None:
    model = _with_statistics(MODELS[name]())
    report = export_program(
        model,
        tmp_path / f"{name}.pt2",
        input_size=SIZE,
        dynamic_batch=True,
        batch_sizes=(1, 3),
        real_inputs=_real_images(),
    )
    assert report.max_abs_diff <= 1e-5
    assert (tmp_path / f"{name}.pt2").is_file()


def test_export_cli_writes_checks_and_refuses_to_overwrite(tmp_path) -> None:
    runner = CliRunner()
    ckpt = tmp_path / "r18.pt"
    assert runner.invoke(app, ["convert", "resnet18", "--input-size", str(SIZE), "-o", str(ckpt)]).exit_code == 0
    result = runner.invoke(app, ["export", str(ckpt), "--input-size", str(SIZE), "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["path"] == str(tmp_path / "r18.onnx") and data["max_abs_diff"] <= 1e-4
    again = runner.invoke(app, ["export", str(ckpt), "--input-size", str(SIZE)])
    assert again.exit_code == 1 and "exists; pass --force" in again.stderr
    bad = runner.invoke(app, ["export", str(ckpt), "--format", "tflite"])
    assert bad.exit_code == 1 and "--format 'tflite' is not one of onnx, torch-export" in bad.stderr


@pytest.mark.parametrize("name", ["resnet50_mod", "convert:resnet18"])
def test_optimize_for_inference_keeps_outputs(name: str) -> None:
    base = (
        modify.get_model(name)
        if ":" not in name
        else modify.convert(modify.get_model("resnet18"), input_size=SIZE).model
    )
    model = _with_statistics(base)
    fast = optimize_for_inference(model)
    assert type(fast) is type(model)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fast.modules())  # every conv/BN pair folded
    blocks = [m for m in fast.modules() if isinstance(m, MoDBlock)]
    assert blocks and all(b.fusion.inplace for b in blocks)  # each is its input's only reader
    x = torch.randn(2, 3, SIZE, SIZE)
    with torch.inference_mode():
        torch.testing.assert_close(fast(x.clone()), model(x), atol=1e-4, rtol=1e-4)
    with torch.no_grad():  # the caller's tensor is untouched by the in-place fusion of later blocks
        y = x.clone()
        fast(y)
        assert torch.equal(y, x)


def test_in_place_fusion_is_off_where_the_input_has_other_readers() -> None:
    class Fork(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = torch.nn.Conv2d(3, 16, 3, padding=1)
            self.mod = MoDBlock(16, 4, torch.nn.Conv2d(4, 4, 3, padding=1))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.stem(x)
            return self.mod(h) + h  # h is read again after the block

    model = Fork().eval()
    fast = optimize_for_inference(model)
    assert fast.mod.fusion.inplace is False
    x = torch.randn(1, 3, 8, 8)
    with torch.inference_mode():
        torch.testing.assert_close(fast(x), model(x))


@pytest.mark.parametrize("name", ["resnet50_mod", "convert:resnet18", "convert:mobilenet_v2"])
def test_models_fuse_in_place_as_they_come(name: str) -> None:
    if ":" in name:
        model = modify.convert(modify.get_model(name.split(":")[1]), input_size=SIZE).model
    else:
        model = modify.get_model(name)
    model = _with_statistics(model)
    blocks = {n: m for n, m in model.named_modules() if isinstance(m, MoDBlock)}
    assert blocks and all(b.fusion.inplace for b in blocks.values())  # inputs are intermediates
    reference = copy.deepcopy(model)
    for b in reference.modules():
        if isinstance(b, MoDBlock):
            b.fusion.inplace = False
    x = torch.randn(2, 3, SIZE, SIZE)
    with torch.inference_mode():
        torch.testing.assert_close(model(x), reference(x), atol=0, rtol=0)  # bit-identical
    with torch.no_grad():
        y = x.clone()
        model(y)
        assert torch.equal(y, x)  # the caller's tensor is not written


class _Shared(torch.nn.Module):
    """MoD blocks whose inputs other code reads too, directly or through an alias."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = torch.nn.Conv2d(3, 16, 3, padding=1)
        self.relu = torch.nn.ReLU(inplace=True)  # its output is its input
        self.aliased = MoDBlock(16, 4, torch.nn.Conv2d(4, 4, 3, padding=1))
        self.owned = MoDBlock(16, 4, torch.nn.Conv2d(4, 4, 3, padding=1))
        self.viewed = MoDBlock(16, 4, torch.nn.Conv2d(4, 4, 3, padding=1))
        self.relu_arg = MoDBlock(16, 4, torch.nn.Conv2d(4, 4, 3, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stem(x)
        a = self.aliased(self.relu(h)) + h  # h is read again after the block, through relu's alias
        b = self.owned(a * 2.0)  # a fresh tensor nothing else reads
        c = self.viewed(b.view(b.shape))  # a view of b, which is also returned
        d = self.relu_arg(torch.nn.functional.relu(c, True))  # in place by a positional argument
        return d + b + c


def test_in_place_fusion_only_where_nothing_else_reads_the_input() -> None:
    model = _Shared().eval()
    first = MoDBlock(16, 4, torch.nn.Conv2d(4, 4, 3, padding=1))
    assert enable_inplace_fusion(model) == ["owned"]
    assert enable_inplace_fusion(first) == []  # its input is the caller's
    x = torch.randn(1, 3, 8, 8)
    reference = copy.deepcopy(model)
    reference.owned.fusion.inplace = False
    with torch.inference_mode():
        torch.testing.assert_close(model(x), reference(x), atol=0, rtol=0)


def test_placement_fusion_is_temporary() -> None:
    model = modify.get_model("resnet18_mod").eval()
    keys = list(model.state_dict())
    with placement_fusion(model) as switched:
        assert switched == 4
        assert model.layer1[1].fusion.placement_weight.shape == (64, 1, 1, 1)  # C = 64, k = 1
    assert list(model.state_dict()) == keys and not hasattr(model.layer1[1].fusion, "placement_weight")


def test_in_place_fusion_only_without_gradients() -> None:
    block = MoDBlock(8, 2, torch.nn.Conv2d(2, 2, 1))
    block.fusion.inplace = True
    x = torch.randn(1, 8, 4, 4, requires_grad=True)
    out = block(x * 1.0)
    out.sum().backward()  # autograd path stays out of place
    assert x.grad is not None


def test_fold_batchnorm_counts() -> None:
    model = _with_statistics(modify.get_model("resnet18_mod"))
    # 4 standard blocks x 2 convs + 3 projections + the stem, and 4 reduced BasicBlocks x 2 convs
    assert fold_batchnorm(model) == 4 * 2 + 3 + 1 + 4 * 2


@pytest.mark.parametrize("form", ["whole", "branch"])
def test_mod_block_compiles_without_graph_breaks(form: str) -> None:
    from torchvision.models.resnet import BasicBlock

    torch._dynamo.reset()
    block = (
        BasicBlock(4, 4)
        if form == "whole"
        else torch.nn.Sequential(torch.nn.Conv2d(4, 4, 3, padding=1), torch.nn.BatchNorm2d(4))
    )
    mod = MoDBlock(32, 4, block, form=form, post=torch.nn.ReLU() if form == "branch" else None).eval()
    compiled = torch.compile(mod, fullgraph=True, backend="aot_eager")  # fullgraph: a graph break raises
    x = torch.randn(2, 32, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), mod(x))


def test_onnx_export_without_its_packages_names_the_extra(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnxscript" else real(name, *a))
    from modify.deploy.export import export_onnx
    from modify.errors import ModifyError

    with pytest.raises(ModifyError, match=r"needs onnxscript: pip install 'modify\[onnx\]'"):
        export_onnx(torch.nn.Conv2d(3, 3, 1), tmp_path / "m.onnx", input_size=8)
    assert not (tmp_path / "m.onnx").exists()


# -- ONNX: the forms of the fusion into a fixed slot -----------------------------------------------


@pytest.fixture(scope="module")
def resnet18_32() -> torch.nn.Module:
    """torchvision's ResNet-18 (10 classes) converted with the default recipe for 32x32 inputs; built
    once for the tests of this module, which only export it (and check that it is left as it was)."""
    import torchvision

    return _with_statistics(
        modify.convert(torchvision.models.resnet18(weights=None, num_classes=10), input_size=32).model
    )


# The operators each form is written with, and those it has none of (beside what every MoD block
# has: TopK, Gather, ...).
_FIXED = {"Concat", "Slice", "ScatterND", "ScatterElements", "Pad"}
FORM_OPERATORS = {
    "placement": (set(), _FIXED),
    "concat": ({"Slice", "Concat"}, _FIXED - {"Slice", "Concat"}),
    "slice-scatter": ({"Slice", "ScatterND"}, _FIXED - {"Slice", "ScatterND"}),
    "scatter-add": ({"ScatterElements"}, _FIXED - {"ScatterElements", "Concat"}),  # a Concat builds its index shape
    "pad": ({"Pad"}, _FIXED - {"Pad"}),
    "folded": (set(), _FIXED),
}


@pytest.mark.parametrize("form", list(FORM_OPERATORS))
def test_each_onnx_fusion_form_exports_exactly(form: str, tmp_path, resnet18_32: torch.nn.Module) -> None:
    import onnx

    from modify.deploy.export import ONNX_FUSION_FORMS
    from modify.layers import Fusion

    assert set(FORM_OPERATORS) == set(ONNX_FUSION_FORMS)
    model = resnet18_32
    report = export_onnx(
        model,
        tmp_path / f"{form}.onnx",
        input_size=32,
        dynamic_batch=True,
        batch_sizes=(1, 2),
        tolerance=1e-5,
        fusion=form,
    )
    assert report.max_abs_diff <= 1e-5 and report.fusion == form and report.batch_sizes == (1, 2)
    required, absent = FORM_OPERATORS[form]
    assert required <= set(report.operators) and not absent & set(report.operators), report.operators
    graph = onnx.load(str(tmp_path / f"{form}.onnx")).graph
    placements = [i.name for i in graph.initializer if i.name.endswith("fusion.placement_weight")]
    convs = sum(n.op_type == "Conv" for n in graph.node)
    if form == "placement":
        assert len(placements) == 4 and convs == 20 + 4  # ResNet-18's 20, a placement per MoD block
    elif form == "folded":
        # layer1.1-layer3.1 feed only the next stage's conv1 and projection: each folded into a thin
        # convolution of the k channels per reader; layer4.1 feeds the average pool and keeps its placement.
        assert placements == ["layer4.1.fusion.placement_weight"] and convs == 20 + 1 + 3 * 2
    else:
        assert not placements and convs == 20
    assert all(f.export_form is None for f in model.modules() if isinstance(f, Fusion))  # the model is as before
    assert not any("placement_weight" in name for name, _ in model.named_buffers())


def test_an_unknown_fusion_form_names_the_forms(tmp_path) -> None:
    from modify.errors import ExportError

    with pytest.raises(ExportError, match="fusion form 'split' is not one of placement, concat, slice-scatter"):
        export_onnx(torch.nn.Conv2d(3, 3, 1), tmp_path / "m.onnx", input_size=8, fusion="split")
    assert not (tmp_path / "m.onnx").exists()


# -- AOTInductor ----------------------------------------------------------------------------------


@pytest.mark.slow
def test_aoti_cli_round_trip_resnet18_mod(tmp_path) -> None:
    """The paper's ResNet18-MoD, compiled for any batch at 32x32 (about a minute of compiling)."""
    from modify.deploy.aoti import AotiModule

    out = tmp_path / "r18.aoti.pt2"
    result = CliRunner().invoke(
        app,
        [
            "export",
            "resnet18_mod",
            "--format",
            "aoti",
            "--input-size",
            "32",
            "--dynamic-batch",
            "-o",
            str(out),
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["format"] == "aoti" and data["batch_sizes"] == [1, 2] and data["max_abs_diff"] <= 1e-4
    assert data["dynamic_batch"] and out.is_file()
    with torch.no_grad():  # a batch size it was not checked at (the command compared 1 and 2 with PyTorch)
        out3 = AotiModule(out)(torch.randn(3, 3, 32, 32))
    assert out3.shape == (3, 1000) and torch.isfinite(out3).all()


@pytest.mark.slow
def test_aoti_round_trip_mobilenet_v2_mod(tmp_path) -> None:
    from modify.deploy.aoti import export_aoti

    model = _with_statistics(modify.get_model("mobilenet_v2_mod", num_classes=10))
    images = torch.nn.functional.interpolate(_real_images(), size=(32, 32), mode="bilinear")
    report = export_aoti(
        model, tmp_path / "mbv2.pt2", input_size=32, dynamic_batch=True, batch_sizes=(1, 2), real_inputs=images
    )
    assert report.format == "aoti" and report.max_abs_diff <= 1e-4 and report.batch_sizes == (1, 2)


@pytest.mark.slow
def test_aoti_engine_compiles_before_the_timing(tmp_path) -> None:
    from modify.layers import MoDBlock
    from modify.measure.benchmark import BenchCase, bench

    block = MoDBlock(16, 4, torch.nn.Conv2d(4, 4, 3, padding=1), reduction=1)  # no score ties (see test_timing)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3, padding=1), block)
    baseline = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.Conv2d(16, 16, 3, padding=1))
    report = bench(model, baseline, cases=[BenchCase(2, 1)], input_size=8, rounds=2, min_run_time=0.01, engine="aoti")
    (result,) = report.results
    assert report.engine == "aoti" and all(s > 0 for s in result.prepare_seconds) and result.speedup > 0


def _no_compiler(monkeypatch: pytest.MonkeyPatch) -> None:
    from torch._inductor import config  # noqa: PLC2701 (AOTInductor's compiler setting lives only there)

    monkeypatch.setattr(config.cpp, "cxx", (None, "no-such-c++-compiler"))
    monkeypatch.delenv("TORCH_INDUCTOR_INSTALL_GXX", raising=False)


def test_aoti_without_a_compiler_says_what_to_install(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    from modify.deploy.aoti import export_aoti
    from modify.deploy.engines import prepare
    from modify.errors import ExportError

    _no_compiler(monkeypatch)
    hint = r"AOTInductor needs a C\+\+ compiler: apt-get install g\+\+ \(or set CXX to a C\+\+ compiler\)"
    with pytest.raises(ExportError, match=hint + r" \(looked for no-such-c\+\+-compiler\)\."):
        export_aoti(torch.nn.Conv2d(3, 3, 1), tmp_path / "m.pt2", input_size=8)
    assert not list(tmp_path.iterdir())
    for engine in ("compile", "aoti"):
        with pytest.raises(ExportError, match=hint):
            prepare(torch.nn.Conv2d(3, 3, 1), engine, input_size=8)
    result = CliRunner().invoke(app, ["export", "resnet18_mod", "--format", "aoti", "-o", str(tmp_path / "r.pt2")])
    assert result.exit_code == 1 and result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: AOTInductor needs a C++ compiler: apt-get install g++"), (
        result.stderr
    )


def test_aoti_compiler_failure_inside_inductor_is_the_same_line(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    import torch._inductor
    from torch._inductor.exc import InvalidCxxCompiler  # noqa: PLC2701 (and its compiler error)

    from modify.deploy.aoti import export_aoti
    from modify.errors import ExportError

    def fails(*args, **kwargs):
        try:
            raise InvalidCxxCompiler()
        except InvalidCxxCompiler as e:
            raise RuntimeError("backend compiler failed") from e  # as inductor's callers wrap it

    monkeypatch.setattr(torch._inductor, "aoti_compile_and_package", fails)
    with pytest.raises(ExportError, match=r"^AOTInductor needs a C\+\+ compiler: apt-get install g\+\+"):
        export_aoti(torch.nn.Conv2d(3, 3, 1), tmp_path / "m.pt2", input_size=8)
    assert not list(tmp_path.iterdir())  # the temporary file is gone too


def test_cli_engine_names_are_the_library_engines() -> None:
    from modify.cli._common import ENGINES  # noqa: PLC2701 (the CLI's torch-free copy of the engine names)
    from modify.deploy.engines import Engine

    assert ENGINES == tuple(e.value for e in Engine)
