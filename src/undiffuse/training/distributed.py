"""Data-parallel training under torchrun: who this process is, and the few collectives the loop needs.

`torchrun --nproc-per-node N -m undiffuse train ...` starts N copies of the command with RANK,
LOCAL_RANK and WORLD_SIZE set; `setup` joins them into one process group (nccl on GPUs, gloo on
CPUs). A single process (no WORLD_SIZE, or 1) never touches torch.distributed: every helper below
is then the identity.

How the data is split. The mini-batch of step s is a pure function of (seed, s) (`data.batch_at`),
and so are its noise and time steps. Every rank computes the same global batch of `batch_size`
images and keeps its own contiguous slice of it (`shard`). This is what a DistributedSampler does
(each rank takes a disjoint 1/N of the same shuffled order, reseeded per epoch), with two gains:
the slices of one step add up to exactly the batch a single process would draw, so the global batch,
the learning rate and the result do not depend on N; and resuming at any step needs no sampler
state. Each rank's loss is its images' summed loss over the global batch size, times N to undo DDP's
averaging of gradients, so the gradient is the mean over the global batch whatever the slice sizes.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class World:
    rank: int = 0  # this process, 0..size-1
    size: int = 1  # processes in the job
    local_rank: int = 0  # this process on its machine: picks its GPU

    @property
    def is_main(self) -> bool:
        """Only the main process writes checkpoints, samples and logs."""
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.size > 1


def setup(device: torch.device) -> World:
    """Join torchrun's process group when WORLD_SIZE > 1 (reading its env:// variables)."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return World()
    world = World(int(os.environ["RANK"]), size, int(os.environ.get("LOCAL_RANK", "0")))
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return world


def local_device(device: torch.device, world: World) -> torch.device:
    """Each process of a multi-GPU job drives the GPU of its local rank."""
    if device.type == "cuda" and world.active and device.index is None:
        torch.cuda.set_device(world.local_rank)
        return torch.device("cuda", world.local_rank)
    return device


def shard(n: int, world: World) -> slice:
    """This rank's contiguous part of n items (the first n % size ranks take one more)."""
    base, extra = divmod(n, world.size)
    start = world.rank * base + min(world.rank, extra)
    return slice(start, start + base + (world.rank < extra))


def broadcast(value, world: World):
    """Rank 0's value (any picklable object) on every rank: decisions that must agree."""
    if not world.active:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def total(value: torch.Tensor, world: World) -> torch.Tensor:
    """The sum over ranks (a copy; the input is left alone)."""
    value = value.detach().clone()
    if world.active:
        dist.all_reduce(value)
    return value


def any_rank(flag: bool, world: World, device: torch.device) -> bool:
    """True on every rank when it is true on one (a signal that reached only some processes)."""
    if not world.active:
        return flag
    return bool(total(torch.tensor(float(flag), device=device), world).item() > 0)


def agree(flag: bool, value: float, world: World, device: torch.device) -> tuple[bool, float]:
    """(any rank's flag, rank 0's value) on every rank, in one collective: whether to stop, and the
    share of the run done by rank 0's clock, which every rank's learning rate must follow."""
    if not world.active:
        return flag, value
    mine = torch.tensor([float(flag), value if world.is_main else 0.0], dtype=torch.float64, device=device)
    flags, main_value = total(mine, world).tolist()
    return flags > 0, main_value


def barrier(world: World) -> None:
    if world.active:
        dist.barrier()


def teardown(world: World) -> None:
    if world.active and dist.is_initialized():
        dist.destroy_process_group()
