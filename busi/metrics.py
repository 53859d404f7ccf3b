"""Classification metrics with the uncertainty a small test set carries."""

from __future__ import annotations

import math

import numpy as np

from busi.data import CLASSES

MALIGNANT = CLASSES.index("malignant")
CALIBRATION_BINS = 10


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


def f1_scores(matrix: np.ndarray) -> np.ndarray:
    """Per-class F1 from a confusion matrix: 2 TP / (predicted + actual), 0 where both are 0."""
    true_positive = np.diag(matrix).astype(float)
    predicted, actual = matrix.sum(0), matrix.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(predicted + actual > 0, 2 * true_positive / (predicted + actual), 0.0)


def summarise(truth: np.ndarray, predicted: np.ndarray) -> dict[str, float]:
    """Accuracy, macro-F1 and malignant recall: the numbers tracked while training."""
    matrix = confusion_matrix(truth, predicted)
    present = matrix.sum(1) > 0  # classes absent from the truth do not drag the average
    return {
        "accuracy": float(np.trace(matrix) / max(1, matrix.sum())),
        "macro_f1": float(f1_scores(matrix)[present].mean()) if present.any() else 0.0,
        "malignant_recall": float(matrix[MALIGNANT, MALIGNANT] / matrix[MALIGNANT].sum()) if present[MALIGNANT] else math.nan,
    }


def roc_auc(positive: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve via the rank-sum statistic (ties count half); nan unless both
    classes are present. Equals sklearn's roc_auc_score at a fraction of its cost, which
    matters inside a thousand bootstrap resamples."""
    positive = positive.astype(bool)
    n_positive = int(positive.sum())
    n_negative = len(positive) - n_positive
    if not n_positive or not n_negative:
        return math.nan
    _, which, counts = np.unique(scores, return_inverse=True, return_counts=True)
    ranks = (np.cumsum(counts) - (counts - 1) / 2)[which]  # 1-based, ties share their mean rank
    return float((ranks[positive].sum() - n_positive * (n_positive + 1) / 2) / (n_positive * n_negative))


def average_precision(positive: np.ndarray, scores: np.ndarray) -> float:
    """Average precision as sklearn defines it (precision at each distinct threshold, weighted
    by the recall gained there); nan unless both classes are present."""
    positive = positive.astype(bool)
    if not 0 < positive.sum() < len(positive):
        return math.nan
    order = np.argsort(-scores, kind="stable")
    sorted_scores, hits = scores[order], positive[order]
    last_of_each_threshold = np.r_[np.flatnonzero(np.diff(sorted_scores)), len(scores) - 1]
    true_positives = np.cumsum(hits)[last_of_each_threshold]
    precision = true_positives / (last_of_each_threshold + 1)
    recall_gain = np.diff(np.r_[0, true_positives]) / hits.sum()
    return float((precision * recall_gain).sum())


def calibration(labels: np.ndarray, probabilities: np.ndarray, bins: int = CALIBRATION_BINS) -> dict:
    """Expected calibration error of the top-class confidence, with its reliability bins."""
    confidence = probabilities.max(1)
    correct = probabilities.argmax(1) == labels
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)
    table, ece = [], 0.0
    for b in range(bins):
        inside = which == b
        count = int(inside.sum())
        mean_confidence = float(confidence[inside].mean()) if count else math.nan
        accuracy = float(correct[inside].mean()) if count else math.nan
        if count:
            ece += count / len(labels) * abs(accuracy - mean_confidence)
        table.append({"lower": float(edges[b]), "upper": float(edges[b + 1]), "count": count,
                      "confidence": mean_confidence, "accuracy": accuracy})
    return {"ece": ece, "bins": table}


def apply_temperature(logits: np.ndarray, temperature: float) -> np.ndarray:
    """Softmax of ``logits / temperature``: probabilities (N, C). Log-probabilities work as
    logits too (they differ by a per-row constant, which softmax ignores)."""
    scaled = np.asarray(logits, dtype=np.float64) / temperature
    scaled -= scaled.max(1, keepdims=True)
    exponentials = np.exp(scaled)
    return exponentials / exponentials.sum(1, keepdims=True)


def fit_temperature(labels: np.ndarray, logits: np.ndarray) -> float:
    """The temperature (0.25 to 8) that minimises the negative log-likelihood of ``labels``:
    temperature scaling, fitted on validation scans. It never changes which class is most
    probable, only how confident the probabilities are."""
    if not len(labels):
        return 1.0
    candidates = np.exp(np.linspace(np.log(0.25), np.log(8.0), 161))
    rows = np.arange(len(labels))
    losses = [-np.log(np.clip(apply_temperature(logits, t)[rows, labels], 1e-300, 1)).mean() for t in candidates]
    return float(candidates[int(np.argmin(losses))])
