from __future__ import annotations

import os
from pathlib import Path

import pytest

from busi import synth

REAL_BUSI = Path(__file__).resolve().parents[1].parent / "shared" / "busi"


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
    from busi.config import TrainConfig
    from busi.events import Done
    from busi.preprocess import PreprocessConfig
    from busi.train import train

    run = tmp_path_factory.mktemp("tiny_run")
    config = TrainConfig(arch="resnet18", epochs=1, batch_size=4, lr=0.01, seed=1)
    events = list(train(synthetic_dataset, run, config, PreprocessConfig(size=32)))
    assert isinstance(events[-1], Done), events[-1]
    return run


@pytest.fixture
def runs(tmp_path, tmp_path_factory, monkeypatch) -> Path:
    """An empty runs folder for the app, which may read the tests' temporary folders (their data sets)."""
    folder = tmp_path / "runs"
    folder.mkdir()
    monkeypatch.setenv("BUSI_RUNS", str(folder))
    monkeypatch.setenv("BUSI_ROOTS", str(tmp_path_factory.getbasetemp()))
    return folder


@pytest.fixture
def runs_with_model(runs, tiny_run) -> Path:
    """The app's runs folder holding a copy of the tiny run."""
    import shutil

    shutil.copytree(tiny_run, runs / "20260101-000000-resnet18")
    return runs
