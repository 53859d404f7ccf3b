"""Training on several processes with PyTorch's own engine: ``torchrun`` starts one process per
GPU (or several on CPUs), each a *rank*; ``DistributedDataParallel`` averages their gradients.

torchrun describes the job in environment variables (RANK, WORLD_SIZE, LOCAL_RANK, and the
rendezvous); without them a process is rank 0 of 1 and nothing here does anything. Only rank 0
writes the run folder, so the app and the command line follow a distributed run as a local one.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from busi.errors import BusiError

# How long a rank waits for the others at a collective before the job ends with an error: long
# enough for rank 0 to validate an epoch and save a checkpoint while the others wait.
COLLECTIVE_TIMEOUT = timedelta(minutes=30)
# A stop signalled to a rank other than 0, whose machine may not hold the run folder (rank 0
# asks through the folder's STOP file, as the app does).
_stop = threading.Event()


def signal_stop() -> None:
    _stop.set()


def stop_signalled() -> bool:
    return _stop.is_set()


@dataclass(frozen=True)
class Ranks:
    """This process's place in the job."""

    rank: int = 0
    world: int = 1
    local: int = 0  # its rank on its own machine, which picks its GPU

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1

    def device(self, device: torch.device) -> torch.device:
        """The device this rank computes on: its own GPU of the machine's."""
        if device.type == "cuda" and self.distributed:
            torch.cuda.set_device(self.local)
            return torch.device("cuda", self.local)
        return device

    def any(self, flag: bool, device: torch.device) -> bool:
        """True on every rank when ``flag`` is true on one of them (a stop asked of any rank stops all)."""
        if not self.distributed:
            return flag
        value = torch.tensor([int(flag)], device=device)
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return bool(value.item())

    def from_main(self, value):
        """Rank 0's ``value`` on every rank (e.g. the checkpoint only rank 0 reads)."""
        if not self.distributed:
            return value
        box = [value if self.main else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]


def ranks_from_environment() -> Ranks:
    """The ranks torchrun set; rank 0 of 1 outside torchrun."""
    try:
        return Ranks(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0)))
    except ValueError as error:
        raise BusiError(f"RANK, WORLD_SIZE or LOCAL_RANK is not a whole number ({error}): start the job with torchrun.") from error


@contextmanager
def process_group(ranks: Ranks, device: torch.device, timeout: timedelta = COLLECTIVE_TIMEOUT) -> Iterator[None]:
    """Joins the job's process group for the duration (NCCL between GPUs, gloo between CPUs);
    a collective waits ``timeout`` for every rank."""
    if not ranks.distributed:
        yield
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend, timeout=timeout,
                            **({"device_id": device} if backend == "nccl" else {}))
    try:
        yield
    finally:
        dist.destroy_process_group()


def lost_peer(error: BaseException) -> bool:
    """Whether ``error`` is the job breaking under a rank: another rank died or stopped answering
    (gloo raises a plain RuntimeError from the backward pass, naming its transport)."""
    return isinstance(error, dist.DistError) or (
        isinstance(error, RuntimeError) and any(word in str(error) for word in ("gloo", "NCCL", "Connection closed by peer",
                                                                               "Connection reset by peer")))


def lost_rank_message(error: Exception, epoch: int) -> str:
    """What a rank says when the job broke under it (another rank died or stopped answering)."""
    kept = f"the checkpoint of epoch {epoch} is kept" if epoch else "no epoch had finished, so there is no checkpoint yet"
    return (f"Another process of this distributed job stopped answering ({type(error).__name__}); {kept}. torchrun's "
            "report names the rank that failed: fix its cause and start the same command again with --resume.")
