import math

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from busi.metrics import (
    apply_temperature,
    average_precision,
    calibration,
    confusion_matrix,
    fit_temperature,
    roc_auc,
    summarise,
    wilson_interval,
)


def test_confusion_matrix_rows_are_truth():
    matrix = confusion_matrix(np.array([0, 0, 1, 2]), np.array([0, 1, 1, 1]))
    assert matrix.tolist() == [[1, 1, 0], [0, 1, 0], [0, 1, 0]]


def test_summary_against_hand_computed_values():
    # benign 2/2 right; malignant 1 of 2 (one called benign); normal 1/1.
    truth = np.array([0, 0, 1, 1, 2])
    predicted = np.array([0, 0, 1, 0, 2])
    summary = summarise(truth, predicted)
    assert summary["accuracy"] == pytest.approx(4 / 5)
    assert summary["malignant_recall"] == pytest.approx(0.5)
    f1_benign = 2 * (2 / 3) * 1 / (2 / 3 + 1)
    f1_malignant = 2 * 1 * 0.5 / 1.5
    assert summary["macro_f1"] == pytest.approx((f1_benign + f1_malignant + 1) / 3)


def test_wilson_interval_matches_the_textbook():
    low, high = wilson_interval(81, 100)
    assert (round(low, 3), round(high, 3)) == (0.722, 0.875)  # p=0.81, n=100, z=1.96
    assert wilson_interval(0, 10)[0] == 0.0 and wilson_interval(10, 10)[1] == pytest.approx(1.0)
    assert all(math.isnan(v) for v in wilson_interval(0, 0))


def test_temperature_scaling_calibrates_an_overconfident_model_without_changing_its_choices():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 400)
    right = rng.random(400) < 0.7  # 70 % correct ...
    predicted = np.where(right, labels, (labels + 1) % 3)
    probabilities = np.full((400, 3), 0.01)
    probabilities[np.arange(400), predicted] = 0.98  # ... but 98 % confident
    logits = np.log(probabilities)
    temperature = fit_temperature(labels, logits)
    calibrated = apply_temperature(logits, temperature)
    assert temperature > 1.5
    assert (calibrated.argmax(1) == probabilities.argmax(1)).all()
    assert np.allclose(calibrated.sum(1), 1)
    assert calibration(labels, calibrated)["ece"] < 0.05 < calibration(labels, probabilities)["ece"]
    assert np.allclose(apply_temperature(logits, 1.0), probabilities / probabilities.sum(1, keepdims=True))


def test_temperature_scaling_is_a_softmax_over_each_rows_classes():
    # Every column has its own maximum, so normalising over the wrong axis cannot go unnoticed.
    logits = np.array([[2.0, 0.5, -1.0], [0.0, 3.0, 1.0], [-2.0, 1.0, 4.0], [5.0, -3.0, 0.0]])
    for temperature in (0.5, 1.0, 2.0):
        expected = np.exp(logits / temperature) / np.exp(logits / temperature).sum(1, keepdims=True)
        np.testing.assert_allclose(apply_temperature(logits, temperature), expected, rtol=1e-12)
    assert apply_temperature(logits, 2.0).argmax(1).tolist() == [0, 1, 2, 0]


@pytest.mark.parametrize("seed", range(5))
def test_fast_auc_and_average_precision_equal_sklearn(seed):
    rng = np.random.default_rng(seed)
    positive = rng.random(60) < 0.3
    scores = np.round(rng.random(60) + positive * 0.4, 1)  # rounding makes ties
    assert roc_auc(positive, scores) == pytest.approx(roc_auc_score(positive, scores))
    assert average_precision(positive, scores) == pytest.approx(average_precision_score(positive, scores))
    assert np.isnan(roc_auc(np.zeros(5, bool), scores[:5])) and np.isnan(average_precision(np.ones(5, bool), scores[:5]))
