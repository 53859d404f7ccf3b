"""Prediction: scans uploaded (kept in memory only) or picked from the dataset: a summary table
first, then each scan's probabilities, screening flag and where the model looked."""

import hashlib

import streamlit as st

from busi import figures
from busi.data import UPLOAD_TYPES, is_synthetic, load_scan, natural_sorted
from busi.errors import BusiError
from busi.explain import heatmap_overlay
from busi.gallery import scan_view
from busi.imageio import dicom_frames, read_image
from busi.jobs import active_run, start_training
from busi.predict import Explanation, rows_to_csv
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

summary = _ui.pick_run("Model", runs, "pr_run")
classifier = _ui.classifier(summary.path)
if classifier is None:
    st.stop()
learnt = classifier.trained_on.describe() if classifier.trained_on else "data its version did not record"
st.caption(f"{classifier.train_config.arch}, {classifier.preprocess.size} px input, trained on {learnt}.")
if classifier.training_warning:
    st.error(classifier.training_warning, icon=":material/block:")
screening = _ui.screening(summary.path)
if screening:
    st.caption(screening.describe() + " A flag asks for a closer look; it is not a diagnosis.")
UPLOADS, FROM_DATASET = "Upload scans", "A scan of the data in use, beside its lesion outline"
_ui.keep("pr_source", UPLOADS)
source = st.radio("Scans", [UPLOADS, FROM_DATASET], horizontal=True, key="pr_source")
_ui.kept("pr_source")
opacity = st.slider("Heatmap opacity", 0.0, 1.0, 0.45, 0.05, key="pr_opacity")


def flag_words(prediction) -> str:
    return screening.explain(prediction.probabilities["malignant"]) if screening else "no screening threshold for this model"


def show_details(number: int, name: str, prediction, explanation, outline=None) -> None:
    """One scan: warnings, what the model saw, where it looked, its answer and flag."""
    for warning in prediction.warnings:
        st.warning(warning, icon=":material/report:")
    columns = st.columns([1, 1, 1])
    stacked = prediction.model_input.ndim == 3
    columns[0].image(grey_view(prediction.model_input), width="stretch",
                     caption="what the model sees (the processed channel; the unprocessed scan and its edges are the "
                             "other two)" if stacked else "what the model sees (preprocessed)")
    heat = heatmap_overlay(explanation.scan, explanation.heat, opacity)
    columns[1].image(outline(heat) if outline else heat, width="stretch",
                     caption=f"Grad-CAM for {explanation.class_name}" + (", true lesion outline in green" if outline else ""))
    columns[2].metric("Predicted class", prediction.label, help="The most probable class. Research demo only.")
    if screening:
        flagged = prediction.probabilities["malignant"] >= screening.threshold
        columns[2].metric("Screening flag", "Flagged for review" if flagged else "Not flagged",
                          help="Whether p(malignant) reaches the screening threshold above. Research demo only.")
        columns[2].caption(flag_words(prediction))
    columns[2].plotly_chart(figures.probabilities(prediction.probabilities), key=f"pr_probabilities_{number}")


if source == FROM_DATASET:
    index = _ui.dataset()
    if not index.records:
        st.info("The data in use holds no scans.")
        st.stop()
    names = natural_sorted(index.relative_path(record) for record in index.records)
    chosen = st.selectbox("Scan", names, key="pr_dataset_scan")
    record = index.record(chosen)
    with _ui.scan_slot():
        prediction = classifier.predict(load_scan(record))
        view = scan_view(classifier, record, [prediction.label])
    st.subheader(_ui.literal(chosen))
    st.write(f"Filed as **{record.label}**; the model calls it **{prediction.label}**.")
    left, _ = st.columns([1, 2])
    left.image(view.outlined(), caption="the scan, its lesion outline in green", width="stretch")
    show_details(0, chosen, prediction, Explanation(prediction.label, view.heats[prediction.label], view.scan,
                                                    prediction.probabilities), view.outlined)
    st.stop()

uploads = st.file_uploader("Scans (PNG, JPEG, BMP, TIFF or DICOM; processed in memory, never stored)",
                           type=UPLOAD_TYPES, accept_multiple_files=True, key="pr_uploads")
if not uploads:
    st.info("Upload one or more breast ultrasound scans.")
    st.stop()
# A file added twice (under any name) is shown once.
distinct: dict[str, object] = {}
for upload in uploads:
    digest = hashlib.sha256(upload.getvalue()).hexdigest()
    if digest in distinct:
        st.caption(f"{_ui.literal(upload.name)} is the same file as {_ui.literal(distinct[digest].name)}: shown once.")
    else:
        distinct[digest] = upload

# Results live in this session only, for the uploads still present: moving a slider must not
# rerun the model, and no other session may ever see them.
previous = st.session_state.get("pr_results", {})
results, frames = {}, {}
for digest, upload in distinct.items():
    try:
        described = dicom_frames(upload.getvalue())
    except BusiError:
        described = None  # refused below, with the decoding's message
    if described and described.frames > 1:
        frames[digest] = st.number_input(f"Frame of {_ui.literal(upload.name)} (of {described.frames})", 1, described.frames, 1,
                                         key=f"pr_frame_{digest[:16]}") - 1
    key = (digest, frames.get(digest, 0), str(classifier.source))
    if key not in previous:
        try:
            with _ui.scan_slot():
                pixels = read_image(upload.getvalue(), frame=frames.get(digest, 0))  # decoded once, bounded, never kept
                previous[key] = (classifier.predict(pixels), classifier.explain(pixels).shrunk(_ui.DISPLAY_SIDE))
        except _ui.ServerBusy as error:  # shown now, tried again on the next rerun
            results[key] = error
            continue
        except BusiError as error:
            previous[key] = error
    results[key] = previous[key]
st.session_state["pr_results"] = {key: outcome for key, outcome in results.items() if not isinstance(outcome, _ui.ServerBusy)}
outcomes = [(upload, results[(digest, frames.get(digest, 0), str(classifier.source))]) for digest, upload in distinct.items()]

st.subheader("Summary")
table = [{"file": upload.name, "called": "" if isinstance(outcome, BusiError) else outcome[0].label,
          "p(malignant)": "" if isinstance(outcome, BusiError) else f"{outcome[0].probabilities['malignant']:.3f}",
          "screening": "" if isinstance(outcome, BusiError) else flag_words(outcome[0]),
          "warnings": str(outcome) if isinstance(outcome, BusiError) else " ".join(outcome[0].warnings)}
         for upload, outcome in outcomes]
st.dataframe(table, key="pr_summary", hide_index=True)
st.download_button("Summary (CSV)", rows_to_csv(table), "predictions.csv", "text/csv", key="pr_summary_csv")

for number, (upload, outcome) in enumerate(outcomes):
    st.divider()
    st.subheader(_ui.literal(upload.name))
    if isinstance(outcome, BusiError):
        st.error(f"{_ui.literal(upload.name)}: {_ui.literal(outcome)}")
        continue
    show_details(number, upload.name, *outcome)
