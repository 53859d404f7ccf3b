import json
import os
import signal
import time
from dataclasses import asdict

import pytest

from busi.errors import BusiError
from busi.jobs import (
    active_run,
    list_runs,
    start_training,
    stop_training,
    summarise_run,
)
from busi.preprocess import PreprocessConfig
from busi.train import Done, EpochEnd, TrainConfig, read_events

TINY = TrainConfig(arch="resnet18", epochs=1, batch_size=4, device="cpu")
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
    assert summary.status == "done" and summary.epochs_done == summary.epochs == 1 and summary.arch == "resnet18"
    assert (run / "best.pt").is_file()


def test_a_job_stops_on_request_and_a_killed_job_reports_why(synthetic_dataset, tmp_path):
    slow = TrainConfig(arch="resnet18", epochs=50, batch_size=2, device="cpu")
    run = start_training(synthetic_dataset, slow, SMALL, tmp_path, threads=1)
    _wait(lambda: len(read_events(run)) > 0)
    stop_training(run)
    _wait(lambda: active_run(tmp_path) is None)
    assert summarise_run(run).status == "stopped"

    killed = start_training(synthetic_dataset, slow, SMALL, tmp_path, threads=1)
    _wait(lambda: any(isinstance(e, EpochEnd) for e in read_events(killed)))
    pid = json.loads((tmp_path / ".active.json").read_text())["pid"]
    os.kill(pid, signal.SIGKILL)
    _wait(lambda: active_run(tmp_path) is None)
    summary = summarise_run(killed)
    assert summary.status == "incomplete" and summary.message
    assert [r.path for r in list_runs(tmp_path)] == [killed, run]


def test_a_job_that_cannot_start_shows_its_error(tmp_path):
    run = start_training(tmp_path / "no-such-data", TINY, SMALL, tmp_path / "runs", threads=1)
    _wait(lambda: active_run(tmp_path / "runs") is None)
    summary = summarise_run(run)
    assert summary.status in ("failed", "incomplete") and "no-such-data" in summary.message


def _run_folder(path, keep, val_macro_f1s, done=None):
    """A run folder as training leaves it: its config and one EpochEnd per value, then Done if given."""
    path.mkdir()
    (path / "config.json").write_text(json.dumps({"train": {"arch": "resnet18", "epochs": 3, "keep": keep}}))
    events = [asdict(EpochEnd(epoch, 3, 1.0, 1.0, 0.5, f1, 0.5, 0.001, 0.0)) for epoch, f1 in enumerate(val_macro_f1s, 1)]
    events += [asdict(done)] if done else []
    (path / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    return path


@pytest.mark.parametrize("keep, val_macro_f1s, done, kept", [
    ("last", [0.6, 0.4, 0.5], Done(3, 0.5), (3, 0.5)),  # the final epoch, not the best-scoring one
    ("best", [0.6, 0.4, 0.5], Done(1, 0.6), (1, 0.6)),
    ("best", [0.4, 0.6], None, (2, 0.6)),  # stopped: best.pt holds the best epoch so far
    ("last", [0.4, 0.6], None, (None, None)),  # stopped before the final epoch: no model kept yet
])
def test_a_run_summary_names_the_epoch_whose_weights_are_the_model(tmp_path, keep, val_macro_f1s, done, kept):
    summary = summarise_run(_run_folder(tmp_path / "run", keep, val_macro_f1s, done))
    assert (summary.model_epoch, summary.model_val_macro_f1) == kept
    assert summary.epochs_done == len(val_macro_f1s)
