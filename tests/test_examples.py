"""Every example runs, at tiny settings (design habit 14)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from test_data import write_fashion_mnist

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def _restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_fashion_mnist_example_at_tiny_settings(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], _restore_threads: None
) -> None:
    """The whole pipeline on a Fashion-MNIST-shaped IDX set the test writes (random pixels): train,
    convert with two recipes and three inits, fine-tune, profile, bench, throughput, table."""
    write_fashion_mnist(tmp_path / "idx", n_train=64, n_test=32)
    example = _load("fashion_mnist")
    out = example.main(
        [
            "--data-dir",
            str(tmp_path / "idx"),
            "--train-limit",
            "64",
            "--test-limit",
            "32",
            "--batch-size",
            "16",
            "--baseline-epochs",
            "1",
            "--finetune-epochs",
            "0.25",
            "--recal-batches",
            "1",
            "--threads",
            "1",
            "--bench-rounds",
            "1",
            "--bench-time",
            "0.01",
            "--throughput-steps",
            "1",
            "--throughput-rounds",
            "1",
            "--json",
            str(tmp_path / "out.json"),
        ]
    )
    printed = capsys.readouterr().out
    assert "every_other" in printed and "late_stages" in printed and "The issue's bar" in printed
    rows = out["rows"]
    assert [r["init"] for r in rows if r["stage"] == "before FT"] == ["scratch", "zero", "importance"] * 2
    after = [r for r in rows if r["stage"].startswith("after FT")]
    assert len(after) == 2 and all(r["macs"] < rows[0]["macs"] and r["speedup"] > 0 for r in after)
    assert set(out["throughput"]) == {"resnet18 (train)", "every_other (FT+KD)", "late_stages (FT+KD)"}
    assert json.loads((tmp_path / "out.json").read_text())["checks"].keys() == out["checks"].keys()
    with pytest.raises(SystemExit):
        example.parse(["--finetune-epochs", "2"])  # the issue allows at most one epoch


def test_train_fashion_mnist_example_writes_a_checkpoint(tmp_path: Path, _restore_threads: None) -> None:
    """The teacher `modify compare` starts from: trained, evaluated, saved, reloadable."""
    import modify

    write_fashion_mnist(tmp_path / "idx", n_train=32, n_test=16)
    example = _load("train_fashion_mnist")
    out = example.main(
        [
            "--data-dir",
            str(tmp_path / "idx"),
            "--epochs",
            "1",
            "--batch-size",
            "16",
            "--threads",
            "1",
            "-o",
            str(tmp_path / "r18.pt"),
        ]
    )
    assert out["model"] == "resnet18" and 0 <= out["test_accuracy"] <= 1 and out["test_images"] == 16
    assert json.loads((tmp_path / "r18.json").read_text())["test_accuracy"] == out["test_accuracy"]
    assert modify.load(tmp_path / "r18.pt").fc.out_features == 10
    assert not (tmp_path / "r18.pt.state").exists()  # the run's state goes once the checkpoint is written


def test_train_fashion_mnist_example_resumes_a_stopped_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, _restore_threads: None
) -> None:
    """A run stopped in its third step and run again with --resume ends with the weights of a run never
    stopped; it resumes from the state written after step 2, and the JSON says so."""
    import modify

    write_fashion_mnist(tmp_path / "idx", n_train=64, n_test=16)
    example = _load("train_fashion_mnist")
    common = ["--data-dir", str(tmp_path / "idx"), "--epochs", "2", "--batch-size", "16", "--threads", "1"]
    common += ["--model", "resnet18", "--checkpoint-every", "1"]
    example.main([*common, "-o", str(tmp_path / "straight.pt")])

    real = example.finetune

    def stopped_in_three(*args, on_step, **kwargs):
        def hook(info) -> None:  # called before the step's state is written
            on_step(info)
            if info.step == 3:
                raise KeyboardInterrupt  # the user's ^C, or the machine going away

        return real(*args, on_step=hook, **kwargs)

    monkeypatch.setattr(example, "finetune", stopped_in_three)
    with pytest.raises(KeyboardInterrupt):
        example.main([*common, "-o", str(tmp_path / "stopped.pt")])
    assert (tmp_path / "stopped.pt.state" / "finetune_state.pt").is_file() and not (tmp_path / "stopped.pt").exists()
    monkeypatch.setattr(example, "finetune", real)
    with pytest.raises(SystemExit, match=r"^error: the state in .* was written with lr=0.1, this run has lr=0.05"):
        example.main([*common, "--resume", "--lr", "0.05", "-o", str(tmp_path / "stopped.pt")])
    out = example.main([*common, "--resume", "-o", str(tmp_path / "stopped.pt")])
    assert out["resumed_from_step"] == 2
    straight, resumed = modify.load(tmp_path / "straight.pt"), modify.load(tmp_path / "stopped.pt")
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.allclose(a.float(), b.float(), atol=1e-6), name
    assert not (tmp_path / "stopped.pt.state").exists()


def _image_folder(root: Path, classes: int = 2, per_class: int = 4, size: int = 40) -> Path:
    """A tiny DATA/{train,val}/CLASS/IMAGE.png folder of random pictures."""
    from PIL import Image

    generator = torch.Generator().manual_seed(0)
    for split in ("train", "val"):
        for c in range(classes):
            folder = root / split / f"class{c}"
            folder.mkdir(parents=True)
            for i in range(per_class):
                pixels = torch.randint(0, 256, (size, size, 3), generator=generator, dtype=torch.uint8)
                Image.fromarray(pixels.numpy()).save(folder / f"{i}.png")
    return root


def test_own_weights_and_image_folder_example(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], _restore_threads: None
) -> None:
    """A user's weights file (DDP-prefixed, inside a training checkpoint) and image folder: load,
    convert, fine-tune, save; the saved model reloads."""
    import modify

    data = _image_folder(tmp_path / "images")
    trained = modify.get_model("resnet18", num_classes=2)
    torch.save(
        {"epoch": 9, "state_dict": {f"module.{k}": v for k, v in trained.state_dict().items()}}, tmp_path / "w.pth"
    )
    example = _load("own_weights_image_folder")
    out = example.main(
        [
            "--model",
            "resnet18",
            "--weights",
            str(tmp_path / "w.pth"),
            "--data",
            str(data),
            "--image-size",
            "32",
            "--epochs",
            "1",
            "--batch-size",
            "4",
            "-o",
            str(tmp_path / "r18_mod.pt"),
        ]
    )
    accuracy = out["accuracy"]
    assert set(accuracy) == {"original", "converted", "fine-tuned"} and all(0 <= a <= 1 for a in accuracy.values())
    assert "converted 4 blocks" in capsys.readouterr().out
    assert torch.equal(out["original"].conv1.weight, trained.conv1.weight)  # the user's weights, loaded
    assert type(modify.load(tmp_path / "r18_mod.pt").layer1[1]).__name__ == "MoDBlock"


def test_serve_onnxruntime_example(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("onnxruntime", reason="the [onnx] extra")
    import modify

    checkpoint = modify.save(
        modify.convert(modify.get_model("resnet18", num_classes=10), input_size=32), tmp_path / "r18.pt"
    )
    medians = _load("serve_onnxruntime").main(
        [str(checkpoint), "--input-size", "32", "--requests", "5", "--max-batch", "3"]
    )
    assert medians and all(ms > 0 for ms in medians.values())
    assert "answers match PyTorch" in capsys.readouterr().out and (tmp_path / "r18.onnx").is_file()


def test_segmentation_backbone_example(capsys: pytest.CaptureFixture[str]) -> None:
    out = _load("segmentation_backbone").main(["--model", "fcn_resnet50", "--input-size", "64", "--num-classes", "3"])
    assert out["macs_after"] < out["macs_before"]
    assert "identical masks" in capsys.readouterr().out
