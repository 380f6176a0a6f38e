"""Data sets for fine-tuning and for the examples: Fashion-MNIST from its IDX files, and image folders.

Nothing here downloads. Fashion-MNIST is read from the four IDX files (gzip or raw) that the
Debian package ``dataset-fashion-mnist`` installs under `FASHION_MNIST_ROOT`, or from any folder
holding the same files. Its 28x28 grey images are padded to 32x32 (zeros, i.e. the background),
repeated to three channels and normalised, so an ImageNet-style CNN (torchvision's ResNet-18 with
``num_classes=10``) takes them unchanged. Images are kept as uint8 and converted per item, so the
60k training images hold 61 MB, not 0.7 GB.
"""

from __future__ import annotations

import gzip
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset

from modify.errors import ModifyError, first_line

__all__ = [
    "FASHION_MNIST_ROOT",
    "FASHION_MNIST_CLASSES",
    "FASHION_MNIST_INSTALL",
    "ImageTensorDataset",
    "fashion_mnist",
    "image_folder",
    "load_dataset",
    "read_idx",
    "write_idx",
]

# Where the Debian package `dataset-fashion-mnist` puts the files (`dpkg -L dataset-fashion-mnist`).
FASHION_MNIST_ROOT = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_INSTALL = "apt-get install -y dataset-fashion-mnist"
FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
# Mean and standard deviation of the 60k training images' pixels, in [0, 1].
FASHION_MNIST_MEAN = 0.2860
FASHION_MNIST_STD = 0.3530
_SPLIT_PREFIX = {"train": "train", "test": "t10k"}

# IDX type codes -> (torch dtype, bytes per element); the data is big-endian.
_IDX_TYPES = {
    0x08: (torch.uint8, 1),
    0x09: (torch.int8, 1),
    0x0B: (torch.int16, 2),
    0x0C: (torch.int32, 4),
    0x0D: (torch.float32, 4),
    0x0E: (torch.float64, 8),
}


def _open(path: Path) -> bytes:
    raw = path.read_bytes()
    return gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw


def read_idx(path: str | os.PathLike[str]) -> Tensor:
    """The array an IDX file holds (gzip-compressed or raw), as a tensor of its shape.

    Raises:
        ModifyError: the file is not an IDX file (the message names it).
    """
    p = Path(path)
    data = _open(p)
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_TYPES:
        raise ModifyError(
            f"{str(p)!r} is not an IDX file (bad magic number "
            f"{data[:4].hex()}); expected Fashion-MNIST's *-ubyte files."
        )
    dtype, size = _IDX_TYPES[data[2]]
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    offset = 4 + 4 * ndim
    count = 1
    for d in dims:
        count *= d
    if len(data) - offset < count * size:
        raise ModifyError(
            f"{str(p)!r} is truncated: its header promises shape {tuple(dims)}; reinstall or re-copy the file."
        )
    body = bytearray(data[offset : offset + count * size])
    t = torch.frombuffer(body, dtype=torch.uint8) if dtype == torch.uint8 else torch.frombuffer(body, dtype=dtype)
    if size > 1:  # big-endian on disk
        t = t.view(torch.uint8).view(-1, size).flip(1).contiguous().view(dtype)
    return t.reshape(dims)


def write_idx(path: str | os.PathLike[str], array: Tensor, *, compress: bool | None = None) -> Path:
    """Writes ``array`` as an IDX file (gzip when the name ends in ``.gz`` or ``compress``); for tests
    and for bringing other data into the Fashion-MNIST layout.

    Example:
        >>> import tempfile
        >>> p = write_idx(os.path.join(tempfile.mkdtemp(), "x-idx1-ubyte.gz"),
        ...               torch.tensor([3, 1, 4], dtype=torch.uint8))
        >>> read_idx(p).tolist()
        [3, 1, 4]
    """
    p = Path(path)
    codes = {v[0]: k for k, v in _IDX_TYPES.items()}
    if array.dtype not in codes:
        raise ModifyError(f"IDX has no type for {array.dtype}; convert the array to uint8, int32 or float32.")
    size = _IDX_TYPES[codes[array.dtype]][1]
    header = bytes([0, 0, codes[array.dtype], array.dim()]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    body = array.contiguous().view(torch.uint8).view(-1, size).flip(1).contiguous() if size > 1 else array.contiguous()
    data = header + body.numpy().tobytes()
    if compress or (compress is None and p.name.endswith(".gz")):
        data = gzip.compress(data, compresslevel=1)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(data)
    return p


class ImageTensorDataset(Dataset):
    """Grey uint8 images (N, 1, H, W) and integer labels; items are normalised float (3, H, W).

    Attributes:
        images: (N, 1, H, W) uint8, already padded.
        targets: (N,) int64 labels.
        classes: the class names, by label.
        augment: 0 for the images as they are; p > 0 for training augmentation: a random crop of
            the image padded by p pixels (zeros) on each side, and a random horizontal flip.
    """

    def __init__(
        self,
        images: Tensor,
        targets: Tensor,
        *,
        classes: Sequence[str],
        mean: float,
        std: float,
        channels: int = 3,
        augment: int = 0,
    ) -> None:
        self.images = images  # (N, 1, H, W) uint8
        self.targets = targets  # (N,) int64
        self.classes = tuple(classes)
        self.mean = mean
        self.std = std
        self.channels = channels
        self.augment = augment

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        image = self.images[index]  # (1, H, W) uint8
        if self.augment:
            image = _crop_and_flip(image, self.augment)
        x = image.float().div_(255).sub_(self.mean).div_(self.std)  # (1, H, W)
        return x.expand(self.channels, -1, -1), self.targets[index]  # (3, H, W), ()

    def augmented(self, pad: int = 4) -> ImageTensorDataset:
        """The same images with training augmentation (a random crop after padding ``pad``
        pixels, a random horizontal flip); draws from torch's global random state."""
        return ImageTensorDataset(
            self.images,
            self.targets,
            classes=self.classes,
            mean=self.mean,
            std=self.std,
            channels=self.channels,
            augment=pad,
        )

    def tensors(self) -> tuple[Tensor, Tensor]:
        """Every image, normalised, as one (N, 3, H, W) float tensor, and the labels."""
        x = self.images.float().div_(255).sub_(self.mean).div_(self.std)
        return x.expand(-1, self.channels, -1, -1).contiguous(), self.targets


def _crop_and_flip(image: Tensor, pad: int) -> Tensor:
    """A random (H, W) crop of ``image`` (C, H, W) padded by ``pad`` zeros, flipped left-right at random."""
    _, h, w = image.shape
    padded = torch.nn.functional.pad(image, (pad, pad, pad, pad))  # (C, H + 2p, W + 2p)
    top, left = (int(v) for v in torch.randint(0, 2 * pad + 1, (2,)))
    out = padded[:, top : top + h, left : left + w]
    return out.flip(-1) if bool(torch.randint(0, 2, ()).item()) else out


def _find(root: Path, stem: str) -> Path | None:
    for name in (f"{stem}.gz", stem):
        if (root / name).is_file():
            return root / name
    return None


def fashion_mnist(
    root: str | os.PathLike[str] | None = None,
    split: str = "train",
    limit: int | None = None,
    *,
    size: int = 32,
    channels: int = 3,
) -> ImageTensorDataset:
    """Fashion-MNIST from its IDX files: 60k training or 10k test images, 10 classes.

    Args:
        root: the folder with ``train-images-idx3-ubyte(.gz)`` and the other three files;
            default `FASHION_MNIST_ROOT`, where ``apt-get install dataset-fashion-mnist`` puts them.
        split: ``"train"`` or ``"test"``.
        limit: keep only the first ``limit`` images (tiny runs, tests).
        size: the image side: up to 32 the 28x28 images are padded to it (32 by default); above
            32 they are padded to 32 and then scaled up to ``size`` (bilinear, antialiased), so a
            64x64 test bed sees the same picture at twice the resolution (must be at least 28).
        channels: the grey channel repeated this many times (3 for ImageNet-style CNNs).

    Raises:
        ModifyError: a missing file (the message names the path and the install command), a
            bad split, or files whose image and label counts differ.
    """
    if split not in _SPLIT_PREFIX:
        raise ModifyError(f"Unknown Fashion-MNIST split {split!r}; expected 'train' or 'test'.")
    if size < 28:
        raise ModifyError(f"size={size} is below Fashion-MNIST's 28 pixels; pass size >= 28.")
    folder = Path(root) if root is not None else FASHION_MNIST_ROOT
    prefix = _SPLIT_PREFIX[split]
    paths = {}
    for kind, stem in (("images", f"{prefix}-images-idx3-ubyte"), ("labels", f"{prefix}-labels-idx1-ubyte")):
        found = _find(folder, stem)
        if found is None:
            raise ModifyError(
                f"Fashion-MNIST file {str(folder / stem)}(.gz) not found; install it with `{FASHION_MNIST_INSTALL}` "
                "or pass the folder holding the IDX files (--data-dir / root=)."
            )
        paths[kind] = found
    images = read_idx(paths["images"])  # (N, 28, 28) uint8
    labels = read_idx(paths["labels"])  # (N,) uint8
    if images.dim() != 3 or labels.dim() != 1 or len(images) != len(labels):
        raise ModifyError(
            f"{str(paths['images'])!r} holds shape {tuple(images.shape)} and {str(paths['labels'])!r} shape "
            f"{tuple(labels.shape)}; expected (N, 28, 28) images and N labels."
        )
    if limit is not None:
        images, labels = images[:limit], labels[:limit]
    side = min(size, 32)
    pad_top = (side - images.shape[1]) // 2
    pad_left = (side - images.shape[2]) // 2
    padded = torch.zeros(len(images), 1, side, side, dtype=torch.uint8)  # (N, 1, side, side)
    padded[:, 0, pad_top : pad_top + images.shape[1], pad_left : pad_left + images.shape[2]] = images
    if size > side:
        padded = _upscale(padded, size)  # (N, 1, size, size)
    return ImageTensorDataset(
        padded,
        labels.long(),
        classes=FASHION_MNIST_CLASSES,
        mean=FASHION_MNIST_MEAN,
        std=FASHION_MNIST_STD,
        channels=channels,
    )


def _upscale(images: torch.Tensor, size: int, chunk: int = 4096) -> torch.Tensor:
    """uint8 images (N, 1, s, s) scaled up to (N, 1, size, size), bilinear, in chunks to bound memory."""
    out = torch.empty(len(images), 1, size, size, dtype=torch.uint8)
    for start in range(0, len(images), chunk):
        part = images[start : start + chunk].float()
        scaled = torch.nn.functional.interpolate(
            part, size=(size, size), mode="bilinear", antialias=True, align_corners=False
        )
        out[start : start + chunk] = scaled.round_().clamp_(0, 255).to(torch.uint8)
    return out


IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def image_folder(root: str | os.PathLike[str], *, train: bool = True, size: int = 224, limit: int | None = None) -> Any:
    """A `torchvision.datasets.ImageFolder` (one sub-folder per class) with the standard transform.

    Training: RandomResizedCrop(size) and a horizontal flip; evaluation: resize to size * 256 / 224
    and CenterCrop(size). Both normalise with the ImageNet mean and standard deviation.
    ``limit`` keeps an evenly spread subset of that many images.
    """
    from torchvision import datasets, transforms

    folder = Path(root)
    if not folder.is_dir():
        raise ModifyError(
            f"Image folder {str(folder)!r} does not exist; pass a folder with one sub-folder of images per class."
        )
    if train:
        steps = [transforms.RandomResizedCrop(size), transforms.RandomHorizontalFlip()]
    else:
        steps = [transforms.Resize(int(round(size * 256 / 224))), transforms.CenterCrop(size)]
    transform = transforms.Compose([*steps, transforms.ToTensor(), transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    try:
        dataset = datasets.ImageFolder(str(folder), transform=transform)
    except (FileNotFoundError, RuntimeError) as e:
        raise ModifyError(
            f"{str(folder)!r} is not an image folder ({first_line(e)}); expected ROOT/CLASS/IMAGE.jpg."
        ) from e
    if limit is not None and limit < len(dataset):
        step = len(dataset) / limit
        return torch.utils.data.Subset(dataset, [int(i * step) for i in range(limit)])
    return dataset


def load_dataset(
    spec: str,
    *,
    split: str = "train",
    data_dir: str | os.PathLike[str] | None = None,
    limit: int | None = None,
    size: int | None = None,
) -> Any:
    """What the CLI's ``--data`` names: ``"fashion-mnist"`` (from ``data_dir`` or the Debian
    package's folder) or an image folder. For an image folder with ``train/`` and ``val/`` (or
    ``test/``) sub-folders, ``split`` picks one; otherwise the folder itself is used."""
    if spec.lower().replace("_", "-") in ("fashion-mnist", "fashionmnist", "fmnist"):
        return fashion_mnist(data_dir, split=split, limit=limit, size=size or 32)
    folder = Path(data_dir) / spec if data_dir is not None and not Path(spec).is_absolute() else Path(spec)
    if not folder.is_dir():
        raise ModifyError(
            f"--data {spec!r} is neither 'fashion-mnist' nor an image folder ({str(folder)!r} does not exist)."
        )
    names = ("train",) if split == "train" else ("val", "test")
    for name in names:
        if (folder / name).is_dir():
            folder = folder / name
            break
    return image_folder(folder, train=split == "train", size=size or 224, limit=limit)
