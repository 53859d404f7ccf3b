from collections import Counter

import numpy as np
import pytest

from busi.data import index_dataset
from busi.errors import ParameterError
from busi.split import (
    cross_validation_split,
    group_kfold,
    holdout_groups,
    read_manifest,
    three_way_split,
    write_manifest,
)

CLASS_SIZES = {"benign": 370, "malignant": 180, "normal": 110}


def _toy(seed=0):
    """Labels with near-duplicate groups of 1 to 4 scans, a few of them mixing classes."""
    rng = np.random.default_rng(seed)
    labels, groups, group = [], [], 0
    for label, count in CLASS_SIZES.items():
        while sum(1 for l in labels if l == label) < count:
            size = min(int(rng.integers(1, 5)), count - labels.count(label))
            labels += [label] * size
            groups += [group] * size
            group += 1
    groups = np.array(groups)
    groups[[0, 400]] = groups[0]  # a benign and a malignant scan that are copies
    return labels, groups


def _assert_groups_whole(parts, groups):
    for group in np.unique(groups):
        assert len(set(parts[groups == group].tolist())) == 1


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_three_way_split_has_the_study_proportions_per_class(seed):
    labels, groups = _toy()
    parts = three_way_split(labels, groups, seed=seed)
    _assert_groups_whole(parts, groups)
    for label, count in CLASS_SIZES.items():
        mine = Counter(p for l, p in zip(labels, parts) if l == label)
        assert mine["test"] == pytest.approx(0.15 * count, abs=4)
        assert mine["val"] == pytest.approx(0.1275 * count, abs=4)
        assert mine["train"] == pytest.approx(0.7225 * count, abs=6)


def test_split_is_reproducible_and_seed_dependent():
    labels, groups = _toy()
    first = three_way_split(labels, groups, seed=5)
    assert (first == three_way_split(labels, groups, seed=5)).all()
    assert (first != three_way_split(labels, groups, seed=6)).any()


def test_holdout_of_tiny_data_is_never_empty():
    held = holdout_groups(["benign", "malignant", "normal"], np.array([0, 1, 2]), 0.15, seed=0)
    assert held.sum() == 1


@pytest.mark.parametrize("fraction", [0, 1, -0.2, 1.5])
def test_bad_fractions_are_refused(fraction):
    with pytest.raises(ParameterError, match="between 0 and 1"):
        holdout_groups(["benign"] * 4, np.arange(4), fraction, seed=0)


def test_kfold_keeps_groups_whole_and_stratifies():
    labels, groups = _toy()
    folds = group_kfold(labels, groups, n_splits=5, seed=0)
    _assert_groups_whole(folds, groups)
    assert sorted(set(folds.tolist())) == [0, 1, 2, 3, 4]
    for label in CLASS_SIZES:
        per_fold = Counter(f for l, f in zip(labels, folds) if l == label)
        assert max(per_fold.values()) - min(per_fold.values()) <= 8


@pytest.mark.parametrize("n_splits, message", [(1, "at least 2 folds"), (50, "too few")])
def test_kfold_refuses_impossible_fold_counts(n_splits, message):
    labels = ["benign", "malignant"] * 10
    with pytest.raises(ParameterError, match=message):
        group_kfold(labels, np.arange(20) // 2, n_splits=n_splits)


def test_cross_validation_folds_are_the_test_parts_and_cover_every_scan_once():
    labels, groups = _toy()
    folds = group_kfold(labels, groups, n_splits=5, seed=2)
    tested = np.zeros(len(labels), dtype=int)
    for fold in range(5):
        parts = cross_validation_split(labels, groups, fold=fold, n_splits=5, seed=2)
        _assert_groups_whole(parts, groups)
        assert ((parts == "test") == (folds == fold)).all()
        assert (parts == "val").sum() == pytest.approx(0.15 * (folds != fold).sum(), rel=0.3)
        tested += parts == "test"
    assert (tested == 1).all()


def test_cross_validation_refuses_a_fold_out_of_range():
    labels, groups = _toy()
    with pytest.raises(ParameterError, match="between 0 and 4"):
        cross_validation_split(labels, groups, fold=5, n_splits=5)


def test_manifest_round_trips(synthetic_dataset, tmp_path):
    index = index_dataset(synthetic_dataset)
    parts = three_way_split(index.labels, index.groups, seed=0)
    folds = group_kfold(index.labels, index.groups, n_splits=3, seed=0)
    write_manifest(tmp_path / "split.csv", index, parts, folds)
    rows = read_manifest(tmp_path / "split.csv")
    assert [r["split"] for r in rows] == parts.tolist()
    assert [int(r["fold"]) for r in rows] == folds.tolist()
    assert rows[0]["path"] == "benign/benign (1).png"


def test_reading_a_non_manifest_fails_clearly(tmp_path):
    (tmp_path / "other.csv").write_text("a,b\n1,2\n")
    with pytest.raises(ParameterError, match="not a split manifest"):
        read_manifest(tmp_path / "other.csv")


def test_real_busi_split_keeps_duplicates_together(real_busi):
    index = index_dataset(real_busi)
    parts = three_way_split(index.labels, index.groups, seed=0)
    _assert_groups_whole(parts, index.groups)
    assert Counter(parts.tolist())["test"] == pytest.approx(0.15 * 663, abs=8)
