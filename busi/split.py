"""Stratified, seeded, group-aware splits: near-duplicate groups never straddle two parts.

The study's proportions come from two 85/15 cuts: 15 % test, then 15 % of the rest for
validation, leaving 72.25 / 12.75 / 15 %.
"""

from __future__ import annotations

import csv
import io
import os
from collections import Counter

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold

from busi.data import DatasetIndex
from busi.errors import ParameterError
from busi.imageio import write_atomic

TEST_FRACTION = 0.15
VAL_FRACTION = 0.15  # of what remains after the test cut
PARTS = ("train", "val", "test")
MANIFEST_COLUMNS = ("path", "label", "group", "split", "fold")


def _check_fraction(name: str, value: float) -> None:
    if not 0 < value < 1:
        raise ParameterError(f"{name} must be between 0 and 1 (exclusive), got {value}.")


def holdout_groups(labels: list[str], groups: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """bool per item: True for the held-out part, about ``fraction`` of every class.

    Greedy: groups in seeded random order (largest first, so they can still be balanced by the
    small ones) join the hold-out whenever that brings each class's count closer to its target.
    """
    _check_fraction("fraction", fraction)
    labels_array = np.asarray(labels)
    classes = sorted(set(labels))
    targets = {label: fraction * count for label, count in Counter(labels).items()}
    taken = dict.fromkeys(classes, 0.0)
    rng = np.random.default_rng(seed)
    unique_groups = rng.permutation(np.unique(groups))
    sizes = np.array([np.sum(groups == group) for group in unique_groups])
    held = np.zeros(len(labels), dtype=bool)
    for group in unique_groups[np.argsort(-sizes, kind="stable")]:
        members = groups == group
        counts = Counter(labels_array[members].tolist())
        error_now = sum(abs(targets[c] - taken[c]) for c in counts)
        error_then = sum(abs(targets[c] - taken[c] - counts[c]) for c in counts)
        if error_then < error_now:
            held |= members
            for label, count in counts.items():
                taken[label] += count
    if not held.any() and len(unique_groups) > 1:
        # Tiny data: every group overshoots the target, yet an empty part is useless.
        held |= groups == unique_groups[np.argmin(sizes)]
    return held


def three_way_split(
    labels: list[str],
    groups: np.ndarray,
    *,
    seed: int = 0,
    test_fraction: float = TEST_FRACTION,
    val_fraction: float = VAL_FRACTION,
) -> np.ndarray:
    """'train' / 'val' / 'test' per item; ``val_fraction`` is taken of what the test cut left."""
    groups = np.asarray(groups)
    return _carve_validation(labels, groups, holdout_groups(labels, groups, test_fraction, seed), val_fraction, seed)


def _carve_validation(labels: list[str], groups: np.ndarray, test: np.ndarray, val_fraction: float, seed: int) -> np.ndarray:
    """'test' where ``test`` holds, 'val' for a group-aware share of the rest, 'train' after."""
    parts = np.full(len(labels), "train", dtype=object)
    parts[test] = "test"
    rest = np.flatnonzero(~test)
    val = holdout_groups([labels[i] for i in rest], groups[rest], val_fraction, seed + 1)
    parts[rest[val]] = "val"
    return parts


def cross_validation_split(labels: list[str], groups: np.ndarray, *, fold: int, n_splits: int = 5, seed: int = 0,
                           val_fraction: float = VAL_FRACTION) -> np.ndarray:
    """'train' / 'val' / 'test' for one fold of group-aware K-fold cross-validation: the fold is
    the test part and validation (for model selection) is carved from the other folds."""
    if not 0 <= fold < n_splits:
        raise ParameterError(f"fold must be between 0 and {n_splits - 1}, got {fold}.")
    groups = np.asarray(groups)
    folds = group_kfold(labels, groups, n_splits=n_splits, seed=seed)
    return _carve_validation(labels, groups, folds == fold, val_fraction, seed)


def group_kfold(labels: list[str], groups: np.ndarray, *, n_splits: int = 5, seed: int = 0) -> np.ndarray:
    """Fold number (0 .. n_splits-1) per item, stratified by label, groups kept whole."""
    if n_splits < 2:
        raise ParameterError(f"Cross-validation needs at least 2 folds, got {n_splits}.")
    if len(np.unique(groups)) < n_splits:
        raise ParameterError(
            f"Only {len(np.unique(groups))} independent scan groups: too few for {n_splits} folds."
        )
    folds = np.zeros(len(labels), dtype=int)
    splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    for fold, (_, held) in enumerate(splitter.split(np.zeros(len(labels)), labels, groups)):
        folds[held] = fold
    return folds


def manifest_csv(index: DatasetIndex, parts: np.ndarray, folds: np.ndarray | None = None) -> str:
    """CSV text: one row per scan with its path relative to the dataset root."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(MANIFEST_COLUMNS)
    for position, record in enumerate(index.records):
        fold = "" if folds is None else int(folds[position])
        writer.writerow([index.relative_path(record), record.label, record.group, parts[position], fold])
    return buffer.getvalue()


def write_manifest(path: str | os.PathLike, index: DatasetIndex, parts: np.ndarray, folds: np.ndarray | None = None) -> None:
    write_atomic(path, manifest_csv(index, parts, folds))


def read_manifest(path: str | os.PathLike) -> list[dict[str, str]]:
    """Rows of a manifest written by ``write_manifest``."""
    with open(path, newline="") as file:
        rows = list(csv.DictReader(file))
    if rows and set(MANIFEST_COLUMNS) - set(rows[0]):
        raise ParameterError(f"'{path}' is not a split manifest: expected columns {', '.join(MANIFEST_COLUMNS)}.")
    return rows
