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


@pytest.fixture(autouse=True, scope="session")
def _one_thread() -> None:
    # Tests check behaviour, not speed: one intra-op thread avoids two spinning OpenMP pools
    # fighting over a loaded 2-core machine (benchmark tests set their own thread counts).
    torch.set_num_threads(1)
