"""Overview: what the app does, the data and runs in use, the device, the notice."""

import streamlit as st

from busi.data import CLASSES
from busi.device import describe_device
from pages import _ui

_ui.sidebar()
st.title("busi: breast-ultrasound tumour classification")
_ui.notice()
st.markdown(
    "Classifies breast ultrasound scans as **benign**, **malignant** or **normal**, following and "
    "improving on a study that trained ResNet-50 on the public BUSI dataset (0.81 accuracy, but only "
    "0.58 recall on malignant scans). Use the pages on the left to browse the **dataset**, try the "
    "**preprocessing**, **train** a model, **evaluate** it with confidence intervals and inspect "
    "missed cancers, and **predict** single scans with a Grad-CAM heatmap."
)

index = _ui.dataset()
st.subheader("Data in use")
demo = st.session_state.get("data_is_demo", True)
st.write(("Synthetic demo phantoms (not real patients)" if demo else "Dataset folder") + f": `{index.root}`")
counts = index.class_counts()
columns = st.columns(len(CLASSES) + 2)
columns[0].metric("Scans", len(index.records))
for column, label in zip(columns[1:], CLASSES):
    column.metric(label.capitalize(), counts[label])
columns[-1].metric("Independent groups", len(set(index.groups.tolist())),
                   help="Scans left after grouping exact and near-duplicates; splits keep each group on one side.")
if not demo:
    st.caption(_ui.CITATION)
problems = sum(f.severity == "error" for f in index.findings)
if index.findings:
    st.info(f"The validation report lists {len(index.findings)} findings ({problems} errors): see the Dataset page.")

st.subheader("Runs")
runs = _ui.finished_runs()
all_runs = _ui.usable_runs()
st.write(f"{len(all_runs)} trained models in `{_ui.runs_dir()}`, {len(runs)} with a complete evaluation.")
if all_runs:
    # The epoch whose weights are the model: the best on validation or the final one (the run's `keep`).
    st.dataframe([{"run": r.name, "status": r.state, "network": r.arch, "epochs": f"{r.epochs_done}/{r.epochs}",
                   "kept epoch": r.model_epoch, "its validation macro-F1": r.model_val_macro_f1} for r in all_runs],
                 key="overview_runs", hide_index=True)

st.subheader("Compute")
st.write(f"Training and prediction run on: **{describe_device()}**.")
