import csv
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from busi.cli import main
from busi.imageio import read_image, read_scan
from busi.predict import image_files, load_classifier, predict_files
from busi.split import read_manifest
from tests.helpers import png_bytes, set_validation_predictions


def run(*args):
    return subprocess.run([sys.executable, "-m", "busi", *args], capture_output=True, text=True)


@pytest.mark.parametrize("command", ["index", "duplicates", "split", "synth", "train", "evaluate", "predict", "cam", "report"])
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as exit_code:
        main([command, "--help"])
    assert exit_code.value.code == 0 and "usage: python -m busi " + command in capsys.readouterr().out


def test_index_prints_summary_and_writes_csv(synthetic_dataset, tmp_path, capsys):
    assert main(["index", str(synthetic_dataset), "--csv", str(tmp_path / "index.csv")]) == 0
    out = capsys.readouterr().out
    assert "Scans: 18 (6 benign, 6 malignant, 6 normal)" in out
    assert "no problems found" in out
    assert (tmp_path / "index.csv").read_text().count("\n") == 19


def test_split_writes_a_manifest_with_folds(synthetic_dataset, tmp_path, capsys):
    assert main(["split", str(synthetic_dataset), "--out", str(tmp_path / "s.csv"), "--folds", "3"]) == 0
    rows = read_manifest(tmp_path / "s.csv")
    assert len(rows) == 18 and {r["fold"] for r in rows} == {"0", "1", "2"}
    assert "test" in capsys.readouterr().out


def test_duplicates_and_synth(tmp_path, capsys):
    assert main(["synth", "--out", str(tmp_path), "--per-class", "2", "--size", "64"]) == 0
    assert main(["duplicates", str(tmp_path)]) == 0
    assert "0 scans in 0 near-duplicate groups" in capsys.readouterr().out


@pytest.mark.parametrize(
    "args, message",
    [
        (["index", "/no/such/folder"], "does not exist"),
        (["duplicates", "."], "not a BUSI dataset"),
        (["synth", "--out", "{tmp}", "--per-class", "0"], "per_class must be at least 1"),
        (["split", "{data}", "--out", "{tmp}/s.csv", "--folds", "1"], "at least 2 folds"),
        (["index", "{data}", "--csv", "/proc/forbidden/x.csv"], "error:"),
    ],
)
def test_bad_input_gives_one_line_and_nonzero_exit(args, message, tmp_path, synthetic_dataset):
    args = [a.format(tmp=tmp_path, data=synthetic_dataset) for a in args]
    result = run(*args)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_real_busi_index(real_busi):
    result = run("index", str(real_busi))
    assert result.returncode == 0
    assert "Scans: 663 (371 benign, 179 malignant, 113 normal)" in result.stdout
    assert "label_conflict" in result.stdout


def test_train_runs_the_engine_and_reports_failures(synthetic_dataset, tmp_path):
    ok = run("train", "--data", str(synthetic_dataset), "--out", str(tmp_path / "run"), "--arch", "resnet18",
             "--epochs", "1", "--batch-size", "4", "--image-size", "32", "--channels", "stacked", "--device", "cpu")
    assert ok.returncode == 0, ok.stderr
    assert "done: the model is epoch " in ok.stdout
    assert (tmp_path / "run" / "best.pt").is_file()
    preprocess = json.loads((tmp_path / "run" / "config.json").read_text())["preprocess"]
    assert preprocess["size"] == 32 and preprocess["channels"] == "stacked"
    bad = run("train", "--data", str(synthetic_dataset), "--out", str(tmp_path / "bad"), "--arch", "resnet18",
              "--batch-size", "400", "--image-size", "32")
    assert bad.returncode == 2 and "batch_size 400 exceeds" in bad.stderr and "Traceback" not in bad.stderr


def test_sigint_stops_training_at_a_checkpoint(synthetic_dataset, tmp_path):
    import signal
    import time

    process = subprocess.Popen([sys.executable, "-m", "busi", "train", "--data", str(synthetic_dataset), "--out",
                                str(tmp_path), "--arch", "resnet18", "--epochs", "50", "--batch-size", "2",
                                "--image-size", "32", "--device", "cpu"], stdout=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (tmp_path / "checkpoint.pt").exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    process.send_signal(signal.SIGINT)
    out, _ = process.communicate(timeout=120)
    assert process.returncode == 0
    assert "stopped in epoch" in out
    from busi.runs import load_checkpoint

    assert load_checkpoint(tmp_path / "checkpoint.pt")["epoch"] >= 1


def test_evaluate_prints_the_table_and_writes_strict_json(tiny_run, synthetic_dataset, tmp_path, capsys):
    assert main(["evaluate", str(tiny_run), "--bootstrap", "50", "--json", str(tmp_path / "r.json")]) == 0
    out = capsys.readouterr().out
    assert "its test split" in out and "macro avg" in out and "sensitivity" in out
    assert json.loads((tmp_path / "r.json").read_text())["n"] > 0
    assert main(["evaluate", str(tiny_run), "--data", str(synthetic_dataset), "--threshold", "0.3", "--bootstrap", "20"]) == 0
    out = capsys.readouterr().out
    assert "18 scans" in out and "p(malignant) >= 0.30" in out


def test_predict_prints_each_scan_and_reports_unreadable_files(tiny_run, synthetic_dataset, tmp_path, capsys):
    (tmp_path / "bad.png").write_text("not an image")
    code = main(["predict", str(tiny_run), str(synthetic_dataset / "malignant"), str(tmp_path / "bad.png")])
    captured = capsys.readouterr()
    assert code == 2 and "not a medical device" in captured.out
    assert captured.out.count("malignant (") == 6 and "bad.png: error:" in captured.err


def test_predict_into_a_csv_writes_every_scan_and_the_unreadable_ones_with_their_error(tiny_run, synthetic_dataset,
                                                                                      tmp_path, capsys):
    (tmp_path / "bad.png").write_text("not an image")
    code = main(["predict", str(tiny_run), str(synthetic_dataset / "malignant"), str(tmp_path / "bad.png"),
                 "--csv", str(tmp_path / "p.csv")])
    captured = capsys.readouterr()
    assert code == 2 and "not a medical device" in captured.out
    assert "7 scans by this run; 1 could not be read" in captured.out and "7 of 7 scans" in captured.err
    with open(tmp_path / "p.csv", newline="") as file:
        rows = {Path(row["path"]).name: row for row in csv.DictReader(file)}
    assert len(rows) == 7 and rows["bad.png"]["screening_flag"] == "" and rows["bad.png"]["error"]
    assert {row["screening_flag"] for name, row in rows.items() if name != "bad.png"} <= {"review", "none"}


def test_predict_flags_the_scans_that_reach_the_runs_screening_threshold(tiny_run, synthetic_dataset, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    scores = sorted(float(row["p_malignant"]) for row in predict_files(load_classifier(run), image_files([synthetic_dataset])))
    threshold = scores[len(scores) // 2]  # half the scans reach it
    set_validation_predictions(run, [("malignant", threshold)] * 10 + [("benign", 0.0)])
    assert main(["predict", str(run), str(synthetic_dataset)]) == 0
    out = capsys.readouterr().out
    assert f"Screening threshold: p(malignant) ≥ {threshold:.2g}," in out
    flagged = {line.split(": ")[0] for line in out.splitlines() if line.endswith("[screening flag: review]")}
    assert main(["predict", str(run), str(synthetic_dataset), "--csv", str(tmp_path / "p.csv")]) == 0
    with open(tmp_path / "p.csv", newline="") as file:
        rows = list(csv.DictReader(file))
    reaching = {row["path"] for row in rows if float(row["p_malignant"]) >= threshold}
    assert flagged == reaching and 0 < len(flagged) < len(scores)
    assert {row["path"] for row in rows if row["screening_flag"] == "review"} == reaching
    assert {row["screening_flag"] for row in rows if row["path"] not in reaching} == {"none"}


def test_predict_goes_on_without_an_unreadable_screening_threshold(tiny_run, synthetic_dataset, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    (run / "split.csv").unlink()
    assert main(["predict", str(run), str(synthetic_dataset / "benign"), "--csv", str(tmp_path / "p.csv")]) == 0
    captured = capsys.readouterr()
    assert "warning: no screening threshold for this run" in captured.err and "split.csv" in captured.err
    assert "6 scans by this run" in captured.out and "Screening threshold" not in captured.out
    with open(tmp_path / "p.csv", newline="") as file:
        assert [row["screening_flag"] for row in csv.DictReader(file)] == [""] * 6


def test_cam_writes_an_overlay_and_scores_the_mask(tiny_run, synthetic_dataset, tmp_path, capsys):
    scan = synthetic_dataset / "benign" / "benign (1).png"
    assert main(["cam", str(tiny_run), str(scan), "--out", str(tmp_path / "cam.png"),
                 "--mask", str(synthetic_dataset / "benign" / "benign (1)_mask.png"), "--class", "malignant"]) == 0
    out = capsys.readouterr().out
    assert "Grad-CAM for malignant" in out and "energy inside the lesion mask" in out
    overlay = read_image(tmp_path / "cam.png")
    assert overlay.shape == read_scan(scan).shape + (3,)


@pytest.mark.parametrize("args, message", [
    (["evaluate", "{empty}"], "has no predictions.csv"),
    (["predict", "{empty}", "{scan}"], "no checkpoint yet"),
    (["cam", "{run}", "{scan}", "--out", "{empty}/x.png", "--mask", "{other_mask}"], "choose the scan's own mask"),
    (["evaluate", "{run}", "--data", "{empty}"], "No readable scans|not a BUSI|no class folders"),
])
def test_command_errors_are_one_line_without_traceback(tiny_run, synthetic_dataset, tmp_path, args, message):
    values = {"empty": tmp_path, "run": tiny_run, "scan": synthetic_dataset / "benign" / "benign (1).png",
              "other_mask": tmp_path / "small_mask.png"}
    (tmp_path / "small_mask.png").write_bytes(png_bytes(np.zeros((40, 40), np.uint8)))
    result = run(*[a.format(**values) for a in args])
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert re.search(message, result.stderr), result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_resume_keeps_the_runs_settings_and_says_which_flags_it_ignored(synthetic_dataset, tmp_path, capsys):
    from busi.config import TrainConfig
    from busi.events import EpochEnd
    from busi.preprocess import PreprocessConfig
    from busi.runs import RunFolder
    from busi.train import train

    for event in train(synthetic_dataset, tmp_path, TrainConfig(arch="resnet18", epochs=2, batch_size=4), PreprocessConfig(size=32)):
        if isinstance(event, EpochEnd):
            (tmp_path / "STOP").touch()
    assert main(["train", "--data", str(synthetic_dataset), "--out", str(tmp_path), "--resume", "--epochs", "20",
                 "--lr", "0.5", "--threads", "1"]) == 0
    captured = capsys.readouterr()
    assert "warning: --resume continues with the run's saved settings; ignored: --epochs, --lr" in captured.err
    assert "--threads" not in captured.err  # how the job runs is not a setting of the run
    assert [e.epoch for e in RunFolder(tmp_path).read_events() if isinstance(e, EpochEnd)] == [1, 2]


def test_train_help_describes_every_recipe(capsys):
    from busi.recipes import RECIPES

    with pytest.raises(SystemExit):
        main(["train", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    for name, recipe in RECIPES.items():
        assert f"{name}: {recipe.summary}" in help_text


def test_the_readme_describes_every_recipe_in_its_own_words():
    from busi.recipes import RECIPES

    readme = " ".join((Path(__file__).resolve().parents[1] / "README.md").read_text().split())
    for name, recipe in RECIPES.items():
        assert f"`{name}`: {recipe.summary}" in readme, name


def test_the_report_table_prints_the_same_rows_the_app_shows(tiny_run, capsys):
    from busi.evaluate import REPORT_COLUMNS, evaluate_run, report_rows

    assert main(["evaluate", str(tiny_run), "--bootstrap", "50"]) == 0
    printed = capsys.readouterr().out.splitlines()
    _, result = evaluate_run(tiny_run, samples=50)
    for row in report_rows(result):
        line = next(line for line in printed if line.startswith(row["class"] + " "))
        assert line.split()[len(row["class"].split()):] == [row[column] for column in REPORT_COLUMNS[1:] if row[column]]


def test_predict_on_a_folder_without_scans_says_so_and_fails(tiny_run, tmp_path):
    (tmp_path / "notes.txt").write_text("no scans here")
    result = run("predict", str(tiny_run), str(tmp_path))
    assert result.returncode == 2 and "No scans in" in result.stderr and "Traceback" not in result.stderr


def test_predict_with_a_phantom_model_warns_that_it_learnt_from_phantoms(tiny_run, synthetic_dataset, capsys):
    assert main(["predict", str(tiny_run), str(synthetic_dataset / "benign" / "benign (1).png")]) == 0
    assert "warning: This model learnt from 18 synthetic phantoms, not from scans of patients" in capsys.readouterr().out
