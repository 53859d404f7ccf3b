import csv
import io
import math
import shutil

import numpy as np
import pytest

from busi import synth
from busi.data import find_dataset_root, index_dataset, load_mask, load_scan
from busi.errors import DatasetError
from tests.helpers import png_bytes


def _phantom(label, seed, size=(64, 80)):
    image, masks = synth.make_phantom(label, seed, size)
    return image, masks


@pytest.fixture
def quirky_dataset(tmp_path):
    """Every quirk of real folders: odd names, cased folders, several masks, RGBA masks,
    a size mismatch, an orphan mask, a broken scan, a scan without mask, stray files."""
    root = tmp_path / "download" / "Dataset_BUSI_with_GT"
    benign, malignant = root / "Benign", root / "MALIGNANT"
    benign.mkdir(parents=True)
    malignant.mkdir()
    (root / "notes").mkdir()
    (root / "normal").mkdir()  # present but empty

    image, masks = _phantom("benign", 1)
    (benign / "benign (1).png").write_bytes(png_bytes(image, "RGB"))
    first, second = np.zeros_like(image, bool), np.zeros_like(image, bool)
    first[5:15, 5:15], second[30:40, 40:60] = True, True
    (benign / "benign (1)_mask.png").write_bytes(png_bytes(first.astype(np.uint8) * 255, "1"))
    (benign / "benign (1)_mask_1.png").write_bytes(png_bytes(second.astype(np.uint8) * 255, "RGBA"))

    image, masks = _phantom("benign", 2)
    (benign / "benign (2).png").write_bytes(png_bytes(image))
    (benign / "benign (2)_mask.png").write_bytes(png_bytes(np.zeros((10, 10), np.uint8)))  # wrong size

    (benign / "benign (3)_mask.png").write_bytes(png_bytes(masks[0].astype(np.uint8) * 255))  # orphan
    (benign / "benign (4).png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    image, _ = _phantom("benign", 5)
    (benign / "benign (5).png").write_bytes(png_bytes(image))  # no mask
    (benign / "readme.txt").write_text("stray")
    (benign / "Thumbs.db").write_bytes(b"ignored")

    image, masks = _phantom("malignant", 6)
    (malignant / "malignant (1).png").write_bytes(png_bytes(image))
    (malignant / "malignant (1)_mask.png").write_bytes(png_bytes(masks[0].astype(np.uint8) * 255))
    # The same scan filed under malignant as well: a label conflict, as in BUSI.
    shutil.copy(benign / "benign (5).png", malignant / "malignant (2).png")
    return root


def _codes(index):
    return sorted((f.severity, f.code, f.path.rsplit("/", 1)[-1]) for f in index.findings)


def test_quirky_folder_is_indexed_with_a_full_report(quirky_dataset):
    index = index_dataset(quirky_dataset.parent)
    assert index.root == quirky_dataset
    assert [r.path.name for r in index.records] == [
        "benign (1).png",
        "benign (2).png",
        "benign (5).png",
        "malignant (1).png",
        "malignant (2).png",
    ]
    assert _codes(index) == [
        ("error", "unreadable", "benign (4).png"),
        ("warning", "empty_class", "normal"),
        ("warning", "label_conflict", "benign (5).png"),
        ("warning", "mask_size_mismatch", "benign (2)_mask.png"),
        ("warning", "missing_mask", "benign (5).png"),
        ("warning", "missing_mask", "malignant (2).png"),
        ("warning", "orphan_mask", "benign (3)_mask.png"),
        ("warning", "unknown_file", "readme.txt"),
        ("warning", "unknown_folder", "notes"),
    ]
    assert index.class_counts() == {"benign": 3, "malignant": 2, "normal": 0}


def test_several_masks_merge_into_one_lesion_mask(quirky_dataset):
    record = index_dataset(quirky_dataset).records[0]
    assert [p.name for p in record.mask_paths] == ["benign (1)_mask.png", "benign (1)_mask_1.png"]
    mask = load_mask(record)
    assert mask.sum() == 100 + 200
    assert record.lesion_fraction == pytest.approx(300 / (64 * 80))
    assert "multiple_masks" in record.flags
    assert load_scan(record).shape == (64, 80)


def test_mismatched_and_missing_masks_are_flagged_not_used(quirky_dataset):
    records = {r.path.name: r for r in index_dataset(quirky_dataset).records}
    mismatched = records["benign (2).png"]
    assert mismatched.mask_paths == () and math.isnan(mismatched.lesion_fraction)
    assert "mask_size_mismatch" in mismatched.flags
    assert not load_mask(mismatched).any()
    assert "no_mask" in records["benign (5).png"].flags


def test_cross_class_copies_share_a_group_and_are_reported(quirky_dataset):
    index = index_dataset(quirky_dataset)
    records = {r.path.name: r for r in index.records}
    assert records["benign (5).png"].group == records["malignant (2).png"].group
    assert "label_conflict" in records["malignant (2).png"].flags
    conflicts = index.label_conflicts()
    assert len(conflicts) == 1
    assert sorted(r.label for r in next(iter(conflicts.values()))) == ["benign", "malignant"]


def test_index_csv_has_one_row_per_scan(quirky_dataset):
    index = index_dataset(quirky_dataset)
    rows = list(csv.DictReader(io.StringIO(index.to_csv())))
    assert len(rows) == 5
    assert rows[0]["path"] == "Benign/benign (1).png"
    assert rows[0]["masks"] == "2" and rows[1]["lesion_fraction"] == ""
    assert "colour_overlay" not in rows[0]["flags"]


def test_colour_overlay_is_a_quality_flag(tmp_path):
    folder = tmp_path / "normal"
    folder.mkdir()
    image, _ = _phantom("normal", 1)
    rgb = np.repeat(image[:, :, None], 3, axis=2)
    rgb[10:20, 10:20] = (0, 0, 255)  # a Doppler-like patch
    (folder / "normal (1).png").write_bytes(png_bytes(rgb))
    (folder / "normal (1)_mask.png").write_bytes(png_bytes(np.zeros(image.shape, np.uint8)))
    record = index_dataset(tmp_path).records[0]
    assert "colour_overlay" in record.flags
    assert record.lesion_fraction == 0.0


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: p / "missing", "does not exist"),
        (lambda p: (p / "file.png").write_bytes(b"x") and p / "file.png", "is a file"),
        (lambda p: (p / "photos").mkdir() or p, "not a BUSI dataset"),
    ],
    ids=["missing", "file", "unrelated-folder"],
)
def test_a_folder_that_is_not_a_dataset_gets_one_clear_error(tmp_path, make, message):
    with pytest.raises(DatasetError, match=message) as error:
        find_dataset_root(make(tmp_path))
    assert "benign/, malignant/, normal/" in str(error.value)


def test_missing_class_is_a_warning(synthetic_dataset, tmp_path):
    copy = tmp_path / "two-classes"
    shutil.copytree(synthetic_dataset, copy)
    shutil.rmtree(copy / "normal")
    index = index_dataset(copy)
    assert ("warning", "missing_class", "normal") in _codes(index)
    assert index.class_counts()["normal"] == 0


def test_synthetic_dataset_is_clean(synthetic_dataset):
    index = index_dataset(synthetic_dataset)
    assert index.findings == []
    assert index.class_counts() == {"benign": 6, "malignant": 6, "normal": 6}
    assert all(r.lesion_fraction == 0 for r in index.records if r.label == "normal")
    assert all(r.lesion_fraction > 0 for r in index.records if r.label != "normal")


def test_real_busi_counts_and_conflicts(real_busi):
    index = index_dataset(real_busi)
    assert index.class_counts() == {"benign": 371, "malignant": 179, "normal": 113}
    assert sum("multiple_masks" in r.flags for r in index.records) == 13
    conflicts = index.label_conflicts()
    names = [{r.path.name for r in members} for members in conflicts.values()]
    assert {"benign (131).png", "malignant (51).png"} <= set().union(*names)
    assert all(len({r.label for r in members}) > 1 for members in conflicts.values())
    assert len(conflicts) >= 5


def test_names_are_sorted_the_way_people_count():
    from busi.data import natural_sorted

    names = ["benign (10).png", "benign (2).png", "Benign (1).png", "malignant (1).png", "benign (2)_mask.png"]
    assert natural_sorted(names) == ["Benign (1).png", "benign (2).png", "benign (2)_mask.png", "benign (10).png",
                                     "malignant (1).png"]
