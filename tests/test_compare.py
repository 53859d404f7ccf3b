"""Runs compared on the same scans: busi.compare and the Compare runs page."""

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from busi.compare import COMPARE_COLUMNS, compare_row, on_common_scans, paired_differences
from busi.errors import BusiError
from busi.evaluate import Predictions, report
from tests.helpers import open_page, shown, widget

B, M, N = 0, 1, 2


def predictions(paths, labels, calls, groups=None, data_dir="/data") -> Predictions:
    """Predictions whose most probable class is ``calls`` (0.8 against 0.1 and 0.1)."""
    probabilities = np.full((len(paths), 3), 0.1)
    probabilities[np.arange(len(paths)), calls] = 0.8
    return Predictions(Path(data_dir), list(paths), np.array(labels), probabilities,
                       np.arange(len(paths)) if groups is None else np.array(groups), "test")


def test_runs_are_cut_to_the_scans_they_all_scored_in_the_first_runs_order():
    first = predictions(["a", "b", "c"], [B, M, N], [B, M, N])
    second = predictions(["c", "x", "a"], [N, B, B], [B, B, M])
    cut = on_common_scans([first, second])
    assert [p.paths for p in cut] == [["a", "c"], ["a", "c"]]
    assert cut[1].labels.tolist() == [B, N]
    assert cut[1].probabilities.argmax(1).tolist() == [M, B]  # each row travels with its scan
    assert cut[0].groups.tolist() == [0, 2] and cut[1].groups.tolist() == [2, 0]


def test_runs_on_other_data_or_with_relabelled_scans_are_refused():
    first = predictions(["a", "b"], [B, M], [B, M])
    with pytest.raises(BusiError, match="no scan in common"):
        on_common_scans([first, predictions(["a", "b"], [B, M], [B, M], data_dir="/elsewhere")])
    with pytest.raises(BusiError, match="different classes"):
        on_common_scans([first, predictions(["a", "b"], [B, B], [B, M])])


def test_paired_differences_measure_the_second_run_against_the_first():
    scans = [f"scan {i}" for i in range(40)]
    labels = [M, M, M, M, B, B, N, N] * 5
    reference = predictions(scans, labels, [B, B, M, M, B, B, N, N] * 5)  # finds half the cancers
    better = predictions(scans, labels, [M, M, M, M, B, M, N, N] * 5)  # finds them all, with a false alarm in 8 scans
    measured = paired_differences(reference, better, samples=200)
    assert measured["malignant sensitivity"][0] == pytest.approx(0.5)
    assert measured["accuracy"][0] == pytest.approx(1 / 8)  # +2 cancers, -1 benign
    low, high = measured["malignant sensitivity"][1]
    assert 0.2 < low < 0.5 < high < 0.8
    same = paired_differences(reference, reference, samples=50)
    assert same["accuracy"] == (0.0, (0.0, 0.0))
    with pytest.raises(BusiError, match="same scans"):
        paired_differences(reference, predictions(scans[::-1], labels, labels))


def test_a_comparison_row_quotes_the_report():
    labels = np.array([B, M, M, N])
    first = predictions("abcd", labels, [B, M, B, N])
    row = compare_row("run-a", report(first.labels, first.probabilities, samples=20))
    assert tuple(row) == COMPARE_COLUMNS
    assert row["scans"] == "4" and row["accuracy"] == "0.75 (0.30–0.95)"
    assert row["malignant sensitivity"].startswith("0.50 (") and row["malignant specificity"].startswith("1.00 (")


def _finds_every_cancer(run: Path) -> None:
    """Rewrite a run's test predictions: p(malignant) 0.9 for each cancer, 0.05 for the rest."""
    with open(run / "predictions.csv", newline="") as file:
        table = list(csv.DictReader(file))
    for row in table:
        if row["split"] == "test":
            cancer = row["label"] == "malignant"
            row.update(p_malignant=0.9 if cancer else 0.05, p_benign=0.05 if cancer else 0.9, p_normal=0.05)
    with open(run / "predictions.csv", "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=list(table[0]))
        writer.writeheader()
        writer.writerows(table)


def test_the_page_compares_two_runs_on_their_common_test_scans(runs_with_model):
    app = open_page("compare")
    assert "two finished runs" in app.info[0].value  # one run: nothing to compare yet
    reference = runs_with_model / "20260101-000000-resnet18"
    shutil.copytree(reference, runs_with_model / "20260102-000000-resnet18")
    _finds_every_cancer(runs_with_model / "20260102-000000-resnet18")
    app = open_page("compare")
    chosen = widget(app, "cmp_runs").value
    assert sorted(chosen) == ["20260101-000000-resnet18", "20260102-000000-resnet18"]
    with open(reference / "predictions.csv", newline="") as file:
        tests = [row for row in csv.DictReader(file) if row["split"] == "test"]
    assert any(f"the {len(tests)} scans that every one of these runs held out" in shown(m.value) for m in app.markdown)
    table = app.dataframe[0].value.set_index("run")
    perfect = "20260102-000000-resnet18"
    assert table.loc[perfect, "malignant sensitivity"].startswith("1.00 (") and table.loc[perfect, "scans"] == str(len(tests))
    differences = app.dataframe[1].value
    assert differences["run"].tolist() == [name for name in chosen[1:]]
    widget(app, "cmp_runs").set_value(["20260101-000000-resnet18", perfect]).run()
    differences = app.dataframe[1].value.set_index("run")
    found = app.dataframe[0].value.set_index("run").loc["20260101-000000-resnet18", "malignant sensitivity"]
    gain = differences.loc[perfect, "malignant sensitivity difference"]
    assert float(gain.split()[0]) == pytest.approx(1 - float(found.split()[0]), abs=0.01) and gain.startswith("+")
    legends = [trace["name"] for chart in app.get("plotly_chart") for trace in json.loads(chart.proto.spec)["data"]
               if trace.get("name")]
    assert any(name.startswith(perfect + " (AUC 1.00)") for name in legends)
    widget(app, "cmp_runs").set_value([perfect]).run()
    assert "at least two runs" in app.info[0].value and not app.exception


def test_on_the_data_in_use_the_page_warns_of_a_run_that_learnt_from_it(runs_with_model, synthetic_dataset, monkeypatch):
    shutil.copytree(runs_with_model / "20260101-000000-resnet18", runs_with_model / "20260102-000000-resnet18")
    monkeypatch.setenv("BUSI_DATA", str(synthetic_dataset))
    app = open_page("compare")
    widget(app, "cmp_scope").set_value("Every scan of the data in use").run()
    assert not app.exception
    assert any("learnt from some of these scans" in w.value for w in app.warning)
    assert app.dataframe[0].value["scans"].tolist() == ["18", "18"]
