"""The two-phase screen's rule (bench/screen.py): what qualifies, what phase 2 runs, what is adopted."""

import contextlib
import io
import sys

import numpy as np
import pytest

import bench.screen as screen
from bench.accuracy import COLUMNS, ScoredFold, print_table
from bench.screen import RECIPE, SCORES, adopted, adopted_by_spread, fold_row, pick

STRONG, BIG = ("--set", "augment=strong"), ("--pre", "size=224")


def _row(accuracy, malignant_auc):
    """A fold's scores: macro-F1 moving with accuracy, the rest fixed."""
    return dict.fromkeys(SCORES, 0.5) | {"accuracy": accuracy, "macro_f1": accuracy, "malignant_auc": malignant_auc}


def _gains(accuracy, macro_f1, malignant_recall=0.0, folds=5, malignant_auc=0.01):
    return {score: [{"accuracy": accuracy, "macro_f1": macro_f1, "malignant_recall": malignant_recall,
                     "malignant_auc": malignant_auc}.get(score, 0.0)] * folds for score in SCORES}


def test_the_fold_row_is_read_from_the_benchmark_table(tmp_path):
    log = tmp_path / "fold.log"
    log.write_text("accuracy-best-seed1, data busi\n  fold    n  accuracy  macro_f1\n(a note)\n     3  132  0.689  0.674\n")
    assert fold_row(log, 3) == {"fold": 3.0, "n": 132.0, "accuracy": 0.689, "macro_f1": 0.674}
    assert fold_row(log, 0) is None
    log.write_text("Traceback (most recent call last):\n")
    assert fold_row(log, 3) is None


def test_the_fold_row_reads_back_what_the_benchmark_prints(tmp_path):
    labels = np.array([0, 1, 2, 0, 1, 2])
    row = {"fold": 3, "n": 6} | {column: round(0.1 + 0.05 * i, 3) for i, column in enumerate(COLUMNS)}
    fold = ScoredFold(row, labels, np.eye(3)[labels] * 0.8 + 0.2 / 3, np.arange(6), labels == 1)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        print_table([fold])
    log = tmp_path / "fold.log"
    log.write_text(printed.getvalue())
    assert fold_row(log, 3) == pytest.approx({name: float(value) for name, value in row.items()})


def test_the_table_averages_training_time_over_the_folds_that_recorded_it():
    labels = np.array([0, 1, 2, 0, 1, 2])
    folds = [ScoredFold({"fold": fold, "n": 6} | dict.fromkeys(COLUMNS, 0.5) | {"minutes": minutes}, labels,
                        np.eye(3)[labels] * 0.8 + 0.2 / 3, np.arange(6), labels == 1)
             for fold, minutes in ((0, 20.0), (1, float("nan")), (2, 30.0))]
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        print_table(folds)
    mean_line = next(line for line in printed.getvalue().splitlines() if line.lstrip().startswith("mean"))
    assert mean_line.split("±")[-2].split()[-1] == "25.000" and mean_line.split("±")[-1].strip() == "7.071"


def test_phase_two_runs_the_best_qualified_variant_else_the_best_gain_for_information():
    assert pick({STRONG: _gains(0.04, 0.03), BIG: _gains(0.05, 0.05, malignant_recall=-0.01)}, 0.03) == (STRONG, True)
    assert pick({STRONG: _gains(0.04, 0.02), BIG: _gains(0.01, 0.02)}, 0.03) == (STRONG, False)
    assert pick({STRONG: _gains(0.04, 0.04, folds=4)}, 0.03) == (STRONG, False)  # a missing fold cannot qualify
    assert pick({STRONG: _gains(0.01, -0.02), BIG: _gains(-0.01, 0.0)}, 0.03) == (None, False)


@pytest.mark.parametrize("fresh, qualified, expected", [
    (_gains(0.02, 0.015, folds=10), True, True),
    (_gains(0.02, 0.015, folds=10), False, False),
    (_gains(0.02, 0.014, folds=10), True, False),
    (_gains(0.02, 0.02, malignant_recall=-0.011, folds=10), True, False),
    (_gains(0.02, 0.02, malignant_auc=0.0, folds=10), True, False),
    (_gains(0.02, 0.02, folds=9), True, False),
])
def test_a_variant_is_adopted_only_by_the_fresh_partitions(fresh, qualified, expected):
    assert adopted(fresh, qualified, 0.015) is expected


def test_the_screen_pairs_each_fold_with_the_recipe_and_runs_phase_two_on_fresh_partitions(tmp_path, monkeypatch, capsys):
    scores = {RECIPE: 0.68, STRONG: 0.72, BIG: 0.69}
    asked = []

    def fake_run_folds(jobs, args, deadline):
        asked.append(sorted({(options, seed) for options, seed, _ in jobs}))
        return {job: _row(scores[job[0]] + (0.01 if job[0] == STRONG and job[1] == 2 else 0),
                         malignant_auc=0.87 if job[0] == STRONG else 0.86) for job in jobs}

    monkeypatch.setattr(screen, "run_folds", fake_run_folds)
    monkeypatch.setattr(sys, "argv", ["screen", "--data", str(tmp_path), "--logs", str(tmp_path / "logs"),
                                      "--variant", "--set augment=strong", "--variant", "--pre size=224"])
    screen.main()
    assert asked == [sorted([(BIG, 0), (RECIPE, 0), (STRONG, 0)]),
                     sorted([(RECIPE, 1), (RECIPE, 2), (STRONG, 1), (STRONG, 2)])]
    printed = capsys.readouterr().out
    assert "phase 2 (decides): --set augment=strong" in printed
    assert "10 paired folds: accuracy +0.045 (lower on 0)" in printed
    assert printed.rstrip().endswith("decision: adopt")


def test_one_phase_stops_after_partition_zero_naming_its_pick(tmp_path, monkeypatch, capsys):
    asked = []

    def fake_run_folds(jobs, args, deadline):
        asked.append(sorted({(options, seed) for options, seed, _ in jobs}))
        return {job: _row(0.72 if job[0] == STRONG else 0.68, malignant_auc=0.87) for job in jobs}

    monkeypatch.setattr(screen, "run_folds", fake_run_folds)
    monkeypatch.setattr(sys, "argv", ["screen", "--data", str(tmp_path), "--logs", str(tmp_path / "logs"),
                                      "--variant", "--set augment=strong", "--phases", "1"])
    screen.main()
    assert asked == [sorted([(RECIPE, 0), (STRONG, 0)])]
    assert capsys.readouterr().out.rstrip().endswith("phase 1 picks: --set augment=strong (qualified)")


def _fold_gains(accuracy, macro_f1, malignant_recall, malignant_auc=None):
    """Per-fold gains of five folds for the primary scores (and the AUC, 0 unless given)."""
    return {score: list({"accuracy": accuracy, "macro_f1": macro_f1, "malignant_recall": malignant_recall,
                         "malignant_auc": malignant_auc or [0.0] * 5}.get(score, [0.0] * 5)) for score in SCORES}


def test_the_spread_rule_adopts_a_gain_larger_than_its_fold_to_fold_spread():
    steady = _fold_gains([0.03, 0.04, 0.02, 0.05, 0.03], [0.03, 0.04, 0.02, 0.05, 0.03], [0.02, 0.04, 0.03, 0.06, 0.02])
    assert adopted_by_spread(steady, 1.0, 2.5)[0]
    noisy = _fold_gains([0.10, -0.06, 0.08, -0.05, 0.02], [0.09, -0.07, 0.08, -0.04, 0.01], [0.10, -0.08, 0.1, -0.05, 0.0])
    decision, why = adopted_by_spread(noisy, 1.0, 2.5)
    assert not decision and "vs spread" in why
    assert not adopted_by_spread(steady, 2.6, 2.5)[0]  # too slow for the time budget
    worse_auc = _fold_gains(*(steady[score] for score in ("accuracy", "macro_f1", "malignant_recall")), [-0.03] * 5)
    decision, why = adopted_by_spread(worse_auc, 1.0, 2.5)
    assert not decision and "malignant_auc -0.030" in why
    four = {score: values[:4] for score, values in steady.items()}
    assert adopted_by_spread(four, 1.0, 2.5) == (False, "only 4 of 5 folds paired")


def test_a_sequential_screen_carries_adopted_variants_and_stops_after_three_misses(monkeypatch, capsys):
    scores = {(): 0.70, ("--a",): 0.75, ("--a", "--b"): 0.74, ("--a", "--c"): 0.70, ("--a", "--d"): 0.72}
    bumps = [0.010, -0.010, 0.005, 0.0, -0.005]  # per fold, the same for every lane: the gains are steady

    def fake_folds(jobs, args, deadline):
        return {(options, seed, fold): dict.fromkeys(SCORES, scores[options] + bumps[fold]) | {"minutes": 10.0}
                for options, seed, fold in jobs}

    monkeypatch.setattr(screen, "run_folds", fake_folds)
    args = type("Args", (), {"max_ratio": 2.5})()
    variants = [("--a",), ("--b",), ("--c",), ("--d",), ("--e",)]
    assert screen.screen_in_sequence(variants, args, 0.0) == ("--a",)
    out = capsys.readouterr().out
    assert "--a on top of the recipe: adopt" in out and "--b on top of --a: keep the recipe" in out
    assert "--d on top of --a: keep the recipe" in out and "three successive variants" in out and "--e" not in out


def test_training_time_is_averaged_over_the_folds_that_recorded_it():
    """A fold finished from its checkpoint after an interruption has no training time (NaN): it
    must neither make the time test fail nor count as free."""
    rows = {(RECIPE, 0, 0): {"minutes": 20.0}, (RECIPE, 0, 1): {"minutes": float("nan")}, (RECIPE, 0, 2): {"minutes": 30.0},
            (STRONG, 0, 0): {"minutes": 50.0}, (RECIPE, 1, 0): {"minutes": 90.0}}
    assert screen._minutes(rows, RECIPE) == 25.0
    assert np.isnan(screen._minutes({(RECIPE, 0, 1): {"minutes": float("nan")}}, RECIPE))
