"""Training as a background job the dashboard can start, follow and stop.

A page script is rerun on every click, so training runs in its own process (``python -m busi
train``) writing into a new run folder; any page, in any browser session, follows it through the
run folder (``busi.runs``). One job at a time per runs folder: ``.active.json`` names it.
"""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from busi.config import JobOptions, TrainConfig
from busi.errors import BusiError
from busi.imageio import write_atomic
from busi.preprocess import PreprocessConfig
from busi.runs import LOG, REQUEST, RunFolder

ACTIVE_FILE = ".active.json"


def default_runs_dir() -> Path:
    return Path(os.environ.get("BUSI_RUNS", Path.cwd() / "runs"))


def active_run(runs_dir: str | os.PathLike | None = None) -> Path | None:
    """The run folder of the job now training, if any."""
    runs_dir = Path(runs_dir) if runs_dir else default_runs_dir()
    try:
        run = Path(json.loads((runs_dir / ACTIVE_FILE).read_text())["run"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return run if RunFolder(run).state() == "running" else None


def start_training(data_dir: str | os.PathLike, config: TrainConfig, preprocess: PreprocessConfig,
                   runs_dir: str | os.PathLike | None = None, *, device: str = "auto", threads: int | None = None,
                   roots: tuple[Path, ...] = (), owner: str = "", name: str = "") -> Path:
    """Launch ``python -m busi train`` into a new run folder and return it. ``threads`` defaults
    to all cores but one, so the app stays responsive while the job trains; ``roots`` confine the
    data it reads (see ``JobOptions``); ``owner`` alone may stop it (``stop_training``)."""
    runs_dir = Path(runs_dir) if runs_dir else default_runs_dir()
    runs_dir.mkdir(parents=True, exist_ok=True)
    job = JobOptions(device, threads or max(1, (os.cpu_count() or 2) - 1), tuple(map(str, roots)))
    with _alone(runs_dir):
        stamp = time.strftime("%Y%m%d-%H%M%S")
        path = runs_dir / f"{stamp}-{name or config.arch}"
        suffix = 1
        while path.exists():
            suffix += 1
            path = runs_dir / f"{stamp}-{name or config.arch}-{suffix}"
        path.mkdir()
        run = RunFolder(path)
        run.write_request(config, preprocess)
        _launch(run, ["--data", str(data_dir), "--config", str(run.file(REQUEST))], job, owner, runs_dir)
        return path


def resume_training(run_dir: str | os.PathLike, owner: str = "", *, device: str = "auto", threads: int | None = None,
                    roots: tuple[Path, ...] = ()) -> None:
    """Continue a stopped run from its last checkpoint, with its saved settings, as a background job.
    A run started by an app session can only be resumed by that session (``owner``)."""
    run = RunFolder(run_dir)
    if run.owner and run.owner != owner:
        raise BusiError("This run was started in another browser session: it can be followed here, not resumed.")
    if run.state() != "stopped":
        raise BusiError(f"Only a stopped run can be resumed; this one is {run.state()}.")
    runs_dir = run.path.parent
    job = JobOptions(device, threads or max(1, (os.cpu_count() or 2) - 1), tuple(map(str, roots)))
    with _alone(runs_dir):
        _launch(run, ["--data", str(run.read_config().data_dir), "--resume"], job, owner or run.owner, runs_dir)


@contextmanager
def _alone(runs_dir: Path) -> Iterator[None]:
    """Held while a job is launched: two sessions clicking Start at once, one wins, one is told."""
    with open(runs_dir / ".start.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        current = active_run(runs_dir)
        if current:
            raise BusiError(f"A training run is already going ({current.name}): wait for it to finish or stop it first.")
        yield


def _launch(run: RunFolder, arguments: list[str], job: JobOptions, owner: str, runs_dir: Path) -> None:
    command = [sys.executable, "-m", "busi", "train", "--out", str(run.path), *arguments, "--device", job.device,
               "--threads", str(job.threads), *(argument for root in job.roots for argument in ("--only-under", root))]
    with open(run.file(LOG), "a") as log:
        # A new session: the job outlives page reruns and is not killed by the app's Ctrl-C.
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   start_new_session=True)
    run.write_job(process.pid, owner)
    write_atomic(runs_dir / ACTIVE_FILE, json.dumps({"pid": process.pid, "run": str(run.path)}))


def stop_training(run_dir: str | os.PathLike, owner: str = "") -> None:
    """Ask the job to stop at its next batch; it saves a checkpoint and can be resumed. A run
    started by an app session can only be stopped by that session (``owner``)."""
    run = RunFolder(run_dir)
    if run.owner and run.owner != owner:
        raise BusiError("This run was started in another browser session: it can be followed here, not stopped.")
    run.request_stop()
