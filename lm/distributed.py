"""torch.distributed in one place: a single process is world size 1 and every call is a no-op.

Under ``torchrun`` the environment carries RANK / WORLD_SIZE / LOCAL_RANK; gloo is used on CPU and
NCCL on CUDA. Only rank 0 writes files.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def launched_world_size() -> int:
    """How many processes torchrun started for this run (1 when not under torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def launched_rank() -> int:
    """This process's rank as torchrun set it (0 when not under torchrun), known before the group is joined."""
    return int(os.environ.get("RANK", "0"))


def init_world(device_type: str) -> World:
    """Join the process group when launched by torchrun; otherwise a world of one."""
    size = launched_world_size()
    if size <= 1:
        return World()
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo")
    return World(rank=dist.get_rank(), size=dist.get_world_size(), local_rank=int(os.environ.get("LOCAL_RANK", "0")))


def all_reduce_sum(values: list[float], world: World) -> list[float]:
    """Sum a few numbers over all ranks (validation losses, stop flags)."""
    if not world.distributed:
        return values
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return tensor.cpu().tolist()


def threads_per_process(world: World) -> int:
    """Share the cores between the processes of this node (torch would give each process all of them)."""
    local = int(os.environ.get("LOCAL_WORLD_SIZE", world.size))
    return max(1, (os.cpu_count() or 1) // max(local, 1))


def barrier(world: World) -> None:
    if world.distributed:
        dist.barrier()


def shutdown() -> None:
    """Leave the process group, once all of a command's training runs are done.

    All ranks meet first: a rank that tears gloo down while another still sends makes that one abort.
    """
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
