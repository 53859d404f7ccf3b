"""The background Grad-CAM gallery (busi.gallery): every view computed, and a failure said, not waited on forever."""

import logging

from busi.data import index_dataset
from busi.gallery import Gallery
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
