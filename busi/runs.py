"""The run folder: the unit of record of one training run, and the one place its files are named.

A run folder holds what is needed to evaluate, explain or resume the run later::

    config.json       the recipe (training and preprocessing), the job's options, the data it was trained on
    request.json      what the app asked for, before the training process has written config.json
    split.csv         every scan's part (train / val / test) and near-duplicate group
    events.jsonl      the training events, one JSON line each, flushed as they happen
    environment.json  the software and machine it trained on
    job.json          the process of a training job the app started (until it reports itself)
    train.log         the training process's own output, when the app started it
    checkpoint.pt     the last epoch's full state, for resuming
    best.pt           the model: weights with their preprocessing, classes and calibration
    predictions.csv   the model's calibrated probabilities for every scan, with its part
    metrics.json      scores per part, calibration before and after temperature scaling
    STOP              present while a stop is requested

Checkpoints are only ever loaded with ``torch.load(weights_only=True)``: no code in a file runs.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from busi.config import JobOptions, TrainConfig, config_to_dict, train_config_from_saved
from busi.data import CLASSES, DatasetIndex, is_synthetic
from busi.errors import BusiError, ParameterError
from busi.events import ENDINGS, BatchEnd, Done, EpochEnd, Event, Failed, Started, Stopped, event_from_json, event_to_json
from busi.imageio import write_atomic
from busi.preprocess import PreprocessConfig
from busi.split import read_manifest, write_manifest

CONFIG = "config.json"
REQUEST = "request.json"
SPLIT = "split.csv"
EVENTS = "events.jsonl"
ENVIRONMENT = "environment.json"
JOB = "job.json"
LOG = "train.log"
CHECKPOINT = "checkpoint.pt"
MODEL = "best.pt"
PREDICTIONS = "predictions.csv"
METRICS = "metrics.json"
STOP = "STOP"
PREDICTION_COLUMNS = ("path", "split", "label", *(f"p_{c}" for c in CLASSES))
# What every checkpoint holds: the weights travel with their preprocessing and class names.
_MODEL_KEYS = frozenset({"model", "train_config", "preprocess_config", "classes"})


def model_record(weights: dict, config: TrainConfig, preprocess: PreprocessConfig, input_stats: dict[str, float],
                 normalisation: dict[str, list[float]], trained_on: Provenance) -> dict:
    """The checkpoint dict of a model: what prediction needs and nothing it would have to guess
    (checkpoints written before ``normalisation`` was saved used the ImageNet statistics), and
    what it learnt from, so that a prediction can say when that was not scans of patients."""
    return {"model": weights, "train_config": config_to_dict(config), "preprocess_config": config_to_dict(preprocess),
            "classes": list(CLASSES), "input_stats": input_stats, "normalisation": normalisation,
            "trained_on": trained_on.to_dict()}


def save_checkpoint(path: Path, state: dict) -> None:
    """A crash mid-save leaves the previous checkpoint intact, never half of a new one."""
    temporary = path.with_name(f".{path.name}.tmp")
    torch.save(state, temporary)
    os.replace(temporary, path)


def load_checkpoint(path: str | os.PathLike) -> dict:
    """A checkpoint dict, loaded safely (``weights_only``): no code in the file runs."""
    path = Path(path)
    shown = f"{path.parent.name}/{path.name}"  # the run and the file: enough to act on, no server paths
    if not path.is_file():
        raise BusiError(f"No checkpoint at '{shown}': train a model first, or choose another run.")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # torch raises many types for truncated, foreign or unsafe files, with advice we must not pass on
        raise BusiError(f"'{shown}' is not a checkpoint this program can load safely: retrain the run, or choose "
                        "another.") from None
    if not isinstance(state, dict) or _MODEL_KEYS - set(state):
        raise BusiError(f"'{shown}' is not a checkpoint this program can load safely: retrain the run, or choose another.")
    return state


@dataclass(frozen=True)
class Provenance:
    """The data a run was trained and tested on."""

    folder: str
    synthetic: bool  # phantoms made by busi.synth, not scans of patients
    classes: dict[str, int]  # scans per class, all parts together
    parts: dict[str, int]  # scans per part: train, val, test

    @property
    def scans(self) -> int:
        return sum(self.classes.values())

    def to_dict(self) -> dict:
        return {"folder": self.folder, "synthetic": self.synthetic, "classes": dict(self.classes), "parts": dict(self.parts)}

    @classmethod
    def from_dict(cls, values: dict) -> Provenance | None:
        """None for a record this version cannot read (the question is then unanswered, not guessed)."""
        try:
            return cls(str(values["folder"]), bool(values["synthetic"]), dict(values["classes"]), dict(values["parts"]))
        except (KeyError, TypeError, ValueError):
            return None

    def describe(self) -> str:
        kind = "synthetic phantoms" if self.synthetic else "real scans"
        counts = ", ".join(f"{self.parts.get(part, 0)} {name}" for part, name in
                           (("train", "training"), ("val", "validation"), ("test", "test")))
        return f"{self.scans} {kind} ({counts})"


@dataclass(frozen=True)
class SavedConfig:
    """What config.json holds."""

    train: TrainConfig
    preprocess: PreprocessConfig
    classes: tuple[str, ...]
    data_dir: Path


@dataclass(frozen=True)
class PredictionTable:
    """predictions.csv: one row per scan of the run's data."""

    paths: list[str]  # relative to the data folder
    parts: np.ndarray  # str (N,): train | val | test
    labels: np.ndarray  # int (N,): true class
    probabilities: np.ndarray  # float (N, C), calibrated


@dataclass(frozen=True)
class Progress:
    """How far a run's training has come, from its events."""

    epoch: int  # the epoch under way (the last one once the run has ended)
    epochs: int
    batch: int  # batches finished in that epoch
    batches: int
    seconds_left: float | None  # from the recent batches' pace; None once the run has ended

    @property
    def fraction(self) -> float:
        return min(1.0, (self.epoch - 1 + self.batch / self.batches) / self.epochs)

    def describe(self) -> str:
        text = f"Epoch {self.epoch} of {self.epochs}, batch {self.batch} of {self.batches}"
        if self.seconds_left is None:
            return text
        if self.seconds_left < 60:
            return text + ", less than a minute left"
        return text + f", about {math.ceil(self.seconds_left / 60)} min left"


@dataclass(frozen=True)
class RunSummary:
    path: Path
    state: str  # running | finished | stopped | failed | incomplete
    arch: str
    epochs_done: int
    epochs: int
    # The epoch whose weights are the run's model and their validation macro-F1; None while no
    # epoch's weights have been kept yet (TrainConfig.keep decides which).
    model_epoch: int | None
    model_val_macro_f1: float | None
    message: str
    trained_on: Provenance | None

    @property
    def name(self) -> str:
        return self.path.name


def process_alive(pid: int) -> bool:
    try:
        finished, _ = os.waitpid(pid, os.WNOHANG)  # reaps our own finished children (no zombies)
        return finished == 0
    except ChildProcessError:  # not our child: ask the kernel instead
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True


def _read_json(path: Path) -> dict | None:
    try:
        values = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return values if isinstance(values, dict) else None


def _write_json(path: Path, values: dict) -> None:
    write_atomic(path, json.dumps(values, indent=2, sort_keys=True))


class RunFolder:
    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunFolder({str(self.path)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RunFolder) and other.path == self.path

    def __hash__(self) -> int:
        return hash(self.path)

    @property
    def name(self) -> str:
        return self.path.name

    def file(self, name: str) -> Path:
        return self.path / name

    def create(self) -> None:
        self.path.mkdir(parents=True, exist_ok=True)

    # -- configuration ----------------------------------------------------------------------

    def write_config(self, config: TrainConfig, preprocess: PreprocessConfig, job: JobOptions, trained_on: Provenance) -> None:
        _write_json(self.file(CONFIG), {"train": config_to_dict(config), "preprocess": config_to_dict(preprocess),
                                        "job": config_to_dict(job), "classes": list(CLASSES),
                                        "data_dir": trained_on.folder, "data": trained_on.to_dict()})

    def read_config(self) -> SavedConfig:
        values = _read_json(self.file(CONFIG))
        if values is None:
            raise BusiError(f"Run folder '{self.path}' has no readable {CONFIG}: the run never started. "
                            "Choose another run.")
        try:
            return SavedConfig(train_config_from_saved(values["train"]), PreprocessConfig.from_saved(values["preprocess"]),
                               tuple(values.get("classes", CLASSES)), Path(values["data_dir"]))
        except (KeyError, TypeError, ParameterError) as error:
            raise BusiError(f"'{self.file(CONFIG)}' is not a busi run configuration ({error}).") from error

    def write_request(self, config: TrainConfig, preprocess: PreprocessConfig) -> None:
        _write_json(self.file(REQUEST), {"train": config_to_dict(config), "preprocess": config_to_dict(preprocess)})

    def write_job(self, pid: int, owner: str = "") -> None:
        _write_json(self.file(JOB), {"pid": pid, "owner": owner})

    @property
    def owner(self) -> str:
        """Who may stop or resume the run: the app's session that started it ("" for anyone)."""
        return str((_read_json(self.file(JOB)) or {}).get("owner", ""))

    def _settings(self) -> dict:
        """The training settings as saved, from config.json or, before it exists, the request."""
        for name in (CONFIG, REQUEST):
            values = _read_json(self.file(name))
            if values and isinstance(values.get("train"), dict):
                return values["train"]
        return {}

    # -- split, events, environment ---------------------------------------------------------

    def write_split(self, index: DatasetIndex, parts: np.ndarray) -> None:
        write_manifest(self.file(SPLIT), index, parts)

    def read_split(self) -> list[dict[str, str]]:
        if not self.file(SPLIT).is_file():
            raise BusiError(f"Run folder '{self.path}' has no {SPLIT}: the run did not finish. Resume it, or choose another run.")
        return read_manifest(self.file(SPLIT))

    @contextmanager
    def event_log(self) -> Iterator[Callable[[Event], Event]]:
        """``emit(event)`` appends an event, flushed at once so that readers see it, and returns it."""
        with open(self.file(EVENTS), "a") as log:
            def emit(event: Event) -> Event:
                log.write(event_to_json(event) + "\n")
                log.flush()
                return event
            yield emit

    def read_events(self) -> list[Event]:
        """Events written so far; a half-written last line (run still going) is left for later."""
        try:
            lines = self.file(EVENTS).read_text().splitlines()
        except OSError:
            return []
        return [event for event in map(event_from_json, lines) if event is not None]

    def write_environment(self, values: dict) -> None:
        _write_json(self.file(ENVIRONMENT), values)

    def read_environment(self) -> dict | None:
        return _read_json(self.file(ENVIRONMENT))

    # -- checkpoints ------------------------------------------------------------------------

    def save_checkpoint(self, state: dict) -> None:
        save_checkpoint(self.file(CHECKPOINT), state)

    def load_checkpoint(self) -> dict:
        return load_checkpoint(self.file(CHECKPOINT))

    def save_model(self, state: dict) -> None:
        save_checkpoint(self.file(MODEL), state)

    def load_model(self) -> dict:
        return load_checkpoint(self.file(MODEL))

    @property
    def has_model(self) -> bool:
        return self.file(MODEL).is_file() or self.file(CHECKPOINT).is_file()

    def model_file(self) -> Path:
        """The checkpoint the run is used through: its model, else its last epoch."""
        for name in (MODEL, CHECKPOINT):
            if self.file(name).is_file():
                return self.file(name)
        raise BusiError(f"Run folder '{self.path}' has no checkpoint yet ({MODEL} or {CHECKPOINT}): "
                        "train it for at least one epoch, or choose another run.")

    # -- results ----------------------------------------------------------------------------

    def write_predictions(self, paths: list[str], parts: np.ndarray, labels: np.ndarray, probabilities: np.ndarray) -> None:
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(PREDICTION_COLUMNS)
        for path, part, label, row in zip(paths, parts, labels, probabilities, strict=True):
            writer.writerow([path, part, CLASSES[label], *(f"{p:.6f}" for p in row)])
        write_atomic(self.file(PREDICTIONS), buffer.getvalue())

    @property
    def has_predictions(self) -> bool:
        return self.file(PREDICTIONS).is_file()

    def read_predictions(self) -> PredictionTable:
        if not self.has_predictions:
            raise BusiError(f"Run folder '{self.path}' has no {PREDICTIONS}: the run did not finish. "
                            "Resume it, or choose another run.")
        with open(self.file(PREDICTIONS), newline="") as file:
            rows = list(csv.DictReader(file))
        try:
            return PredictionTable([row["path"] for row in rows], np.array([row["split"] for row in rows], dtype=str),
                                   np.array([CLASSES.index(row["label"]) for row in rows], dtype=int),
                                   np.array([[float(row[f"p_{c}"]) for c in CLASSES] for row in rows]).reshape(-1, len(CLASSES)))
        except (KeyError, ValueError) as error:
            raise BusiError(f"'{self.file(PREDICTIONS)}' is damaged ({error}): train the run again.") from error

    def write_metrics(self, values: dict) -> None:
        _write_json(self.file(METRICS), values)

    def read_metrics(self) -> dict | None:
        return _read_json(self.file(METRICS))

    # -- stopping ---------------------------------------------------------------------------

    def request_stop(self) -> None:
        """Ask the training process to stop at its next batch; it saves a checkpoint first."""
        self.file(STOP).touch()

    def stop_requested(self) -> bool:
        return self.file(STOP).exists()

    def clear_stop(self) -> None:
        self.file(STOP).unlink(missing_ok=True)

    # -- questions --------------------------------------------------------------------------

    def state(self, events: list[Event] | None = None) -> str:
        """running | finished | stopped | failed | incomplete (ended without saying why)."""
        events = self.read_events() if events is None else events
        last = events[-1] if events else None
        started = [event.pid for event in events if isinstance(event, Started)]
        job = (_read_json(self.file(JOB)) or {}).get("pid")
        # A job the app has just launched (a resumption too) runs for a few seconds before its
        # Started event; one that has reported its end is ending, whatever its process still does.
        if isinstance(job, int) and job not in started[-1:] and process_alive(job):
            return "running"
        if isinstance(last, ENDINGS):
            return {Done: "finished", Stopped: "stopped", Failed: "failed"}[type(last)]
        return "running" if started and process_alive(started[-1]) else "incomplete"

    def progress(self, events: list[Event] | None = None, recent: int = 20) -> Progress | None:
        """Where the training stands (None before its first batch); the time left extrapolates
        the pace of the last ``recent`` batches (validation passes are not counted)."""
        events = self.read_events() if events is None else events
        batches = [event for event in events if isinstance(event, BatchEnd)]
        if not batches:
            return None
        last = batches[-1]
        epochs = [event for event in events if isinstance(event, EpochEnd)]
        total = epochs[-1].epochs if epochs else int(self._settings().get("epochs", last.epoch))
        done = last.batch
        seconds_left = None
        if not isinstance(events[-1], ENDINGS):
            pace = [event.size / event.images_per_s for event in batches[-recent:] if event.images_per_s > 0]
            remaining = (last.batches - done) + (total - last.epoch) * last.batches
            seconds_left = remaining * sum(pace) / len(pace) if pace else None
        return Progress(last.epoch, max(total, last.epoch), done, last.batches, seconds_left)

    def trained_on(self) -> Provenance | None:
        """The data the run was trained on; for runs saved before this was recorded, read back from
        their split manifest. None when neither says."""
        values = _read_json(self.file(CONFIG)) or {}
        recorded = Provenance.from_dict(values["data"]) if isinstance(values.get("data"), dict) else None
        if recorded:
            return recorded
        try:
            rows = self.read_split()
            folder = Path(values["data_dir"])
        except (BusiError, KeyError, TypeError):
            return None
        return Provenance(str(folder), is_synthetic(folder), dict(Counter(row["label"] for row in rows)),
                          dict(Counter(row["split"] for row in rows)))

    def summary(self) -> RunSummary:
        """The run at a glance."""
        events = self.read_events()
        epochs_seen = [e for e in events if isinstance(e, EpochEnd)]
        settings = self._settings()
        epochs = epochs_seen[-1].epochs if epochs_seen else int(settings.get("epochs", 0))
        state = self.state(events)
        last = events[-1] if events else None
        message = {"stopped": lambda: f"stopped in epoch {last.epoch}", "failed": lambda: last.message,
                   "incomplete": lambda: self._log_tail() or "the training process ended without reporting why"
                   }.get(state, lambda: "")()
        return RunSummary(self.path, state, str(settings.get("arch", "?")), epochs_seen[-1].epoch if epochs_seen else 0,
                          epochs, *self._kept_epoch(events), message, self.trained_on())

    @staticmethod
    def _kept_epoch(events: list[Event]) -> tuple[int | None, float | None]:
        for event in reversed(events):
            if isinstance(event, Done):
                return event.model_epoch, event.model_val_macro_f1
            if isinstance(event, EpochEnd) and event.kept:
                return event.epoch, event.val_macro_f1
        return None, None

    def _log_tail(self, lines: int = 3) -> str:
        try:
            return " ".join(self.file(LOG).read_text(errors="replace").strip().splitlines()[-lines:])
        except OSError:
            return ""


def runs_for_data(summaries: list[RunSummary], data_dir: str | os.PathLike) -> list[RunSummary]:
    """The runs with a model that no job is training, the best for ``data_dir`` first: finished
    before stopped, then trained on this very folder, then on the same kind of data (real scans
    or phantoms), then by the validation macro-F1 of the epoch kept as the model."""
    folder = Path(data_dir).resolve()
    synthetic = is_synthetic(folder)

    def rank(summary: RunSummary) -> tuple:
        data = summary.trained_on
        same_folder = data is not None and Path(data.folder).resolve() == folder
        same_kind = data is not None and data.synthetic == synthetic
        return summary.state == "finished", same_folder, same_kind, summary.model_val_macro_f1 or -1.0

    usable = [summary for summary in summaries if summary.state != "running" and RunFolder(summary.path).has_model]
    return sorted(usable, key=rank, reverse=True)


def list_runs(runs_dir: str | os.PathLike) -> list[RunSummary]:
    """Every run folder in ``runs_dir``, newest first."""
    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        return []
    folders = [p for p in runs_dir.iterdir() if p.is_dir() and not p.name.startswith(".")
               and ((p / EVENTS).exists() or (p / REQUEST).exists())]
    folders.sort(key=lambda p: p.stat().st_mtime, reverse=True)
    return [RunFolder(p).summary() for p in folders]
