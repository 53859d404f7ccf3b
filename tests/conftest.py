from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from busi import synth

REAL_BUSI = Path(__file__).resolve().parents[1].parent / "shared" / "busi"


def png_bytes(array: np.ndarray, mode: str | None = None) -> bytes:
    buffer = io.BytesIO()
    image = Image.fromarray(array)
    (image.convert(mode) if mode else image).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="session")
def real_busi() -> Path:
    if not (REAL_BUSI / "Dataset_BUSI_with_GT").is_dir():
        pytest.skip("real BUSI data not present at ../shared/busi")
    return REAL_BUSI


@pytest.fixture(scope="session")
def synthetic_dataset(tmp_path_factory) -> Path:
    """A small phantom dataset, shared read-only by the tests that need clean data."""
    return synth.write_dataset(tmp_path_factory.mktemp("synthetic"), per_class=6, seed=3, size=(96, 96))


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """The demo dataset cache never lands in the user's home during tests."""
    monkeypatch.setenv("BUSI_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
