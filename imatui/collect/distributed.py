"""torch.distributed glue for data-parallel collection (`torchrun --nproc-per-node N -m imatui collect ...`).

Each rank takes its share of every round of chunks; before a checkpoint the per-rank sums are summed
across ranks (all_reduce on the device: gloo on CPU, NCCL on CUDA) and rank 0 writes the file.
Without torchrun's environment (WORLD_SIZE unset or 1) everything here is a no-op.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    active: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init(device_kind: str) -> Dist:
    """Joins the process group that torchrun describes (env:// rendezvous); a no-op in one process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    import torch.distributed as tdist

    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    backend = "nccl" if device_kind == "cuda" else "gloo"
    if not tdist.is_initialized():
        if backend == "nccl":
            torch.cuda.set_device(local_rank)
        tdist.init_process_group(backend=backend)
    return Dist(rank=rank, world=world, local_rank=local_rank, active=True)


def all_sum(dist: Dist, array: np.ndarray, device: torch.device) -> np.ndarray:
    """Elementwise sum of `array` over the ranks (float64); the array itself in one process."""
    if not dist.active:
        return array
    import torch.distributed as tdist

    t = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float64)).to(device)
    tdist.all_reduce(t, op=tdist.ReduceOp.SUM)
    return t.cpu().numpy()


def any_flag(dist: Dist, flag: bool, device: torch.device) -> bool:
    """True when any rank raised the flag (so all ranks stop at the same round)."""
    if not dist.active:
        return flag
    return bool(all_sum(dist, np.array([1.0 if flag else 0.0]), device)[0] > 0)


def barrier(dist: Dist) -> None:
    if dist.active:
        import torch.distributed as tdist

        tdist.barrier()


def shutdown(dist: Dist, *, sync: bool = False) -> None:
    """Leave the process group. With sync, wait for every rank first: a rank that tears gloo down
    while rank 0 is still writing the file can abort the peer ("terminate called without an active
    exception"). Not after Ctrl-C, where another rank may never arrive."""
    if dist.active:
        import torch.distributed as tdist

        if tdist.is_initialized():
            if sync:
                tdist.barrier()
            tdist.destroy_process_group()
