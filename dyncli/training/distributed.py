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


def _env_int(name: str, default: str | None = None) -> int:
    text = os.environ.get(name, default)
    try:
        return int(str(text).strip())
    except ValueError:
        raise UsageError(
            f"{name}={text!r} in the environment is not an integer (set by torchrun; unset it "
            "to run one process)"
        ) from None


def env_world() -> World:
    """The world torchrun described in the environment (a world of one outside torchrun).

    Values torchrun would never set (a non-integer, ``RANK`` outside ``0..WORLD_SIZE-1``) are
    one :class:`UsageError`, before any work, instead of a traceback or a run in which no rank
    writes. :func:`setup` also needs the rendezvous address of a group of several."""
    if not launched():
        return World()
    size = _env_int("WORLD_SIZE")
    rank = _env_int("RANK")
    local = _env_int("LOCAL_RANK", "0")
    if size < 1:
        raise UsageError(f"WORLD_SIZE={size} in the environment: must be at least 1")
    if not 0 <= rank < size:
        raise UsageError(
            f"RANK={rank} in the environment is outside 0..{size - 1} (WORLD_SIZE={size})"
        )
    if local < 0:
        raise UsageError(f"LOCAL_RANK={local} in the environment: must be at least 0")
    return World(rank, size, local)


def setup(device: torch.device) -> World:
    """Join the process group torchrun described (gloo on CPU, nccl on CUDA)."""
    world = env_world()
    if not world.distributed:
        return world
    missing = [v for v in ("MASTER_ADDR", "MASTER_PORT") if not os.environ.get(v)]
    if missing:
        raise UsageError(
            f"WORLD_SIZE={world.size} but {' and '.join(missing)} "
            f"{'is' if len(missing) == 1 else 'are'} not set: start several processes with "
            "torchrun, or unset RANK and WORLD_SIZE to run one"
        )
    _env_int("MASTER_PORT")
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(device)
        dist.init_process_group(backend=backend)
        # Leave the group when the command ends (torch warns about a group never destroyed).
        atexit.register(teardown)
    return world


def device_for(requested: str, world: World) -> str:
    """Under torchrun on GPUs each process takes the GPU of its local rank."""
    if launched() and requested in ("auto", "cuda") and torch.cuda.is_available():
        local = env_world().local_rank
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
    """Rank 0, or not under torchrun: the process that prints and writes (the environment
    is checked here, so a command that asks fails on bad torchrun variables before work)."""
    return env_world().main
