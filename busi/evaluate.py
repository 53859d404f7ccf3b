"""Evaluation with the uncertainty that a test set of about a hundred scans carries.

``report`` turns true labels and class probabilities into the study's classification table
plus what a clinician needs to judge it: 95 % intervals (Wilson for proportions, bootstrap for
F1 and AUC), one-vs-rest ROC and PR curves, malignant sensitivity/specificity at a chosen
threshold and calibration. Bootstrap resamples whole near-duplicate groups when the groups are
known, because copies of one lesion are not independent evidence.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sklearn.metrics import precision_recall_curve, roc_curve

from busi.arrays import class_numbers, model_inputs
from busi.data import CLASSES, index_dataset
from busi.errors import BusiError, ParameterError
from busi.imageio import write_atomic
from busi.metrics import (
    MALIGNANT,
    average_precision,
    calibration,
    confusion_matrix,
    f1_scores,
    roc_auc,
    wilson_interval,
)
from busi.predict import Classifier, load_classifier
from busi.runs import RunFolder

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
    """The run's own predictions (its model) on one part of its split, or all of it."""
    if split not in SPLITS:
        raise ParameterError(f"split must be one of {', '.join(SPLITS)}, got '{split}'.")
    folder = RunFolder(run)
    table = folder.read_predictions()
    groups = {row["path"]: int(row["group"]) for row in folder.read_split()}
    data_dir = folder.read_config().data_dir
    chosen = np.flatnonzero((table.parts == split) | (split == "all"))
    if not len(chosen):
        raise BusiError(f"Run '{folder.path}' has no scans in its {split} split.")
    paths = [table.paths[row] for row in chosen]
    try:
        scan_groups = np.array([groups[path] for path in paths])
    except KeyError as error:
        raise BusiError(f"Run '{folder.path}': {error} is in its predictions but not in its split: train it again.") from error
    return Predictions(data_dir, paths, table.labels[chosen], table.probabilities[chosen], scan_groups, split)


def folder_predictions(classifier: Classifier, data_dir: str | os.PathLike, batch_size: int = 16, *,
                       roots: tuple[Path, ...] | None = None,
                       progress: Callable[[int, int], None] | None = None) -> Predictions:
    """Predictions of ``classifier`` on every scan of a dataset folder (split 'all'); ``roots``
    confine what is read (``index_dataset``), ``progress(done, total)`` follows the scans scored."""
    index = index_dataset(data_dir, roots=roots)
    if not index.records:
        raise BusiError(f"No readable scans in '{Path(data_dir).name}': nothing to evaluate.")
    inputs = model_inputs(index, classifier.preprocess)
    probabilities = []
    for start in range(0, len(inputs), batch_size):
        probabilities.append(classifier.probabilities(inputs[start:start + batch_size], batch_size))
        if progress:
            progress(min(start + batch_size, len(inputs)), len(inputs))
    return Predictions(index.root, [index.relative_path(r) for r in index.records], class_numbers(index),
                       np.concatenate(probabilities), index.groups, "all")


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


def callable_classes(probabilities: np.ndarray) -> list[tuple[str, str]]:
    """Per row, the two classes that some decision rule (``decide``, any threshold) can call it:
    the most probable of the non-malignant classes, and malignant."""
    others = np.asarray(probabilities, dtype=float).copy()
    others[:, MALIGNANT] = -1
    return [(CLASSES[int(row)], CLASSES[MALIGNANT]) for row in others.argmax(1)]


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

    def explain(self, p_malignant: float) -> str:
        """The flag in words, with the numbers that decided it."""
        if p_malignant >= self.threshold:
            return f"Flagged for review: p(malignant) {p_malignant:.2g}, at or above {self.threshold:.2g}"
        return f"Not flagged: p(malignant) {p_malignant:.2g}, below {self.threshold:.2g}"

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
    if not RunFolder(run).has_predictions:
        return None
    validation = run_predictions(run, "val")
    cancers = int((validation.labels == MALIGNANT).sum())
    if not cancers:
        return None
    threshold = threshold_for_sensitivity(validation.labels, validation.probabilities, target)
    point = operating_point(validation.labels, validation.probabilities, threshold)
    return ScreeningThreshold(threshold, target, cancers, point["sensitivity"], point["specificity"])


def bootstrap_rows(groups: np.ndarray, samples: int, seed: int) -> list[np.ndarray]:
    """Row numbers of each resample, drawing whole groups with replacement."""
    rng = np.random.default_rng(seed)
    unique, inverse = np.unique(groups, return_inverse=True)
    members = [np.flatnonzero(inverse == g) for g in range(len(unique))]
    return [np.concatenate([members[g] for g in rng.integers(0, len(unique), len(unique))]) for _ in range(samples)]


def percentile_interval(values: list[float]) -> tuple[float, float]:
    values = [v for v in values if not math.isnan(v)]
    if not values:
        return math.nan, math.nan
    low, high = np.percentile(values, [2.5, 97.5])
    return float(low), float(high)


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
    resamples = bootstrap_rows(np.arange(len(labels)) if groups is None else np.asarray(groups), samples, seed)
    boot_f1 = np.array([f1_scores(confusion_matrix(labels[rows], predicted[rows])) for rows in resamples])
    boot_macro = [float(row[support > 0].mean()) for row in boot_f1]

    per_class, roc, pr = {}, {}, {}
    for c, name in enumerate(CLASSES):
        precision = hits[c] / predicted_counts[c] if predicted_counts[c] else 0.0
        recall = hits[c] / support[c] if support[c] else math.nan
        per_class[name] = {
            "precision": float(precision), "precision_ci": wilson_interval(int(hits[c]), int(predicted_counts[c])),
            "recall": float(recall), "recall_ci": wilson_interval(int(hits[c]), int(support[c])),
            "f1": float(f1[c]), "f1_ci": percentile_interval(boot_f1[:, c].tolist()), "support": int(support[c]),
        }
        is_class, scores = (labels == c).astype(int), probabilities[:, c]
        if 0 < is_class.sum() < len(is_class):
            fpr, tpr, _ = roc_curve(is_class, scores)
            curve_precision, curve_recall, _ = precision_recall_curve(is_class, scores)
        else:  # one class only: the curves do not exist
            fpr = tpr = curve_precision = curve_recall = np.array([])
        roc[name] = {"fpr": fpr.tolist(), "tpr": tpr.tolist(), "auc": roc_auc(is_class, scores),
                     "auc_ci": percentile_interval([roc_auc(is_class[r], scores[r]) for r in resamples])}
        pr[name] = {"precision": curve_precision.tolist(), "recall": curve_recall.tolist(),
                    "average_precision": average_precision(is_class, scores),
                    "average_precision_ci": percentile_interval([average_precision(is_class[r], scores[r]) for r in resamples])}

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
                      "f1": float(f1[present].mean()), "f1_ci": percentile_interval(boot_macro)},
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


def format_interval(pair: tuple[float, float]) -> str:
    """A 95 % interval as the CLI and the app print it; "n/a" where it is undefined (no scans)."""
    low, high = pair
    return "n/a" if low is None or math.isnan(low) else f"{low:.2f}–{high:.2f}"


REPORT_COLUMNS = ("class", "precision", "precision 95% CI", "recall", "recall 95% CI", "F1", "F1 95% CI", "support")


def report_rows(result: dict) -> list[dict[str, str]]:
    """The study's classification table with its 95 % intervals as rows of text (``REPORT_COLUMNS``),
    one per class, then the macro and weighted averages: what the CLI prints and the app shows.
    A cell with nothing to say (an average's precision interval) is empty."""
    rows = [{"class": name, "precision": f"{row['precision']:.2f}", "precision 95% CI": format_interval(row["precision_ci"]),
             "recall": f"{row['recall']:.2f}", "recall 95% CI": format_interval(row["recall_ci"]), "F1": f"{row['f1']:.2f}",
             "F1 95% CI": format_interval(row["f1_ci"]), "support": str(row["support"])}
            for name, row in result["per_class"].items()]
    macro, weighted = result["macro_avg"], result["weighted_avg"]
    for name, average, f1_interval in (("macro avg", macro, format_interval(macro["f1_ci"])), ("weighted avg", weighted, "")):
        rows.append(dict.fromkeys(REPORT_COLUMNS, "") | {
            "class": name, "precision": f"{average['precision']:.2f}", "recall": f"{average['recall']:.2f}",
            "F1": f"{average['f1']:.2f}", "F1 95% CI": f1_interval, "support": str(result["n"])})
    return rows


def format_report(result: dict) -> str:
    """The study's table with 95 % intervals, then the malignant operating point and AUCs."""
    rows = report_rows(result)
    widths = {column: max(len(column), *(len(row[column]) for row in rows)) for column in REPORT_COLUMNS}

    def line(row: dict[str, str]) -> str:
        return "  ".join(row[column].ljust(widths[column]) if column == "class" else row[column].rjust(widths[column])
                         for column in REPORT_COLUMNS).rstrip()

    lines = [line({column: "" if column == "class" else column for column in REPORT_COLUMNS}), *map(line, rows[:-2]), "",
             *map(line, rows[-2:]),
             f"accuracy {result['accuracy']:.2f} (95% CI {format_interval(result['accuracy_ci'])}) on {result['n']} scans", "",
             "confusion matrix (rows: true, columns: predicted " + " / ".join(result["classes"]) + ")"]
    for name, counts in zip(result["classes"], result["malignant"]["confusion_matrix"]):
        lines.append(f"  {name:10}" + "".join(f"{count:6d}" for count in counts))
    point = result["malignant"]
    rule = "most probable class" if point["threshold"] is None else f"p(malignant) >= {point['threshold']:.2f}"
    lines += [
        "",
        f"malignant ({rule}): sensitivity {point['sensitivity']:.2f} ({format_interval(point['sensitivity_ci'])}), "
        f"specificity {point['specificity']:.2f} ({format_interval(point['specificity_ci'])})",
        "one-vs-rest AUC: " + ", ".join(f"{name} {curve['auc']:.2f} ({format_interval(curve['auc_ci'])})"
                                        for name, curve in result["roc"].items()),
        f"expected calibration error: {result['calibration']['ece']:.3f}",
        f"intervals: Wilson for proportions, bootstrap ({result['bootstrap']['samples']} resamples by "
        f"{result['bootstrap']['unit']}) for F1 and AUC",
    ]
    return "\n".join(lines)


def evaluate_run(run: str | os.PathLike, *, data_dir: str | os.PathLike | None = None, split: str = "test",
                 threshold: float | None = None, samples: int = BOOTSTRAP_SAMPLES,
                 roots: tuple[Path, ...] | None = None) -> tuple[Predictions, dict]:
    """Predictions and report for a run on its own split, or on every scan of ``data_dir``."""
    if data_dir is not None:
        if split != "all":
            raise ParameterError("Another data folder has no split of this run: use --split all with --data.")
        predictions = folder_predictions(load_classifier(run), data_dir, roots=roots)
    else:
        predictions = run_predictions(run, split)
    return predictions, report(predictions.labels, predictions.probabilities, threshold=threshold,
                               groups=predictions.groups, samples=samples)
