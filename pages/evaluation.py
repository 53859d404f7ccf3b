"""Evaluation: the report with intervals, a clickable confusion matrix, a threshold slider,
curves, calibration and the malignant cases the model got wrong."""

import math

import streamlit as st

from busi import figures
from busi.data import CLASSES, load_mask, load_scan
from busi.errors import BusiError
from busi.evaluate import (
    cell_rows,
    decide,
    format_interval,
    misclassified_malignant,
    operating_point,
    report_json,
    report_rows,
)
from busi.explain import energy_inside, heatmap_overlay
from busi.metrics import MALIGNANT
from busi.predict import rows_to_csv
from busi.preprocess import overlay
from busi.runs import PREDICTIONS
from pages import _ui

_ui.sidebar()
GALLERY_SIZE = 12

st.title("Evaluation")
runs = _ui.finished_runs()
if not runs:
    st.info("No finished run yet. Train one on the Training page (or a quick demo model from the Prediction page).")
    st.stop()
run = runs[[r.name for r in runs].index(st.selectbox("Run", [r.name for r in runs], key="ev_run"))].path
scope = st.radio("Evaluate on", ["the run's test split", "every scan of the current data folder"], horizontal=True, key="ev_scope")
data_dir = st.session_state["data_dir"] if scope.startswith("every") else None
try:
    predictions, result = _ui.evaluation(str(run), data_dir, (run / PREDICTIONS).stat().st_mtime)
except BusiError as error:
    st.error(_ui.literal(error))
    st.stop()
if scope.startswith("every"):
    st.caption("Scans the run trained on are included: this shows behaviour on that folder, not an unbiased accuracy.")


st.subheader(f"Classification report ({result['n']} scans, 95 % intervals)")
metrics = st.columns(3)
metrics[0].metric(f"Accuracy (95 % CI {format_interval(result['accuracy_ci'])})", f"{result['accuracy']:.2f}")
metrics[1].metric(f"Macro-F1 (95 % CI {format_interval(result['macro_avg']['f1_ci'])})", f"{result['macro_avg']['f1']:.2f}")
metrics[2].metric(f"Malignant recall (95 % CI {format_interval(result['per_class']['malignant']['recall_ci'])})",
                  f"{result['per_class']['malignant']['recall']:.2f}")
st.dataframe(report_rows(result), key="ev_report_table", hide_index=True)
st.caption(f"Intervals: Wilson for proportions; bootstrap ({result['bootstrap']['samples']} resamples by "
           f"{result['bootstrap']['unit']}) for F1 and AUC. With about a hundred test scans, ±7 points is normal.")

st.subheader("Decision threshold for malignant")
screening = _ui.screening(run)


def _use_screening_threshold() -> None:
    st.session_state["ev_use_threshold"] = True
    # Rounded down to the slider's step, so that it still catches the cancers it was chosen to catch.
    st.session_state["ev_threshold"] = math.floor(screening.threshold * 1000) / 1000


use_threshold = st.toggle("Call a scan malignant when p(malignant) reaches a threshold", key="ev_use_threshold")
if screening:
    st.caption(screening.describe())
    st.button("Use the screening threshold", key="ev_screening", on_click=_use_screening_threshold)
threshold = st.slider("Threshold", 0.0, 1.0, 0.5, 0.001, key="ev_threshold", disabled=not use_threshold)
threshold = threshold if use_threshold else None
point = operating_point(predictions.labels, predictions.probabilities, threshold)
predicted = decide(predictions.probabilities, threshold)
columns = st.columns(2)
columns[0].metric(f"Sensitivity for malignant (95 % CI {format_interval(point['sensitivity_ci'])})", f"{point['sensitivity']:.2f}")
columns[1].metric(f"Specificity for malignant (95 % CI {format_interval(point['specificity_ci'])})", f"{point['specificity']:.2f}")

left, right = st.columns([1, 1])
selection = left.plotly_chart(figures.confusion_matrix(point["confusion_matrix"], CLASSES), key="ev_confusion",
                              on_select="rerun", selection_mode="points")
clicked = figures.cell_from_selection(selection.selection.points if selection else [], CLASSES)
if clicked is not None:
    st.session_state["ev_cell"] = clicked  # kept while the threshold or other widgets change
cell = st.session_state.get("ev_cell")
index = _ui.index_of(predictions.data_dir)
if index is None:
    right.warning("The run's scans are not readable where they were any more: the gallery cannot show them.")


def show_scan(column, position: int, caption: str) -> None:
    """One scan with its mask outline, and Grad-CAM of the predicted class with the share of
    its heat inside the lesion."""
    record = index.record(predictions.paths[position])
    scan = load_scan(record)
    mask = load_mask(record) if record.mask_paths else None
    column.image(overlay(scan, mask, style="contour") if mask is not None and mask.shape == scan.shape else scan,
                 caption=caption, width="stretch")
    class_name = CLASSES[predicted[position]]
    try:
        heat = _ui.dataset_heatmap(run, record.path, class_name)
    except BusiError as error:
        column.error(f"No Grad-CAM: {_ui.literal(error)}")
        return
    score = f", {energy_inside(heat, mask):.0%} of the heat inside the lesion" if mask is not None and mask.any() else ""
    column.image(heatmap_overlay(scan, heat), caption=f"Grad-CAM ({class_name}){score}", width="stretch")


with right:
    if cell is None:
        st.info("Click a square of the confusion matrix to see those scans.")
    elif index is not None:
        if st.button("Clear the selection", key="ev_clear_cell"):
            del st.session_state["ev_cell"]
            st.rerun()
        rows = cell_rows(predictions.labels, predicted, *cell)
        st.write(f"**{len(rows)} scans**: true {CLASSES[cell[0]]}, predicted {CLASSES[cell[1]]}"
                 + (f" (showing {GALLERY_SIZE})" if len(rows) > GALLERY_SIZE else ""))
        columns = st.columns(3)
        for slot, position in enumerate(rows[:GALLERY_SIZE]):
            probabilities = " · ".join(f"{c[0].upper()} {p:.2f}" for c, p in zip(CLASSES, predictions.probabilities[position]))
            show_scan(columns[slot % 3], position, f"{_ui.literal(predictions.paths[position])} · {probabilities}")

st.subheader("Curves and calibration")
curves = st.columns(3)
curves[0].plotly_chart(figures.roc_curves(result["roc"]), key="ev_roc")
curves[1].plotly_chart(figures.pr_curves(result["pr"]), key="ev_pr")
curves[2].plotly_chart(figures.reliability(result["calibration"]), key="ev_reliability")

st.subheader("Misclassified malignant cases")
errors = misclassified_malignant(predictions.labels, predictions.probabilities, threshold)
st.caption("Missed cancers (false negatives) first, the most confidently wrong on top; then scans wrongly called "
           "malignant. Grad-CAM of the predicted class next to the true lesion outline.")
if not errors:
    st.success("No malignant errors at this threshold.")
elif index is not None and st.toggle(f"Show the {len(errors)} cases", key="ev_show_errors"):
    for position, kind in errors[:GALLERY_SIZE]:
        columns = st.columns([1, 1, 1])
        p_malignant = predictions.probabilities[position, MALIGNANT]
        columns[2].markdown(f"**{kind}**  \n{_ui.literal(predictions.paths[position])}  \ntrue {CLASSES[predictions.labels[position]]}, "
                            f"predicted {CLASSES[predicted[position]]}  \np(malignant) = {p_malignant:.2f}")
        show_scan(columns[0], position, "scan with the true lesion outline")

st.subheader("Export")
rows = [{"path": path, "label": CLASSES[label], "predicted": CLASSES[guess],
         **{f"p_{c}": f"{p:.6f}" for c, p in zip(CLASSES, probs)}}
        for path, label, guess, probs in zip(predictions.paths, predictions.labels, predicted, predictions.probabilities)]
exports = st.columns(3)
# Built only when clicked: the figures file embeds plotly.js (megabytes) and would otherwise be
# rebuilt and sent to the browser on every slider move.
exports[0].download_button("Report (JSON)", lambda: report_json(result | {"operating_point": point}),
                           f"{run.name}-report.json", "application/json", key="ev_export_json")
exports[1].download_button("Predictions (CSV)", lambda: rows_to_csv(rows), f"{run.name}-predictions.csv", "text/csv",
                           key="ev_export_csv")


def figures_html() -> str:
    parts = [figure.to_html(full_html=False, include_plotlyjs=i == 0) for i, figure in enumerate([
        figures.confusion_matrix(point["confusion_matrix"], CLASSES), figures.roc_curves(result["roc"]),
        figures.pr_curves(result["pr"]), figures.reliability(result["calibration"])])]
    return f"<html><body>{''.join(parts)}</body></html>"


exports[2].download_button("Figures (HTML)", figures_html, f"{run.name}-figures.html", "text/html", key="ev_export_figures")
