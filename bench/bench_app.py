"""Dashboard timings on the demo data, measured headlessly with Streamlit's AppTest.

    .venv/bin/python -m bench.bench_app

Reports each page's first render (script run, caches cold for that page) and the
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
from streamlit.testing.v1 import AppTest

from busi import synth
from busi.imageio import encode_png

APP = str(Path(__file__).resolve().parents[1] / "app.py")
PAGES = ("overview", "dataset", "playground", "training", "evaluation", "prediction")


def first_renders() -> None:
    print("first render per page (a fresh session each, median of 3):")
    for page in PAGES:
        samples = []
        for _ in range(3):
            app = AppTest.from_file(APP, default_timeout=300)
            app.run()
            started = time.perf_counter()
            if page != "overview":
                app.switch_page(f"pages/{page}.py").run()
            else:
                app.run()
            samples.append(time.perf_counter() - started)
            assert not app.exception, app.exception
        print(f"  {page:11} {statistics.median(samples) * 1000:7.0f} ms")


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
        first_renders()
        playground_updates()


if __name__ == "__main__":
    main()
