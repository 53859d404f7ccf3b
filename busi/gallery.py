"""What a gallery shows of a dataset scan: the scan, its lesion outline and its Grad-CAMs, shrunk
for display and computed once, in the background, for a whole set of scans.

A page that shows the confusion matrix's cells or the missed cancers needs a Grad-CAM per scan
(a forward and a backward pass each); computed on click, a cell of a dozen scans took seconds.
``Gallery`` computes them all in one background thread as soon as a run is opened and keeps
them, small, for every session; a page reads what is ready and says how far it has come, and the
scans a visitor opens meanwhile jump the queue.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from busi.data import ScanRecord, load_mask, load_scan
from busi.errors import BusiError
from busi.predict import Classifier
from busi.preprocess import overlay

SIDE = 384  # pixels of a view's longer side: enough for a gallery column, small enough to keep hundreds


@dataclass(frozen=True)
class ScanView:
    scan: np.ndarray  # uint8 grey, the longer side at most SIDE
    mask: np.ndarray | None  # bool, the same size: the merged lesion masks (None when the scan has none)
    heats: dict[str, np.ndarray]  # class name -> float32 Grad-CAM in [0, 1], the same size
    error: str = ""  # why the scan could not be shown

    def outlined(self, image: np.ndarray | None = None) -> np.ndarray:
        """``image`` (the scan by default, or an RGB overlay of it) with the lesion outline drawn on."""
        base = self.scan if image is None else image
        if self.mask is None or not self.mask.any():
            return base
        if base.ndim == 2:
            return overlay(base, self.mask, colour=(80, 220, 120), opacity=1.0, style="contour")
        contours, _ = cv2.findContours(self.mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        drawn = base.copy()
        cv2.drawContours(drawn, contours, -1, (80, 220, 120), max(1, round(max(base.shape[:2]) / 250)))
        return drawn


def _shrink(image: np.ndarray, side: int) -> np.ndarray:
    height, width = image.shape[:2]
    scale = side / max(height, width)
    if scale >= 1:
        return image
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    if image.dtype == bool:
        return cv2.resize(image.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST).astype(bool)
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA)


def scan_view(classifier: Classifier, record: ScanRecord, classes: Sequence[str], side: int = SIDE) -> ScanView:
    """One scan's view with the Grad-CAM of each of ``classes``."""
    try:
        scan = load_scan(record)
        mask = load_mask(record) if record.mask_paths else None
        heats = {name: _shrink(classifier.explain(scan, name).heat, side) for name in classes}
    except BusiError as error:
        return ScanView(np.zeros((8, 8), np.uint8), None, {}, str(error))
    if mask is not None and mask.shape != scan.shape:
        mask = None
    return ScanView(_shrink(scan, side), None if mask is None else _shrink(mask, side), heats)


log = logging.getLogger(__name__)


class Gallery:
    """Views of ``records`` computed in a background thread, readable from any thread meanwhile.
    ``classes[i]`` names the Grad-CAMs wanted for ``records[i]``."""

    def __init__(self, classifier: Classifier, records: Sequence[ScanRecord], classes: Sequence[Sequence[str]]) -> None:
        self._pending = list(zip(records, classes, strict=True))  # in the order they will be computed
        self._known = {str(record.path) for record in records}
        self._views: dict[str, ScanView] = {}
        self._working = True
        self._changed = threading.Condition()  # guards _pending, _views and _working; notified as each view lands
        self.failure: str | None = None  # why the background work ended early
        self._thread = threading.Thread(target=self._work, args=(classifier,), daemon=True, name="busi-gallery")
        self._thread.start()

    def _work(self, classifier: Classifier) -> None:
        try:
            while True:
                with self._changed:
                    if not self._pending:
                        return
                    record, classes = self._pending.pop(0)
                view = scan_view(classifier, record, classes)
                with self._changed:
                    self._views[str(record.path)] = view
                    self._changed.notify_all()
        except Exception as error:  # kept for the page to say, instead of waiting for the views forever
            self.failure = f"{type(error).__name__}: {error}"
            log.exception("Grad-CAM gallery stopped")
        finally:
            with self._changed:
                self._working = False
                self._changed.notify_all()

    @property
    def total(self) -> int:
        return len(self._known)

    @property
    def ready(self) -> int:
        with self._changed:
            return len(self._views)

    def view(self, record: ScanRecord) -> ScanView | None:
        """The scan's view, or None while it is still being computed (or was not asked for)."""
        with self._changed:
            return self._views.get(str(record.path))

    def put_first(self, records: Sequence[ScanRecord]) -> None:
        """Compute ``records`` (the scans a visitor is looking at) before the rest, which keep their
        order: a click on a square while the gallery is prepared would otherwise wait for every scan
        queued before its own."""
        wanted = {str(record.path) for record in records}
        with self._changed:
            self._pending.sort(key=lambda job: str(job[0].path) not in wanted)  # stable

    def wait_for(self, records: Sequence[ScanRecord], timeout: float) -> bool:
        """Whether the views of ``records`` are all ready, waiting up to ``timeout`` seconds for them
        (not longer once the background work has ended)."""
        wanted = {str(record.path) for record in records} & self._known
        with self._changed:
            self._changed.wait_for(lambda: wanted <= self._views.keys() or not self._working, timeout)
            return wanted <= self._views.keys()

    def wait(self, timeout: float | None = None) -> bool:
        """Whether every view is ready, waiting up to ``timeout`` seconds for it."""
        self._thread.join(timeout)
        return not self._thread.is_alive()
