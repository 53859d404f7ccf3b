"""The background Grad-CAM gallery (busi.gallery): every view computed, and a failure said, not waited on forever."""

import logging
import threading
import time

import numpy as np

from busi import gallery
from busi.data import index_dataset
from busi.gallery import Gallery, ScanView
from busi.predict import load_classifier


def test_the_gallery_computes_every_view_in_the_background(tiny_run, synthetic_dataset):
    records = index_dataset(synthetic_dataset).records[:3]
    views = Gallery(load_classifier(tiny_run), records, [("malignant",)] * 3)
    assert views.wait(60) and views.ready == views.total == 3 and views.failure is None
    assert set(views.view(records[1]).heats) == {"malignant"}


def test_a_gallery_that_breaks_says_why_instead_of_preparing_forever(tiny_run, synthetic_dataset, caplog):
    classifier = load_classifier(tiny_run)
    records = index_dataset(synthetic_dataset).records[:3]
    calls = []

    def explain(scan, class_name=None):
        calls.append(class_name)
        if len(calls) == 2:
            raise RuntimeError("backward failed")
        return type(classifier).explain(classifier, scan, class_name)

    classifier.explain = explain
    with caplog.at_level(logging.ERROR, logger="busi.gallery"):
        views = Gallery(classifier, records, [("malignant",)] * 3)
        assert views.wait(60)
    assert views.ready == 1 < views.total and views.failure == "RuntimeError: backward failed"
    assert "Grad-CAM gallery stopped" in caplog.text


def _slow_views(monkeypatch, seconds: float, computed: list, gate: threading.Event | None = None):
    """scan_view replaced by one that takes ``seconds`` (after ``gate`` opens) and notes each scan's path."""
    def scan_view(classifier, record, classes):
        if gate is not None:
            gate.wait(30)
        time.sleep(seconds)
        computed.append(record.path)
        return ScanView(np.zeros((8, 8), np.uint8), None, {name: np.zeros((8, 8), np.float32) for name in classes})

    monkeypatch.setattr(gallery, "scan_view", scan_view)


def test_the_scans_a_visitor_opens_jump_the_queue(synthetic_dataset, monkeypatch):
    records = index_dataset(synthetic_dataset).records[:8]
    computed = []
    _slow_views(monkeypatch, 0.2, computed)
    views = Gallery(None, records, [("malignant",)] * 8)
    views.put_first([records[7], records[6]])
    assert views.wait_for([records[7], records[6]], timeout=30)
    assert views.ready <= 4, "the scans queued ahead were computed first"
    assert views.wait(30)
    wanted = (records[6].path, records[7].path)
    # Only the scan being computed when they were asked for may come before them; the rest keep their order.
    assert computed.index(wanted[0]) <= 1 and computed.index(wanted[1]) <= 2
    assert [path for path in computed if path not in wanted] == [record.path for record in records[:6]]


def test_waiting_for_views_gives_up_after_its_timeout_and_when_the_gallery_breaks(synthetic_dataset, monkeypatch):
    records = index_dataset(synthetic_dataset).records[:3]
    gate = threading.Event()
    _slow_views(monkeypatch, 0.0, [], gate)
    views = Gallery(None, records, [("malignant",)] * 3)
    started = time.perf_counter()
    assert not views.wait_for([records[2]], timeout=0.3)
    assert 0.3 <= time.perf_counter() - started < 5
    gate.set()
    assert views.wait_for([records[2]], timeout=30) and views.view(records[2]) is not None

    def broken(classifier, record, classes):
        raise RuntimeError("backward failed")

    monkeypatch.setattr(gallery, "scan_view", broken)
    views = Gallery(None, records, [("malignant",)] * 3)
    started = time.perf_counter()
    assert not views.wait_for([records[2]], timeout=30)
    assert time.perf_counter() - started < 5, "it waited out the timeout for a gallery that had stopped"
    assert views.failure == "RuntimeError: backward failed"
