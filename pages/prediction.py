"""Prediction: upload scans, see probabilities and where the model looked. Uploads stay in memory."""

import streamlit as st

from busi import figures
from busi.data import UPLOAD_TYPES, is_synthetic
from busi.errors import BusiError
from busi.explain import heatmap_overlay
from busi.imageio import read_image
from busi.jobs import active_run, start_training
from busi.preprocess import grey_view
from busi.recipes import RECIPES
from busi.sources import allowed_roots
from pages import _ui

_ui.sidebar()
st.title("Prediction")
_ui.notice()
runs = _ui.usable_runs()
if not runs:
    phantoms = is_synthetic(st.session_state["data_dir"])
    one_click = RECIPES["quick" if phantoms else "best"]

    def _start() -> None:  # a callback: the job runs before the page draws its button, which then shows it disabled
        try:
            start_training(st.session_state["data_dir"], one_click.train, one_click.preprocess, _ui.runs_dir(),
                           roots=allowed_roots(), owner=_ui.session_token(), name="quick-demo" if phantoms else f"{one_click.name}-{one_click.train.arch}")
        except BusiError as error:
            st.session_state["pr_start_error"] = str(error)

    if phantoms:
        st.info("There is no trained model yet. Train one on the Training page, or train a quick demo model on these "
                "synthetic phantoms now (under two minutes on a CPU; it knows nothing about real scans).")
    else:
        st.info("There is no trained model yet. Train our recipe on the scans in use now: " + one_click.summary)
    running = active_run(_ui.runs_dir())
    st.button("Train a quick demo model" if phantoms else "Train our recipe on these scans", type="primary",
              key="pr_quick_train", disabled=running is not None, on_click=_start)
    if "pr_start_error" in st.session_state:
        st.error(_ui.literal(st.session_state.pop("pr_start_error")))
    if running is not None:
        _ui.follow_progress(running)
        st.page_link("pages/training.py", label="See the training curves", icon=":material/model_training:")
    st.stop()

names = [r.name for r in runs]
run = runs[names.index(st.selectbox("Model (run)", names, key="pr_run"))]
classifier = _ui.classifier(run.path)
if classifier is None:
    st.stop()
st.caption(f"{classifier.train_config.arch}, {classifier.preprocess.size} px input, trained on "
           + ("synthetic phantoms." if "quick" in run.name else "the run's data folder."))
screening = _ui.screening(run.path)
if screening:
    st.caption(screening.describe() + " A flag asks for a closer look; it is not a diagnosis.")

uploads = st.file_uploader("Scans (PNG, JPEG, BMP or TIFF; processed in memory, never stored)",
                           type=UPLOAD_TYPES, accept_multiple_files=True, key="pr_uploads")
if not uploads:
    st.info("Upload one or more breast ultrasound scans.")
    st.stop()
opacity = st.slider("Heatmap opacity", 0.0, 1.0, 0.45, 0.05, key="pr_opacity")
# Results live in this session only, for the uploads still present: moving the slider must not
# rerun the model, and no other session may ever see them.
previous = st.session_state.get("pr_results", {})
results = {}
for upload in uploads:
    key = (upload.file_id, str(classifier.source))
    if key not in previous:
        try:
            with _ui.scan_slot():
                pixels = read_image(upload.getvalue())  # decoded once, bounded in size, never kept
                previous[key] = (classifier.predict(pixels), classifier.explain(pixels).shrunk(_ui.DISPLAY_SIDE))
        except _ui.ServerBusy as error:  # shown now, tried again on the next rerun
            results[key] = error
            continue
        except BusiError as error:
            previous[key] = error
    results[key] = previous[key]
st.session_state["pr_results"] = {key: outcome for key, outcome in results.items() if not isinstance(outcome, _ui.ServerBusy)}

for number, upload in enumerate(uploads):
    st.divider()
    st.subheader(_ui.literal(upload.name))
    outcome = results[(upload.file_id, str(classifier.source))]
    if isinstance(outcome, BusiError):
        st.error(f"{_ui.literal(upload.name)}: {_ui.literal(outcome)}")
        continue
    prediction, explanation = outcome
    for warning in prediction.warnings:
        st.warning(warning, icon=":material/report:")
    columns = st.columns([1, 1, 1])
    stacked = prediction.model_input.ndim == 3
    columns[0].image(grey_view(prediction.model_input), width="stretch",
                     caption="what the model sees (the processed channel; the unprocessed scan and its edges are the "
                             "other two)" if stacked else "what the model sees (preprocessed)")
    columns[1].image(heatmap_overlay(explanation.scan, explanation.heat, opacity),
                     caption=f"Grad-CAM for '{explanation.class_name}'", width="stretch")
    columns[2].metric("Predicted class", prediction.label, help="The most probable class. Research demo only.")
    if screening:
        columns[2].metric("Screening flag", screening.flag(prediction.probabilities["malignant"]),
                          help="Whether p(malignant) reaches the screening threshold above. Research demo only.")
    columns[2].plotly_chart(figures.probabilities(prediction.probabilities), key=f"pr_probabilities_{number}")
