"""busi dashboard. For now one overview page: the data source in use and what it holds."""

import os

import streamlit as st

from busi.data import CLASSES, index_dataset
from busi.errors import BusiError
from busi.synth import ensure_demo_dataset

st.set_page_config(page_title="busi: breast-ultrasound classifier", layout="wide")


@st.cache_data(show_spinner="Indexing the dataset…")
def load_index(folder: str):
    return index_dataset(folder)


st.title("busi: breast-ultrasound tumour classification")
st.warning("Research demo, not a medical device: never use it for diagnosis.")

configured = os.environ.get("BUSI_DATA", "")
folder = configured or str(ensure_demo_dataset())
source = "BUSI_DATA" if configured else "synthetic demo data (no BUSI_DATA set)"
try:
    index = load_index(folder)
except BusiError as error:
    st.error(f"Cannot use {source} at '{folder}': {error}")
    st.stop()

st.subheader("Data in use")
st.write(f"Source: {source}: `{index.root}`")
counts = index.class_counts()
columns = st.columns(len(CLASSES) + 1)
columns[0].metric("Scans", len(index.records))
for column, label in zip(columns[1:], CLASSES):
    column.metric(label.capitalize(), counts[label])
if configured:
    st.caption(
        "Dataset: W. Al-Dhabyani, M. Gomaa, H. Khaled, A. Fahmy, 'Dataset of breast ultrasound "
        "images', Data in Brief 28 (2020) 104863."
    )
if index.findings:
    st.subheader("Validation report")
    st.dataframe(
        [{"severity": f.severity, "problem": f.code, "message": f.message} for f in index.findings],
        key="findings_table",
    )
else:
    st.success("Validation: no problems found.")
