"""modify.train.data: IDX files, Fashion-MNIST from a folder the test writes, image folders."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from modify.errors import ModifyError
from modify.train.data import (
    FASHION_MNIST_MEAN,
    FASHION_MNIST_ROOT,
    FASHION_MNIST_STD,
    fashion_mnist,
    image_folder,
    load_dataset,
    read_idx,
    write_idx,
)


def write_fashion_mnist(
    root: Path, n_train: int = 20, n_test: int = 10, *, gz: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """A Fashion-MNIST-shaped IDX set (random pixels and labels); returns the training images and labels."""
    g = torch.Generator().manual_seed(0)
    suffix = ".gz" if gz else ""
    out = None
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = torch.randint(0, 256, (n, 28, 28), dtype=torch.uint8, generator=g)
        labels = torch.randint(0, 10, (n,), dtype=torch.uint8, generator=g)
        write_idx(root / f"{prefix}-images-idx3-ubyte{suffix}", images)
        write_idx(root / f"{prefix}-labels-idx1-ubyte{suffix}", labels)
        out = out or (images, labels)
    assert out is not None
    return out


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int32, torch.float32])
@pytest.mark.parametrize("name", ["a-idx-ubyte", "a-idx-ubyte.gz"])
def test_idx_round_trip(tmp_path: Path, dtype: torch.dtype, name: str) -> None:
    array = (
        (torch.arange(24) * 7 - 30).reshape(2, 3, 4).to(dtype)
        if dtype != torch.uint8
        else torch.arange(24, dtype=dtype).reshape(2, 3, 4)
    )
    back = read_idx(write_idx(tmp_path / name, array))
    assert back.dtype == dtype and torch.equal(back, array)


def test_idx_header_is_the_published_format(tmp_path: Path) -> None:
    # magic 0x00000803 (uint8, 3 dims), then big-endian sizes, as in LeCun's MNIST page.
    p = write_idx(tmp_path / "x", torch.zeros(2, 28, 28, dtype=torch.uint8))
    assert p.read_bytes()[:16] == bytes([0, 0, 8, 3, 0, 0, 0, 2, 0, 0, 0, 28, 0, 0, 0, 28])


def test_bad_idx_is_a_one_line_error(tmp_path: Path) -> None:
    (tmp_path / "bad").write_bytes(b"not an idx file")
    with pytest.raises(ModifyError, match=r"is not an IDX file") as e:
        read_idx(tmp_path / "bad")
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("gz", [True, False])
def test_fashion_mnist_pads_repeats_and_normalises(tmp_path: Path, gz: bool) -> None:
    images, labels = write_fashion_mnist(tmp_path, gz=gz)
    ds = fashion_mnist(tmp_path, split="train")
    assert len(ds) == 20 and ds.classes[0] == "T-shirt/top"
    x, y = ds[3]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and int(y) == int(labels[3])
    assert torch.equal(x[0], x[1]) and torch.equal(x[0], x[2])  # grey repeated
    background = (0 - FASHION_MNIST_MEAN) / FASHION_MNIST_STD
    assert torch.allclose(x[0, :2], torch.full((2, 32), background))  # 2 rows of padding top and bottom
    assert torch.allclose(x[0, :, -2:], torch.full((32, 2), background))
    expected = (images[3].float() / 255 - FASHION_MNIST_MEAN) / FASHION_MNIST_STD
    assert torch.allclose(x[0, 2:30, 2:30], expected)
    all_x, all_y = ds.tensors()
    assert all_x.shape == (20, 3, 32, 32) and torch.equal(all_x[3], x) and torch.equal(all_y, labels.long())


def test_fashion_mnist_split_and_limit(tmp_path: Path) -> None:
    write_fashion_mnist(tmp_path)
    assert len(fashion_mnist(tmp_path, split="test")) == 10
    assert len(fashion_mnist(tmp_path, split="train", limit=5)) == 5
    with pytest.raises(ModifyError, match=r"Unknown Fashion-MNIST split 'val'"):
        fashion_mnist(tmp_path, split="val")


def test_missing_files_name_the_path_and_the_install_command(tmp_path: Path) -> None:
    with pytest.raises(ModifyError, match=r"apt-get install -y dataset-fashion-mnist") as e:
        fashion_mnist(tmp_path / "nowhere")
    assert str(tmp_path / "nowhere" / "train-images-idx3-ubyte") in str(e.value)
    assert "\n" not in str(e.value)


def test_load_dataset_dispatches(tmp_path: Path) -> None:
    write_fashion_mnist(tmp_path)
    assert len(load_dataset("fashion-mnist", split="test", data_dir=tmp_path)) == 10
    assert len(load_dataset("FashionMNIST", split="train", data_dir=tmp_path, limit=3)) == 3
    with pytest.raises(ModifyError, match=r"neither 'fashion-mnist' nor an image folder"):
        load_dataset("no-such-folder", data_dir=tmp_path)


def test_image_folder_standard_transform(tmp_path: Path) -> None:
    from PIL import Image

    for cls in ("cat", "dog"):
        for split in ("train", "val"):
            (tmp_path / split / cls).mkdir(parents=True)
            for i in range(2):
                Image.new("RGB", (40, 30), color=(i * 100, 50, 200)).save(tmp_path / split / cls / f"{i}.png")
    train = load_dataset(str(tmp_path), split="train", size=24)
    test = load_dataset(str(tmp_path), split="test", size=24)
    assert len(train) == 4 and train.classes == ["cat", "dog"]
    x, y = test[3]
    assert x.shape == (3, 24, 24) and y == 1
    assert len(image_folder(tmp_path / "train", size=16, limit=2)) == 2
    with pytest.raises(ModifyError, match=r"does not exist"):
        image_folder(tmp_path / "missing")


@pytest.mark.skipif(
    not (FASHION_MNIST_ROOT / "t10k-labels-idx1-ubyte.gz").exists(), reason="dataset-fashion-mnist is not installed"
)
def test_real_fashion_mnist_from_the_debian_package() -> None:
    """Uses the files of `apt-get install dataset-fashion-mnist` when present; skipped otherwise."""
    test = fashion_mnist(split="test")
    assert len(test) == 10_000
    assert torch.bincount(test.targets, minlength=10).tolist() == [1000] * 10
    x, _ = test[0]
    assert x.shape == (3, 32, 32)
    assert len(fashion_mnist(split="train", limit=100)) == 100
