"""Plotly figures built from plain values, shared by the dashboard and report export.

The confusion matrix is a scatter of square markers rather than a heatmap because Streamlit
returns click selections for scatter points only; a selected point's axis categories map
straight back to the (true, predicted) cell.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import plotly.graph_objects as go

from busi.events import BatchEnd, EpochEnd

CLASS_COLOURS = {"benign": "#2a9d8f", "malignant": "#d1495b", "normal": "#577590"}
_LAYOUT = {"template": "plotly_white", "margin": {"l": 50, "r": 20, "t": 50, "b": 40}, "height": 380}
# Curves keep their full width: the legend goes below the plot, not beside it.
_LEGEND_BELOW = {"legend": {"orientation": "h", "yanchor": "top", "y": -0.22, "xanchor": "left", "x": 0},
                 "margin": {"l": 50, "r": 20, "t": 50, "b": 110}, "height": 460}


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
    # Logarithmic: one early loss of 60 would otherwise flatten every later epoch to the floor.
    loss.update_layout(title="Loss per epoch", xaxis_title="epoch", yaxis_type="log", **_LAYOUT)
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
    return figure.update_layout(title="Loss per batch", xaxis_title="step", yaxis_type="log", **_LAYOUT)


def confusion_matrix(matrix: Sequence[Sequence[int]], classes: Sequence[str]) -> go.Figure:
    """Rows are true classes (top to bottom), columns predicted; click a square to select it.

    The coloured cells are layout rectangles in axis units, so they tile the plot at any width;
    a point at each cell's centre carries the count and receives the click.
    """
    matrix = np.asarray(matrix)
    size = len(classes)
    rows, columns = np.indices(matrix.shape)
    rows, columns = rows.ravel(), columns.ravel()
    counts = matrix.ravel()
    shade = counts / max(1, counts.max())
    figure = go.Figure(go.Scatter(
        x=[classes[c] for c in columns], y=[classes[r] for r in rows], mode="markers+text",
        text=[str(c) for c in counts], textfont={"size": 18, "color": ["white" if s > 0.5 else "black" for s in shade]},
        marker={"symbol": "square", "size": 44, "color": "rgba(0,0,0,0)"},
        selected={"marker": {"opacity": 1}}, unselected={"marker": {"opacity": 1}},
        hovertemplate="true %{y}<br>predicted %{x}<br>%{text} scans<extra></extra>",
    ))
    blues = ["#eef4fa", "#c6dbef", "#9ecae1", "#6baed6", "#3182bd", "#08519c"]
    for row, column, value in zip(rows, columns, shade):
        y = size - 1 - row  # the y axis lists the classes top to bottom
        figure.add_shape(type="rect", x0=column - 0.48, x1=column + 0.48, y0=y - 0.48, y1=y + 0.48, layer="below",
                         fillcolor=blues[int(round(value * (len(blues) - 1)))],
                         line={"color": "#444" if row == column else "#d1495b", "width": 2})
    axis = {"categoryorder": "array", "range": [-0.5, size - 0.5], "fixedrange": True, "showgrid": False, "zeroline": False}
    figure.update_layout(title={"text": "Confusion matrix: click a square", "y": 0.98, "yanchor": "top"},
                         template="plotly_white", margin={"l": 90, "r": 10, "t": 110, "b": 10}, height=400,
                         xaxis=axis | {"title": "predicted", "categoryarray": list(classes), "side": "top"},
                         yaxis=axis | {"title": "true", "categoryarray": list(classes)[::-1]})
    return figure


def cell_from_selection(points: Sequence[dict], classes: Sequence[str]) -> tuple[int, int] | None:
    """(true, predicted) class indices of the clicked square, from a chart selection's points
    (each carries its axis categories: x predicted, y true)."""
    for point in points:
        true, predicted = point.get("y"), point.get("x")
        if true in classes and predicted in classes:
            return list(classes).index(true), list(classes).index(predicted)
    return None


def roc_curves(roc: dict) -> go.Figure:
    figure = go.Figure(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", line={"dash": "dot", "color": "grey"}, name="chance"))
    for name, curve in roc.items():
        auc = "n/a" if curve["auc"] is None or curve["auc"] != curve["auc"] else f"{curve['auc']:.2f}"
        figure.add_trace(go.Scatter(x=curve["fpr"], y=curve["tpr"], mode="lines", name=f"{name} (AUC {auc})",
                                    line={"color": CLASS_COLOURS.get(name)}))
    return figure.update_layout(title="ROC, one class vs the rest", xaxis_title="1 - specificity",
                                yaxis_title="sensitivity", **(_LAYOUT | _LEGEND_BELOW))


def pr_curves(pr: dict) -> go.Figure:
    figure = go.Figure()
    for name, curve in pr.items():
        ap = curve["average_precision"]
        label = "n/a" if ap is None or ap != ap else f"{ap:.2f}"
        figure.add_trace(go.Scatter(x=curve["recall"], y=curve["precision"], mode="lines", name=f"{name} (AP {label})",
                                    line={"color": CLASS_COLOURS.get(name)}))
    return figure.update_layout(title="Precision-recall, one class vs the rest", xaxis_title="recall",
                                yaxis_title="precision", **(_LAYOUT | _LEGEND_BELOW))


def reliability(calibration: dict) -> go.Figure:
    bins = [b for b in calibration["bins"] if b["count"]]
    largest = max((b["count"] for b in bins), default=1)
    figure = go.Figure([
        go.Scatter(x=[0, 1], y=[0, 1], mode="lines", line={"dash": "dot", "color": "grey"}, name="perfect calibration"),
        # Bubble areas follow the scans in each bin, capped so that none spills out of the plot.
        go.Scatter(x=[b["confidence"] for b in bins], y=[b["accuracy"] for b in bins], mode="lines+markers",
                   marker={"size": [6 + 16 * np.sqrt(b["count"] / largest) for b in bins]}, name="model",
                   text=[f"{b['count']} scans" for b in bins], cliponaxis=False),
    ])
    return figure.update_layout(title=f"Reliability (ECE {calibration['ece']:.3f})", xaxis_title="confidence",
                                yaxis_title="accuracy", xaxis_range=[-0.02, 1.02], yaxis_range=[-0.04, 1.04],
                                **(_LAYOUT | _LEGEND_BELOW))


def probabilities(values: dict[str, float]) -> go.Figure:
    figure = go.Figure(go.Bar(x=list(values.values()), y=list(values), orientation="h",
                              marker_color=[CLASS_COLOURS.get(c) for c in values],
                              text=[f"{v:.1%}" for v in values.values()], textposition="auto"))
    return figure.update_layout(title="Class probabilities", xaxis_range=[0, 1], **(_LAYOUT | {"height": 220}))


def compared_curves(curves: dict[str, dict], kind: str) -> go.Figure:
    """The malignant-vs-rest ROC (``kind`` "roc") or precision-recall ("pr") curve of several runs, overlaid.
    ``curves``: run name -> that run's report's ``roc`` or ``pr`` entry for malignant."""
    figure = go.Figure()
    if kind == "roc":
        figure.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", line={"dash": "dot", "color": "grey"}, name="chance"))
    for name, curve in curves.items():
        if kind == "roc":
            figure.add_trace(go.Scatter(x=curve["fpr"], y=curve["tpr"], mode="lines", name=f"{name} (AUC {curve['auc']:.2f})"))
        else:
            figure.add_trace(go.Scatter(x=curve["recall"], y=curve["precision"], mode="lines",
                                        name=f"{name} (AP {curve['average_precision']:.2f})"))
    titles = {"roc": ("Malignant vs the rest: ROC", "1 - specificity", "sensitivity"),
              "pr": ("Malignant vs the rest: precision-recall", "recall", "precision")}[kind]
    return figure.update_layout(title=titles[0], xaxis_title=titles[1], yaxis_title=titles[2], **(_LAYOUT | _LEGEND_BELOW))
