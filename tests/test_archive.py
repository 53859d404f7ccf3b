"""Prediction over an archive: nested folders streamed into a CSV, unreadable files as rows, resuming."""

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest

from busi import synth
from busi.archive import ArchiveProgress, archive_files, finished_paths, merge_parts, part_path, predict_archive
from busi.cli import main
from busi.errors import BusiError
from busi.predict import load_classifier
from tests.helpers import png_bytes

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def export(tmp_path_factory) -> Path:
    """A hospital-style export: 300 scans in nested folders, with masks, hidden files, a note, a broken scan."""
    root = tmp_path_factory.mktemp("export")
    for number in range(300):
        label = ("benign", "malignant", "normal")[number % 3]
        folder = root / f"patient {number // 10:02d}" / ("study 1" if number % 2 else "study 2")
        folder.mkdir(parents=True, exist_ok=True)
        scan, masks = synth.make_phantom(label, number, (64, 64))
        (folder / f"scan {number}.png").write_bytes(png_bytes(scan))
        if masks:
            (folder / f"scan {number}_mask.png").write_bytes(png_bytes(masks[0].astype("uint8") * 255))
    (root / "patient 00" / ".DS_Store").write_bytes(b"\0\1")
    (root / "patient 00" / "._scan 0.png").write_bytes(b"AppleDouble")
    (root / ".trash").mkdir()
    (root / ".trash" / "old.png").write_bytes(png_bytes(synth.make_phantom("benign", 999, (64, 64))[0]))
    (root / "patient 01" / "notes.txt").write_text("not a scan")
    (root / "patient 29" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    return root


def rows_of(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as file:
        return list(csv.DictReader(file))


def test_an_archive_is_walked_in_one_order_without_masks_or_hidden_files(export):
    files = list(archive_files([export]))
    assert len(files) == 301  # 300 scans and the broken one
    assert files == list(archive_files([export]))
    assert not [f for f in files if "_mask" in f.name or f.name.startswith(".") or ".trash" in f.parts]
    assert files[0].relative_to(export).as_posix() == "patient 00/study 1/scan 1.png"
    with pytest.raises(BusiError, match="does not exist"):
        list(archive_files([export / "nowhere"]))


def test_every_scan_becomes_one_row_and_an_unreadable_one_a_row_with_its_error(tiny_run, export, tmp_path):
    classifier = load_classifier(tiny_run)
    progress = list(predict_archive(classifier, [export], tmp_path / "out.csv", batch_size=64, workers=2))
    assert [p.done for p in progress] == [64, 128, 192, 256, 301] and progress[-1].total == 301
    assert progress[-1].errors == 1
    rows = rows_of(tmp_path / "out.csv")
    assert len(rows) == 301 and len({row["path"] for row in rows}) == 301
    broken = next(row for row in rows if row["path"].endswith("broken.png"))
    assert broken["error"] and broken["label"] == ""
    # Batched and threaded, the answers are those of one scan at a time.
    one = classifier.predict(export / "patient 03" / "study 1" / "scan 31.png")
    row = next(row for row in rows if row["path"].endswith("patient 03/study 1/scan 31.png"))
    assert row["label"] == one.label and float(row["p_malignant"]) == pytest.approx(one.probabilities["malignant"], abs=1e-5)


def test_an_interrupted_run_resumes_where_it_stopped(tiny_run, export, tmp_path):
    classifier = load_classifier(tiny_run)
    out = tmp_path / "out.csv"
    run = predict_archive(classifier, [export], out, batch_size=50)
    assert next(run).done == 50
    run.close()  # interrupted after the first batch
    with open(out, "a") as file:
        file.write("/export/patient 05/scan 5")  # a row cut short by the interruption
    assert len(finished_paths(out)) == 50 and out.read_text().endswith("\n")
    progress = list(predict_archive(classifier, [export], out, batch_size=50))
    assert progress[-1].skipped == 50 and progress[-1].total == 251 and progress[-1].done == 251
    rows = rows_of(out)
    assert sorted(row["path"] for row in rows) == sorted(map(str, archive_files([export])))
    again = list(predict_archive(classifier, [export], out))  # nothing left to do
    assert again[-1].done == 0 and again[-1].skipped == 301 and len(rows_of(out)) == 301


def test_a_csv_that_busi_did_not_write_is_left_alone(tiny_run, export, tmp_path):
    other = tmp_path / "accounts.csv"
    other.write_text("name,amount\nx,1\n")
    with pytest.raises(BusiError, match="not a CSV written by busi predict"):
        list(predict_archive(load_classifier(tiny_run), [export], other))
    assert other.read_text() == "name,amount\nx,1\n"


def test_an_empty_archive_is_an_error(tiny_run, tmp_path, capsys):
    (tmp_path / "empty" / "deeper").mkdir(parents=True)
    assert main(["predict", str(tiny_run), str(tmp_path / "empty"), "--csv", str(tmp_path / "out.csv")]) == 2
    assert "No scans in" in capsys.readouterr().err


def test_progress_says_the_rate_and_the_time_left():
    assert ArchiveProgress(100, 1000, 0, 0, 10.0).describe() == "100 of 1000 scans (10.0/s, about 2 min left)"
    assert ArchiveProgress(50, 60, 20, 1, 5.0).describe() == \
        "50 of 60 scans (10.0/s, about 1 s left); 1 unreadable; 20 already done earlier"


def test_a_csv_of_another_model_is_not_appended_to(tiny_run, export, tmp_path):
    other = tmp_path / "other.csv"
    other.write_text("path,label,p_benign,p_cancer,error,warnings,screening_flag\n")
    with pytest.raises(BusiError, match="other columns than this model writes"):
        list(predict_archive(load_classifier(tiny_run), [export], other))


def test_shares_of_the_ranks_cover_the_archive_once_and_merge_into_one_csv(tiny_run, export, tmp_path):
    classifier = load_classifier(tiny_run)
    out = tmp_path / "out.csv"
    parts = [part_path(out, rank, 2) for rank in range(2)]
    for rank, part in enumerate(parts):
        progress = list(predict_archive(classifier, [export], part, batch_size=64, share=(rank, 2)))
        assert progress[-1].total == (151, 150)[rank]
    assert not {row["path"] for row in rows_of(parts[0])} & {row["path"] for row in rows_of(parts[1])}
    assert merge_parts(parts, out) == 301 and not any(part.exists() for part in parts)
    assert sorted(row["path"] for row in rows_of(out)) == sorted(map(str, archive_files([export])))


TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "busi", "predict"]


def test_under_torchrun_two_ranks_write_one_csv_and_resume(tiny_run, export, tmp_path):
    out = tmp_path / "out.csv"
    environment = os.environ | {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    first = subprocess.run([*TORCHRUN, str(tiny_run), str(export), "--csv", str(out), "--batch-size", "64"], cwd=ROOT,
                           env=environment, capture_output=True, text=True, timeout=300)
    assert f"Predictions written to {out}: 301 scans by this run; 1 could not be read" in first.stdout, first.stderr
    assert "rank 0: " in first.stderr and "rank 1: " in first.stderr  # each rank's progress
    rows = rows_of(out)
    assert sorted(row["path"] for row in rows) == sorted(map(str, archive_files([export])))
    assert not list(tmp_path.glob("out.csv.part-*"))
    again = subprocess.run([*TORCHRUN, str(tiny_run), str(export), "--csv", str(out)], cwd=ROOT, env=environment,
                           capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert f"Predictions written to {out}: 0 scans by this run, 301 already there." in again.stdout
    assert len(rows_of(out)) == 301


def test_a_rank_cut_short_mid_row_leaves_that_row_out_of_the_merge(tmp_path):
    out = tmp_path / "out.csv"
    parts = [part_path(out, rank, 2) for rank in range(2)]
    parts[0].write_text("path,label\n/export/scan 1,benign\n/export/scan 3,mal")  # killed while writing
    parts[1].write_text("path,label\n/export/scan 2,normal\n")
    assert merge_parts(parts, out) == 2
    assert [(row["path"], row["label"]) for row in rows_of(out)] == [("/export/scan 1", "benign"), ("/export/scan 2", "normal")]
