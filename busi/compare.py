"""Runs compared on the same scans.

Two runs scored on different scans cannot be compared: a test set of about a hundred scans moves
accuracy by ±7 points on its own. ``on_common_scans`` cuts each run's predictions to the scans
every run scored; ``paired_differences`` then says how far apart two runs are on those scans,
with a bootstrap interval that resamples whole near-duplicate groups and keeps the pairing, so
that "B is better than A" is only read where the interval excludes zero.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from busi.errors import BusiError
from busi.evaluate import BOOTSTRAP_SAMPLES, Predictions, bootstrap_rows, decide, format_interval, percentile_interval
from busi.metrics import MALIGNANT

COMPARE_COLUMNS = ("run", "scans", "accuracy", "macro-F1", "malignant sensitivity", "malignant specificity", "malignant AUC")


def _keys(predictions: Predictions) -> list[tuple[str, str]]:
    root = Path(predictions.data_dir).resolve()
    return [(str(root), path) for path in predictions.paths]


def on_common_scans(runs: Sequence[Predictions]) -> list[Predictions]:
    """Each run's predictions cut to the scans that every one of them scored (the same data folder
    and file), in the first run's order. Raises BusiError when they share no scan, or when a scan
    carries a different label in two runs (its folder was re-sorted between them)."""
    common = set(_keys(runs[0]))
    for predictions in runs[1:]:
        common &= set(_keys(predictions))
    order = [key for key in _keys(runs[0]) if key in common]
    if not order:
        raise BusiError("These runs scored no scan in common (other data, or other splits of it): "
                        "compare them on every scan of the data in use instead.")
    cut = []
    for predictions in runs:
        rows = {key: row for row, key in enumerate(_keys(predictions))}
        chosen = np.array([rows[key] for key in order])
        cut.append(Predictions(predictions.data_dir, [predictions.paths[row] for row in chosen], predictions.labels[chosen],
                               predictions.probabilities[chosen], predictions.groups[chosen], predictions.split))
    for predictions in cut[1:]:
        if not np.array_equal(predictions.labels, cut[0].labels):
            raise BusiError("A scan has different classes in these runs (the data folder changed between them): "
                            "compare them on every scan of the data in use instead.")
    return cut


def with_interval(value: float, interval: tuple[float, float], sign: str = "") -> str:
    """A value and its 95 % interval in one cell: "0.81 (0.73–0.88)"."""
    return f"{value:{sign}.2f} ({format_interval(interval)})"


def compare_row(name: str, result: dict) -> dict[str, str]:
    """One run's line of the comparison table (``COMPARE_COLUMNS``) from its ``evaluate.report``,
    each value with its 95 % interval."""
    point, roc = result["malignant"], result["roc"]["malignant"]
    return {"run": name, "scans": str(result["n"]),
            "accuracy": with_interval(result["accuracy"], result["accuracy_ci"]),
            "macro-F1": with_interval(result["macro_avg"]["f1"], result["macro_avg"]["f1_ci"]),
            "malignant sensitivity": with_interval(point["sensitivity"], point["sensitivity_ci"]),
            "malignant specificity": with_interval(point["specificity"], point["specificity_ci"]),
            "malignant AUC": with_interval(roc["auc"], roc["auc_ci"])}


def _accuracy(labels: np.ndarray, predicted: np.ndarray) -> float:
    return float((labels == predicted).mean())


def _sensitivity(labels: np.ndarray, predicted: np.ndarray) -> float:
    cancers = labels == MALIGNANT
    return float((predicted[cancers] == MALIGNANT).mean()) if cancers.any() else float("nan")


def paired_differences(reference: Predictions, other: Predictions, *, samples: int = BOOTSTRAP_SAMPLES,
                       seed: int = 0) -> dict[str, tuple[float, tuple[float, float]]]:
    """``other`` minus ``reference`` in accuracy and malignant sensitivity (each scan called its most
    probable class) on the same scans, each with a 95 % paired bootstrap interval."""
    if reference.paths != other.paths:
        raise BusiError("Paired differences need both runs on the same scans in the same order (see on_common_scans).")
    labels = reference.labels
    first, second = decide(reference.probabilities), decide(other.probabilities)
    resamples = bootstrap_rows(reference.groups, samples, seed)
    differences = {}
    for name, measure in (("accuracy", _accuracy), ("malignant sensitivity", _sensitivity)):
        observed = measure(labels, second) - measure(labels, first)
        spread = [measure(labels[rows], second[rows]) - measure(labels[rows], first[rows]) for rows in resamples]
        differences[name] = (observed, percentile_interval(spread))
    return differences
