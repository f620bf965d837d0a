"""Data-parallel training under `torchrun`: who this process is, and the few collectives training needs.

    torchrun --nproc_per_node=4 -m scoresde.train --config experiments/configs/digits.toml

How the work is split, and why a run's result does not depend on the world size:

* `train.batch_size` is the *global* batch. Every rank draws the same global batch from the same
  data stream and the same training noise (t, eps, dropped labels) from the same noise generator,
  exactly as one process would (the loss's per-step part, `scoresde.losses.split`), and runs the
  network only on its own rows `[rank * b, (rank + 1) * b)`, b = batch_size / world_size (`shard`),
  in passes of train.micro_batch rows. The losses
  are per-sample, so a rank's rows get exactly the per-sample losses one process computes for them;
  DistributedDataParallel averages the gradients, which gives the global batch mean. The result
  equals a one-process run up to the summation order of the gradient all-reduce (float rounding).
  Drawing the global batch on every rank costs one data/noise draw per rank, small beside the network.
* So the data stream and the noise generator are identical on every rank at every step, and so are
  the parameters, the optimizer and the EMA (every rank applies the same averaged gradient and
  updates its own EMA copy). Rank 0's copy is the checkpoint, which is why a run resumes at any
  world size, one process included.
* The global RNGs (torch, numpy, python) are used only inside the network (dropout). Rank 0's are
  one process's; rank r > 0 reseeds them from (seed, r) after the model is built, so ranks drop out
  independently. A checkpoint stores every rank's; on resume at another world size a rank without
  a stored state is reseeded from (seed, rank, step). With dropout the run therefore matches one
  process in distribution, not number for number.
* Rank 0 alone writes checkpoints, metrics, figures and the summary.

Backends: gloo for CPU training, nccl for CUDA (one GPU per process, cuda:LOCAL_RANK).
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from datetime import timedelta

import numpy as np
import torch
import torch.distributed as dist


@dataclass(frozen=True)
class World:
    """This process's place in the run: rank in [0, world_size); local_rank picks its GPU."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """True on the one process that writes files (rank 0)."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def current() -> World:
    """The World of the initialized default process group, or a single process's World()."""
    if dist.is_available() and dist.is_initialized():
        return World(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))
    return World()


def launched_by_torchrun() -> bool:
    """True when the environment holds torchrun's rendezvous variables (WORLD_SIZE, RANK, ...)."""
    return all(k in os.environ for k in ("WORLD_SIZE", "RANK", "MASTER_ADDR", "MASTER_PORT"))


@contextlib.contextmanager
def process_group(use_cuda: bool, timeout_s: float = 1800.0):
    """Under torchrun: initialize the default process group (nccl if use_cuda, else gloo), yield the
    World, and destroy the group on exit. Without torchrun: yield World() and do nothing."""
    if not launched_by_torchrun():
        yield World()
        return
    if use_cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    dist.init_process_group("nccl" if use_cuda else "gloo", timeout=timedelta(seconds=timeout_s))
    try:
        yield current()
    finally:
        dist.destroy_process_group()


def shard(batch_size: int, world: World) -> tuple[int, int]:
    """Rows [lo, hi) of the global batch that `world.rank` trains on; ValueError unless the world
    size divides the batch size."""
    if batch_size % world.world_size:
        raise ValueError(f"batch_size={batch_size} is not divisible by the world size {world.world_size} "
                         f"(the number of torchrun processes): each process trains on batch_size / world size "
                         f"samples; use a multiple of {world.world_size}")
    b = batch_size // world.world_size
    return world.rank * b, (world.rank + 1) * b


def rank_seed(seed: int, *more: int) -> int:
    """A 63-bit seed derived from (seed, *more) (numpy's SeedSequence), for per-rank streams."""
    state = np.random.SeedSequence([seed % 2 ** 63, *more]).generate_state(2, dtype=np.uint32)
    return int(state[0]) << 31 | int(state[1]) >> 1


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """t summed over all ranks (in place; returned). A no-op in one process."""
    if current().distributed:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def all_gather_objects(obj) -> list:
    """[obj of rank 0, obj of rank 1, ...] on every rank; [obj] in one process."""
    world = current()
    if not world.distributed:
        return [obj]
    out = [None] * world.world_size
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj):
    """Rank 0's obj on every rank (obj itself in one process)."""
    if not current().distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier() -> None:
    """Wait for every rank (no-op in one process)."""
    if current().distributed:
        dist.barrier()
