"""Dashboard timings on the demo data: the server side with Streamlit's AppTest, then what a
person waits for in Chromium.

    .venv/bin/python -m bench.bench_app [--run RUN --data ../shared/busi]

Trains the quick demo model first (about 30 s), then reports each page's first render and the
preprocessing playground's update after a slider move on a 500x500 scan (target < 200 ms).
AppTest measures the script run that produces a page. The browser part (skipped without
/usr/bin/chromium and Playwright) serves the app with `streamlit run` and measures, in a new
session each time: first, on the evaluation page opened while the run's Grad-CAMs are still being
prepared, a click on the square queued last until its first Grad-CAM and its first page of them
are on screen; each page's first paint (its title on screen; target < 2 s) and when its script
has finished; then, once the Grad-CAMs are prepared, a click on a confusion-matrix square until
its scans and their Grad-CAMs are on screen, and the decision-rule toggle until the
misclassified malignant cases are redrawn (targets < 1 s).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import streamlit as st
from streamlit.testing.v1 import AppTest

from bench.appserver import start_app
from busi import synth
from busi.data import CLASSES
from busi.imageio import encode_png
from busi.recipes import recipe
from busi.synth import ensure_demo_dataset
from busi.train import train

APP = str(Path(__file__).resolve().parents[1] / "app.py")
PAGES = ("overview", "dataset", "playground", "training", "evaluation", "compare", "prediction")
CHROMIUM = Path("/usr/bin/chromium")


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


def _idle(page) -> None:
    """Wait until the script has finished (Streamlit's running indicator gone)."""
    page.wait_for_function("() => !document.querySelector('[data-testid=\"stStatusWidget\"]')", timeout=300_000)


def _seconds_until(page, action, done) -> float:
    started = time.perf_counter()
    action()
    done()
    return time.perf_counter() - started


def _until_prepared(page) -> None:
    """Until the Grad-CAMs' progress bar is gone for good: it is redrawn every second while they
    are prepared, and a redraw detaches it for a moment."""
    gone = "() => !document.body.innerText.includes('Preparing the Grad-CAMs')"
    while True:
        page.wait_for_function(gone, timeout=900_000)
        page.wait_for_timeout(3000)
        if page.evaluate(gone):
            return


def _click_square(page, square: int) -> tuple[float, float]:
    """Seconds from a click on a square of the evaluation's confusion matrix until the first of its
    scans' Grad-CAMs, then all of its first page, are on screen."""
    from playwright.sync_api import expect

    page.wait_for_timeout(500)  # not timed: plotly.js redraws the matrix after each rerun
    squares = page.locator(".st-key-ev_confusion .scatterlayer .point")
    squares.nth(8).wait_for(timeout=60_000)
    page.locator(".st-key-ev_confusion").scroll_into_view_if_needed()
    box = squares.nth(square).bounding_box()
    shown = min(int(page.locator(".st-key-ev_confusion .textpoint text").nth(square).text_content()), 6)
    gallery = page.locator(".st-key-ev_cell_gallery")
    heatmaps = gallery.get_by_text(re.compile(r"^Grad-CAM for "))
    started = time.perf_counter()
    page.mouse.click(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    gallery.get_by_text(f"true {CLASSES[square // 3]}, predicted {CLASSES[square % 3]}").wait_for(timeout=60_000)
    heatmaps.first.wait_for(timeout=60_000)
    first = time.perf_counter() - started
    expect(heatmaps).to_have_count(shown, timeout=60_000)
    _idle(page)
    return first, time.perf_counter() - started


def browser_timings(base: Path, data: Path | None, repeats: int = 5) -> None:
    from playwright.sync_api import expect, sync_playwright

    process, port, _ = start_app(base, data=data)
    url = f"http://127.0.0.1:{port}"
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox", "--disable-gpu"])
            page = browser.new_context(viewport={"width": 1400, "height": 1000}).new_page()
            page.goto(f"{url}/evaluation")  # the first visit starts preparing the run's Grad-CAMs in the background
            page.locator("h1").first.wait_for(timeout=300_000)
            _idle(page)
            preparing = page.get_by_text("Preparing the Grad-CAMs").count() > 0
            # The correct calls made with the most confidence are the last in the queue.
            first, whole = _click_square(page, 0)
            when = "while its Grad-CAMs are being prepared" if preparing else "(its Grad-CAMs were ready already: not the case meant)"
            print(f"evaluation, first visit, {when}: a square clicked until its first Grad-CAM shows {first:.2f} s, "
                  f"its first page of them {whole:.2f} s")
            page.close()
            print(f"in Chromium, a new session each time, median of {repeats} after one warm-up (s): the first paint (the "
                  "page's title on screen) in a fresh browser, then in a browser that has the app's files cached, and when "
                  "the page's script has finished there")
            print(f"  {'page':11} {'fresh':>7} {'cached':>7} {'done':>7}")
            returning = browser.new_context(viewport={"width": 1400, "height": 1000})
            for name in PAGES:
                timings = {"fresh": [], "cached": [], "done": []}
                for attempt in range(repeats + 1):
                    for kind in ("fresh", "cached"):
                        context = browser.new_context(viewport={"width": 1400, "height": 1000}) if kind == "fresh" else returning
                        page = context.new_page()
                        started = time.perf_counter()
                        page.goto(f"{url}/{'' if name == 'overview' else name}")
                        page.locator("h1").first.wait_for(timeout=300_000)
                        paint = time.perf_counter() - started
                        _idle(page)
                        if attempt:  # the first visit fills the server's caches (index, model, demo data)
                            timings[kind].append(paint)
                            if kind == "cached":
                                timings["done"].append(time.perf_counter() - started)
                        page.close()
                        if kind == "fresh":
                            context.close()
                print(f"  {name:11} " + " ".join(f"{statistics.median(timings[kind]):7.2f}" for kind in timings))
            returning.close()

            page = browser.new_context(viewport={"width": 1400, "height": 1000}).new_page()
            page.goto(f"{url}/evaluation")
            page.locator("h1").first.wait_for(timeout=300_000)
            _idle(page)
            _until_prepared(page)
            print("evaluation, once the run's Grad-CAMs are prepared:")
            clicks = [_click_square(page, square)[1] for square in (0, 4, 8, 1, 3) * repeats]
            print(f"  a confusion-matrix square clicked until its scans and Grad-CAMs show: median {statistics.median(clicks):.2f} s, "
                  f"max {max(clicks):.2f} s ({len(clicks)} clicks: {' '.join(f'{c:.2f}' for c in clicks)})")
            toggles = []
            toggle = page.get_by_text("Call a scan malignant when p(malignant) reaches a threshold")
            for attempt in range(2 * repeats):
                rule = "each called the most probable class" if attempt % 2 else "each called malignant when p(malignant)"
                toggles.append(_seconds_until(page, toggle.click, lambda rule=rule: (page.get_by_text(rule).wait_for(),
                                                                                       _idle(page))))
            turner = page.locator(".st-key-ev_cases_page [data-testid='stNumberInputStepUp']")
            if turner.count():
                turns = []
                for _ in range(repeats):
                    page.locator(".st-key-ev_cases_page input").fill("1")
                    page.locator(".st-key-ev_cases_page input").press("Enter")
                    _idle(page)
                    turns.append(_seconds_until(page, turner.click, lambda: (
                        expect(page.locator(".st-key-ev_cases_page input")).to_have_value("2"), _idle(page))))
                print(f"  the next page of misclassified malignant cases: median {statistics.median(turns):.2f} s, "
                      f"max {max(turns):.2f} s ({len(turns)} turns)")
            print(f"  the decision-rule toggle until the misclassified malignant cases are redrawn: median "
                  f"{statistics.median(toggles):.2f} s, max {max(toggles):.2f} s ({len(toggles)} toggles)")
            browser.close()
    finally:
        process.terminate()
        process.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, help="a finished run to use instead of training the quick demo model")
    parser.add_argument("--data", type=Path, help="the data folder to serve (BUSI_DATA) instead of the demo data")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as base:
        runs = Path(base) / "runs"
        os.environ["BUSI_RUNS"] = str(runs)
        if args.data:
            os.environ["BUSI_DATA"] = str(args.data.resolve())
        if args.run:
            shutil.copytree(args.run, runs / args.run.name)
        else:  # a quick demo model, so the evaluation and prediction pages have a run to show
            quick = recipe("quick")
            # On the demo data in the cache that the server will use (a folder it may read).
            events = list(train(ensure_demo_dataset(Path(base) / "cache"), runs / "quick", quick.train, quick.preprocess))
            assert events[-1].kind == "done", events[-1]
        first_renders()
        playground_updates()
        if CHROMIUM.exists():
            browser_timings(Path(base), args.data.resolve() if args.data else None)
        else:
            print("browser timings skipped: no /usr/bin/chromium")


if __name__ == "__main__":
    main()
