"""Data-parallel training under ``torchrun``: one process per device, gloo on CPU, nccl on GPU.

Nothing here launches processes: ``torchrun --nproc-per-node N $(which dyncli) train ...`` sets
``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and the rendezvous address, and :func:`setup` joins
the group. Without them every function is a no-op for a world of one, so the same code runs in
one plain process.
"""

from __future__ import annotations

import atexit
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from dyncli.errors import UsageError


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """Rank 0: the only rank that reports and writes."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def launched() -> bool:
    """True when started by torchrun (or any launcher that sets the env:// variables)."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def setup(device: torch.device) -> World:
    """Join the process group torchrun described (gloo on CPU, nccl on CUDA)."""
    if not launched():
        return World()
    size = int(os.environ["WORLD_SIZE"])
    rank = int(os.environ["RANK"])
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if size == 1:
        return World(rank, size, local)
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(device)
        dist.init_process_group(backend=backend)
        # Leave the group when the command ends (torch warns about a group never destroyed).
        atexit.register(teardown)
    return World(rank, size, local)


def device_for(requested: str, world: World) -> str:
    """Under torchrun on GPUs each process takes the GPU of its local rank."""
    if launched() and requested in ("auto", "cuda") and torch.cuda.is_available():
        local = int(os.environ.get("LOCAL_RANK", "0"))
        if local >= torch.cuda.device_count():
            raise UsageError(
                f"LOCAL_RANK {local} but only {torch.cuda.device_count()} GPUs are visible"
            )
        return f"cuda:{local}"
    return requested


def teardown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def all_gather_objects(world: World, value: Any) -> list[Any]:
    """Every rank's ``value``, in rank order (just ``[value]`` for one process)."""
    if not world.distributed:
        return [value]
    out: list[Any] = [None] * world.size
    dist.all_gather_object(out, value)
    return out


def broadcast_object(world: World, value: Any) -> Any:
    """Rank 0's ``value`` on every rank."""
    if not world.distributed:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def mean(world: World, value: torch.Tensor) -> torch.Tensor:
    """The mean of ``value`` over ranks (every rank gets it; ``value`` itself for one process).

    Each rank's loss is scaled so that this mean is the loss of the whole global batch, the
    figure a single process would log for it, and every rank sees the same number.
    """
    if not world.distributed:
        return value
    total = value.clone()
    dist.all_reduce(total)
    return total / world.size


def barrier(world: World) -> None:
    if world.distributed:
        dist.barrier()


def is_main_process() -> bool:
    """Rank 0, or not under torchrun: the process that prints and writes."""
    return os.environ.get("RANK", "0") == "0"
