import json
import os
import signal
import time

import pytest

from busi.config import TrainConfig
from busi.errors import BusiError
from busi.events import EpochEnd
from busi.jobs import active_run, start_training, stop_training
from busi.preprocess import PreprocessConfig
from busi.runs import RunFolder, list_runs

TINY = TrainConfig(arch="resnet18", epochs=1, batch_size=4)
SMALL = PreprocessConfig(size=32)


def _wait(predicate, timeout=120.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    pytest.fail("timed out waiting for the training job")


def test_a_job_trains_in_the_background_and_only_one_runs_at_a_time(synthetic_dataset, tmp_path):
    run = start_training(synthetic_dataset, TINY, SMALL, tmp_path, threads=1)
    assert active_run(tmp_path) == run
    with pytest.raises(BusiError, match="already going"):
        start_training(synthetic_dataset, TINY, SMALL, tmp_path)
    _wait(lambda: active_run(tmp_path) is None)
    (summary,) = list_runs(tmp_path)
    assert summary.state == "finished" and summary.epochs_done == summary.epochs == 1 and summary.arch == "resnet18"
    assert (run / "best.pt").is_file()


def test_a_job_stops_on_request_and_a_killed_job_reports_why(synthetic_dataset, tmp_path):
    slow = TrainConfig(arch="resnet18", epochs=50, batch_size=2)
    run = start_training(synthetic_dataset, slow, SMALL, tmp_path, threads=1)
    _wait(lambda: len(RunFolder(run).read_events()) > 0)
    stop_training(run)
    _wait(lambda: active_run(tmp_path) is None)
    assert RunFolder(run).summary().state == "stopped"

    killed = start_training(synthetic_dataset, slow, SMALL, tmp_path, threads=1)
    _wait(lambda: any(isinstance(e, EpochEnd) for e in RunFolder(killed).read_events()))
    pid = json.loads((tmp_path / ".active.json").read_text())["pid"]
    os.kill(pid, signal.SIGKILL)
    _wait(lambda: active_run(tmp_path) is None)
    summary = RunFolder(killed).summary()
    assert summary.state == "incomplete" and summary.message
    assert [r.path for r in list_runs(tmp_path)] == [killed, run]


def test_a_job_that_cannot_start_shows_its_error(tmp_path):
    run = start_training(tmp_path / "no-such-data", TINY, SMALL, tmp_path / "runs", threads=1)
    _wait(lambda: active_run(tmp_path / "runs") is None)
    summary = RunFolder(run).summary()
    assert summary.state in ("failed", "incomplete") and "no-such-data" in summary.message
