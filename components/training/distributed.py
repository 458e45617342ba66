"""One process or many: the pretraining loop asks this module who it is.

Plain runs are rank 0 of 1 on :func:`pick_device`'s device. Under ``torchrun`` (``WORLD_SIZE``
> 1 in the environment) the process group is initialized here — NCCL on GPUs, one GPU per
process by ``LOCAL_RANK``; gloo on CPU, which is how the multi-process path is tested on
machines without a GPU — and the model is wrapped in DistributedDataParallel.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as torch_dist

from components.training.device import pick_device


@dataclass
class DistributedContext:
    rank: int
    world_size: int
    device: torch.device

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        """DDP around ``model`` when there are several processes (gradients averaged in backward)."""
        if self.world_size == 1:
            return model
        ids = [self.device.index] if self.device.type == "cuda" else None
        return torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)

    def gather(self, obj) -> list:
        """``obj`` from every process, in rank order (``[obj]`` when alone)."""
        if self.world_size == 1:
            return [obj]
        out = [None] * self.world_size
        torch_dist.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        if self.world_size > 1:
            torch_dist.barrier()


def distributed_context(device_pref: str = "auto") -> DistributedContext:
    """This process's rank, the number of processes and the device to train on."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return DistributedContext(0, 1, pick_device(device_pref))
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    device = pick_device(device_pref)
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if not torch_dist.is_initialized():
        torch_dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return DistributedContext(rank, world_size, device)
