"""The portable dataset copy that travels to a GPU machine (bench/portable.py)."""

import numpy as np

from bench.portable import shrunk, write_portable_copy
from busi.data import index_dataset, load_mask, load_scan


def test_shrinking_keeps_the_aspect_and_masks_binary_and_never_enlarges():
    scan = np.random.default_rng(0).integers(0, 256, (300, 600), dtype=np.uint8)
    assert shrunk(scan, 200).shape == (100, 200)
    mask = np.zeros((300, 600), bool)
    mask[100:200, 200:400] = True
    small = shrunk(mask, 200)
    assert small.dtype == bool and small.shape == (100, 200) and abs(small.mean() - mask.mean()) < 0.005
    assert shrunk(scan, 800) is scan


def test_the_copy_indexes_like_the_original_with_smaller_scans_and_matching_masks(synthetic_dataset, tmp_path):
    write_portable_copy(synthetic_dataset, tmp_path, side=48)
    original, copy = index_dataset(synthetic_dataset), index_dataset(tmp_path)
    assert [(r.path.name, r.label) for r in copy.records] == [(r.path.name, r.label) for r in original.records]
    assert [len(r.mask_paths) for r in copy.records] == [len(r.mask_paths) for r in original.records]
    for record in copy.records:
        scan = load_scan(record)
        assert max(scan.shape) == 48 and load_mask(record).shape == scan.shape
