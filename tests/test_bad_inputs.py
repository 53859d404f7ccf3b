"""Careless and broken inputs through the library, the command line and the app.

Every case expects a clear message (or, for unusual but valid scans, success), checks that the
same process answers the next request, and that none of the user's files changed.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import models

from busi import synth
from busi.cli import main
from busi.data import index_dataset
from busi.errors import BusiError, ParameterError
from busi.evaluate import run_predictions
from busi.predict import load_classifier
from busi.preprocess import PreprocessConfig
from busi.runs import RunFolder, load_checkpoint
from tests.helpers import errors_besides_the_phantom_warning, open_page, png_bytes, shown, widget

GOOD_SCAN = png_bytes(synth.make_phantom("benign", 4, (96, 96))[0])


def _encoded(array: np.ndarray, format: str = "PNG", mode: str | None = None) -> bytes:
    image = Image.fromarray(array)
    buffer = io.BytesIO()
    (image.convert(mode) if mode else image).save(buffer, format=format)
    return buffer.getvalue()


def _sixteen_bit() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray((synth.make_phantom("malignant", 1, (64, 64))[0].astype(np.uint16) * 257)).save(buffer, format="PNG")
    return buffer.getvalue()


def _bomb() -> bytes:
    """A small file that would decode to 64 Mpx, over the 50 Mpx limit."""
    buffer = io.BytesIO()
    Image.new("L", (8000, 8000)).save(buffer, format="PNG")
    return buffer.getvalue()


def _truncated() -> bytes:
    return png_bytes(np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8))[:300]


@dataclass(frozen=True)
class ImageCase:
    name: str
    data: bytes
    error: str | None = None  # regex of the refusal, or None when the scan must work
    warning: str | None = None


PHANTOM = synth.make_phantom("normal", 2, (80, 80))[0]
IMAGE_CASES = [
    ImageCase("empty file", b"", error="empty"),
    ImageCase("truncated PNG", _truncated(), error="damaged or truncated"),
    ImageCase("text file named .png", b"patient notes, not an image", error="not an image"),
    ImageCase("1x1 scan", png_bytes(np.zeros((1, 1), np.uint8)), error="at least 32x32"),
    ImageCase("decompression bomb", _bomb(), error="over the limit"),
    ImageCase("16-bit PNG", _sixteen_bit()),
    ImageCase("palette PNG", _encoded(PHANTOM, mode="P")),
    ImageCase("RGBA PNG", _encoded(np.dstack([PHANTOM] * 3 + [np.full_like(PHANTOM, 255)]))),
    ImageCase("CMYK JPEG", _encoded(np.dstack([PHANTOM] * 3), "JPEG", "CMYK")),
    ImageCase("colour photograph", png_bytes(np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)),
              warning="coloured"),
]
IDS = [case.name for case in IMAGE_CASES]


def _fingerprint(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def user_files(tmp_path):
    folder = tmp_path / "user"
    folder.mkdir()
    return folder


# -- images: library, command line, app ---------------------------------------------------------

@pytest.mark.parametrize("case", IMAGE_CASES, ids=IDS)
def test_images_through_the_library(case, tiny_run):
    classifier = load_classifier(tiny_run)
    if case.error:
        with pytest.raises(BusiError, match=case.error):
            classifier.predict(case.data)
    else:
        prediction = classifier.predict(case.data)
        assert abs(sum(prediction.probabilities.values()) - 1) < 1e-5
        assert (case.warning is None) == (not any("coloured" in w for w in prediction.warnings))
        if case.warning:
            assert any(case.warning in w for w in prediction.warnings)
    assert classifier.predict(GOOD_SCAN).label  # the same classifier answers the next request


@pytest.mark.parametrize("case", IMAGE_CASES, ids=IDS)
def test_images_through_the_command_line(case, tiny_run, user_files, capsys):
    scan = user_files / "scan.png"
    scan.write_bytes(case.data)
    (user_files / "good.png").write_bytes(GOOD_SCAN)
    before = _fingerprint(user_files)
    code = main(["predict", str(tiny_run), str(scan)])
    captured = capsys.readouterr()
    if case.error:
        assert code == 2 and "Traceback" not in captured.err
        assert re.search(case.error, captured.err), captured.err
    else:
        assert code == 0 and "scan.png:" in captured.out
        assert case.warning is None or re.search(f"warning: .*{case.warning}", captured.out)
    assert main(["predict", str(tiny_run), str(user_files / "good.png")]) == 0
    assert _fingerprint(user_files) == before


@pytest.mark.parametrize("case", IMAGE_CASES, ids=IDS)
def test_images_through_the_app(case, runs_with_model):
    app = open_page("prediction")
    widget(app, "pr_uploads").set_value([("scan.png", case.data, "image/png")]).run()
    assert not app.exception
    if case.error:
        assert any("scan.png" in shown(e.value) and re.search(case.error, shown(e.value)) for e in app.error)
    else:
        assert [m.value for m in app.metric if m.label == "Predicted class"]
        if case.warning:
            assert any(case.warning in w.value for w in app.warning)
    widget(app, "pr_uploads").set_value([("good.png", GOOD_SCAN, "image/png")]).run()
    assert not app.exception and not errors_besides_the_phantom_warning(app)
    assert len([m for m in app.metric if m.label == "Predicted class"]) == 1


# -- folders, checkpoints, run folders, settings, training ------------------------------------

def _dataset_copy(source: Path, target: Path) -> Path:
    shutil.copytree(source, target)
    return target


def _not_a_dataset(user: Path) -> Path:
    (user / "holiday photos").mkdir()
    return user


def _missing_class(user: Path) -> Path:
    shutil.rmtree(user / "data" / "normal")
    return user / "data"


def _orphan_mask(user: Path) -> Path:
    (user / "data" / "benign" / "ghost_mask.png").write_bytes(png_bytes(np.zeros((40, 40), np.uint8)))
    return user / "data"


def _mask_of_the_wrong_size(user: Path) -> Path:
    (user / "data" / "benign" / "benign (1)_mask.png").write_bytes(png_bytes(np.zeros((40, 40), np.uint8)))
    return user / "data"


def _unreadable_scan(user: Path) -> Path:
    (user / "data" / "benign" / "benign (2).png").write_bytes(b"\x89PNG broken")
    return user / "data"


@pytest.mark.parametrize("prepare, expected", [
    (_not_a_dataset, "not a BUSI dataset"),
    (_missing_class, "missing_class"),
    (_orphan_mask, "orphan_mask"),
    (_mask_of_the_wrong_size, "mask_size_mismatch"),
    (_unreadable_scan, "unreadable"),
], ids=lambda value: value.__name__.strip("_") if callable(value) else None)
def test_broken_dataset_folders(prepare, expected, synthetic_dataset, user_files, capsys):
    _dataset_copy(synthetic_dataset, user_files / "data")
    folder = prepare(user_files)
    before = _fingerprint(user_files)
    code = main(["index", str(folder)])
    captured = capsys.readouterr()
    assert re.search(expected, captured.out + captured.err), captured.out + captured.err
    assert code == (2 if prepare is _not_a_dataset else 0)
    assert "Traceback" not in captured.err
    assert main(["index", str(synthetic_dataset)]) == 0  # the next request is answered
    assert _fingerprint(user_files) == before


def _checkpoint_cases(tiny_run: Path, folder: Path) -> dict[str, tuple[Path, str]]:
    truncated = folder / "truncated.pt"
    truncated.write_bytes((tiny_run / "best.pt").read_bytes()[:5000])
    other = load_checkpoint(tiny_run / "best.pt")
    other["train_config"] = other["train_config"] | {"arch": "densenet121"}
    torch.save(other, folder / "other-arch.pt")

    class Payload:
        def __reduce__(self):
            return (exec, (f"open({str(folder / 'pwned')!r}, 'w').close()",))

    torch.save({"model": Payload(), "train_config": {}, "preprocess_config": {}, "classes": []}, folder / "payload.pt")
    return {"truncated checkpoint": (truncated, "not a checkpoint this program can load safely"),
            "another architecture": (folder / "other-arch.pt", "do not fit a densenet121"),
            "pickled code payload": (folder / "payload.pt", "not a checkpoint this program can load safely")}


@pytest.mark.parametrize("name", ["truncated checkpoint", "another architecture", "pickled code payload"])
def test_bad_checkpoints_are_refused_without_running_anything(name, tiny_run, user_files, capsys):
    path, expected = _checkpoint_cases(tiny_run, user_files)[name]
    (user_files / "scan.png").write_bytes(GOOD_SCAN)
    before = _fingerprint(user_files)
    with pytest.raises(BusiError, match=expected) as refusal:
        load_classifier(path)
    # One line, and never torch's advice to load the file with its safety off.
    assert "\n" not in str(refusal.value) and "weights_only" not in str(refusal.value)
    assert main(["predict", str(path), str(user_files / "scan.png")]) == 2
    assert re.search(expected, capsys.readouterr().err)
    assert not (user_files / "pwned").exists()
    assert main(["predict", str(tiny_run), str(user_files / "scan.png")]) == 0
    assert _fingerprint(user_files) == before


def test_a_run_folder_with_missing_files(tiny_run, user_files, capsys, runs):
    broken = runs / "20260101-000000-broken"
    shutil.copytree(tiny_run, broken)
    (broken / "predictions.csv").unlink()
    with pytest.raises(BusiError, match="has no predictions.csv"):
        run_predictions(broken)
    assert main(["evaluate", str(broken)]) == 2 and "has no predictions.csv" in capsys.readouterr().err
    app = open_page("evaluation")  # the broken run is not offered; the page still serves
    assert "No finished run yet" in app.info[0].value


def test_invalid_preprocessing_parameters(synthetic_dataset, user_files, capsys):
    with pytest.raises(ParameterError, match="size must be between 16 and 2048"):
        PreprocessConfig(size=5)
    assert main(["train", "--data", str(synthetic_dataset), "--out", str(user_files / "run"), "--image-size", "5"]) == 2
    assert "size must be between 16 and 2048" in capsys.readouterr().err
    app = open_page("playground")
    widget(app, "pg_median_ksize").set_value(0).run()
    widget(app, "pg_canny_low").set_value(400).run()
    widget(app, "pg_canny_high").set_value(10).run()
    assert "canny_high must be between 400" in shown(app.error[0].value) and not app.exception


def test_a_batch_larger_than_the_data(synthetic_dataset, user_files, capsys):
    code = main(["train", "--data", str(synthetic_dataset), "--out", str(user_files / "run"), "--arch", "resnet18",
                 "--batch-size", "500", "--image-size", "32"])
    assert code == 2 and "batch_size 500 exceeds the" in capsys.readouterr().err


def test_training_killed_mid_epoch_leaves_a_usable_run(synthetic_dataset, tmp_path):
    run = tmp_path / "run"
    command = [sys.executable, "-m", "busi", "train", "--data", str(synthetic_dataset), "--out", str(run),
               "--arch", "resnet18", "--epochs", "6", "--batch-size", "2", "--image-size", "32", "--threads", "1"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        events = RunFolder(run).read_events()
        if sum(e.kind == "epoch_end" for e in events) >= 1 and events[-1].kind == "batch_end":
            break
        time.sleep(0.1)
    process.send_signal(signal.SIGKILL)  # no chance to clean up: the worst case
    process.wait()
    events = RunFolder(run).read_events()  # every complete line parses
    assert events and RunFolder(run).state() == "incomplete"
    state = load_checkpoint(run / "checkpoint.pt")
    assert state["epoch"] >= 1
    json.loads((run / "config.json").read_text())
    result = subprocess.run(command[:4] + ["--data", str(synthetic_dataset), "--out", str(run), "--resume"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert RunFolder(run).read_events()[-1].kind == "done"


# -- the cost of a scan -----------------------------------------------------------------------

def _kept_bytes(value) -> int:
    """Bytes of the arrays inside a session's results (what stays in memory between reruns)."""
    if isinstance(value, np.ndarray):
        return value.nbytes
    if isinstance(value, dict):
        return sum(_kept_bytes(item) for item in value.values())
    if isinstance(value, list | tuple):
        return sum(_kept_bytes(item) for item in value)
    return sum(_kept_bytes(item) for item in vars(value).values()) if hasattr(value, "__dataclass_fields__") else 0


def test_a_session_keeps_small_results_not_full_size_frames(runs_with_model):
    large = png_bytes(synth.make_phantom("malignant", 6, (1800, 2400))[0])
    app = open_page("prediction")
    widget(app, "pr_uploads").set_value([("large.png", large, "image/png")]).run()
    assert not app.exception and [m.value for m in app.metric if m.label == "Predicted class"]
    # A 2400 x 1800 scan with a float heatmap at full size would keep 21 MB; a thumbnail of each, well under 2 MB.
    assert _kept_bytes(app.session_state["pr_results"]) < 2_000_000


def test_a_busy_server_asks_the_visitor_to_wait_and_keeps_running(runs_with_model):
    import sys

    app = open_page("prediction")
    ui = sys.modules["pages._ui"]
    slots = ui._scan_slots()
    taken = [slots.acquire(timeout=5) for _ in range(ui.PARALLEL_SCANS)]  # other sessions hold every turn
    waiting, ui.SCAN_WAIT_S = ui.SCAN_WAIT_S, 0.2
    try:
        widget(app, "pr_uploads").set_value([("scan.png", GOOD_SCAN, "image/png")]).run()
        assert not app.exception and any("busy with other scans" in e.value for e in app.error)
    finally:
        ui.SCAN_WAIT_S = waiting
        for held in taken:
            if held:
                slots.release()
    app.run()  # a busy answer is not kept: the next rerun predicts
    assert [m.value for m in app.metric if m.label == "Predicted class"]


# -- paths a visitor types --------------------------------------------------------------------

def _trick_folder(root: Path, synthetic_dataset: Path, outside: Path) -> Path:
    """Under an allowed root: a dataset whose benign folder is a link to ``outside`` and whose
    malignant folder holds, beside real scans, a link to an image outside the roots."""
    trick = root / "trick"
    shutil.copytree(synthetic_dataset, trick)
    shutil.rmtree(trick / "benign")
    (trick / "benign").symlink_to(outside, target_is_directory=True)
    (outside / "secret.png").write_bytes(GOOD_SCAN)
    (trick / "malignant" / "linked.png").symlink_to(outside / "secret.png")
    return trick


def test_links_inside_an_allowed_folder_are_followed_only_inside_the_roots(synthetic_dataset, tmp_path):
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    trick = _trick_folder(root, synthetic_dataset, outside)
    index = index_dataset(trick, roots=(root.resolve(),))
    assert not any(record.path.resolve().is_relative_to(outside.resolve()) for record in index.records)
    assert index.class_counts() == {"benign": 0, "malignant": 6, "normal": 6}
    skipped = sorted(f.path for f in index.findings if f.code == "outside_roots")
    assert skipped == ["benign", "malignant/linked.png"]
    assert not any(str(outside) in f.message for f in index.findings)  # nothing said about what lies outside
    assert index_dataset(trick).class_counts()["malignant"] == 7  # the command line's user reads what they point at


def test_the_dataset_page_never_lists_what_a_link_leads_to(synthetic_dataset, tmp_path, monkeypatch, runs):
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    trick = _trick_folder(root, synthetic_dataset, outside)
    monkeypatch.setenv("BUSI_ROOTS", str(root))
    app = open_page("dataset")
    widget(app, "data_source").select("Another folder…").run()
    widget(app, "data_folder_text").input(str(trick)).run()
    assert not app.exception
    names = widget(app, "dataset_detail_scan").options
    assert names and not any("secret" in name or "linked" in name for name in names)
    assert all(name.startswith(("malignant/", "normal/")) for name in names)


@pytest.mark.parametrize("typed", ["/tmp/\0evil", "/" + "a" * 5000, "~" + "x" * 300 + "/../../etc"],
                         ids=["nul byte", "5000 characters", "long user name"])
def test_a_typed_folder_gets_one_line_never_a_traceback(typed, runs):
    app = open_page("overview")
    widget(app, "data_source").select("Another folder…").run()
    widget(app, "data_folder_text").input(typed).run()
    assert not app.exception
    (message,) = [e.value for e in app.sidebar.error]
    assert "\n" not in message and len(message) < 300 and "Errno" not in message
    assert "Synthetic phantoms" in app.markdown[1].value  # still serving the demo data


def _start_with_weights(app, typed: str):
    widget(app, "tr_recipe").select("quick").run()
    widget(app, "tr_pretrained").select("local file")
    widget(app, "tr_weights_file").input(typed)
    widget(app, "tr_start").click().run()
    assert not app.exception
    return [e.value for e in app.error]


def test_a_weights_file_outside_the_roots_is_refused_without_saying_whether_it_exists(runs, tmp_path, monkeypatch):
    monkeypatch.setenv("BUSI_ROOTS", str(tmp_path / "allowed"))
    app = open_page("training")
    existing, missing = _start_with_weights(app, "/etc/hostname"), _start_with_weights(app, "/etc/no-such-file")
    assert existing == missing and "outside the folders this app may read" in existing[0]
    assert list(runs.iterdir()) == []  # no job started


def test_a_weights_file_inside_the_roots_is_checked_before_a_job_starts(runs, tmp_path, monkeypatch):
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    (allowed / "notes.pth").write_text("not weights")
    torch.save(models.resnet50(weights=None).state_dict(), allowed / "resnet50.pth")
    monkeypatch.setenv("BUSI_ROOTS", str(allowed))
    app = open_page("training")
    assert "not a weights file this program can load safely" in _start_with_weights(app, str(allowed / "notes.pth"))[0]
    assert "do not fit resnet18" in _start_with_weights(app, str(allowed / "resnet50.pth"))[0]  # the quick recipe's
    assert list(runs.iterdir()) == []


# -- sessions and their jobs ------------------------------------------------------------------

def test_only_the_session_that_started_a_job_may_stop_it(runs, synthetic_dataset):
    from busi.config import TrainConfig
    from busi.jobs import active_run, start_training, stop_training

    mine = open_page("training")
    token = mine.session_state["session_token"]
    run = start_training(synthetic_dataset, TrainConfig(arch="resnet18", epochs=30, batch_size=2), PreprocessConfig(size=32),
                         runs, threads=1, owner=token)
    try:
        other = open_page("training")
        assert other.session_state["session_token"] != token
        assert not [b for b in other.button if b.key == "tr_stop"]
        assert any("only that session can stop or resume it" in c.value for c in other.caption)
        with pytest.raises(BusiError, match="started in another browser session"):
            stop_training(run, owner=other.session_state["session_token"])
        assert not (run / "STOP").exists()
        mine.run()
        widget(mine, "tr_stop").click().run()
        assert (run / "STOP").exists() or RunFolder(run).state() != "running"
    finally:
        (run / "STOP").touch()
        deadline = time.monotonic() + 60
        while active_run(runs) and time.monotonic() < deadline:
            time.sleep(0.3)


def test_scan_names_in_a_dataset_are_captioned_as_themselves(synthetic_dataset, tmp_path, monkeypatch, runs):
    data = tmp_path / "data"
    shutil.copytree(synthetic_dataset, data)
    crafted = "![t](http:⁄⁄evil.example⁄x.png) **b**"  # a file name cannot hold '/': the lookalike '⁄' does
    for suffix in ("", "_mask"):
        (data / "benign" / f"benign (1){suffix}.png").rename(data / "benign" / f"{crafted}{suffix}.png")
    monkeypatch.setenv("BUSI_DATA", str(data))
    app = open_page("dataset")
    captions = [caption for image in app.image for caption in image.captions]
    mine = [caption for caption in captions if "evil" in caption]
    assert mine and all("![" not in caption and "**" not in caption for caption in mine)
    assert any(shown(caption).startswith(crafted + " · group") for caption in mine)
