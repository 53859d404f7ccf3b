"""Overview: what the app does, the data and the models in use, the notice."""

import streamlit as st

from busi.data import CLASSES, is_synthetic
from busi.device import describe_device
from busi.runs import list_runs
from pages import _ui

_ui.sidebar()
st.title("Breast ultrasound: benign, malignant or normal?")
_ui.notice()
st.markdown(
    "This research demo classifies breast ultrasound scans as **benign**, **malignant** or **normal**, building on a "
    "study that trained a network on the public BUSI dataset (0.81 accuracy, but only 0.58 of the cancers found). "
    "Use the pages on the left to browse the **dataset**, try the **preprocessing**, **train** a model, **evaluate** "
    "it with confidence intervals and look at the cancers it missed, **compare** models, and **predict** new scans "
    "with a heatmap of where the model looked."
)

index = _ui.dataset()
st.subheader("Data in use")
phantoms = is_synthetic(index.root)
st.write("Synthetic phantoms, not scans of patients." if phantoms else "Real breast ultrasound scans.")
counts = index.class_counts()
columns = st.columns(len(CLASSES) + 2)
columns[0].metric("Scans", len(index.records))
for column, label in zip(columns[1:], CLASSES):
    column.metric(label.capitalize(), counts[label])
columns[-1].metric("Independent groups", len(set(index.groups.tolist())),
                   help="Scans left after grouping exact and near-duplicates; splits keep each group on one side.")
if not phantoms:
    st.caption(_ui.CITATION)
problems = sum(f.severity == "error" for f in index.findings)
if index.findings:
    st.info(f"The validation report lists {len(index.findings)} findings ({problems} errors): see the Dataset page.")

st.subheader("Models")
models = _ui.usable_runs()
every = list_runs(_ui.runs_dir())
if not every:
    st.info("No model yet: train one on the Training page, or a quick demo model from the Prediction page.")
else:
    st.write(f"{len(models)} trained models; the best for the data in use first.")
    # Each model's provenance and state, and the epoch whose weights it keeps (the best on validation, or the final one).
    st.dataframe([{"model": run.name, "state": run.state, "network": run.arch,
                   "trained on": run.trained_on.describe() if run.trained_on else "not recorded",
                   "tested on": f"{run.trained_on.parts.get('test', 0)} test scans" if run.trained_on else "not recorded",
                   "epochs": f"{run.epochs_done}/{run.epochs}", "kept epoch": run.model_epoch,
                   "its validation macro-F1": run.model_val_macro_f1}
                  for run in models + [run for run in every if run.path not in {m.path for m in models}]],
                 key="overview_runs", hide_index=True)

st.subheader("Compute")
st.write(f"Training and prediction run on: **{describe_device()}**.")
with st.expander("For engineers"):
    st.code(f"data folder: {index.root}\nruns folder: {_ui.runs_dir()}", language=None)
