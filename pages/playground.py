"""Preprocessing playground: every step's setting, every stage side by side."""

import dataclasses

import streamlit as st

from busi.config import config_to_dict
from busi.data import UPLOAD_TYPES, load_mask, load_scan
from busi.errors import BusiError
from busi.imageio import read_scan
from busi.preprocess import (
    INPUT_CHANNELS,
    MORPHOLOGY_OPERATIONS,
    OVERLAY_STYLES,
    DisplayConfig,
    Pipeline,
    PreprocessConfig,
)
from pages import _ui

_ui.sidebar()
STUDY, DISPLAY = PreprocessConfig(), DisplayConfig()
SAVED, SAVED_DISPLAY = "playground_config", "playground_display"  # survive page switches, unlike widget state
CAPTIONS = {
    "original": "original", "resized": "resized", "clahe": "CLAHE", "median": "median filter",
    "gaussian": "Gaussian filter", "model_input": "model input", "edges": "Canny edges", "edge_overlay": "edge overlay",
    "mask": "mask (resized)", "mask_morphology": "mask after morphology", "mask_overlay": "mask overlay",
    "lesion_crop": "lesion crop", "flipped": "horizontal flip",
}


def _hex(colour: tuple[int, int, int]) -> str:
    return "#" + "".join(f"{c:02x}" for c in colour)


def _rgb(text: str) -> tuple[int, int, int]:
    return tuple(int(text[i : i + 2], 16) for i in (1, 3, 5))


def _widget_values(config: PreprocessConfig, display: DisplayConfig) -> dict:
    values = config_to_dict(config) | config_to_dict(display)
    values["overlay_colour"] = _hex(display.overlay_colour)
    return {f"pg_{name}": value for name, value in values.items()}


def _reset() -> None:
    st.session_state.update(_widget_values(STUDY, DISPLAY))


st.title("Preprocessing playground")
st.caption("The model sees the 'model input' stage. Masks, edges, overlays and crops are for display; "
           "a new scan has no mask.")
for key, value in _widget_values(st.session_state.get(SAVED, STUDY), st.session_state.get(SAVED_DISPLAY, DISPLAY)).items():
    st.session_state.setdefault(key, value)

# Drawn before anything can stop the page: a widget not drawn in a run loses its value (the
# settings must survive switching to an upload, or to another page and back).
with st.sidebar:
    st.header("Preprocessing")
    st.button("Reset to the study's settings", on_click=_reset, key="pg_reset")
    st.subheader("What the model sees")
    st.slider("Size (px)", 32, 512, step=16, key="pg_size", help="The side of the square the network is given.")
    st.toggle("Keep the proportions (pad with black)", key="pg_keep_aspect",
              help="Off: the scan is stretched to a square. On: scaled whole, the rest padded.")
    st.toggle("Local contrast enhancement", key="pg_clahe", help="CLAHE: contrast-limited adaptive histogram equalisation.")
    st.slider("Contrast limit", 0.5, 10.0, step=0.5, key="pg_clahe_clip_limit", help="CLAHE's clip limit.")
    st.slider("Contrast tiles", 1, 16, key="pg_clahe_tile_grid", help="CLAHE's grid of tiles per side.")
    st.select_slider("Speckle filter size (0 = off)", [0, 1, 3, 5, 7, 9, 11], key="pg_median_ksize",
                     help="Median filter kernel, in pixels.")
    st.select_slider("Smoothing size (0 = off)", [0, 1, 3, 5, 7, 9, 11], key="pg_gaussian_ksize",
                     help="Gaussian filter kernel, in pixels.")
    st.slider("Smoothing strength (0 = from its size)", 0.0, 5.0, step=0.1, key="pg_gaussian_sigma", help="Gaussian sigma.")
    st.radio("Input channels", INPUT_CHANNELS, horizontal=True, key="pg_channels",
             help="grey: the processed scan. stacked: the unprocessed scan (red), the processed scan (green) and "
                  "its edges (blue) as the network's three channels.")
    st.slider("Edge threshold, low", 0, 500, key="pg_canny_low",
              help="Canny's lower threshold: the edge channel when the channels are stacked, else display only.")
    st.slider("Edge threshold, high", 0, 500, key="pg_canny_high", help="Canny's upper threshold.")
    st.subheader("Display only")
    st.selectbox("Mask clean-up", MORPHOLOGY_OPERATIONS, key="pg_mask_operation",
                 help="Morphology on the lesion mask: open drops specks, close fills gaps.")
    st.select_slider("Clean-up size", [1, 3, 5, 7, 9, 11, 15], key="pg_mask_kernel", help="Morphology kernel, in pixels.")
    st.slider("Clean-up passes", 1, 5, key="pg_mask_iterations")
    st.color_picker("Overlay colour", key="pg_overlay_colour")
    st.slider("Overlay opacity", 0.0, 1.0, step=0.05, key="pg_overlay_opacity")
    st.radio("Overlay style", OVERLAY_STYLES, horizontal=True, key="pg_overlay_style")
    st.slider("Margin around the lesion crop", 0.0, 1.0, step=0.05, key="pg_crop_margin")
    st.toggle("Show the mirrored scan (augmentation)", key="pg_flip")

index = _ui.dataset()
source = st.radio("Scan", ["From the dataset", "Upload a scan"], horizontal=True, key="pg_source")
scan = mask = None
if source == "From the dataset":
    names = [index.relative_path(r) for r in index.records]
    if not names:
        st.info("The data folder has no scans: upload one instead.")
        st.stop()
    record = index.record(st.selectbox("Scan", names, key="pg_scan"))
    scan = load_scan(record)
    mask = load_mask(record) if record.mask_paths else None
    if mask is not None and mask.shape != scan.shape:
        mask = None
else:
    upload = st.file_uploader("Scan (kept in memory only)", type=UPLOAD_TYPES, key="pg_upload")
    if upload is None:
        st.info("Choose a PNG, JPEG, BMP or TIFF scan.")
        st.stop()
    try:
        with _ui.scan_slot():
            scan = read_scan(upload.getvalue())
    except BusiError as error:
        st.error(_ui.literal(error))
        st.stop()

display_values = {name: st.session_state[f"pg_{name}"] for name in config_to_dict(DISPLAY)}
display_values["overlay_colour"] = _rgb(display_values["overlay_colour"])
try:
    config = dataclasses.replace(STUDY, **{name: st.session_state[f"pg_{name}"] for name in config_to_dict(STUDY)})
    display = dataclasses.replace(DISPLAY, **display_values)
except BusiError as error:
    st.error(f"{_ui.literal(error)} Adjust the setting in the sidebar.")
    st.stop()
st.session_state[SAVED], st.session_state[SAVED_DISPLAY] = config, display

stages = Pipeline(config, display).stages(scan, mask)
items = list(stages.items())
for start in range(0, len(items), 4):
    for column, (name, image) in zip(st.columns(4), items[start : start + 4]):
        column.image(image.astype("uint8") * 255 if image.dtype == bool else image, caption=CAPTIONS.get(name, name),
                     width="stretch")

if st.button("Use these settings for training", type="primary", key="pg_use_for_training"):
    st.session_state["training_preprocess"] = config
if "training_preprocess" in st.session_state:
    st.success("The Training page will use these preprocessing settings (reset them there to go back to the study's).")
