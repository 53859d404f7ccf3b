"""Helpers the tests share: opening app pages headlessly, encoding images, editing a run's predictions."""

from __future__ import annotations

import csv
import io
import re
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

if TYPE_CHECKING:
    from streamlit.testing.v1 import AppTest

APP = str(Path(__file__).resolve().parents[1] / "app.py")
TIMEOUT = 120


def open_page(page: str, **state) -> AppTest:
    """A new session opened on ``pages/{page}.py``, rendered without an exception."""
    # Imported here so the package's own tests also run where only busi's core needs are
    # installed (the GPU machine that checks the CUDA path has no Streamlit).
    from streamlit.testing.v1 import AppTest

    app = AppTest.from_file(APP, default_timeout=TIMEOUT)
    for key, value in state.items():
        app.session_state[key] = value
    if page != "overview":
        app.switch_page(f"pages/{page}.py")
    app.run()
    assert not app.exception, [e.value for e in app.exception]
    return app


def widget(app: AppTest, key: str):
    """The widget with this key, whatever its kind (keys are unique across the app)."""
    return next(w for kind in ("selectbox", "multiselect", "slider", "select_slider", "toggle", "button", "radio",
                               "text_input", "number_input", "color_picker", "file_uploader")
                for w in getattr(app, kind) if w.key == key)


def first_prediction_row(run: Path) -> dict[str, str]:
    """The first scan's row of a run's predictions.csv."""
    with open(run / "predictions.csv", newline="") as file:
        return next(csv.DictReader(file))


def set_validation_predictions(run: Path, rows: list[tuple[str, float]]) -> None:
    """Rewrite a finished run's predictions.csv: its first scans become validation scans with
    these (label, p(malignant)) pairs, the rest test scans."""
    with open(run / "predictions.csv", newline="") as file:
        table = list(csv.DictReader(file))
    assert len(table) >= len(rows)
    for row, (label, p_malignant) in zip(table, rows):
        row.update(split="val", label=label, p_malignant=p_malignant, p_benign=(1 - p_malignant) / 2,
                   p_normal=(1 - p_malignant) / 2)
    for row in table[len(rows):]:
        row["split"] = "test"
    with open(run / "predictions.csv", "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=list(table[0]))
        writer.writeheader()
        writer.writerows(table)


def png_bytes(array: np.ndarray, mode: str | None = None) -> bytes:
    buffer = io.BytesIO()
    image = Image.fromarray(array)
    (image.convert(mode) if mode else image).save(buffer, format="PNG")
    return buffer.getvalue()


def shown(markdown: str) -> str:
    """What a person reads of a Markdown text: backslash escapes (CommonMark) removed."""
    return re.sub(r"\\([!-/:-@\[-`{-~])", r"\1", markdown)


def errors_besides_the_phantom_warning(app: AppTest) -> list[str]:
    """The page's error boxes, but for the one a phantom-trained model shows with every prediction."""
    return [error.value for error in app.error if "learnt from" not in error.value or "synthetic phantoms" not in error.value]
