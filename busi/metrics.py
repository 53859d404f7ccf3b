"""Classification metrics with the uncertainty a small test set carries."""

from __future__ import annotations

import math

import numpy as np

from busi.data import CLASSES

MALIGNANT = CLASSES.index("malignant")


def confusion_matrix(truth: np.ndarray, predicted: np.ndarray, num_classes: int = len(CLASSES)) -> np.ndarray:
    """(C, C) counts; rows are the true class, columns the predicted one."""
    matrix = np.zeros((num_classes, num_classes), dtype=int)
    np.add.at(matrix, (np.asarray(truth), np.asarray(predicted)), 1)
    return matrix


def wilson_interval(successes: int, trials: int, z: float = 1.959964) -> tuple[float, float]:
    """95 % Wilson score interval of a proportion; (nan, nan) with no trials."""
    if trials == 0:
        return math.nan, math.nan
    p = successes / trials
    centre = (p + z * z / (2 * trials)) / (1 + z * z / trials)
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / (1 + z * z / trials)
    return max(0.0, centre - half), min(1.0, centre + half)


def summarise(truth: np.ndarray, predicted: np.ndarray) -> dict[str, float]:
    """Accuracy, macro-F1 and malignant recall: the numbers tracked while training."""
    matrix = confusion_matrix(truth, predicted)
    true_positive = np.diag(matrix).astype(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(matrix.sum(0) > 0, true_positive / matrix.sum(0), 0.0)
        recall = np.where(matrix.sum(1) > 0, true_positive / matrix.sum(1), 0.0)
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    present = matrix.sum(1) > 0  # classes absent from the truth do not drag the average
    return {
        "accuracy": float(true_positive.sum() / max(1, matrix.sum())),
        "macro_f1": float(f1[present].mean()) if present.any() else 0.0,
        "malignant_recall": float(recall[MALIGNANT]) if matrix[MALIGNANT].sum() else math.nan,
    }
