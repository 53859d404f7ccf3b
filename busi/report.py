"""A run report a presenter can hand out: one self-contained HTML file that opens offline.

It says what the model learnt from and how, then its numbers with their 95 % intervals, the
confusion matrix and curves (plotly, its script embedded once), and the misclassified malignant
cases with their lesion outlines and Grad-CAMs (PNG images embedded as data). ``busi report``
writes it from the command line; the Evaluation page offers the same file.
"""

from __future__ import annotations

import base64
import html
import os
from datetime import datetime
from pathlib import Path

import plotly.io

from busi import NOTICE, figures
from busi.data import CLASSES, index_dataset
from busi.evaluate import (
    decide,
    folder_predictions,
    format_interval,
    misclassified_malignant,
    report,
    report_rows,
    run_predictions,
    screening_threshold,
)
from busi.explain import heatmap_overlay
from busi.gallery import scan_view
from busi.imageio import encode_png
from busi.metrics import MALIGNANT
from busi.predict import load_classifier
from busi.runs import RunFolder

CASES = 12  # misclassified malignant cases shown, the most confidently wrong first

_STYLE = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;color:#1b2a35;line-height:1.45}
h1{font-size:1.6em}h2{margin-top:1.8em;border-bottom:1px solid #ccd}table{border-collapse:collapse;margin:.5em 0}
td,th{padding:.25em .7em;border-bottom:1px solid #e3e6ea;text-align:right}td:first-child,th:first-child{text-align:left}
.notice{background:#fff4e5;border-left:4px solid #e8a33d;padding:.6em 1em}.case{display:flex;gap:1em;margin:1em 0}
.case img{width:260px;height:auto}.facts{font-size:.92em}.grid{display:grid;grid-template-columns:1fr 1fr;gap:1em}"""


def _image(pixels) -> str:
    return f'<img src="data:image/png;base64,{base64.b64encode(encode_png(pixels)).decode()}" alt="">'


def _table(rows: list[dict[str, str]]) -> str:
    head = "".join(f"<th>{html.escape(column)}</th>" for column in rows[0])
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(value))}</td>" for value in row.values()) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def run_report_html(run: str | os.PathLike, *, threshold: float | None = None, scope: str | os.PathLike | None = None) -> str:
    """The report of ``run`` on its own test scans, or on every scan of the data folder ``scope``;
    scans are called malignant at ``threshold`` when one is given, else by the most probable class."""
    folder = RunFolder(run)
    saved, trained_on = folder.read_config(), folder.trained_on()
    classifier = load_classifier(folder.path)
    if scope is None:
        predictions = run_predictions(folder.path, "test")
        scored = f"its {len(predictions.paths)} test scans, none of which it learnt from"
    else:
        predictions = folder_predictions(classifier, scope)
        same = trained_on is not None and Path(trained_on.folder).resolve() == Path(scope).resolve()
        scored = f"all {len(predictions.paths)} scans of {Path(scope).name}" + (
            ", the ones it learnt from included: not an unbiased accuracy" if same else "")
    result = report(predictions.labels, predictions.probabilities, threshold=threshold, groups=predictions.groups)
    predicted = decide(predictions.probabilities, threshold)
    point = result["malignant"]
    rule = "the most probable class" if threshold is None else f"malignant when p(malignant) ≥ {threshold:.3f}"
    screening = screening_threshold(folder.path)
    parts = [
        f"<h1>Run report: {html.escape(folder.name)}</h1>",
        f'<p class="notice"><b>{html.escape(NOTICE)}</b></p>',
        f"<p>Written {datetime.now():%Y-%m-%d %H:%M} by busi.</p>",
        "<h2>What the model learnt from</h2>",
        f"<p>{html.escape(trained_on.describe() if trained_on else 'not recorded by the version that trained it')}"
        + (" <b>These are synthetic phantoms: the numbers below say nothing about scans of patients.</b>"
           if trained_on and trained_on.synthetic else "") + "</p>",
        "<h2>How it was trained</h2>",
        _table([{"setting": name, "value": value} for name, value in (
            ("network", saved.train.arch), ("initial weights", saved.train.pretrained), ("epochs", saved.train.epochs),
            ("batch size", saved.train.batch_size), ("optimiser", f"{saved.train.optimizer}, learning rate {saved.train.lr}"),
            ("schedule", saved.train.schedule), ("class weighting", saved.train.class_weighting),
            ("augmentation", saved.train.augment), ("input", f"{saved.preprocess.size} px, {saved.preprocess.channels}"),
            ("weights kept", "the best validation epoch" if saved.train.keep == "best" else "the final epoch"))]),
        "<h2>Numbers</h2>",
        f"<p>Scored on {html.escape(scored)}; each scan called {html.escape(rule)}. Accuracy "
        f"{result['accuracy']:.2f} (95 % CI {format_interval(result['accuracy_ci'])}), macro-F1 {result['macro_avg']['f1']:.2f} "
        f"({format_interval(result['macro_avg']['f1_ci'])}), malignant sensitivity {point['sensitivity']:.2f} "
        f"({format_interval(point['sensitivity_ci'])}) and specificity {point['specificity']:.2f} "
        f"({format_interval(point['specificity_ci'])}), malignant AUC {result['roc']['malignant']['auc']:.2f} "
        f"({format_interval(result['roc']['malignant']['auc_ci'])}).</p>",
        _table(report_rows(result)),
        f"<p>{html.escape(screening.describe())}</p>" if screening else "",
        "<h2>Confusion matrix and curves</h2>",
        '<div class="grid">',
    ]
    charts = [figures.confusion_matrix(point["confusion_matrix"], CLASSES), figures.roc_curves(result["roc"]),
              figures.pr_curves(result["pr"]), figures.reliability(result["calibration"])]
    parts += [plotly.io.to_html(chart, full_html=False, include_plotlyjs="inline" if n == 0 else False)
              for n, chart in enumerate(charts)]
    parts += ["</div>", "<h2>Misclassified malignant cases</h2>"]
    cases = misclassified_malignant(predictions.labels, predictions.probabilities, threshold)
    index = index_dataset(predictions.data_dir) if cases else None
    if not cases:
        parts.append("<p>None with this decision rule.</p>")
    for row, kind in cases[:CASES]:
        record = index.record(predictions.paths[row])
        class_name = CLASSES[predicted[row]]
        view = scan_view(classifier, record, [class_name])
        images = "" if view.error else _image(view.outlined()) + _image(view.outlined(heatmap_overlay(view.scan, view.heats[class_name])))
        parts.append(f'<div class="case">{images}<div class="facts"><b>{kind}</b><br>{html.escape(predictions.paths[row])}<br>'
                     f"true {CLASSES[predictions.labels[row]]}, called {class_name}<br>p(malignant) "
                     f"{predictions.probabilities[row, MALIGNANT]:.2f}<br>near-duplicate group {record.group}</div></div>")
    if len(cases) > CASES:
        parts.append(f"<p>… and {len(cases) - CASES} more (the Evaluation page lists them all).</p>")
    parts.append("<p>Left: the scan with the true lesion outline (green). Right: Grad-CAM of the class the model chose.</p>")
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>busi report: {html.escape(folder.name)}</title>'
            f"<style>{_STYLE}</style></head><body>{''.join(parts)}</body></html>")
