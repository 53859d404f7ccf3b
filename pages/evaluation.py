"""Evaluation: which scans a run is scored on, the report at the decision rule in use, a clickable
confusion matrix, curves, calibration, the malignant cases it got wrong, and a report to hand out."""

import math
import time
from pathlib import Path

import streamlit as st

from busi import figures
from busi.data import CLASSES, ScanRecord
from busi.errors import BusiError
from busi.evaluate import cell_rows, decide, format_interval, misclassified_malignant, report_json, report_rows
from busi.explain import heatmap_overlay
from busi.metrics import MALIGNANT
from busi.predict import rows_to_csv
from busi.report import run_report_html
from pages import _ui

_ui.sidebar()
PAIRS_PER_PAGE = 6  # scan and Grad-CAM pairs of a confusion-matrix cell
CASES_PER_PAGE = 5  # rows of misclassified malignant cases
PAIRS_WAIT_S = 5.0  # for a page's Grad-CAMs while the rest are prepared (six take about 2 s on 2 CPU cores)
OWN_SCANS, DATA_IN_USE = "Its own test scans", "Every scan of the data in use"

st.title("Evaluation")
runs = _ui.finished_runs()
if not runs:
    st.info("No finished run yet. Train one on the Training page (or a quick demo model from the Prediction page).")
    st.stop()
summary = _ui.pick_run("Run", runs, "ev_run")
run, trained_on = summary.path, summary.trained_on
data_dir = st.session_state["data_dir"]
same_folder = trained_on is not None and Path(trained_on.folder).resolve() == Path(data_dir).resolve()
_ui.keep("ev_scope", OWN_SCANS)
scope = st.radio("Score it on", [OWN_SCANS, DATA_IN_USE], horizontal=True, key="ev_scope")
_ui.kept("ev_scope")

# Which scans these are, and what the run learnt from, said before any number.
learnt = trained_on.describe() if trained_on else "data this version did not record"
if scope == OWN_SCANS:
    tested = f"its {trained_on.parts.get('test', 0)} test scans, none of which it learnt from" if trained_on \
        else "its test scans, none of which it learnt from"
elif same_folder:
    tested = (f"all {trained_on.scans} scans of the data in use, the {trained_on.parts.get('train', 0)} it learnt from and "
              f"{trained_on.parts.get('val', 0)} it was tuned on included: its behaviour on them, not an unbiased accuracy")
else:
    tested = ("every scan of the data in use, a folder other than the one it learnt from: unless these are copies of "
              "those scans, it never saw them")
st.markdown(f"**Trained on** {learnt}.  \n**Scored on** {tested}.")
if trained_on is not None and trained_on.synthetic:
    st.warning("This run learnt from synthetic phantoms: its numbers say nothing about scans of patients.")

try:
    predictions = _ui.predictions_on(run, None if scope == OWN_SCANS else data_dir)
except BusiError as error:
    st.error(_ui.literal(error))
    st.stop()

# -- the decision rule, then the report that follows it ---------------------------------------
screening = _ui.screening(run)


def _use_screening_threshold() -> None:
    st.session_state["ev_use_threshold"] = True
    # Rounded down to the slider's step, so that it still catches the cancers it was chosen to catch.
    st.session_state["ev_threshold"] = math.floor(screening.threshold * 1000) / 1000


st.subheader("Decision rule")
_ui.keep("ev_use_threshold", False)
_ui.keep("ev_threshold", 0.5)
use_threshold = st.toggle("Call a scan malignant when p(malignant) reaches a threshold", key="ev_use_threshold")
threshold_value = st.slider("Threshold", 0.0, 1.0, step=0.001, format="%.3f", key="ev_threshold", disabled=not use_threshold)
_ui.kept("ev_use_threshold")
_ui.kept("ev_threshold")
if screening:
    st.caption(screening.describe())
    st.button("Use the screening threshold", key="ev_screening", on_click=_use_screening_threshold)
threshold = threshold_value if use_threshold else None
rule = "the most probable class" if threshold is None else f"malignant when p(malignant) ≥ {threshold:.3f}, else the more probable of the others"
result = _ui.report_at(predictions, threshold)
predicted = decide(predictions.probabilities, threshold)

st.subheader(f"Classification report: {result['n']} scans, each called {rule}")
metrics = st.columns(4)
metrics[0].metric(f"Accuracy (95 % CI {format_interval(result['accuracy_ci'])})", f"{result['accuracy']:.2f}")
metrics[1].metric(f"Macro-F1 (95 % CI {format_interval(result['macro_avg']['f1_ci'])})", f"{result['macro_avg']['f1']:.2f}")
point = result["malignant"]
metrics[2].metric(f"Sensitivity for malignant (95 % CI {format_interval(point['sensitivity_ci'])})",
                  f"{point['sensitivity']:.2f}", help="Malignant recall: the share of the cancers called malignant.")
metrics[3].metric(f"Specificity for malignant (95 % CI {format_interval(point['specificity_ci'])})",
                  f"{point['specificity']:.2f}", help="The share of the other scans not called malignant.")
st.dataframe(report_rows(result), key="ev_report_table", hide_index=True)
st.caption(f"Intervals: Wilson for proportions; bootstrap ({result['bootstrap']['samples']} resamples by "
           f"{result['bootstrap']['unit']}) for F1 and AUC. With about a hundred test scans, ±7 points is normal.")

# -- the confusion matrix and the scans of a cell -----------------------------------------------
misclassified = misclassified_malignant(predictions.labels, predictions.probabilities, threshold)
index = _ui.index_of(predictions.data_dir)
if index is None:
    st.warning("The run's scans are not readable where they were any more: the galleries cannot show them.")
else:
    views = _ui.gallery(run, predictions)


# While the Grad-CAMs are prepared, the progress below redraws itself every second; the tick
# that finds them all ready redraws the page once, which stops the ticking (a timer left
# running kept interrupting the first click's run) and fills the pairs still "Preparing…".
preparing = index is not None and views.ready < views.total and not views.failure


@st.fragment(run_every=1.0 if preparing else None)
def heatmap_progress() -> None:
    if views.failure:
        st.error(f"The Grad-CAMs could not be prepared ({_ui.literal(views.failure)}): reload the page to try again; "
                 "the numbers above do not depend on them.")
    elif views.ready < views.total:
        st.progress(views.ready / views.total, text=f"Preparing the Grad-CAMs of these scans: {views.ready} of {views.total}")
    elif preparing:
        st.rerun()


def show_pairs(pairs: list[tuple[int, str]]) -> None:
    """A page of scans, each beside its Grad-CAM. While the gallery is still being prepared, these
    scans go first and each is drawn as soon as it is ready (within a few seconds for the page),
    rather than as "Preparing…" until every scan is done."""
    records = [_record_of(position) for position, _ in pairs]
    views.put_first([record for record in records if record is not None])
    deadline = time.monotonic() + PAIRS_WAIT_S
    for (position, heading), record in zip(pairs, records):
        if record is not None:
            views.wait_for([record], timeout=max(0.0, deadline - time.monotonic()))
        show_pair(position, heading, record)


def _record_of(position: int) -> ScanRecord | None:
    """The scan's record, or None when it has left the data folder since the run was scored."""
    try:
        return index.record(predictions.paths[position])
    except BusiError:
        return None


def show_pair(position: int, heading: str, record: ScanRecord | None) -> None:
    """One scan and its Grad-CAM side by side, both with the lesion outline, and the facts beside."""
    class_name = CLASSES[predicted[position]]
    if record is None:
        st.warning(f"{_ui.literal(predictions.paths[position])} is not in the data folder any more.")
        return
    view = views.view(record)
    columns = st.columns([1, 1, 1.3])
    if view is None:
        columns[0].info("Preparing…")
    elif view.error:
        columns[0].error(_ui.literal(view.error))
    else:
        columns[0].image(view.outlined(), caption="scan, lesion outline in green", width=240)
        columns[1].image(view.outlined(heatmap_overlay(view.scan, view.heats[class_name])), width=240,
                         caption=f"Grad-CAM for {class_name}")
    probabilities = " · ".join(f"{name} {p:.2f}" for name, p in zip(CLASSES, predictions.probabilities[position]))
    members = [m for m in index.group_members(record) if m.path != record.path]
    twins = ", ".join(f"{_ui.literal(index.relative_path(m))} ({m.label})" for m in members[:4]) or "none"
    columns[2].markdown(f"**{heading}**  \n{_ui.literal(predictions.paths[position])}  \n"
                        f"true {CLASSES[predictions.labels[position]]}, called {class_name}  \n"
                        f"probabilities: {probabilities}  \nnear-duplicate group {record.group}; its other scans: {twins}")


def pager(key: str, count: int, per_page: int) -> range:
    """The rows of the page chosen (kept across page switches)."""
    pages = max(1, math.ceil(count / per_page))
    if pages == 1:
        return range(count)
    _ui.keep(key, 1)
    if st.session_state[key] > pages:
        st.session_state[key] = 1
    page = st.number_input(f"Page (of {pages})", 1, pages, key=key)
    _ui.kept(key)
    return range((page - 1) * per_page, min(page * per_page, count))


st.subheader("Confusion matrix")
if index is not None:
    heatmap_progress()


@st.fragment
def confusion_cell() -> None:
    """The matrix and the scans of the square clicked: a click reruns this part only, so the
    report, curves and cases above and below are not drawn again."""
    left, right = st.columns([2, 3])
    selection = left.plotly_chart(figures.confusion_matrix(point["confusion_matrix"], CLASSES), key="ev_confusion",
                                  on_select="rerun", selection_mode="points")
    clicked = figures.cell_from_selection(selection.selection.points if selection else [], CLASSES)
    if clicked is not None:
        st.session_state["ev_cell"] = clicked  # kept while the threshold or other widgets change, and across pages
    cell = st.session_state.get("ev_cell")
    with right:
        st.write("Rows are the true classes, columns what the model called them; the red squares are its mistakes. "
                 "Click a square to see those scans below, each beside its Grad-CAM.")
        if cell is not None and st.button("Clear the selection", key="ev_clear_cell"):
            del st.session_state["ev_cell"]
            st.rerun(scope="fragment")
    with st.container(key="ev_cell_gallery"):
        if cell is not None and index is not None:
            rows = cell_rows(predictions.labels, predicted, *cell)
            st.markdown(f"**{len(rows)} scans**: true {CLASSES[cell[0]]}, predicted {CLASSES[cell[1]]}")
            show_pairs([(int(rows[slot]), f"{slot + 1} of {len(rows)}")
                        for slot in pager("ev_cell_page", len(rows), PAIRS_PER_PAGE)])


confusion_cell()

st.subheader("Curves and calibration")
curves = st.columns(3)
curves[0].plotly_chart(figures.roc_curves(result["roc"]), key="ev_roc")
curves[1].plotly_chart(figures.pr_curves(result["pr"]), key="ev_pr")
curves[2].plotly_chart(figures.reliability(result["calibration"]), key="ev_reliability")

st.subheader("Misclassified malignant cases")
st.caption("Missed cancers (false negatives) first, the most confidently wrong on top; then scans wrongly called "
           "malignant. Grad-CAM of the class the model chose, the true lesion outline on both.")


@st.fragment
def misclassified_cases() -> None:
    """The cases, paged: turning a page reruns this part only."""
    if not misclassified:
        st.success("No malignant errors with this decision rule.")
    elif index is not None:
        st.write(f"{sum(kind == 'false negative' for _, kind in misclassified)} missed cancers, "
                 f"{sum(kind == 'false positive' for _, kind in misclassified)} false alarms.")
        shown = [misclassified[slot] for slot in pager("ev_cases_page", len(misclassified), CASES_PER_PAGE)]
        show_pairs([(position, f"{kind}, p(malignant) {predictions.probabilities[position, MALIGNANT]:.2f}")
                    for position, kind in shown])


misclassified_cases()

st.subheader("Export")
rows = [{"path": path, "label": CLASSES[label], "predicted": CLASSES[guess],
         **{f"p_{c}": f"{p:.6f}" for c, p in zip(CLASSES, probs)}}
        for path, label, guess, probs in zip(predictions.paths, predictions.labels, predicted, predictions.probabilities)]
exports = st.columns(4)
# Built only when clicked: the figures and the report embed plotly.js (megabytes) and would
# otherwise be rebuilt and sent to the browser on every slider move.
exports[0].download_button("Report to hand out (HTML)", lambda: run_report_html(run, threshold=threshold,
                                                                                   scope=None if scope == OWN_SCANS else data_dir),
                           f"{run.name}-report.html", "text/html", key="ev_export_report")
exports[1].download_button("Numbers (JSON)", lambda: report_json(result), f"{run.name}-report.json", "application/json",
                           key="ev_export_json")
exports[2].download_button("Predictions (CSV)", lambda: rows_to_csv(rows), f"{run.name}-predictions.csv", "text/csv",
                           key="ev_export_csv")
