"""Streamlit glue shared by the pages: the data source, cached loaders and the notice.

Everything that computes lives in ``busi``; this module only caches and renders.
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import streamlit as st

from busi import NOTICE
from busi.data import DatasetIndex, ScanRecord, index_dataset, load_scan
from busi.errors import BusiError
from busi.evaluate import (
    Predictions,
    ScreeningThreshold,
    callable_classes,
    folder_predictions,
    report,
    run_predictions,
    screening_threshold,
)
from busi.gallery import Gallery, ScanView, scan_view
from busi.imageio import read_scan
from busi.jobs import default_runs_dir
from busi.metrics import MALIGNANT
from busi.predict import Classifier, checkpoint_of, load_classifier
from busi.preprocess import resize
from busi.runs import PREDICTIONS, RunFolder, RunSummary, list_runs, runs_for_data
from busi.sources import DEMO_SOURCE, allowed_roots, data_sources, resolve_data_folder

CITATION = ("Dataset: W. Al-Dhabyani, M. Gomaa, H. Khaled, A. Fahmy, \"Dataset of breast ultrasound "
            "images\", *Data in Brief* 28 (2020) 104863.")
OTHER_FOLDER = "Another folder…"
PAGES = (
    ("pages/overview.py", "Overview", ":material/home:"),
    ("pages/dataset.py", "Dataset", ":material/photo_library:"),
    ("pages/playground.py", "Preprocessing", ":material/tune:"),
    ("pages/training.py", "Training", ":material/model_training:"),
    ("pages/evaluation.py", "Evaluation", ":material/analytics:"),
    ("pages/compare.py", "Compare runs", ":material/compare_arrows:"),
    ("pages/prediction.py", "Prediction", ":material/stethoscope:"),
)


# Markdown's punctuation, and Streamlit's ':' directives (colours, icons) and '$' (LaTeX).
_MARKDOWN = re.compile(r"([\\`*_{}\[\]()#+\-.!|<>~:$])")


def literal(text: object) -> str:
    """Text a visitor supplied (a file or folder name, an error quoting one) escaped so that
    Markdown shows it as itself: no link, no image fetched, no formatting, on one line."""
    return _MARKDOWN.sub(r"\\\1", " ".join(str(text).splitlines()))


def session_token() -> str:
    """This browser's secret: jobs it starts carry it, and only it may stop them. Derived from the
    XSRF cookie Streamlit keeps in the browser, so that a reload keeps the visitor's jobs theirs
    (hashed: the cookie itself is never written anywhere); a random one per session without it."""
    if "session_token" not in st.session_state:
        cookie = st.context.cookies.get("_streamlit_xsrf")
        secret = browser_secret(cookie) if isinstance(cookie, str) else None  # no cookies in a headless test run
        st.session_state["session_token"] = hashlib.sha256(secret).hexdigest()[:32] if secret else secrets.token_urlsafe(16)
    return st.session_state["session_token"]


def browser_secret(cookie: str) -> bytes | None:
    """The token inside Streamlit's XSRF cookie, the same for every response to one browser
    (the cookie is re-masked each time: "2|mask|masked token|timestamp", as in Tornado); None
    when the cookie is absent or not in that format."""
    parts = cookie.strip("\"'").split("|")
    try:
        mask, masked = bytes.fromhex(parts[1]), bytes.fromhex(parts[2])
    except (IndexError, ValueError):
        return None
    if parts[0] != "2" or len(mask) != 4 or not masked:
        return None
    return bytes(byte ^ mask[position % 4] for position, byte in enumerate(masked))


def notice() -> None:
    st.warning(NOTICE, icon=":material/warning:")


def sidebar() -> None:
    """The sidebar every page shares: the page links and the data source."""
    # app.py sets the same, but a page opened straight from its address in a new session would
    # otherwise be drawn in Streamlit's narrow layout (a known multipage quirk).
    st.set_page_config(layout="wide")
    session_token()
    with st.sidebar:
        for path, title, icon in PAGES:
            st.page_link(path, label=title, icon=icon)
        st.divider()
    choose_data_source()


def choose_data_source() -> None:
    """Sidebar choice of the dataset; every page reads ``st.session_state['data_dir']``."""
    sources = data_sources()
    # Each page draws these widgets, and widget state does not survive a page switch: restore it.
    for key in ("data_source", "data_folder_text"):
        if key not in st.session_state and f"saved_{key}" in st.session_state:
            st.session_state[key] = st.session_state[f"saved_{key}"]
    choice = st.sidebar.selectbox("Data", [*sources, OTHER_FOLDER], key="data_source")
    st.session_state["saved_data_source"] = choice
    if choice == OTHER_FOLDER:
        text = st.sidebar.text_input("Dataset folder", key="data_folder_text",
                                     help="A folder holding Dataset_BUSI_with_GT, or the class folders themselves.")
        st.session_state["saved_data_folder_text"] = text
        try:
            folder = resolve_data_folder(text)
        except BusiError as error:
            st.sidebar.error(literal(error))
            folder = sources[DEMO_SOURCE]
            st.sidebar.caption("Showing the demo data meanwhile.")
    else:
        folder = sources[choice]
    st.session_state["data_dir"] = str(folder)
    st.session_state["data_is_demo"] = folder == sources[DEMO_SOURCE]


@st.cache_resource(show_spinner="Indexing the dataset…", max_entries=4)
def _index(folder: str, modified: float) -> DatasetIndex:
    return index_dataset(folder, roots=allowed_roots())


def index_of(folder: Path) -> DatasetIndex | None:
    """A folder's index (cached), or None when it cannot be read."""
    try:
        return _index(str(folder), folder.stat().st_mtime)
    except (BusiError, OSError):
        return None


def dataset() -> DatasetIndex:
    """The current data folder's index (cached; re-read when the folder changes), or stop the page."""
    folder = st.session_state.get("data_dir") or str(data_sources()[DEMO_SOURCE])
    try:
        return _index(folder, Path(folder).stat().st_mtime)
    except (BusiError, OSError) as error:
        st.error(f"Cannot read the data folder: {literal(error)} Choose another source in the sidebar.")
        st.stop()


@st.cache_data(max_entries=2000, show_spinner=False)
def thumbnail(path: str, side: int = 160) -> np.ndarray:
    return resize(read_scan(path), side, keep_aspect=True)


def runs_dir() -> Path:
    return default_runs_dir()


def usable_runs() -> list[RunSummary]:
    """Runs with a model, the best for the data in use first (``busi.runs.runs_for_data``)."""
    return runs_for_data(list_runs(runs_dir()), st.session_state["data_dir"])


def finished_runs() -> list[RunSummary]:
    return [run for run in usable_runs() if RunFolder(run.path).has_predictions]


def run_label(run: RunSummary) -> str:
    """A run as pickers show it: its name, state and what it learnt from."""
    data = run.trained_on.describe() if run.trained_on else "data not recorded"
    state = {"finished": "finished and evaluated", "stopped": f"stopped at epoch {run.epochs_done} of {run.epochs}"}.get(
        run.state, run.state)
    return f"{run.name} · {state} · trained on {data}"


def pick_run(label: str, runs: list[RunSummary], key: str, default: str | None = None) -> RunSummary:
    """A run chosen in a picker; ``st.session_state[key]`` holds its name, survives page switches
    and may be set by the page (e.g. to a run just started). By default ``default``, else the
    first run (the best for the data in use)."""
    names = [run.name for run in runs]
    labels = {run.name: run_label(run) for run in runs}
    if st.session_state.get(key) not in names:
        st.session_state[key] = default if default in names else names[0]
    # Streamlit keeps a keyed selectbox's first labels whatever format_func says later, so a run
    # that finished would still read "running": the widget is keyed by what it shows and the
    # choice it was drawn with, and a new one is drawn when either changes.
    shown = hashlib.sha256("\n".join([st.session_state[key], *labels.values()]).encode()).hexdigest()[:12]
    widget = f"{key}_{shown}"
    st.selectbox(label, names, index=names.index(st.session_state[key]), key=widget, format_func=labels.__getitem__,
                 on_change=lambda: st.session_state.update({key: st.session_state[widget]}))
    return runs[names.index(st.session_state[key])]


def keep(key: str, default):
    """Restore a widget's value saved by ``kept`` (Streamlit drops the state of widgets a page
    does not draw, so a page switch would lose it); call before drawing the widget."""
    if key not in st.session_state:
        st.session_state[key] = st.session_state.get(f"saved_{key}", default)
    return st.session_state[key]


def kept(key: str) -> None:
    """Save a drawn widget's value for ``keep``."""
    st.session_state[f"saved_{key}"] = st.session_state[key]


@st.cache_resource(show_spinner="Loading the model…", max_entries=4)
def _classifier(checkpoint: str, modified: float) -> Classifier:
    return load_classifier(checkpoint)


def classifier(run: Path) -> Classifier | None:
    """The run's model, loaded once per checkpoint version and shared read-only by all sessions."""
    try:
        checkpoint = checkpoint_of(run)
        return _classifier(str(checkpoint), os.path.getmtime(checkpoint))
    except (BusiError, OSError) as error:
        st.error(f"Cannot load the model of {literal(run.name)}: {literal(error)}")
        return None


@st.cache_resource(show_spinner=False, max_entries=64)
def _model_view(checkpoint: str, modified: float, path: str, _record: ScanRecord) -> tuple[str, float, ScanView]:
    model = _classifier(checkpoint, modified)
    probabilities = model.probabilities(model.prepare(load_scan(_record)).model_input[None])[0]
    label = model.classes[int(probabilities.argmax())]
    return label, float(probabilities[MALIGNANT]), scan_view(model, _record, [label])


def model_view(run: Path, record: ScanRecord) -> tuple[str, float, ScanView]:
    """The run's call on a dataset scan, its p(malignant) and the scan's view with the Grad-CAM of
    that call: computed once per model and scan, not on every rerun of a page. Raises BusiError."""
    checkpoint = checkpoint_of(run)
    return _model_view(str(checkpoint), os.path.getmtime(checkpoint), str(record.path), record)


@st.cache_data(show_spinner=False, max_entries=16)
def _screening(run: str, modified: float) -> ScreeningThreshold | None:
    return screening_threshold(run)


def screening(run: Path) -> ScreeningThreshold | None:
    """The run's screening threshold, read once per version of its predictions rather than on
    every rerun; None, with a warning, when its predictions cannot be read."""
    predictions = run / PREDICTIONS
    try:
        return _screening(str(run), predictions.stat().st_mtime) if predictions.is_file() else None
    except (BusiError, OSError) as error:
        st.warning(f"No screening threshold for this run: {literal(error)}")
        return None


@st.cache_resource(max_entries=1)
def _evaluations() -> dict:
    """Predictions already computed on data folders, per model and folder version, shared by sessions."""
    return {}


def predictions_on(run: Path, data_dir: str | None) -> Predictions:
    """The run's predictions on its own test split, or on every scan of ``data_dir`` (computed once
    per model and folder version, with a progress bar the first time)."""
    if data_dir is None:
        return _run_predictions(str(run), (run / PREDICTIONS).stat().st_mtime)
    checkpoint = checkpoint_of(run)
    key = (str(checkpoint), checkpoint.stat().st_mtime, data_dir, Path(data_dir).stat().st_mtime)
    store = _evaluations()
    if key not in store:
        model = classifier(run)
        if model is None:
            st.stop()
        bar = st.progress(0.0, text="Scoring every scan of the data in use…")

        def progress(done: int, total: int) -> None:
            bar.progress(done / total, text=f"Scoring every scan of the data in use: {done} of {total}")

        store[key] = folder_predictions(model, data_dir, roots=allowed_roots(), progress=progress)
        bar.empty()
    return store[key]


@st.cache_data(show_spinner=False, max_entries=8)
def _run_predictions(run: str, modified: float) -> Predictions:
    return run_predictions(run, "test")


@st.cache_data(show_spinner="Computing the 95 % intervals…", max_entries=64)
def _report(labels: np.ndarray, probabilities: np.ndarray, groups: np.ndarray, threshold: float | None) -> dict:
    return report(labels, probabilities, threshold=threshold, groups=groups)


def report_at(predictions: Predictions, threshold: float | None) -> dict:
    """The report of ``predictions`` at a decision threshold (None: the most probable class),
    computed once per threshold."""
    return _report(predictions.labels, predictions.probabilities, predictions.groups, threshold)


@st.cache_resource(max_entries=4)
def _gallery(checkpoint: str, modified: float, paths: tuple[str, ...], classes: tuple[tuple[str, ...], ...],
             data_dir: str, folder_modified: float) -> Gallery:
    index = index_of(Path(data_dir))
    records = {index.relative_path(record): record for record in index.records}
    present = [(records[path], wanted) for path, wanted in zip(paths, classes) if path in records]
    return Gallery(_classifier(checkpoint, modified), [record for record, _ in present], [wanted for _, wanted in present])


def gallery(run: Path, predictions: Predictions) -> Gallery:
    """Grad-CAMs of the evaluated scans still in their folder (for malignant and for the most probable
    of the other classes: the two any decision rule can call a scan), computed once in the background for every
    session. The scans most wrong about malignancy come first: the missed cancers and false alarms
    of any threshold, which the page shows first (an order that the threshold does not change, so
    moving it reuses the same gallery)."""
    checkpoint = checkpoint_of(run)
    wrongness = np.abs((predictions.labels == MALIGNANT) - predictions.probabilities[:, MALIGNANT])
    rows = [int(row) for row in np.argsort(-wrongness, kind="stable")]
    callable_ = callable_classes(predictions.probabilities)
    classes = tuple(callable_[row] for row in rows)
    key = (str(checkpoint), checkpoint.stat().st_mtime, tuple(predictions.paths[row] for row in rows), classes,
           str(predictions.data_dir), predictions.data_dir.stat().st_mtime)
    views = _gallery(*key)
    if views.failure:  # shown once; the next visit tries afresh instead of showing the same failure forever
        _gallery.clear(*key)  # this run's gallery only: other runs' stay ready
    return views


# Decoding and explaining a scan holds its frame in memory: at most this many at once, whatever
# the number of sessions, and a visitor waits at most this long for a turn.
PARALLEL_SCANS = 2
SCAN_WAIT_S = 30.0
# Side in pixels of the scans and heatmaps a session keeps for display.
DISPLAY_SIDE = 512


class ServerBusy(BusiError):
    """Every turn at decoding a scan is taken; the visitor is asked to try again."""


@st.cache_resource
def _scan_slots() -> threading.BoundedSemaphore:
    return threading.BoundedSemaphore(PARALLEL_SCANS)


@contextmanager
def scan_slot() -> Iterator[None]:
    """One of the server's few turns at decoding and explaining a scan, shared by every session."""
    slots = _scan_slots()
    if not slots.acquire(timeout=SCAN_WAIT_S):
        raise ServerBusy("The server is busy with other scans: try again in a minute.")
    try:
        yield
    finally:
        slots.release()


@st.fragment(run_every=1.0)
def follow_progress(run: Path) -> None:
    """A progress bar of a training job, redrawn every second; the whole page reruns when it ends
    (so that what needed its model appears)."""
    folder = RunFolder(run)
    if folder.state() != "running":
        st.rerun()
    progress = folder.progress()
    st.progress(progress.fraction if progress else 0.0, text=progress.describe() if progress else "Preparing the data…")


def reindex() -> None:
    _index.clear()
    thumbnail.clear()
