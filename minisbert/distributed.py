"""Data-parallel training over several processes with torchrun (PyTorch DistributedDataParallel).

Each process holds a full copy of the model and trains on its own share of every epoch (a
DistributedSampler); in backward, DDP averages the gradients over the processes, so every copy
makes the same update, the one a single process would make for a batch world_size times larger.
Rank 0 alone evaluates, logs and saves. Started without torchrun, every function here is a no-op
and training is the plain single-process loop. Read next: training.py, which calls these.
"""

import math
import os

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DistributedSampler


def setup(device=None) -> tuple[int, int, torch.device]:
    """Join the process group that torchrun describes in the environment (RANK, WORLD_SIZE,
    LOCAL_RANK, MASTER_ADDR, MASTER_PORT); returns (rank, world_size, device).

    The one place that picks the backend: nccl for GPUs, each process on GPU LOCAL_RANK of its
    machine; gloo for CPUs (or `device="cpu"`). Without torchrun: (0, 1, device or the default).
    """
    cuda = torch.cuda.is_available() and (device is None or torch.device(device).type == "cuda")
    if "RANK" not in os.environ:
        return 0, 1, torch.device(device or ("cuda" if cuda else "cpu"))
    local_rank = int(os.environ["LOCAL_RANK"])
    if cuda:
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    dist.init_process_group("nccl" if cuda else "gloo")
    return dist.get_rank(), dist.get_world_size(), device


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def is_main() -> bool:
    """Whether this process is the one that evaluates, logs and saves."""
    return rank() == 0


def barrier() -> None:
    """Wait until every process gets here (after rank 0 has written a folder, say)."""
    if world_size() > 1:
        dist.barrier()


def cleanup() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def wrap(loss: torch.nn.Module) -> torch.nn.Module:
    """A loss module whose backward averages the gradients over the processes (alone: itself).

    The loss, not the model, is wrapped: its forward runs the model twice (u and v of the pair),
    and DDP expects one forward per backward. Weights used in both passes have their gradients
    summed by autograd first and are then averaged once. find_unused_parameters because BERT's
    [CLS] pooler is kept in the model but mean pooling never uses it.
    """
    if world_size() == 1:
        return loss
    device = next(loss.parameters()).device
    return DistributedDataParallel(loss, device_ids=[device] if device.type == "cuda" else None,
                                   find_unused_parameters=True)


def sampler(dataset, seed: int) -> DistributedSampler | None:
    """Under torchrun, this process's share of a seeded shuffle of `dataset` (set_epoch reshuffles);
    alone, None (the DataLoader shuffles itself)."""
    if world_size() == 1:
        return None
    return DistributedSampler(dataset, shuffle=True, seed=seed)


def set_epoch(dataloaders: list, epoch: int) -> None:
    """A DistributedSampler shuffles by seed + epoch: without this every epoch has one order."""
    for dataloader in dataloaders:
        if isinstance(dataloader.sampler, DistributedSampler):
            dataloader.sampler.set_epoch(epoch)


def average(value: float | None) -> float | None:
    """The mean over the processes of a step's loss (None: not finite). Every process then logs
    the same loss, and skips a step when any process's loss was not finite."""
    if world_size() == 1:
        return value
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" \
        else torch.device("cpu")
    total = torch.tensor(math.nan if value is None else value, dtype=torch.float64, device=device)
    dist.all_reduce(total)
    mean = total.item() / world_size()
    return mean if math.isfinite(mean) else None
