from __future__ import annotations

import csv
import io
import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest
from PIL import Image

from busi import synth

if TYPE_CHECKING:
    from streamlit.testing.v1 import AppTest

APP = str(Path(__file__).resolve().parents[1] / "app.py")
TIMEOUT = 120


def open_page(page: str, **state) -> AppTest:
    """A new session opened on ``pages/{page}.py``, rendered without an exception."""
    # Imported here so the package's own tests also run where only busi's core needs are
    # installed (the GPU machine that checks the CUDA path has no Streamlit).
    from streamlit.testing.v1 import AppTest

    app = AppTest.from_file(APP, default_timeout=TIMEOUT)
    for key, value in state.items():
        app.session_state[key] = value
    if page != "overview":
        app.switch_page(f"pages/{page}.py")
    app.run()
    assert not app.exception, [e.value for e in app.exception]
    return app


def widget(app: AppTest, key: str):
    """The widget with this key, whatever its kind (keys are unique across the app)."""
    return next(w for kind in ("selectbox", "multiselect", "slider", "select_slider", "toggle", "button", "radio",
                               "text_input", "number_input", "color_picker", "file_uploader")
                for w in getattr(app, kind) if w.key == key)


REAL_BUSI = Path(__file__).resolve().parents[1].parent / "shared" / "busi"


def first_prediction_row(run: Path) -> dict[str, str]:
    """The first scan's row of a run's predictions.csv."""
    with open(run / "predictions.csv", newline="") as file:
        return next(csv.DictReader(file))


def set_validation_predictions(run: Path, rows: list[tuple[str, float]]) -> None:
    """Rewrite a finished run's predictions.csv: its first scans become validation scans with
    these (label, p(malignant)) pairs, the rest test scans."""
    with open(run / "predictions.csv", newline="") as file:
        table = list(csv.DictReader(file))
    assert len(table) >= len(rows)
    for row, (label, p_malignant) in zip(table, rows):
        row.update(split="val", label=label, p_malignant=p_malignant, p_benign=(1 - p_malignant) / 2,
                   p_normal=(1 - p_malignant) / 2)
    for row in table[len(rows):]:
        row["split"] = "test"
    with open(run / "predictions.csv", "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=list(table[0]))
        writer.writeheader()
        writer.writerows(table)


def png_bytes(array: np.ndarray, mode: str | None = None) -> bytes:
    buffer = io.BytesIO()
    image = Image.fromarray(array)
    (image.convert(mode) if mode else image).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="session")
def real_busi() -> Path:
    """The real data beside the clone; its tests skip without it, unless BUSI_REQUIRE_DATA is set
    (CI, which has it: a silent skip there would hide every real-data test)."""
    if not (REAL_BUSI / "Dataset_BUSI_with_GT").is_dir():
        if os.environ.get("BUSI_REQUIRE_DATA"):
            pytest.fail(f"BUSI_REQUIRE_DATA is set but the real BUSI data is missing at {REAL_BUSI}")
        pytest.skip("real BUSI data not present at ../shared/busi")
    return REAL_BUSI


@pytest.fixture(scope="session")
def synthetic_dataset(tmp_path_factory) -> Path:
    """A small phantom dataset, shared read-only by the tests that need clean data."""
    return synth.write_dataset(tmp_path_factory.mktemp("synthetic"), per_class=6, seed=3, size=(96, 96))


@pytest.fixture(scope="session")
def duplicated_dataset(tmp_path_factory) -> Path:
    """Phantoms with two near-duplicate copies per class (six groups of two scans)."""
    return synth.write_dataset(tmp_path_factory.mktemp("duplicated"), per_class=6, seed=3, size=(96, 96), copies=2)


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """The demo dataset cache never lands in the user's home during tests."""
    monkeypatch.setenv("BUSI_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


@pytest.fixture(scope="session")
def tiny_run(synthetic_dataset, tmp_path_factory) -> Path:
    """A finished one-epoch ResNet-18 run at 32 px on the synthetic data (read-only for tests)."""
    from busi.preprocess import PreprocessConfig
    from busi.train import Done, TrainConfig, train

    run = tmp_path_factory.mktemp("tiny_run")
    config = TrainConfig(arch="resnet18", epochs=1, batch_size=4, lr=0.01, device="cpu", seed=1)
    events = list(train(synthetic_dataset, run, config, PreprocessConfig(size=32)))
    assert isinstance(events[-1], Done), events[-1]
    return run


@pytest.fixture
def runs(tmp_path, monkeypatch) -> Path:
    """An empty runs folder for the app."""
    folder = tmp_path / "runs"
    folder.mkdir()
    monkeypatch.setenv("BUSI_RUNS", str(folder))
    return folder


@pytest.fixture
def runs_with_model(runs, tiny_run) -> Path:
    """The app's runs folder holding a copy of the tiny run."""
    import shutil

    shutil.copytree(tiny_run, runs / "20260101-000000-resnet18")
    return runs
