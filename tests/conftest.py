"""Shared fixtures and markers: every test starts from the same random state; `needs_cuda`
tests skip cleanly on machines without a GPU."""

from __future__ import annotations

import warnings

import pytest
import torch

# torchvision scripts a few ops at import; torch 2.14 calls torch.jit.script deprecated.
warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "needs_cuda" in item.keywords:
            item.add_marker(skip)
