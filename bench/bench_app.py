"""Dashboard timings on the demo data, measured headlessly with Streamlit's AppTest.

    .venv/bin/python -m bench.bench_app

Trains the quick demo model first (about 30 s), then reports each page's first render and the
preprocessing playground's update after a slider move on a 500x500 scan (target < 200 ms).
AppTest measures the server side: the script run that produces the page. The browser's own
drawing adds to it and is not measured here.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import streamlit as st
from streamlit.testing.v1 import AppTest

from busi import synth
from busi.imageio import encode_png
from busi.recipes import recipe
from busi.synth import ensure_demo_dataset
from busi.train import train

APP = str(Path(__file__).resolve().parents[1] / "app.py")
PAGES = ("overview", "dataset", "playground", "training", "evaluation", "prediction")


def first_renders() -> None:
    """Each page opened straight away in a fresh session: cold (Streamlit caches cleared, so the
    demo index and the model are loaded by this render) and warm (caches filled by other users)."""
    print("first render of each page in a new session, median of 3 (ms):")
    print(f"  {'page':11} {'cold':>7} {'warm':>7}")
    for page in PAGES:
        timings = {}
        for state in ("cold", "warm"):
            samples = []
            for _ in range(3):
                if state == "cold":
                    st.cache_data.clear()
                    st.cache_resource.clear()
                app = AppTest.from_file(APP, default_timeout=300)
                if page != "overview":
                    app.switch_page(f"pages/{page}.py")
                started = time.perf_counter()
                app.run()
                samples.append(time.perf_counter() - started)
                assert not app.exception, app.exception
            timings[state] = statistics.median(samples) * 1000
        print(f"  {page:11} {timings['cold']:7.0f} {timings['warm']:7.0f}")


def playground_updates(repeats: int = 20) -> None:
    phantom, _ = synth.make_phantom("malignant", 7, (256, 256))
    scan = cv2.resize(phantom, (500, 500), interpolation=cv2.INTER_LINEAR)
    app = AppTest.from_file(APP, default_timeout=300)
    app.run()
    app.switch_page("pages/playground.py").run()
    next(r for r in app.radio if r.key == "pg_source").set_value("Upload a scan").run()
    next(u for u in app.file_uploader if u.key == "pg_upload").set_value(("scan.png", encode_png(scan), "image/png")).run()
    samples = []
    for step in range(repeats):
        slider = next(s for s in app.slider if s.key == "pg_clahe_clip_limit")
        started = time.perf_counter()
        slider.set_value(1.0 + (step % 8) * 0.5).run()
        samples.append((time.perf_counter() - started) * 1000)
        assert not app.exception
    print(f"playground: CLAHE slider moved on a 500x500 upload, {repeats} times: median {statistics.median(samples):.0f} ms, "
          f"p95 {np.percentile(samples, 95):.0f} ms")


def main() -> None:
    with tempfile.TemporaryDirectory() as runs:
        os.environ["BUSI_RUNS"] = runs
        # A quick demo model, so the evaluation and prediction pages have a run to show.
        quick = recipe("quick")
        events = list(train(ensure_demo_dataset(), Path(runs) / "quick", quick.train, quick.preprocess))
        assert events[-1].kind == "done", events[-1]
        first_renders()
        playground_updates()


if __name__ == "__main__":
    main()
