"""Accuracy of a recipe from scratch on real data, by group-aware cross-validation.

    .venv/bin/python -m bench.accuracy --recipe study --folds 5 [--only 0,1] [--data ../shared/busi]
    .venv/bin/python -m bench.accuracy --recipe study --folds 0      # the single 72/13/15 split
    .venv/bin/python -m bench.accuracy --recipe best --folds 5 --tta  # the same models, flip-averaged
    .venv/bin/python -m bench.accuracy --recipe best --folds 5 --last  # their final epochs instead
    .venv/bin/python -m bench.accuracy --recipe best --folds 5 --members 2  # ensembles of two per fold
    .venv/bin/python -m bench.accuracy --recipe scratch --folds 5 --pre size=160 --set mixup=0  # a variant

Each fold trains into ``bench/out/accuracy-RECIPE/fold-K`` (a normal run folder; an existing
finished fold is reused, so an interrupted benchmark resumes) and is scored on its held-out
fold. The table gives every fold, the mean ± standard deviation over folds, and the pooled
out-of-fold predictions with 95 % intervals (bootstrap by near-duplicate group).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import statistics
import time
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from busi.config import JobOptions, TrainConfig
from busi.data import index_dataset, load_scan
from busi.evaluate import (
    SCREENING_SENSITIVITY,
    Predictions,
    decide,
    operating_point,
    report,
    run_predictions,
    threshold_for_sensitivity,
)
from busi.events import Done
from busi.metrics import MALIGNANT, apply_temperature, calibration, fit_temperature
from busi.model import batched_logits
from busi.predict import load_classifier
from busi.preprocess import PreprocessConfig
from busi.recipes import RECIPES, recipe
from busi.runs import CHECKPOINT, RunFolder
from busi.train import train

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "busi"
OUT = Path(__file__).resolve().parent / "out"
# The table's score columns, one per fold row; bench.screen reads them back by these names.
COLUMNS = ("accuracy", "macro_f1", "malignant_recall", "benign_recall", "normal_recall", "malignant_auc", "sens@thr", "spec@thr",
           "ece_before", "ece", "minutes")
# Beside each fold's run: its training time, so a reused fold still reports what it cost.
TRAIN_SECONDS = "bench-train-seconds.txt"


def _train_fold(data: Path, run: Path, config: TrainConfig, preprocess: PreprocessConfig, job: JobOptions = JobOptions()) -> float:
    """Wall seconds of training; for a finished run that is reused, the seconds it took then (NaN
    when they were not recorded), so a table of reused folds does not claim they cost nothing."""
    if RunFolder(run).has_predictions:
        _check_settings(run, config, preprocess)
        recorded = run / TRAIN_SECONDS
        return float(recorded.read_text()) if recorded.is_file() else math.nan
    started = time.perf_counter()
    events = list(train(data, run, config, preprocess, job=job))
    if not isinstance(events[-1], Done):
        raise SystemExit(f"{run}: {events[-1]}")
    seconds = time.perf_counter() - started
    (run / TRAIN_SECONDS).write_text(f"{seconds:.1f}\n")
    return seconds


def _check_settings(run: Path, config: TrainConfig, preprocess: PreprocessConfig) -> None:
    """Stop when a finished run was trained with other settings than asked for (how the job ran
    aside), e.g. before a recipe changed: its scores must not be reported under these settings."""
    saved = RunFolder(run).read_config()
    differing = [f"{name} {getattr(old, name)!r} -> {getattr(new, name)!r}"
                 for old, new in ((saved.train, config), (saved.preprocess, preprocess))
                 for name in (field.name for field in dataclasses.fields(new)) if getattr(old, name) != getattr(new, name)]
    if differing:
        raise SystemExit(f"{run} was trained with other settings ({'; '.join(differing)}): move it away to train "
                         "it again with these.")


def _calibrated(run: Path, test, validation) -> tuple[np.ndarray, float]:
    """Test probabilities after temperature scaling, and the test ECE before it. Runs made
    before the engine calibrated (no 'temperature' in metrics.json) are scaled here, fitting on
    their validation scans exactly as the engine does (log-probabilities stand in for logits)."""
    metrics = RunFolder(run).read_metrics() or {}
    if "temperature" in metrics:
        return test.probabilities, metrics["test"]["ece_before_scaling"]
    log_validation = np.log(np.clip(validation.probabilities, 1e-12, 1))
    temperature = fit_temperature(validation.labels, log_validation)
    calibrated = apply_temperature(np.log(np.clip(test.probabilities, 1e-12, 1)), temperature)
    return calibrated, calibration(test.labels, test.probabilities)["ece"]


def _rescored(run: Path, test: Predictions, validation: Predictions, *, flip: bool,
              last: bool) -> tuple[Predictions, Predictions, float]:
    """The run's model scored afresh: its final epoch's weights instead of the validation-chosen
    ones when ``last``, and with test-time augmentation (logits averaged over each scan and its
    mirror image) when ``flip``; temperature-scaled afresh on the validation scans. With the test
    ECE before that scaling."""
    classifier = load_classifier(run / CHECKPOINT if last else run)
    index = index_dataset(test.data_dir)
    logits = []
    for part in (test, validation):
        inputs = np.stack([classifier.pipeline.model_input(load_scan(index.record(path))) for path in part.paths])
        views = (inputs, np.ascontiguousarray(inputs[:, :, ::-1])) if flip else (inputs,)
        logits.append(sum(batched_logits(classifier.model, view, classifier.device, 32, classifier.normalisation).numpy()
                          for view in views) / len(views))
    temperature = fit_temperature(validation.labels, logits[1])
    test, validation = (dataclasses.replace(part, probabilities=apply_temperature(part_logits, temperature))
                        for part, part_logits in zip((test, validation), logits))
    return test, validation, calibration(test.labels, apply_temperature(logits[0], 1.0))["ece"]


def _overridden(config, items: list[str]):
    """``config`` with each NAME=VALUE in ``items`` applied, the value parsed as the field's type."""
    overrides = {}
    for item in items:
        name, _, value = item.partition("=")
        if not hasattr(config, name) or not value:
            raise SystemExit(f"'{item}': expected NAME=VALUE with NAME one of {', '.join(sorted(vars(config)))}")
        current = getattr(config, name)
        overrides[name] = value.lower() in ("1", "true", "yes") if isinstance(current, bool) else type(current)(value)
    return dataclasses.replace(config, **overrides)


def results_folder(recipe_name: str, overrides: list[str], seed: int, folds: int) -> Path:
    """Where a variant's folds live: one folder per recipe, overrides and seed, so finished folds
    are found again; a path among the values (``pretrained=/weights/r18.pth``) stays one folder."""
    variant = "".join(f"-{item}".replace("/", "_") for item in sorted(overrides))
    return OUT / f"accuracy-{recipe_name}{variant}-seed{seed}" / (f"{folds}fold" if folds else "split")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--recipe", choices=sorted(RECIPES), default="study")
    parser.add_argument("--folds", type=int, default=5, help="0 = the single three-way split")
    parser.add_argument("--only", help="comma-separated folds to run (default: all)")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--members", type=int, default=1,
                        help="ensemble of this many models per fold (same split, other initialisations)")
    parser.add_argument("--tta", action="store_true", help="score each fold's model on scans and their mirror images")
    parser.add_argument("--last", action="store_true",
                        help="score each fold's final-epoch weights instead of those chosen on validation")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                        help="override one training setting, for ablations (e.g. --set mask_weight=0)")
    parser.add_argument("--pre", action="append", default=[], metavar="NAME=VALUE",
                        help="override one preprocessing setting (e.g. --pre size=160)")
    args = parser.parse_args()
    chosen = recipe(args.recipe)
    config = dataclasses.replace(_overridden(chosen.train, args.set), seed=args.seed, folds=args.folds)
    preprocess = _overridden(chosen.preprocess, args.pre)
    job = JobOptions(threads=args.threads)
    folds = range(args.folds) if args.folds else [0]
    if args.only:
        folds = [int(f) for f in args.only.split(",")]
    out = results_folder(args.recipe, args.set + args.pre, args.seed, args.folds)

    scored = []
    for fold in folds:
        seconds, members = 0.0, []
        for member in range(args.members):
            run = out / (f"fold-{fold}" if member == 0 else f"fold-{fold}-member-{member}")
            seconds += _train_fold(args.data, run, dataclasses.replace(config, fold=fold, member=member), preprocess, job)
            test, validation = run_predictions(run, "test"), run_predictions(run, "val")
            if args.tta or args.last:
                test, validation, ece_before = _rescored(run, test, validation, flip=args.tta, last=args.last)
                calibrated = test.probabilities
            else:
                calibrated, ece_before = _calibrated(run, test, validation)
            members.append((test, validation, calibrated, ece_before))
        test, validation = members[0][0], members[0][1]
        if any(m[0].paths != test.paths for m in members):
            raise SystemExit(f"fold {fold}: the ensemble's members were tested on different scans")
        if args.members > 1:  # the ensemble averages its members' calibrated probabilities
            calibrated = np.mean([m[2] for m in members], axis=0)
            validation = dataclasses.replace(validation, probabilities=np.mean([m[1].probabilities for m in members], axis=0))
            ece_before = statistics.mean(m[3] for m in members)
        scored.append(scored_fold(fold, test, validation, calibrated, ece_before, seconds))
    print(f"{out.parent.name}, data {args.data}" + (", flip-averaged (TTA)" if args.tta else "")
          + (", final-epoch weights" if args.last else "") + (f", ensembles of {args.members} (ece_before: the members' mean; minutes: all members)" if args.members > 1 else ""))
    print_table(scored)


@dataclasses.dataclass(frozen=True)
class ScoredFold:
    row: dict  # the fold's line of the table
    labels: np.ndarray
    probabilities: np.ndarray  # calibrated
    groups: np.ndarray
    flagged: np.ndarray  # bool: called malignant at the validation-chosen threshold


def scored_fold(fold: int, test: Predictions, validation: Predictions, calibrated: np.ndarray, ece_before: float,
                seconds: float) -> ScoredFold:
    """One fold's scores from its calibrated test probabilities; the malignant threshold is chosen
    on the validation scans only, then applied to the test fold."""
    result = report(test.labels, calibrated, groups=test.groups, samples=200)
    threshold = threshold_for_sensitivity(validation.labels, validation.probabilities, SCREENING_SENSITIVITY)
    point = operating_point(test.labels, calibrated, threshold)
    row = {"fold": fold, "n": result["n"], "accuracy": result["accuracy"], "macro_f1": result["macro_avg"]["f1"],
           "malignant_recall": result["per_class"]["malignant"]["recall"],
           "benign_recall": result["per_class"]["benign"]["recall"],
           "normal_recall": result["per_class"]["normal"]["recall"],
           "malignant_auc": result["roc"]["malignant"]["auc"],
           "sens@thr": point["sensitivity"], "spec@thr": point["specificity"],
           "ece_before": ece_before, "ece": result["calibration"]["ece"], "minutes": seconds / 60}
    return ScoredFold(row, test.labels, calibrated, test.groups, decide(calibrated, threshold) == MALIGNANT)


def recorded(values: Iterable[float]) -> list[float]:
    """The values that were measured: a fold finished from its checkpoint after an interruption
    has no training time (NaN), and must count neither as free nor as a failure."""
    return [value for value in values if not math.isnan(value)]


def _mean_sd(values: list[float]) -> str:
    kept = recorded(values)
    mean = statistics.mean(kept) if kept else math.nan
    sd = statistics.stdev(kept) if len(kept) > 1 else math.nan
    return f"{mean:9.3f} ± {sd:4.3f}"


def print_table(scored: list[ScoredFold]) -> None:
    """Every fold, the mean ± sd over folds, and the pooled out-of-fold scores with 95 % intervals."""
    rows = [fold.row for fold in scored]
    print(f"{'fold':>6} {'n':>4} " + " ".join(f"{c:>16}" for c in COLUMNS))
    print(f"(sens@thr, spec@thr: malignant sensitivity and specificity at the threshold chosen on validation for "
          f"sensitivity {SCREENING_SENSITIVITY})")
    for row in rows:
        print(f"{row['fold']:>6} {row['n']:>4} " + " ".join(f"{row[c]:16.3f}" for c in COLUMNS))
    if len(rows) > 1:
        print(f"{'mean':>6} {'':>4} " + " ".join(_mean_sd([r[c] for r in rows]) for c in COLUMNS))
    labels = np.concatenate([fold.labels for fold in scored])
    pooled = report(labels, np.concatenate([fold.probabilities for fold in scored]),
                    groups=np.concatenate([fold.groups for fold in scored]))
    malignant = pooled["per_class"]["malignant"]
    print(f"pooled ({pooled['n']} out-of-fold scans): accuracy {pooled['accuracy']:.3f} "
          f"[{pooled['accuracy_ci'][0]:.3f}, {pooled['accuracy_ci'][1]:.3f}], macro-F1 {pooled['macro_avg']['f1']:.3f} "
          f"[{pooled['macro_avg']['f1_ci'][0]:.3f}, {pooled['macro_avg']['f1_ci'][1]:.3f}], malignant recall "
          f"{malignant['recall']:.3f} [{malignant['recall_ci'][0]:.3f}, {malignant['recall_ci'][1]:.3f}], malignant AUC "
          f"{pooled['roc']['malignant']['auc']:.3f} [{pooled['roc']['malignant']['auc_ci'][0]:.3f}, "
          f"{pooled['roc']['malignant']['auc_ci'][1]:.3f}], "
          f"ECE {pooled['calibration']['ece']:.3f}")
    flagged_all, truth = np.concatenate([fold.flagged for fold in scored]), labels == MALIGNANT
    sensitivity, specificity = flagged_all[truth].mean(), (~flagged_all[~truth]).mean()
    print(f"pooled at the validation-chosen thresholds: malignant sensitivity {sensitivity:.3f}, specificity {specificity:.3f}")
    for name in ("benign", "malignant", "normal"):
        row = pooled["per_class"][name]
        print(f"  {name:9} recall {row['recall']:.3f} [{row['recall_ci'][0]:.3f}, {row['recall_ci'][1]:.3f}] "
              f"precision {row['precision']:.3f} f1 {row['f1']:.3f}")


if __name__ == "__main__":
    main()
