"""Evaluation with the uncertainty that a test set of about a hundred scans carries.

``report`` turns true labels and class probabilities into the study's classification table
plus what a clinician needs to judge it: 95 % intervals (Wilson for proportions, bootstrap for
F1 and AUC), one-vs-rest ROC and PR curves, malignant sensitivity/specificity at a chosen
threshold and calibration. Bootstrap resamples whole near-duplicate groups when the groups are
known, because copies of one lesion are not independent evidence.
"""

from __future__ import annotations

import csv
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sklearn.metrics import precision_recall_curve, roc_curve

from busi.data import CLASSES, index_dataset
from busi.errors import BusiError, ParameterError
from busi.imageio import write_atomic
from busi.metrics import MALIGNANT, calibration, confusion_matrix, f1_scores, wilson_interval
from busi.predict import Classifier, load_classifier
from busi.train import model_inputs

SPLITS = ("test", "val", "train", "all")
BOOTSTRAP_SAMPLES = 1000
# Sensitivity the screening threshold aims at: missing a cancer costs more than a false alarm.
SCREENING_SENSITIVITY = 0.9


@dataclass(frozen=True)
class Predictions:
    """What gets evaluated: one row per scan."""

    data_dir: Path
    paths: list[str]  # relative to data_dir
    labels: np.ndarray  # int (N,)
    probabilities: np.ndarray  # float (N, C)
    groups: np.ndarray  # near-duplicate group per scan
    split: str


def run_predictions(run: str | os.PathLike, split: str = "test") -> Predictions:
    """The run's own predictions (best checkpoint) on one part of its split, or all of it."""
    if split not in SPLITS:
        raise ParameterError(f"split must be one of {', '.join(SPLITS)}, got '{split}'.")
    run = Path(run)
    for name in ("predictions.csv", "split.csv", "config.json"):
        if not (run / name).is_file():
            raise BusiError(f"Run folder '{run}' has no {name}: the run did not finish. Resume it, or choose another run.")
    with open(run / "predictions.csv", newline="") as file:
        rows = list(csv.DictReader(file))
    with open(run / "split.csv", newline="") as file:
        groups = {row["path"]: int(row["group"]) for row in csv.DictReader(file)}
    chosen = [row for row in rows if split == "all" or row["split"] == split]
    if not chosen:
        raise BusiError(f"Run '{run}' has no scans in its {split} split.")
    data_dir = Path(json.loads((run / "config.json").read_text())["data_dir"])
    return Predictions(
        data_dir,
        [row["path"] for row in chosen],
        np.array([CLASSES.index(row["label"]) for row in chosen]),
        np.array([[float(row[f"p_{c}"]) for c in CLASSES] for row in chosen]),
        np.array([groups[row["path"]] for row in chosen]),
        split,
    )


def folder_predictions(classifier: Classifier, data_dir: str | os.PathLike, batch_size: int = 16) -> Predictions:
    """Predictions of ``classifier`` on every scan of another dataset folder (split 'all')."""
    index = index_dataset(data_dir)
    if not index.records:
        raise BusiError(f"No readable scans in '{data_dir}': nothing to evaluate.")
    probabilities = classifier.probabilities(model_inputs(index, classifier.preprocess), batch_size)
    return Predictions(index.root, [index.relative_path(r) for r in index.records],
                       np.array([CLASSES.index(label) for label in index.labels]), probabilities, index.groups, "all")


def decide(probabilities: np.ndarray, threshold: float | None = None) -> np.ndarray:
    """Predicted class per row: the most probable one, or malignant whenever its probability
    reaches ``threshold`` (a lower threshold trades specificity for sensitivity)."""
    if threshold is None:
        return probabilities.argmax(1)
    if not 0 <= threshold <= 1:
        raise ParameterError(f"threshold must be between 0 and 1, got {threshold}.")
    others = probabilities.copy()
    others[:, MALIGNANT] = -1
    return np.where(probabilities[:, MALIGNANT] >= threshold, MALIGNANT, others.argmax(1))


def threshold_for_sensitivity(labels: np.ndarray, probabilities: np.ndarray, target: float = SCREENING_SENSITIVITY) -> float:
    """The highest malignant threshold whose sensitivity on these (validation) scans reaches
    ``target``: as many alarms as needed to miss at most 1 - target of the cancers, no more."""
    if not 0 < target <= 1:
        raise ParameterError(f"target sensitivity must be in (0, 1], got {target}.")
    scores = np.sort(probabilities[labels == MALIGNANT, MALIGNANT])[::-1]
    if not len(scores):
        return 0.5
    needed = math.ceil(target * len(scores))  # cancers that must reach the threshold
    return float(scores[needed - 1])


def cell_rows(labels: np.ndarray, predicted: np.ndarray, true_class: int, predicted_class: int) -> np.ndarray:
    """Row numbers of the scans in one confusion-matrix cell."""
    return np.flatnonzero((labels == true_class) & (predicted == predicted_class))


def misclassified_malignant(labels: np.ndarray, probabilities: np.ndarray, threshold: float | None = None) -> list[tuple[int, str]]:
    """(row, kind) of the malignant errors: missed cancers ('false negative') first, the most
    confidently wrong on top, then benign/normal scans called malignant ('false positive')."""
    predicted = decide(probabilities, threshold)
    missed = np.flatnonzero((labels == MALIGNANT) & (predicted != MALIGNANT))
    missed = missed[np.argsort(probabilities[missed, MALIGNANT], kind="stable")]
    alarms = np.flatnonzero((labels != MALIGNANT) & (predicted == MALIGNANT))
    alarms = alarms[np.argsort(-probabilities[alarms, MALIGNANT], kind="stable")]
    return [(int(r), "false negative") for r in missed] + [(int(r), "false positive") for r in alarms]


def operating_point(labels: np.ndarray, probabilities: np.ndarray, threshold: float | None = None) -> dict:
    """Confusion matrix and malignant sensitivity/specificity with Wilson intervals: cheap
    enough for a live threshold slider."""
    predicted = decide(probabilities, threshold)
    positive, flagged = labels == MALIGNANT, predicted == MALIGNANT
    true_positives, true_negatives = int((positive & flagged).sum()), int((~positive & ~flagged).sum())
    return {
        "threshold": threshold,
        "confusion_matrix": confusion_matrix(labels, predicted).tolist(),
        "sensitivity": true_positives / positive.sum() if positive.any() else math.nan,
        "sensitivity_ci": wilson_interval(true_positives, int(positive.sum())),
        "specificity": true_negatives / (~positive).sum() if (~positive).any() else math.nan,
        "specificity_ci": wilson_interval(true_negatives, int((~positive).sum())),
    }


@dataclass(frozen=True)
class ScreeningThreshold:
    """A malignant threshold that favours sensitivity, chosen on a run's own validation scans."""

    threshold: float
    target: float  # sensitivity it was chosen for
    cancers: int  # malignant validation scans it was chosen on
    sensitivity: float  # on those validation scans
    specificity: float

    def flag(self, p_malignant: float) -> str:
        """'review' when the scan reaches the threshold, else 'none': one wording for the CLI and the app."""
        return "review" if p_malignant >= self.threshold else "none"

    def describe(self) -> str:
        """One wording for the CLI and the app."""
        return (f"Screening threshold: p(malignant) ≥ {self.threshold:.2g}, chosen on this run's {self.cancers} "
                f"malignant validation scans to catch {self.target:.0%} of cancers; there it caught "
                f"{self.sensitivity:.0%} and cleared {self.specificity:.0%} of the other scans. With so few scans, "
                "expect less sensitivity on new scans.")


def screening_threshold(run: str | os.PathLike, target: float = SCREENING_SENSITIVITY) -> ScreeningThreshold | None:
    """The threshold chosen on the run's validation scans (calibrated probabilities) to reach
    ``target`` sensitivity there, with the specificity it costs; None when the run holds no
    finished predictions (a bare checkpoint, an unfinished run) or no malignant validation scan."""
    if not (Path(run) / "predictions.csv").is_file():
        return None
    validation = run_predictions(run, "val")
    cancers = int((validation.labels == MALIGNANT).sum())
    if not cancers:
        return None
    threshold = threshold_for_sensitivity(validation.labels, validation.probabilities, target)
    point = operating_point(validation.labels, validation.probabilities, threshold)
    return ScreeningThreshold(threshold, target, cancers, point["sensitivity"], point["specificity"])


def _bootstrap_rows(groups: np.ndarray, samples: int, seed: int) -> list[np.ndarray]:
    """Row numbers of each resample, drawing whole groups with replacement."""
    rng = np.random.default_rng(seed)
    unique, inverse = np.unique(groups, return_inverse=True)
    members = [np.flatnonzero(inverse == g) for g in range(len(unique))]
    return [np.concatenate([members[g] for g in rng.integers(0, len(unique), len(unique))]) for _ in range(samples)]


def _percentile_interval(values: list[float]) -> tuple[float, float]:
    values = [v for v in values if not math.isnan(v)]
    if not values:
        return math.nan, math.nan
    low, high = np.percentile(values, [2.5, 97.5])
    return float(low), float(high)


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


def report(labels: np.ndarray, probabilities: np.ndarray, *, threshold: float | None = None,
           groups: np.ndarray | None = None, samples: int = BOOTSTRAP_SAMPLES, seed: int = 0) -> dict:
    """The full evaluation as plain JSON-ready values (see the module docstring)."""
    labels, probabilities = np.asarray(labels), np.asarray(probabilities, dtype=float)
    if len(labels) == 0 or probabilities.shape != (len(labels), len(CLASSES)):
        raise ParameterError(f"Expected probabilities of shape ({len(labels)}, {len(CLASSES)}) for {len(labels)} labels, "
                             f"got {probabilities.shape}.")
    predicted = decide(probabilities, threshold)
    matrix = confusion_matrix(labels, predicted)
    support, predicted_counts, hits = matrix.sum(1), matrix.sum(0), np.diag(matrix)
    f1 = f1_scores(matrix)
    resamples = _bootstrap_rows(np.arange(len(labels)) if groups is None else np.asarray(groups), samples, seed)
    boot_f1 = np.array([f1_scores(confusion_matrix(labels[rows], predicted[rows])) for rows in resamples])
    boot_macro = [float(row[support > 0].mean()) for row in boot_f1]

    per_class, roc, pr = {}, {}, {}
    for c, name in enumerate(CLASSES):
        precision = hits[c] / predicted_counts[c] if predicted_counts[c] else 0.0
        recall = hits[c] / support[c] if support[c] else math.nan
        per_class[name] = {
            "precision": float(precision), "precision_ci": wilson_interval(int(hits[c]), int(predicted_counts[c])),
            "recall": float(recall), "recall_ci": wilson_interval(int(hits[c]), int(support[c])),
            "f1": float(f1[c]), "f1_ci": _percentile_interval(boot_f1[:, c].tolist()), "support": int(support[c]),
        }
        is_class, scores = (labels == c).astype(int), probabilities[:, c]
        if 0 < is_class.sum() < len(is_class):
            fpr, tpr, _ = roc_curve(is_class, scores)
            curve_precision, curve_recall, _ = precision_recall_curve(is_class, scores)
        else:  # one class only: the curves do not exist
            fpr = tpr = curve_precision = curve_recall = np.array([])
        roc[name] = {"fpr": fpr.tolist(), "tpr": tpr.tolist(), "auc": roc_auc(is_class, scores),
                     "auc_ci": _percentile_interval([roc_auc(is_class[r], scores[r]) for r in resamples])}
        pr[name] = {"precision": curve_precision.tolist(), "recall": curve_recall.tolist(),
                    "average_precision": average_precision(is_class, scores),
                    "average_precision_ci": _percentile_interval([average_precision(is_class[r], scores[r]) for r in resamples])}

    present = support > 0
    weights = support / support.sum()
    rows = [per_class[name] for name in CLASSES]
    return {
        "n": int(len(labels)),
        "classes": list(CLASSES),
        "per_class": per_class,
        "accuracy": float(hits.sum() / len(labels)),
        "accuracy_ci": wilson_interval(int(hits.sum()), len(labels)),
        "macro_avg": {"precision": float(np.mean([r["precision"] for r, p in zip(rows, present) if p])),
                      "recall": float(np.mean([r["recall"] for r, p in zip(rows, present) if p])),
                      "f1": float(f1[present].mean()), "f1_ci": _percentile_interval(boot_macro)},
        "weighted_avg": {"precision": float(sum(w * r["precision"] for w, r in zip(weights, rows))),
                         "recall": float(sum(w * (r["recall"] if p else 0) for w, r, p in zip(weights, rows, present))),
                         "f1": float((weights * f1).sum())},
        "malignant": operating_point(labels, probabilities, threshold),
        "roc": roc,
        "pr": pr,
        "calibration": calibration(labels, probabilities),
        "bootstrap": {"samples": samples, "unit": "scan" if groups is None else "near-duplicate group", "seed": seed},
    }


def _json_ready(value):
    """NaN is not JSON: undefined values become null."""
    if isinstance(value, float):
        return None if math.isnan(value) else value
    if isinstance(value, dict):
        return {k: _json_ready(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_ready(v) for v in value]
    return value


def report_json(result: dict) -> str:
    return json.dumps(_json_ready(result), indent=2)


def write_report_json(path: str | os.PathLike, result: dict) -> None:
    write_atomic(path, report_json(result))


def _interval(pair: tuple[float, float]) -> str:
    low, high = pair
    return "      n/a    " if math.isnan(low) else f"[{low:.2f}, {high:.2f}]"


def format_report(result: dict) -> str:
    """The study's table with 95 % intervals, then the malignant operating point and AUCs."""
    lines = [f"{'':12}{'precision':>10} {'95% CI':>13} {'recall':>8} {'95% CI':>13} {'f1':>6} {'95% CI':>13} {'support':>8}"]
    for name, row in result["per_class"].items():
        lines.append(f"{name:12}{row['precision']:10.2f} {_interval(row['precision_ci'])} {row['recall']:8.2f} "
                     f"{_interval(row['recall_ci'])} {row['f1']:6.2f} {_interval(row['f1_ci'])} {row['support']:8d}")
    macro, weighted = result["macro_avg"], result["weighted_avg"]
    lines += [
        "",
        f"{'accuracy':12}{'':47}{result['accuracy']:6.2f} {_interval(result['accuracy_ci'])} {result['n']:8d}",
        f"{'macro avg':12}{macro['precision']:10.2f} {'':13} {macro['recall']:8.2f} {'':13} {macro['f1']:6.2f} "
        f"{_interval(macro['f1_ci'])} {result['n']:8d}",
        f"{'weighted avg':12}{weighted['precision']:10.2f} {'':13} {weighted['recall']:8.2f} {'':13} {weighted['f1']:6.2f} "
        f"{'':13} {result['n']:8d}",
        "",
        "confusion matrix (rows: true, columns: predicted " + " / ".join(result["classes"]) + ")",
    ]
    for name, counts in zip(result["classes"], result["malignant"]["confusion_matrix"]):
        lines.append(f"  {name:10}" + "".join(f"{count:6d}" for count in counts))
    point = result["malignant"]
    rule = "most probable class" if point["threshold"] is None else f"p(malignant) >= {point['threshold']:.2f}"
    lines += [
        "",
        f"malignant ({rule}): sensitivity {point['sensitivity']:.2f} {_interval(point['sensitivity_ci'])}, "
        f"specificity {point['specificity']:.2f} {_interval(point['specificity_ci'])}",
        "one-vs-rest AUC: " + ", ".join(f"{name} {curve['auc']:.2f} {_interval(curve['auc_ci'])}"
                                        for name, curve in result["roc"].items()),
        f"expected calibration error: {result['calibration']['ece']:.3f}",
        f"intervals: Wilson for proportions, bootstrap ({result['bootstrap']['samples']} resamples by "
        f"{result['bootstrap']['unit']}) for F1 and AUC",
    ]
    return "\n".join(lines)


def evaluate_run(run: str | os.PathLike, *, data_dir: str | os.PathLike | None = None, split: str = "test",
                 threshold: float | None = None, samples: int = BOOTSTRAP_SAMPLES) -> tuple[Predictions, dict]:
    """Predictions and report for a run on its own split, or on every scan of ``data_dir``."""
    if data_dir is not None:
        if split != "all":
            raise ParameterError("Another data folder has no split of this run: use --split all with --data.")
        predictions = folder_predictions(load_classifier(run), data_dir)
    else:
        predictions = run_predictions(run, split)
    return predictions, report(predictions.labels, predictions.probabilities, threshold=threshold,
                               groups=predictions.groups, samples=samples)
