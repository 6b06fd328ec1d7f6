"""Device and process-group setup: one CPU, CUDA, DDP through torchrun (nccl / gloo) or torch-xla (PJRT)."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from eseg_cli.inference.runtime import resolve_device


@dataclass
class Runtime:
    """Where this process runs and which part of the job it does."""

    device: torch.device
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None  # process-group backend, None for a single process
    xla: bool = False
    owns_group: bool = False  # whether setup() created the process group (and cleanup() should destroy it)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """In a process group (DDP, SyncBN), also as torchrun's only process; or one of several XLA replicas."""
        return self.backend is not None or self.world_size > 1


def setup(device: str = "auto") -> Runtime:
    """Join the torchrun job if this process was started by torchrun (``TORCHELASTIC_RUN_ID``, also with
    ``--nproc_per_node=1``) or the environment describes one (``WORLD_SIZE`` > 1); else run alone.

    The backend is nccl for CUDA and gloo for CPU. Multi-node jobs use torchrun's own rendezvous arguments.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device, local_rank)
    if dev.type == "xla":
        import torch_xla.runtime as xr

        # XLA replicas are managed by PJRT (one process per device), not by torchrun
        return Runtime(dev, rank=xr.global_ordinal(), world_size=xr.world_size(), xla=True)
    if world <= 1 and "TORCHELASTIC_RUN_ID" not in os.environ:
        return Runtime(dev)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    backend = "nccl" if dev.type == "cuda" else "gloo"
    owns = False
    if not dist.is_initialized():
        # device_id binds the group to this process's GPU (no guess at the first barrier)
        dist.init_process_group(backend=backend, device_id=dev if dev.type == "cuda" else None)
        owns = True
    return Runtime(dev, rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=local_rank,
                   backend=backend, owns_group=owns)


def cleanup(rt: Runtime, finished: bool = False) -> None:
    """Leave the process group if :func:`setup` created it.

    ``finished``: every rank got here the same way (a completed run), so a barrier is safe first. Waiting on
    it releases the GIL, so the backend's worker threads finish freeing the tensors of earlier collectives
    before the group is destroyed. Without it torch 2.9's gloo group could deadlock at the end of a run: its
    destructor joins a worker thread that waits for the GIL the destructor's caller holds
    (tests/test_train_ddp.py hung under ``nox -s minimum``). After an error a rank may be inside another
    collective, so no barrier then.
    """
    if rt.owns_group and dist.is_initialized():
        try:
            if finished:
                dist.barrier()
        finally:
            dist.destroy_process_group()


def barrier(rt: Runtime) -> None:
    if rt.distributed and not rt.xla and dist.is_initialized():
        dist.barrier()


def broadcast_object(rt: Runtime, obj):
    """Rank 0's ``obj`` on every rank."""
    if not rt.distributed or rt.xla:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]
