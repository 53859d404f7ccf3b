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
from busi.data import DatasetIndex, index_dataset
from busi.errors import BusiError
from busi.evaluate import ScreeningThreshold, evaluate_run, screening_threshold
from busi.imageio import read_scan
from busi.jobs import default_runs_dir
from busi.predict import Classifier, checkpoint_of, load_classifier
from busi.preprocess import resize
from busi.runs import PREDICTIONS, RunFolder, RunSummary, list_runs
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


def finished_runs() -> list[RunSummary]:
    return [run for run in list_runs(runs_dir()) if RunFolder(run.path).has_predictions]


def usable_runs() -> list[RunSummary]:
    return [run for run in list_runs(runs_dir()) if run.state != "running" and RunFolder(run.path).has_model]


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


@st.cache_data(show_spinner=False, max_entries=256)
def _heat(checkpoint: str, modified: float, scan: str, class_name: str) -> np.ndarray:
    return _classifier(checkpoint, modified).explain(Path(scan), class_name).heat


def dataset_heatmap(run: Path, scan: Path, class_name: str) -> np.ndarray:
    """Grad-CAM of a dataset scan (not an upload: those are never cached), computed once per
    model version, scan and class rather than on every rerun of a gallery."""
    checkpoint = checkpoint_of(run)
    return _heat(str(checkpoint), os.path.getmtime(checkpoint), str(scan), class_name)


@st.cache_data(show_spinner="Evaluating…", max_entries=8)
def evaluation(run: str, data_dir: str | None, modified: float):
    return evaluate_run(run, data_dir=data_dir, split="all" if data_dir else "test")


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
