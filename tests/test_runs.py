"""The run folder: its files, its state, what it was trained on, and runs saved by older versions."""

import csv
import dataclasses
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from busi.cli import main
from busi.config import TrainConfig, config_to_dict
from busi.evaluate import run_predictions
from busi.events import BatchEnd, Done, EpochEnd, Failed, Started, Stopped, event_to_json
from busi.predict import load_classifier
from busi.preprocess import DisplayConfig, PreprocessConfig
from busi.runs import RunFolder, list_runs, load_checkpoint, runs_for_data
from busi.train import train
from tests.helpers import first_prediction_row


def _epoch(epoch: int, val_macro_f1: float, kept: bool) -> EpochEnd:
    return EpochEnd(epoch, 3, 1.0, 1.0, 0.5, val_macro_f1, 0.5, 0.001, 0.0, kept)


def _run_with_events(path, events, settings=None):
    path.mkdir()
    (path / "config.json").write_text(json.dumps({"train": settings or {"arch": "resnet18", "epochs": 3}}))
    (path / "events.jsonl").write_text("".join(event_to_json(event) + "\n" for event in events))
    return RunFolder(path)


@pytest.mark.parametrize("events, kept", [
    ([_epoch(1, 0.6, False), _epoch(2, 0.4, False), _epoch(3, 0.5, True), Done(3, 0.5)], (3, 0.5)),  # keep=last
    ([_epoch(1, 0.6, True), _epoch(2, 0.4, False), _epoch(3, 0.5, False), Done(1, 0.6)], (1, 0.6)),  # keep=best
    ([_epoch(1, 0.4, True), _epoch(2, 0.6, True), Stopped(3, "stop requested")], (2, 0.6)),  # stopped: best.pt so far
    ([_epoch(1, 0.4, False), _epoch(2, 0.6, False), Stopped(3, "stop requested")], (None, None)),  # keep=last, no model yet
])
def test_a_run_summary_names_the_epoch_whose_weights_are_the_model(tmp_path, events, kept):
    summary = _run_with_events(tmp_path / "run", events).summary()
    assert (summary.model_epoch, summary.model_val_macro_f1) == kept
    assert summary.epochs_done == sum(isinstance(event, EpochEnd) for event in events) and summary.arch == "resnet18"


def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


@pytest.mark.parametrize("later, process, state, message", [
    ([_epoch(1, 0.5, True), Done(1, 0.5)], "ended", "finished", ""),
    ([Stopped(2, "stop requested")], "ended", "stopped", "stopped in epoch 2"),
    ([Failed("No readable scans in 'x'")], "ended", "failed", "No readable scans in 'x'"),
    ([_epoch(1, 0.5, True)], "alive", "running", ""),
    ([_epoch(1, 0.5, True)], "ended", "incomplete", "the training process ended without reporting why"),
])
def test_the_state_of_a_run_comes_from_its_events_and_its_process(tmp_path, later, process, state, message):
    pid = os.getpid() if process == "alive" else _dead_pid()
    run = _run_with_events(tmp_path / "run", [Started(1, 3, pid), *later])
    assert run.state() == state and run.summary().message == message


def test_a_job_is_running_from_its_launch_before_it_reports_itself(tmp_path):
    run = _run_with_events(tmp_path / "run", [])
    assert run.state() == "incomplete"
    run.write_job(os.getpid())
    assert run.state() == "running"
    run.write_job(_dead_pid())
    assert run.state() == "incomplete"


def test_a_run_records_what_it_was_trained_on(tiny_run, synthetic_dataset):
    trained_on = RunFolder(tiny_run).trained_on()
    assert trained_on.folder == str(synthetic_dataset) and trained_on.synthetic
    assert trained_on.classes == {"benign": 6, "malignant": 6, "normal": 6} and trained_on.scans == 18
    with open(tiny_run / "split.csv", newline="") as file:
        parts = [row["split"] for row in csv.DictReader(file)]
    assert trained_on.parts == {part: parts.count(part) for part in ("train", "val", "test")}
    assert trained_on.describe().startswith("18 synthetic phantoms (")


def test_real_data_is_not_called_synthetic(synthetic_dataset, tmp_path):
    data = tmp_path / "scans"
    shutil.copytree(synthetic_dataset, data)
    (data / "SYNTHETIC-PHANTOMS.txt").unlink()
    list(train(data, tmp_path / "run", TrainConfig(arch="resnet18", epochs=1, batch_size=4), PreprocessConfig(size=32)))
    assert not RunFolder(tmp_path / "run").trained_on().synthetic
    assert RunFolder(tmp_path / "run").trained_on().describe().startswith("18 real scans (")


def test_runs_are_listed_newest_first(tmp_path):
    older = _run_with_events(tmp_path / "a", [Done(1, 0.5)])
    newer = _run_with_events(tmp_path / "b", [Done(1, 0.5)])
    os.utime(older.path, (1, 1))
    (tmp_path / ".hidden").mkdir()
    (tmp_path / "no-events").mkdir()
    assert [summary.path for summary in list_runs(tmp_path)] == [newer.path, older.path]


def _as_saved_by_the_previous_version(run):
    """Rewrite a run folder into the shape busi wrote before its run folder became a type (session
    12): device, threads and a flip switch among the training settings, display settings among the
    preprocessing, no job or data record, Done's fields named best_*, every path quoted."""
    def old_train(values):
        return {key: value for key, value in values.items() if key != "augment"} | {
            "flip": values["augment"] != "none", "augment": "none" if values["augment"] == "flip" else values["augment"],
            "device": "cpu", "threads": 0}

    def old_preprocess(values):
        return values | {key: list(value) if isinstance(value, tuple) else value
                         for key, value in config_to_dict(DisplayConfig()).items()}

    config = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({"train": old_train(config["train"]), "preprocess": old_preprocess(
        config["preprocess"]), "classes": config["classes"], "data_dir": config["data_dir"]}))
    for name in ("best.pt", "checkpoint.pt"):
        if (run / name).is_file():
            state = load_checkpoint(run / name)
            state["train_config"], state["preprocess_config"] = old_train(state["train_config"]), \
                old_preprocess(state["preprocess_config"])
            for key in ("normalisation", "trained_on", "familiarity"):  # ImageNet's normalisation, for every backbone there was
                state.pop(key, None)
            torch.save(state, run / name)
    lines = []
    for line in (run / "events.jsonl").read_text().splitlines():
        values = json.loads(line)
        if values["kind"] == "started":
            continue
        values.pop("kept", None)
        if values["kind"] == "done":
            values = {"best_epoch": values["model_epoch"], "best_val_macro_f1": values["model_val_macro_f1"], "kind": "done"}
        lines.append(json.dumps(values))
    (run / "events.jsonl").write_text("\n".join(lines) + "\n")
    with open(run / "predictions.csv", newline="") as file:
        rows = list(csv.reader(file))
    (run / "predictions.csv").write_text("\n".join([",".join(rows[0])] + [",".join(['"' + row[0] + '"', *row[1:]])
                                                                         for row in rows[1:]]) + "\n")


def test_a_finished_run_saved_by_the_previous_version_still_loads(tiny_run, synthetic_dataset, tmp_path, capsys):
    run = tmp_path / "old"
    shutil.copytree(tiny_run, run)
    expected = run_predictions(tiny_run, "all")
    _as_saved_by_the_previous_version(run)
    folder = RunFolder(run)
    summary = folder.summary()
    done = RunFolder(tiny_run).read_events()[-1]
    assert (summary.state, summary.model_epoch, summary.model_val_macro_f1) == ("finished", done.model_epoch,
                                                                                done.model_val_macro_f1)
    assert folder.read_config().train.augment == "flip" and folder.trained_on().scans == 18
    again = run_predictions(run, "all")
    assert again.paths == expected.paths and np.array_equal(again.probabilities, expected.probabilities)
    row = first_prediction_row(run)
    probabilities = load_classifier(run).predict(synthetic_dataset / row["path"]).probabilities
    assert probabilities == pytest.approx({name: float(row[f"p_{name}"]) for name in probabilities}, abs=1e-5)
    assert main(["train", "--data", str(synthetic_dataset), "--out", str(tmp_path / "again"), "--config",
                 str(run / "config.json"), "--epochs", "1"]) == 0
    assert RunFolder(tmp_path / "again").read_config().preprocess == folder.read_config().preprocess
    capsys.readouterr()


def test_a_stopped_run_saved_by_the_previous_version_resumes(synthetic_dataset, tmp_path):
    run = tmp_path / "old"
    config = TrainConfig(arch="resnet18", epochs=2, batch_size=4, augment="ultrasound", mask_weight=1.0)
    for event in train(synthetic_dataset, run, config, PreprocessConfig(size=32)):
        if isinstance(event, EpochEnd):
            (run / "STOP").touch()
    (run / "predictions.csv").write_text("path,split,label,p_benign,p_malignant,p_normal\n")
    _as_saved_by_the_previous_version(run)
    (run / "predictions.csv").unlink()
    assert RunFolder(run).state() == "stopped"
    resumed = list(train(synthetic_dataset, run, resume=True))
    assert resumed[0] == Started(2, 2, os.getpid(), resumed=True) and isinstance(resumed[-1], Done)
    assert load_checkpoint(run / "best.pt")["train_config"]["augment"] == "ultrasound"


def _batch(epoch: int, batch: int, seconds: float) -> BatchEnd:
    return BatchEnd(epoch, batch, 4, 1.0, 8 / seconds, 8)


@pytest.mark.parametrize("epochs, events, epoch, batch, text", [
    (3, [_batch(1, 1, 10), _batch(1, 2, 10)], 1, 2, "Epoch 1 of 3, batch 2 of 4, about 2 min left"),  # 10 batches of 10 s
    (3, [*(_batch(e, b, 30) for e in (1, 2) for b in (1, 2, 3, 4)), _epoch(2, 0.5, True), _batch(3, 1, 30)],
     3, 1, "Epoch 3 of 3, batch 1 of 4, about 2 min left"),  # 3 batches of 30 s: 90 s, rounded up
    (3, [_batch(1, 1, 2), _batch(1, 2, 2), _batch(1, 3, 2)], 1, 3, "Epoch 1 of 3, batch 3 of 4, less than a minute left"),
    (1, [*(_batch(1, b, 2) for b in (1, 2, 3, 4)), _epoch(1, 0.5, True), Done(1, 0.5)], 1, 4, "Epoch 1 of 1, batch 4 of 4"),
])
def test_progress_names_the_epoch_under_way_and_the_time_left(tmp_path, epochs, events, epoch, batch, text):
    events = [Started(1, epochs, 1)] + [dataclasses.replace(e, epochs=epochs) if isinstance(e, EpochEnd) else e for e in events]
    progress = _run_with_events(tmp_path / "run", events, {"arch": "resnet18", "epochs": epochs}).progress()
    assert (progress.epoch, progress.batch) == (epoch, batch)
    assert progress.fraction == pytest.approx((epoch - 1 + batch / 4) / epochs) and progress.describe() == text
    assert _run_with_events(tmp_path / "fresh", [Started(1, 3, 1)]).progress() is None


def test_the_default_model_is_the_best_finished_run_for_the_data_in_use(tmp_path, synthetic_dataset):
    def run(name, events, folder, synthetic):
        folder_record = {"folder": str(folder), "synthetic": synthetic, "classes": {"benign": 1}, "parts": {"test": 1}}
        made = _run_with_events(tmp_path / name, events)
        values = json.loads((made.path / "config.json").read_text())
        (made.path / "config.json").write_text(json.dumps(values | {"data": folder_record, "data_dir": str(folder)}))
        (made.path / "best.pt").write_bytes(b"a model")
        return made.summary()

    other_real = tmp_path / "other"
    stopped = run("stopped-here", [_epoch(1, 0.9, True), Stopped(2, "stop requested")], synthetic_dataset, True)
    weak = run("weak-here", [_epoch(1, 0.5, True), Done(1, 0.5)], synthetic_dataset, True)
    strong = run("strong-here", [_epoch(1, 0.7, True), Done(1, 0.7)], synthetic_dataset, True)
    elsewhere = run("best-elsewhere", [_epoch(1, 0.95, True), Done(1, 0.95)], other_real, False)
    ranked = runs_for_data([stopped, weak, elsewhere, strong], synthetic_dataset)
    assert [summary.name for summary in ranked] == ["strong-here", "weak-here", "best-elsewhere", "stopped-here"]
    assert runs_for_data([stopped, weak, elsewhere, strong], other_real)[0].name == "best-elsewhere"
