"""Training on several processes (busi.distributed): the shards, one DistributedDataParallel
epoch against one process, and whole torchrun jobs on the CPU with gloo — one run folder, one
event stream, a stop that stops every rank, resume, and a rank that dies."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from busi.batches import TrainingBatches
from busi.config import TrainConfig
from busi.distributed import Ranks
from busi.errors import ParameterError
from busi.runs import RunFolder
from busi.train import _check_distributable, train_one_epoch

ROOT = Path(__file__).resolve().parents[1]
IMAGES = np.random.default_rng(3).integers(0, 256, (24, 12, 12), dtype=np.uint8)
LABELS = np.arange(24) % 3


def _batches(rank: int, world: int, rows: np.ndarray = np.arange(24), batch_size: int = 8) -> TrainingBatches:
    return TrainingBatches(IMAGES, LABELS, rows, batch_size, rng=np.random.default_rng(5), device=torch.device("cpu"),
                           to_tensor=lambda x: x.float().unsqueeze(1) / 255, rank=rank, world=world)


def test_each_rank_takes_its_share_of_the_same_epoch_in_batches_of_equal_sizes():
    rows = np.arange(3, 24)  # 21 rows: padded to 22 with the epoch's first row
    epochs = [[batch.targets.numpy() for batch in _batches(rank, 2, rows, 6)] for rank in (0, 1)]
    alone = np.concatenate([batch.targets.numpy() for batch in _batches(0, 1, rows, 6)])
    assert len(epochs[0]) == len(epochs[1]) == 4  # the same number of steps on both ranks
    assert [len(b) for b in epochs[0]] == [len(b) for b in epochs[1]] == [3, 3, 3, 2]
    # Interleaved, the two shares are the one-process epoch, plus the first row again as padding.
    together = np.stack([np.concatenate(epochs[0]), np.concatenate(epochs[1])], 1).ravel()
    assert (together[:21] == alone).all() and together[21] == alone[0]


def _small_model() -> nn.Module:
    torch.manual_seed(0)  # no batch norm: a rank's half-batch then computes exactly its share of the gradient
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))


def _epoch(model: nn.Module, trained: nn.Module, rank: int, world: int) -> None:
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    list(train_one_epoch(trained, _batches(rank, world), optimizer, criterion=nn.CrossEntropyLoss(), epoch=1))


def _epoch_on_rank(rank: int, world: int, store: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    model = _small_model()
    _epoch(model, DistributedDataParallel(model), rank, world)
    if rank == 0:
        torch.save(model.state_dict(), out)
    dist.destroy_process_group()


def test_an_epoch_on_two_processes_ends_with_the_weights_of_one_process(tmp_path):
    """The global batch is the one-process batch split over the ranks, and the averaged gradient
    its gradient: the weights after an epoch agree to float rounding."""
    mp.spawn(_epoch_on_rank, args=(2, str(tmp_path / "store"), str(tmp_path / "two.pt")), nprocs=2)
    alone = _small_model()
    _epoch(alone, alone, 0, 1)
    two = torch.load(tmp_path / "two.pt")
    start = _small_model().state_dict()
    for name, weights in alone.state_dict().items():
        assert not torch.allclose(weights, start[name])  # the epoch moved them
        torch.testing.assert_close(two[name], weights, rtol=1e-5, atol=1e-6)


def test_the_global_batch_must_split_evenly_and_lesion_supervision_stays_on_one_process():
    with pytest.raises(ParameterError, match="multiple of 4"):
        _check_distributable(TrainConfig(batch_size=10), Ranks(0, 4))
    with pytest.raises(ParameterError, match="mask_weight"):
        _check_distributable(TrainConfig(batch_size=8, mask_weight=1.0), Ranks(0, 2))
    _check_distributable(TrainConfig(batch_size=8), Ranks(0, 2))


# -- whole jobs under torchrun ---------------------------------------------------------------

def _torchrun(data: Path, run: Path, *extra: str) -> subprocess.Popen:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               "-m", "busi", "train", "--data", str(data), "--out", str(run), *extra]
    environment = os.environ | {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(command, cwd=ROOT, env=environment, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _events(run: Path) -> list[dict]:
    path = run / "events.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _wait_for_epoch(job: subprocess.Popen, run: Path, epoch: int, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while not any(e["kind"] == "epoch_end" and e["epoch"] >= epoch for e in _events(run)):
        assert job.poll() is None, job.communicate()[0]
        assert time.monotonic() < deadline, "the job did not reach the epoch"
        time.sleep(0.2)


def _rank_pid(job: subprocess.Popen, rank: int) -> int:
    """The worker torchrun started as ``rank``."""
    children = Path(f"/proc/{job.pid}/task/{job.pid}/children").read_text().split()
    for pid in children:
        environment = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        if f"RANK={rank}".encode() in environment:
            return int(pid)
    raise AssertionError(f"no worker of rank {rank} among {children}")


TRAIN = ("--arch", "resnet18", "--epochs", "8", "--batch-size", "4", "--image-size", "32", "--device", "cpu")


def test_a_torchrun_job_writes_one_run_stops_on_every_rank_and_resumes(synthetic_dataset, tmp_path):
    run = tmp_path / "run"
    job = _torchrun(synthetic_dataset, run, *TRAIN)
    _wait_for_epoch(job, run, 1)
    RunFolder(run).request_stop()  # as the app's Stop does
    output, _ = job.communicate(timeout=240)
    assert job.returncode == 0, output
    events = _events(run)
    assert [e["kind"] for e in events].count("started") == 1 and [e["kind"] for e in events].count("stopped") == 1
    assert output.count("stopped in epoch") == 1  # rank 0 speaks for the job
    steps = [(e["epoch"], e["batch"]) for e in events if e["kind"] == "batch_end"]
    assert len(steps) == len(set(steps))  # one stream: each step once, not once per rank
    stopped = events[-1]["epoch"]
    assert RunFolder(run).load_checkpoint()["epoch"] == stopped - 1

    resumed = _torchrun(synthetic_dataset, run, "--resume")
    output, _ = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, output
    events = _events(run)
    assert events[-1]["kind"] == "done" and "resuming at epoch" in output
    assert [e["epoch"] for e in events if e["kind"] == "epoch_end"] == list(range(1, 9))
    assert RunFolder(run).read_environment()["processes"] == 2
    assert len((run / "predictions.csv").read_text().splitlines()) == 1 + 18  # every scan, once


def test_a_rank_that_dies_ends_the_job_with_a_message_not_a_hang(synthetic_dataset, tmp_path):
    run = tmp_path / "run"
    job = _torchrun(synthetic_dataset, run, *TRAIN)
    _wait_for_epoch(job, run, 1)
    os.kill(_rank_pid(job, 1), signal.SIGKILL)
    output, _ = job.communicate(timeout=120)
    assert job.returncode != 0
    failed = _events(run)[-1]
    assert failed["kind"] == "failed" and "Another process of this distributed job stopped answering" in failed["message"]
    assert "--resume" in failed["message"] and "is kept" in failed["message"]
    assert "error: Another process" in output


def test_the_help_states_the_global_batch_and_learning_rate_rule():
    shown = subprocess.run([sys.executable, "-m", "busi", "train", "--help"], cwd=ROOT, capture_output=True, text=True).stdout
    assert "torchrun --nproc-per-node N -m busi train" in shown
    assert "--batch-size is the global batch, split evenly" in shown and "scale --lr by the same factor" in shown
