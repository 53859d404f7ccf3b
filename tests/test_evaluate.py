import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from busi.data import CLASSES
from busi.errors import BusiError, ParameterError
from busi.evaluate import (
    calibration,
    callable_classes,
    cell_rows,
    decide,
    evaluate_run,
    format_report,
    misclassified_malignant,
    operating_point,
    report,
    report_json,
    run_predictions,
    screening_threshold,
    threshold_for_sensitivity,
)
from tests.helpers import set_validation_predictions

# Rows are scans; columns p(benign), p(malignant), p(normal). Argmax gives 0,1,1,1,2,0.
LABELS = np.array([0, 0, 1, 1, 2, 2])
PROBABILITIES = np.array([
    [0.7, 0.2, 0.1],
    [0.4, 0.5, 0.1],
    [0.1, 0.8, 0.1],
    [0.3, 0.6, 0.1],
    [0.1, 0.1, 0.8],
    [0.5, 0.25, 0.25],
])


def test_classification_report_matches_hand_computed_values():
    result = report(LABELS, PROBABILITIES, samples=200)
    assert result["malignant"]["confusion_matrix"] == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    benign, malignant, normal = (result["per_class"][c] for c in ("benign", "malignant", "normal"))
    assert (benign["precision"], benign["recall"], benign["f1"]) == pytest.approx((0.5, 0.5, 0.5))
    assert (malignant["precision"], malignant["recall"], malignant["f1"]) == pytest.approx((2 / 3, 1.0, 0.8))
    assert (normal["precision"], normal["recall"], normal["f1"]) == pytest.approx((1.0, 0.5, 2 / 3))
    assert result["accuracy"] == pytest.approx(4 / 6)
    assert result["macro_avg"]["f1"] == pytest.approx((0.5 + 0.8 + 2 / 3) / 3)
    assert result["weighted_avg"]["f1"] == pytest.approx(result["macro_avg"]["f1"])
    assert result["malignant"]["sensitivity"] == 1.0 and result["malignant"]["specificity"] == pytest.approx(0.75)
    assert result["roc"]["malignant"]["auc"] == pytest.approx(1.0)  # both malignant scans outrank the rest
    assert result["accuracy_ci"][0] < 4 / 6 < result["accuracy_ci"][1]


def test_every_class_a_decision_rule_can_call_a_scan_is_among_its_callable_classes():
    # A gallery prepares the Grad-CAMs of these two classes per scan; any threshold must find its call there.
    callable_ = callable_classes(PROBABILITIES)
    for threshold in (None, 0.0, 0.25, 0.5, 0.9, 1.0):
        for row, call in enumerate(decide(PROBABILITIES, threshold)):
            assert CLASSES[call] in callable_[row], (threshold, row)
    assert callable_[1][1] == "malignant" and "malignant" not in callable_[1][:1]


def test_a_malignant_threshold_trades_specificity_for_sensitivity():
    assert decide(PROBABILITIES).tolist() == [0, 1, 1, 1, 2, 0]
    assert decide(PROBABILITIES, 0.25).tolist() == [0, 1, 1, 1, 2, 1]
    assert decide(PROBABILITIES, 0.9).tolist() == [0, 0, 0, 0, 2, 0]
    strict = operating_point(LABELS, PROBABILITIES, 0.9)
    assert strict["sensitivity"] == 0.0 and strict["specificity"] == 1.0
    lenient = operating_point(LABELS, PROBABILITIES, 0.25)
    assert lenient["specificity"] == pytest.approx(0.5)
    with pytest.raises(ParameterError, match="threshold"):
        decide(PROBABILITIES, 1.5)


def test_cells_and_malignant_errors_list_exactly_those_scans():
    predicted = decide(PROBABILITIES)
    assert cell_rows(LABELS, predicted, 0, 1).tolist() == [1]
    assert cell_rows(LABELS, predicted, 2, 0).tolist() == [5]
    assert cell_rows(LABELS, predicted, 1, 2).tolist() == []
    assert misclassified_malignant(LABELS, PROBABILITIES) == [(1, "false positive")]
    # At 0.7 both malignant scans below it are missed: the less malignant-looking one first.
    assert misclassified_malignant(LABELS, PROBABILITIES, 0.7) == [(3, "false negative")]
    assert misclassified_malignant(LABELS, PROBABILITIES, 0.9) == [(3, "false negative"), (2, "false negative")]


def test_threshold_for_a_target_sensitivity():
    labels = np.array([1, 1, 1, 1, 0, 2])
    probabilities = np.zeros((6, 3))
    probabilities[:, 1] = [0.9, 0.6, 0.3, 0.1, 0.5, 0.05]
    assert threshold_for_sensitivity(labels, probabilities, 0.5) == pytest.approx(0.6)
    assert threshold_for_sensitivity(labels, probabilities, 0.75) == pytest.approx(0.3)
    assert threshold_for_sensitivity(labels, probabilities, 1.0) == pytest.approx(0.1)
    assert operating_point(labels, probabilities, 0.3)["sensitivity"] == 0.75
    with pytest.raises(ParameterError, match="target sensitivity"):
        threshold_for_sensitivity(labels, probabilities, 0)


def test_calibration_error_by_hand():
    labels = np.array([0, 0, 1, 1])
    probabilities = np.array([[0.95, 0.05, 0], [0.95, 0.05, 0], [0.6, 0.4, 0], [0.4, 0.6, 0]])
    # Bin 0.9-1.0: confidence 0.95, accuracy 1.0; bin 0.5-0.6: confidence 0.6, accuracy 0.5.
    result = calibration(labels, probabilities)
    assert result["ece"] == pytest.approx(0.5 * 0.05 + 0.5 * 0.1)
    counts = {(round(b["lower"], 1)): b["count"] for b in result["bins"]}
    assert counts[0.9] == 2 and counts[0.5] == 2 and sum(counts.values()) == 4


def test_duplicates_resampled_as_groups_widen_the_intervals():
    rng = np.random.default_rng(0)
    lesions = rng.integers(0, 3, 30)
    predicted = np.where(rng.random(30) < 0.7, lesions, (lesions + 1) % 3)
    labels = np.repeat(lesions, 5)  # 30 lesions, each filed five times with the same prediction
    probabilities = np.eye(3)[np.repeat(predicted, 5)] * 0.8 + 0.2 / 3
    groups = np.repeat(np.arange(30), 5)
    naive = report(labels, probabilities, samples=300)["macro_avg"]["f1_ci"]
    grouped = report(labels, probabilities, groups=groups, samples=300)["macro_avg"]["f1_ci"]
    assert grouped[1] - grouped[0] > 1.5 * (naive[1] - naive[0])


def test_json_is_strict_and_undefined_values_are_null():
    result = report(LABELS[:2], PROBABILITIES[:2], samples=20)  # only benign scans: recalls undefined
    text = report_json(result)
    parsed = json.loads(text, parse_constant=lambda name: pytest.fail(f"non-JSON constant {name}"))
    assert parsed["per_class"]["malignant"]["recall"] is None
    assert parsed["roc"]["benign"]["auc"] is None


def test_bad_shapes_are_refused():
    with pytest.raises(ParameterError, match="Expected probabilities"):
        report(LABELS, PROBABILITIES[:, :2])


def test_a_run_is_evaluated_on_its_test_split_or_another_folder(tiny_run, synthetic_dataset):
    predictions, result = evaluate_run(tiny_run, samples=50)
    assert predictions.split == "test" and result["n"] == len(predictions.paths) == len(run_predictions(tiny_run).labels)
    assert 0 < result["n"] < 18
    table = format_report(result)
    for text in ("macro avg", "weighted avg", "sensitivity", "AUC", "calibration"):
        assert text in table
    everything, result = evaluate_run(tiny_run, data_dir=synthetic_dataset, split="all", samples=50)
    assert result["n"] == 18 and everything.data_dir == synthetic_dataset
    assert run_predictions(tiny_run, "all").probabilities == pytest.approx(everything.probabilities, abs=1e-5)
    with pytest.raises(ParameterError, match="use --split all"):
        evaluate_run(tiny_run, data_dir=synthetic_dataset, split="test")
    with pytest.raises(ParameterError, match="split must be one of"):
        run_predictions(tiny_run, "holdout")


def test_an_unfinished_run_is_refused_clearly(tiny_run, tmp_path):
    shutil.copy(tiny_run / "config.json", tmp_path / "config.json")
    with pytest.raises(BusiError, match="has no predictions.csv"):
        run_predictions(tmp_path)


@pytest.fixture
def screened_run(tiny_run, tmp_path) -> Path:
    """The tiny run with ten validation cancers, nine of which reach 0.3 (the 90 % threshold),
    and four benign validation scans, one of which does."""
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    set_validation_predictions(run, [("malignant", p) for p in (0.9, 0.8, 0.7, 0.6, 0.5, 0.45, 0.4, 0.35, 0.3, 0.1)]
                               + [("benign", p) for p in (0.5, 0.2, 0.1, 0.05)])
    return run


def test_the_screening_threshold_is_chosen_on_the_runs_validation_scans(screened_run):
    screening = screening_threshold(screened_run)
    assert screening.threshold == pytest.approx(0.3) and screening.target == 0.9 and screening.cancers == 10
    assert screening.sensitivity == pytest.approx(0.9) and screening.specificity == pytest.approx(0.75)
    assert screening.flag(0.3) == "review" and screening.flag(0.29) == "none"
    text = screening.describe()
    assert "p(malignant) ≥ 0.3," in text and "10 malignant validation scans" in text and "caught 90%" in text
    assert "cleared 75%" in text
    assert screening_threshold(screened_run, target=0.5).threshold == pytest.approx(0.5)


def test_no_screening_threshold_without_finished_predictions_or_validation_cancers(screened_run, tmp_path):
    assert screening_threshold(screened_run / "best.pt") is None
    shutil.copy(screened_run / "config.json", tmp_path / "config.json")
    assert screening_threshold(tmp_path) is None
    set_validation_predictions(screened_run, [("benign", 0.4), ("normal", 0.1)])
    assert screening_threshold(screened_run) is None
