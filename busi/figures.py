"""Plotly figures built from plain values, shared by the dashboard and report export.

The confusion matrix is a scatter of square markers rather than a heatmap because Streamlit
returns click selections for scatter points only; each point carries its (true, predicted)
class indices so a click maps straight back to the scans in that cell.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import plotly.graph_objects as go

from busi.train import BatchEnd, EpochEnd

CLASS_COLOURS = {"benign": "#2a9d8f", "malignant": "#d1495b", "normal": "#577590"}
_LAYOUT = {"template": "plotly_white", "margin": {"l": 40, "r": 20, "t": 40, "b": 40}, "height": 340}


def class_balance(counts: dict[str, int]) -> go.Figure:
    figure = go.Figure(go.Bar(x=list(counts), y=list(counts.values()), marker_color=[CLASS_COLOURS.get(c) for c in counts],
                              text=list(counts.values()), textposition="outside"))
    return figure.update_layout(title="Scans per class", yaxis_title="scans", **_LAYOUT)


def image_sizes(widths: Sequence[int], heights: Sequence[int], labels: Sequence[str]) -> go.Figure:
    figure = go.Figure()
    for label in CLASS_COLOURS:
        chosen = [i for i, value in enumerate(labels) if value == label]
        figure.add_trace(go.Scatter(x=[widths[i] for i in chosen], y=[heights[i] for i in chosen], mode="markers",
                                    name=label, marker={"color": CLASS_COLOURS[label], "opacity": 0.6}))
    return figure.update_layout(title="Image sizes (px)", xaxis_title="width", yaxis_title="height", **_LAYOUT)


def epoch_curves(events: Sequence[object]) -> tuple[go.Figure, go.Figure]:
    """Loss per epoch (train and validation) and validation accuracy / macro-F1 / malignant recall."""
    epochs = [e for e in events if isinstance(e, EpochEnd)]
    x = [e.epoch for e in epochs]
    loss = go.Figure([go.Scatter(x=x, y=[e.train_loss for e in epochs], name="train loss", mode="lines+markers"),
                      go.Scatter(x=x, y=[e.val_loss for e in epochs], name="validation loss", mode="lines+markers")])
    loss.update_layout(title="Loss per epoch", xaxis_title="epoch", **_LAYOUT)
    quality = go.Figure([
        go.Scatter(x=x, y=[e.val_accuracy for e in epochs], name="accuracy", mode="lines+markers"),
        go.Scatter(x=x, y=[e.val_macro_f1 for e in epochs], name="macro-F1", mode="lines+markers"),
        go.Scatter(x=x, y=[e.val_malignant_recall for e in epochs], name="malignant recall", mode="lines+markers"),
    ])
    quality.update_layout(title="Validation metrics per epoch", xaxis_title="epoch", yaxis_range=[0, 1.02], **_LAYOUT)
    return loss, quality


def batch_loss(events: Sequence[object]) -> go.Figure:
    batches = [e for e in events if isinstance(e, BatchEnd)]
    steps = np.arange(1, len(batches) + 1)
    figure = go.Figure(go.Scatter(x=steps, y=[e.loss for e in batches], mode="lines", name="batch loss"))
    return figure.update_layout(title="Loss per batch", xaxis_title="step", **_LAYOUT)


def confusion_matrix(matrix: Sequence[Sequence[int]], classes: Sequence[str]) -> go.Figure:
    """Rows are true classes (top to bottom), columns predicted; click a square to select it."""
    matrix = np.asarray(matrix)
    rows, columns = np.indices(matrix.shape)
    rows, columns = rows.ravel(), columns.ravel()
    counts = matrix.ravel()
    shade = counts / max(1, counts.max())
    figure = go.Figure(go.Scatter(
        x=[classes[c] for c in columns], y=[classes[r] for r in rows], mode="markers+text",
        text=[str(c) for c in counts], textfont={"size": 18, "color": ["white" if s > 0.5 else "black" for s in shade]},
        marker={"symbol": "square", "size": 80, "color": shade, "colorscale": "Blues", "cmin": 0, "cmax": 1,
                "line": {"color": ["#d1495b" if r != c else "#444" for r, c in zip(rows, columns)], "width": 2}},
        customdata=np.stack([rows, columns], axis=1), hovertemplate="true %{y}<br>predicted %{x}<br>%{text} scans<extra></extra>",
    ))
    figure.update_layout(title="Confusion matrix: click a square", xaxis_title="predicted", yaxis_title="true",
                         xaxis={"categoryorder": "array", "categoryarray": list(classes), "side": "top"},
                         yaxis={"categoryorder": "array", "categoryarray": list(classes)[::-1]},
                         **(_LAYOUT | {"height": 380}))
    return figure


def cell_from_selection(points: Sequence[dict]) -> tuple[int, int] | None:
    """(true, predicted) class indices of the clicked square, from a chart selection's points."""
    for point in points:
        custom = point.get("customdata")
        if custom is not None and len(custom) == 2:
            return int(custom[0]), int(custom[1])
    return None


def roc_curves(roc: dict) -> go.Figure:
    figure = go.Figure(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", line={"dash": "dot", "color": "grey"}, name="chance"))
    for name, curve in roc.items():
        auc = "n/a" if curve["auc"] is None or curve["auc"] != curve["auc"] else f"{curve['auc']:.2f}"
        figure.add_trace(go.Scatter(x=curve["fpr"], y=curve["tpr"], mode="lines", name=f"{name} (AUC {auc})",
                                    line={"color": CLASS_COLOURS.get(name)}))
    return figure.update_layout(title="ROC, one class vs the rest", xaxis_title="1 - specificity",
                                yaxis_title="sensitivity", **_LAYOUT)


def pr_curves(pr: dict) -> go.Figure:
    figure = go.Figure()
    for name, curve in pr.items():
        ap = curve["average_precision"]
        label = "n/a" if ap is None or ap != ap else f"{ap:.2f}"
        figure.add_trace(go.Scatter(x=curve["recall"], y=curve["precision"], mode="lines", name=f"{name} (AP {label})",
                                    line={"color": CLASS_COLOURS.get(name)}))
    return figure.update_layout(title="Precision-recall, one class vs the rest", xaxis_title="recall",
                                yaxis_title="precision", **_LAYOUT)


def reliability(calibration: dict) -> go.Figure:
    bins = [b for b in calibration["bins"] if b["count"]]
    figure = go.Figure([
        go.Scatter(x=[0, 1], y=[0, 1], mode="lines", line={"dash": "dot", "color": "grey"}, name="perfect calibration"),
        go.Scatter(x=[b["confidence"] for b in bins], y=[b["accuracy"] for b in bins], mode="lines+markers",
                   marker={"size": [6 + 2 * np.sqrt(b["count"]) for b in bins]}, name="model",
                   text=[f"{b['count']} scans" for b in bins]),
    ])
    return figure.update_layout(title=f"Reliability (ECE {calibration['ece']:.3f})", xaxis_title="confidence",
                                yaxis_title="accuracy", xaxis_range=[0, 1], yaxis_range=[0, 1], **_LAYOUT)


def probabilities(values: dict[str, float]) -> go.Figure:
    figure = go.Figure(go.Bar(x=list(values.values()), y=list(values), orientation="h",
                              marker_color=[CLASS_COLOURS.get(c) for c in values],
                              text=[f"{v:.1%}" for v in values.values()], textposition="auto"))
    return figure.update_layout(title="Class probabilities", xaxis_range=[0, 1], **(_LAYOUT | {"height": 220}))
