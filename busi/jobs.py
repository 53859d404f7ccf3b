"""Training as a background job the dashboard can start, follow, stop and list.

A page script is rerun on every click, so training runs in its own process (``python -m busi
train``) writing into a new run folder; any page, in any browser session, follows it through
``events.jsonl``. One job at a time per runs folder: ``.active.json`` names it, and a job counts
as running while its process lives and its events have not ended.
"""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from busi.config import config_to_dict
from busi.errors import BusiError
from busi.imageio import write_atomic
from busi.preprocess import PreprocessConfig
from busi.train import STOP_FILE, Done, EpochEnd, Event, Failed, Stopped, TrainConfig, read_events

ACTIVE_FILE = ".active.json"
REQUEST_FILE = "request.json"
LOG_FILE = "train.log"
_PROJECT_ROOT = Path(__file__).resolve().parents[1]


def default_runs_dir() -> Path:
    return Path(os.environ.get("BUSI_RUNS", Path.cwd() / "runs"))


@dataclass(frozen=True)
class RunSummary:
    path: Path
    status: str  # running | done | stopped | failed | incomplete
    arch: str
    epochs_done: int
    epochs: int
    # The epoch whose weights are the run's model and their validation macro-F1 (TrainConfig.keep
    # decides which); None while no epoch's weights have been kept yet.
    model_epoch: int | None
    model_val_macro_f1: float | None
    message: str

    @property
    def name(self) -> str:
        return self.path.name


def _process_alive(pid: int) -> bool:
    try:
        finished, _ = os.waitpid(pid, os.WNOHANG)  # reaps our own finished children (no zombies)
        return finished == 0
    except ChildProcessError:  # started by another server process: ask the kernel instead
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True


def _active_record(runs_dir: Path) -> dict | None:
    try:
        return json.loads((runs_dir / ACTIVE_FILE).read_text())
    except (OSError, json.JSONDecodeError):
        return None


def summarise_run(run_dir: str | os.PathLike, *, running: bool = False) -> RunSummary:
    run = Path(run_dir)
    events = read_events(run)
    epochs_seen = [e for e in events if isinstance(e, EpochEnd)]
    try:
        config = json.loads((run / "config.json").read_text())["train"]
    except (OSError, json.JSONDecodeError, KeyError):
        config = {}
    try:
        request = json.loads((run / REQUEST_FILE).read_text())["train"]
    except (OSError, json.JSONDecodeError, KeyError):
        request = {}
    arch = config.get("arch") or request.get("arch", "?")
    epochs = epochs_seen[-1].epochs if epochs_seen else config.get("epochs") or request.get("epochs", 0)
    last = events[-1] if events else None
    model_epoch, model_f1 = _kept_epoch(last, epochs_seen, config.get("keep") or request.get("keep", "best"))
    if running:
        status, message = "running", ""
    elif isinstance(last, Done):
        status, message = "done", ""
    elif isinstance(last, Stopped):
        status, message = "stopped", f"stopped in epoch {last.epoch}"
    elif isinstance(last, Failed):
        status, message = "failed", last.message
    else:
        status, message = "incomplete", _log_tail(run) or "the training process ended without reporting why"
    return RunSummary(run, status, arch, epochs_seen[-1].epoch if epochs_seen else 0, epochs, model_epoch, model_f1, message)


def _kept_epoch(last: Event | None, epochs_seen: list[EpochEnd], keep: str) -> tuple[int | None, float | None]:
    if isinstance(last, Done):
        return last.best_epoch, last.best_val_macro_f1
    if keep == "best" and epochs_seen:  # best.pt already holds the best epoch so far
        best = max(epochs_seen, key=lambda e: e.val_macro_f1)
        return best.epoch, best.val_macro_f1
    return None, None  # keep=last: the model is written at the final epoch only


def _log_tail(run: Path, lines: int = 3) -> str:
    try:
        return " ".join((run / LOG_FILE).read_text(errors="replace").strip().splitlines()[-lines:])
    except OSError:
        return ""


def active_run(runs_dir: str | os.PathLike | None = None) -> Path | None:
    """The run folder of the job now training, if any."""
    runs_dir = Path(runs_dir) if runs_dir else default_runs_dir()
    record = _active_record(runs_dir)
    if not record:
        return None
    run = Path(record["run"])
    ended = any(isinstance(e, Done | Stopped | Failed) for e in read_events(run)[-1:])
    return run if not ended and _process_alive(int(record["pid"])) else None


def list_runs(runs_dir: str | os.PathLike | None = None) -> list[RunSummary]:
    """Every run folder, newest first."""
    runs_dir = Path(runs_dir) if runs_dir else default_runs_dir()
    if not runs_dir.is_dir():
        return []
    active = active_run(runs_dir)
    folders = [p for p in runs_dir.iterdir() if p.is_dir() and not p.name.startswith(".")
               and ((p / "events.jsonl").exists() or (p / REQUEST_FILE).exists())]
    folders.sort(key=lambda p: p.stat().st_mtime, reverse=True)
    return [summarise_run(p, running=p == active) for p in folders]


def start_training(data_dir: str | os.PathLike, config: TrainConfig, preprocess: PreprocessConfig,
                   runs_dir: str | os.PathLike | None = None, *, threads: int | None = None, name: str = "") -> Path:
    """Launch ``python -m busi train`` into a new run folder and return it. ``threads``
    defaults to all cores but one, so the app stays responsive while the job trains."""
    runs_dir = Path(runs_dir) if runs_dir else default_runs_dir()
    runs_dir.mkdir(parents=True, exist_ok=True)
    with open(runs_dir / ".start.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two sessions clicking Start at once: one wins, one is told
        current = active_run(runs_dir)
        if current:
            raise BusiError(f"A training run is already going ({current.name}): wait for it to finish or stop it first.")
        return _launch(data_dir, config, preprocess, runs_dir, threads, name)


def _launch(data_dir, config: TrainConfig, preprocess: PreprocessConfig, runs_dir: Path, threads: int | None, name: str) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    run = runs_dir / f"{stamp}-{name or config.arch}"
    suffix = 1
    while run.exists():
        suffix += 1
        run = runs_dir / f"{stamp}-{name or config.arch}-{suffix}"
    run.mkdir()
    write_atomic(run / REQUEST_FILE, json.dumps({"train": config_to_dict(config), "preprocess": config_to_dict(preprocess)}, indent=2))
    threads = threads or max(1, (os.cpu_count() or 2) - 1)
    command = [sys.executable, "-m", "busi", "train", "--data", str(data_dir), "--out", str(run),
               "--config", str(run / REQUEST_FILE), "--threads", str(threads)]
    environment = os.environ | {"PYTHONPATH": os.pathsep.join(filter(None, [str(_PROJECT_ROOT), os.environ.get("PYTHONPATH")]))}
    with open(run / LOG_FILE, "w") as log:
        # A new session: the job outlives page reruns and is not killed by the app's Ctrl-C.
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   env=environment, start_new_session=True)
    write_atomic(runs_dir / ACTIVE_FILE, json.dumps({"pid": process.pid, "run": str(run)}))
    return run


def stop_training(run_dir: str | os.PathLike) -> None:
    """Ask the job to stop at its next batch; it saves a checkpoint and can be resumed."""
    Path(run_dir, STOP_FILE).touch()
