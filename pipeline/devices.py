"""Where training computes: the device, and data parallelism in one place (rank, rows, process group, sums, DDP)."""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch is imported where it computes: the train stage's recording process never needs it
    import torch
    from torch import nn

    from pipeline.dataset import Prepared

PLACE_BYTES = 1 << 25  # the host block a device copy goes through: large enough that each copy's set-up is noise


class DeviceError(ValueError):
    """The requested device is not available on this machine (or not for this process)."""


def resolve_device(name: str, key: str = "train.device") -> torch.device:
    """Auto picks cuda, then mps, then cpu; an explicit device that is absent is an error."""
    import torch

    mps = getattr(torch.backends, "mps", None)
    available = {
        "cuda": torch.cuda.is_available(),
        "mps": bool(mps and mps.is_available()),
        "cpu": True,
    }
    if name == "auto":
        return torch.device(next(d for d in ("cuda", "mps", "cpu") if available[d]))
    if name not in available:
        raise DeviceError(f"{key}: unknown device {name!r} (auto, cpu, cuda, mps)")
    if not available[name]:
        raise DeviceError(f"{key}: {name!r} was requested but is not available on this machine")
    return torch.device(name)


def placed(prepared: Prepared, name: str, device: torch.device) -> torch.Tensor:
    """A train-split array (X_train, y_train) on the device, read through one host block (pinned on cuda).

    The host never holds the whole array: copied from the memory map, all its pages would stay mapped in this
    process beside the CUDA context's own host memory.
    """
    import torch

    shape = prepared.train_shape(name)
    out = torch.empty(shape, dtype=torch.float32, device=device)
    rows = max(1, min(shape[0], PLACE_BYTES // (4 * math.prod(shape[1:]))))
    buffer = torch.empty((rows, *shape[1:]), dtype=torch.float32, pin_memory=device.type == "cuda")
    for at, block in prepared.train_blocks(name, buffer.numpy()):
        out[at : at + len(block)].copy_(buffer[: len(block)])  # blocking: the next block reuses the buffer
    return out


@dataclass(frozen=True)
class Rank:
    """Where this process sits in a `torchrun` job (from its environment); rank 0 of 1 otherwise."""

    rank: int
    world: int
    local: int

    @classmethod
    def from_env(cls, env: dict[str, str]) -> Rank:
        """Read RANK, WORLD_SIZE and LOCAL_RANK as torchrun sets them."""
        rank = int(env.get("RANK", "0"))
        return cls(rank, int(env.get("WORLD_SIZE", "1")), int(env.get("LOCAL_RANK", str(rank))))

    def rows(self, n_total: int) -> slice:
        """The contiguous share of n_total rows that this process trains on."""
        return slice(self.rank * n_total // self.world, (self.rank + 1) * n_total // self.world)


@dataclass(frozen=True)
class Shard:
    """A process's rows in a data-parallel run; the default is a single process with every row."""

    rank: int = 0
    world: int = 1
    n_total: int | None = None  # rows over all processes

    def all_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """The tensor summed over every process, in place (itself, unchanged, for a single process)."""
        if self.world > 1:
            import torch.distributed as dist

            dist.all_reduce(tensor)
        return tensor

    def wrap(self, module: nn.Module, device: torch.device) -> nn.Module:
        """DDP around the module when there are several processes: it averages gradients at every backward."""
        if self.world == 1:
            return module
        from torch.nn.parallel import DistributedDataParallel

        ids = [device.index] if device.type == "cuda" else None
        return DistributedDataParallel(module, device_ids=ids, forward_sync_buffers=False)  # buffers are constant


@contextmanager
def process_group(rank: Rank, device: torch.device) -> Iterator[torch.device]:
    """Join the job's process group (gloo on the CPU, NCCL on GPUs: one per process) and leave it at the end.

    Yields the device this process computes on: its own GPU under NCCL. A single process joins nothing.
    """
    if rank.world == 1:
        yield device
        return
    import torch
    import torch.distributed as dist

    if device.type == "cuda":
        gpus = torch.cuda.device_count()
        if rank.local >= gpus:  # NCCL refuses two ranks on one GPU, and only after a long wait
            raise DeviceError(
                f"train.device: torchrun started local rank {rank.local}, but this machine has {gpus} CUDA "
                f"device(s): one process per GPU (--nproc_per_node={gpus})"
            )
        device = torch.device("cuda", rank.local)
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    try:
        yield device
    finally:
        dist.destroy_process_group()
