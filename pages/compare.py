"""Compare runs: two or more runs on the same scans, their metrics with intervals, how far each
is from the first with a paired interval, overlaid ROC and PR curves and their confusion matrices."""

from pathlib import Path

import streamlit as st

from busi import figures
from busi.compare import COMPARE_COLUMNS, compare_row, on_common_scans, paired_differences, with_interval
from busi.data import CLASSES
from busi.errors import BusiError
from pages import _ui

_ui.sidebar()
COMMON_TEST, DATA_IN_USE = "The test scans they all held out", "Every scan of the data in use"

st.title("Compare runs")
runs = _ui.finished_runs()
if len(runs) < 2:
    st.info("Comparing needs two finished runs: train another on the Training page.")
    st.stop()
names = [run.name for run in runs]
_ui.keep("cmp_runs", names[:2])
st.session_state["cmp_runs"] = [name for name in st.session_state["cmp_runs"] if name in names]
chosen = st.multiselect("Runs (the first is the reference the others are measured against)", names, key="cmp_runs",
                        format_func=lambda name: _ui.run_label(runs[names.index(name)]))
_ui.kept("cmp_runs")
_ui.keep("cmp_scope", COMMON_TEST)
scope = st.radio("Score them on", [COMMON_TEST, DATA_IN_USE], horizontal=True, key="cmp_scope")
_ui.kept("cmp_scope")
if len(chosen) < 2:
    st.info("Choose at least two runs.")
    st.stop()
summaries = [runs[names.index(name)] for name in chosen]
data_dir = st.session_state["data_dir"]
try:
    predictions = on_common_scans([_ui.predictions_on(run.path, None if scope == COMMON_TEST else data_dir)
                                   for run in summaries])
except BusiError as error:
    st.error(_ui.literal(error))
    st.stop()

n = len(predictions[0].paths)
if scope == COMMON_TEST:
    st.markdown(f"**Scored on** the {n} scans that every one of these runs held out for testing: none of them learnt "
                "from these.")
else:
    st.markdown(f"**Scored on** all {n} scans of the data in use, each scan called its most probable class.")
    here = Path(data_dir).resolve()
    learnt_here = [run.name for run in summaries if run.trained_on and Path(run.trained_on.folder).resolve() == here]
    if learnt_here:
        st.warning(f"{_ui.literal(', '.join(learnt_here))} learnt from some of these scans: its numbers are flattered. "
                   "Compare on the test scans they all held out for an unbiased comparison.")
if any(run.trained_on and run.trained_on.synthetic for run in summaries):
    st.warning("Some of these runs learnt from synthetic phantoms: their numbers say nothing about scans of patients.")

results = [_ui.report_at(p, None) for p in predictions]
st.subheader("Metrics")
st.dataframe([compare_row(run.name, result) for run, result in zip(summaries, results)], key="cmp_table",
             hide_index=True, column_order=COMPARE_COLUMNS)
st.caption("Each value with its 95 % interval; each scan called its most probable class. Intervals: Wilson for "
           "proportions, bootstrap by near-duplicate group for F1 and AUC.")

st.subheader(f"Each run against {_ui.literal(summaries[0].name)}")
differences = [{"run": run.name} | {f"{name} difference": with_interval(value, interval, "+")
                                    for name, (value, interval) in paired_differences(predictions[0], other).items()}
               for run, other in zip(summaries[1:], predictions[1:])]
st.dataframe(differences, key="cmp_differences", hide_index=True)
st.caption("The run minus the reference on the same scans, with its 95 % interval, which resamples near-duplicate "
           "groups and keeps each scan's two answers together. An interval that contains 0 means these scans cannot "
           "tell the two apart.")

st.subheader("Malignant against the rest")
left, right = st.columns(2)
left.plotly_chart(figures.compared_curves({run.name: r["roc"]["malignant"] for run, r in zip(summaries, results)}, "roc"),
                  key="cmp_roc")
right.plotly_chart(figures.compared_curves({run.name: r["pr"]["malignant"] for run, r in zip(summaries, results)}, "pr"),
                   key="cmp_pr")

st.subheader("Confusion matrices")
for start in range(0, len(summaries), 3):
    for column, run, result in zip(st.columns(3), summaries[start:start + 3], results[start:start + 3]):
        column.markdown(f"**{_ui.literal(run.name)}**")
        column.plotly_chart(figures.confusion_matrix(result["malignant"]["confusion_matrix"], CLASSES),
                            key=f"cmp_confusion_{run.name}")
