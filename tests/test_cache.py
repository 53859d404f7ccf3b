import os

import numpy as np
import pytest

from busi.cache import cached_inputs


def _counting(result):
    calls = []

    def compute():
        calls.append(1)
        return result
    return compute, calls


@pytest.fixture
def scan(tmp_path):
    path = tmp_path / "scan.png"
    path.write_bytes(b"pixels")
    return path


def test_inputs_are_computed_once_per_config_and_files(scan, tmp_path):
    compute, calls = _counting(np.arange(6, dtype=np.uint8).reshape(1, 2, 3))
    first = cached_inputs('{"size": 2}', [scan], compute, tmp_path / "cache")
    again = cached_inputs('{"size": 2}', [scan], compute, tmp_path / "cache")
    assert len(calls) == 1 and (first == again).all() and again.dtype == np.uint8
    cached_inputs('{"size": 3}', [scan], compute, tmp_path / "cache")
    assert len(calls) == 2


def test_an_edited_scan_is_preprocessed_again(scan, tmp_path):
    compute, calls = _counting(np.zeros((1, 2, 2), np.uint8))
    cached_inputs("{}", [scan], compute, tmp_path / "cache")
    scan.write_bytes(b"other pixels")
    cached_inputs("{}", [scan], compute, tmp_path / "cache")
    assert len(calls) == 2


def test_a_damaged_cache_entry_is_recomputed(scan, tmp_path):
    compute, calls = _counting(np.ones((1, 2, 2), np.uint8))
    cached_inputs("{}", [scan], compute, tmp_path / "cache")
    (entry,) = (tmp_path / "cache" / "inputs").iterdir()
    entry.write_bytes(b"not numpy")
    result = cached_inputs("{}", [scan], compute, tmp_path / "cache")
    assert len(calls) == 2 and (result == 1).all()


def test_an_unwritable_cache_warns_and_still_returns_the_inputs(scan, tmp_path, recwarn):
    blocked = tmp_path / "cache"
    blocked.write_text("a file where the cache folder should be")
    compute, _ = _counting(np.ones((1, 2, 2), np.uint8))
    assert cached_inputs("{}", [scan], compute, blocked).shape == (1, 2, 2)
    assert any("Could not cache" in str(w.message) for w in recwarn)
    assert os.path.isfile(blocked)
