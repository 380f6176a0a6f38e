"""One fine-tuning loop for one process and for ``torchrun``: the process group, the device, and
each process's share of the data.

Example:
    >>> setup_distributed(None).world  # no WORLD_SIZE in the environment: one process
    1
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable, Iterator
from typing import Any

import torch

from modify.train.config import FinetuneConfig

__all__ = ["Dist", "setup_distributed", "pick_device", "shard"]


@dataclasses.dataclass
class Dist:
    world: int = 1
    rank: int = 0
    local_rank: int = 0
    owned: bool = False  # this call started the process group (and ends it)

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup_distributed(device_hint: str | None) -> Dist:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    import torch.distributed as dist

    owned = False
    if not dist.is_initialized():
        use_cuda = torch.cuda.is_available() and (device_hint is None or device_hint.startswith("cuda"))
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
        owned = True
    return Dist(
        world=dist.get_world_size(),
        rank=dist.get_rank(),
        local_rank=int(os.environ.get("LOCAL_RANK", "0")),
        owned=owned,
    )


def pick_device(config: FinetuneConfig, d: Dist) -> torch.device:
    if config.device is not None:
        return torch.device(config.device)
    if torch.cuda.is_available():
        return torch.device("cuda", d.local_rank)
    return torch.device("cpu")


def shard(train_data: Iterable[Any], d: Dist, seed: int) -> Iterable[Any]:
    """This process's share of the data: a DataLoader re-sampled with a DistributedSampler; any
    other iterable by taking every world-th batch."""
    if d.world <= 1:
        return train_data
    from torch.utils.data import DataLoader, DistributedSampler, RandomSampler

    if isinstance(train_data, DataLoader):
        if isinstance(train_data.sampler, DistributedSampler):
            return train_data
        sampler = DistributedSampler(
            train_data.dataset,
            num_replicas=d.world,
            rank=d.rank,
            shuffle=isinstance(train_data.sampler, RandomSampler),
            seed=seed,
            drop_last=train_data.drop_last,
        )
        return DataLoader(
            train_data.dataset,
            batch_size=train_data.batch_size,
            sampler=sampler,
            num_workers=train_data.num_workers,
            collate_fn=train_data.collate_fn,
            pin_memory=train_data.pin_memory,
            drop_last=train_data.drop_last,
            persistent_workers=train_data.persistent_workers if train_data.num_workers > 0 else False,
        )
    return _EveryNth(train_data, d.world, d.rank)


class _EveryNth:
    def __init__(self, data: Iterable[Any], n: int, offset: int) -> None:
        self.data, self.n, self.offset = data, n, offset

    def __iter__(self) -> Iterator[Any]:
        for i, batch in enumerate(self.data):
            if i % self.n == self.offset:
                yield batch

    def __len__(self) -> int:
        total = len(self.data)  # type: ignore[arg-type]
        return (total - self.offset + self.n - 1) // self.n
