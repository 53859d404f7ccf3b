"""The run report (busi/report.py, ``busi report``): one HTML file, complete and offline."""

import re

from busi.cli import main
from busi.evaluate import evaluate_run, report_rows


def test_the_report_holds_everything_and_needs_no_network(tiny_run, tmp_path, capsys):
    out = tmp_path / "report.html"
    assert main(["report", str(tiny_run), "--out", str(out)]) == 0 and "Report written" in capsys.readouterr().out
    page = out.read_text()
    for heading in ("What the model learnt from", "How it was trained", "Numbers", "Confusion matrix and curves",
                    "Misclassified malignant cases"):
        assert f"<h2>{heading}</h2>" in page, heading
    assert "18 synthetic phantoms" in page and "say nothing about scans of patients" in page
    assert "not a medical device" in page
    _, result = evaluate_run(tiny_run)
    for row in report_rows(result):  # the same table as the CLI and the app
        assert "<td>" + "</td><td>".join(row.values()) + "</td>" in page
    # Offline: plotly's script is inside, and nothing is fetched from elsewhere.
    assert page.count("<script") >= 4 and "<script src" not in page.replace('<script src="data:', "")
    markup = re.sub(r"<script.*?</script>", "", page, flags=re.S)  # plotly's own code names sites it never loads here
    assert not re.search(r'(src|href)="(https?:)?//', markup)
    assert page.count('class="plotly-graph-div"') == 4


def test_the_report_follows_the_decision_rule_and_shows_the_cases_with_images(tiny_run, tmp_path, capsys):
    out = tmp_path / "report.html"
    assert main(["report", str(tiny_run), "--out", str(out), "--threshold", "0.0"]) == 0
    page = out.read_text()
    assert "malignant when p(malignant) ≥ 0.000" in page
    assert page.count("false positive") >= 1 and page.count("data:image/png;base64,") >= 2  # every test scan is an alarm
