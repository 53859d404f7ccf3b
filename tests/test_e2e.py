"""The app in a real browser: Debian's Chromium driven by Playwright, against `streamlit run`.

One server on a free loopback port with the demo data and empty runs and temp folders. The
walk follows a person through every page; its screenshots land in test-output/screenshots/.
Skipped when Chromium or Playwright is missing, unless BUSI_REQUIRE_BROWSER is set (CI).
"""

from __future__ import annotations

import base64
import contextlib
import csv
import http.server
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import pytest

from bench.appserver import start_app
from busi import synth
from tests.helpers import png_bytes

CHROMIUM = Path("/usr/bin/chromium")
# The walk's screenshots, kept with the test run's output for a person to look through.
SCREENSHOTS = Path(__file__).resolve().parents[1] / "test-output" / "screenshots"
STRACE = shutil.which("strace")
REQUIRED = bool(os.environ.get("BUSI_REQUIRE_BROWSER"))
try:
    from playwright import sync_api as playwright_api
except ImportError:
    if REQUIRED:
        raise
    pytest.skip("Playwright is not installed (pip install -r requirements-dev.txt)", allow_module_level=True)
if not CHROMIUM.exists():
    if REQUIRED:
        raise RuntimeError("BUSI_REQUIRE_BROWSER is set but /usr/bin/chromium is missing: apt-get install chromium")
    pytest.skip("Chromium is not installed at /usr/bin/chromium", allow_module_level=True)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The app as the project configures it; yields its URL, process and folders."""
    base = tmp_path_factory.mktemp("e2e")
    try:
        process, port, folders = start_app(base)
    except RuntimeError as error:
        pytest.fail(str(error))
    yield {"url": f"http://127.0.0.1:{port}", "port": port, "base": base, "pid": process.pid, **folders}
    process.terminate()
    process.wait(timeout=30)


@pytest.fixture
def model(server, tiny_run):
    """A finished run on the server (the walk trains one; a copy of the tiny run when it did not),
    so that the tests of the prediction page do not hang on the walk."""
    if not any((run / "predictions.csv").exists() for run in server["runs"].iterdir()):
        shutil.copytree(tiny_run, server["runs"] / "20200101-000000-tiny")


@pytest.fixture(scope="module")
def browser():
    with playwright_api.sync_playwright() as playwright:
        instance = playwright.chromium.launch(executable_path=str(CHROMIUM),
                                              args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        yield instance
        instance.close()


def settle(page, text: str, timeout: float = 90_000) -> None:
    """Wait until ``text`` is shown and the script has stopped running."""
    page.get_by_text(text).first.wait_for(timeout=timeout)
    page.wait_for_function("() => !document.querySelector('[data-testid=\"stStatusWidget\"]')", timeout=timeout)
    page.wait_for_timeout(300)


def no_error_box(page) -> None:
    assert page.locator("[data-testid='stException']").count() == 0, page.locator("[data-testid='stException']").all_inner_texts()
    # A model trained on phantoms says so in an error box wherever it predicts: that one is expected.
    errors = [text for text in page.locator("[data-testid='stAlertContentError']").all_inner_texts()
              if not ("learnt from" in text and "synthetic phantoms" in text)]
    assert not errors, errors


def open_page(page, server, path: str, text: str, shots: Path, name: str) -> None:
    page.goto(f"{server['url']}/{path}")
    settle(page, text)
    no_error_box(page)
    # plotly.js draws after the script has ended: a screenshot taken sooner shows blank charts.
    page.wait_for_function("() => [...document.querySelectorAll('[data-testid=\"stPlotlyChart\"]')]"
                           ".every(chart => chart.querySelector('.main-svg'))", timeout=30_000)
    page.screenshot(path=str(shots / f"{name}.png"), full_page=True)


def test_a_person_walks_through_every_page(server, browser, tmp_path):
    shots = SCREENSHOTS
    shutil.rmtree(shots, ignore_errors=True)
    shots.mkdir(parents=True)
    page = browser.new_page(viewport={"width": 1400, "height": 1000})

    open_page(page, server, "", "Data in use", shots, "overview")
    assert page.get_by_text("not a medical device").count() >= 1

    open_page(page, server, "dataset", "Validation report", shots, "dataset")
    page.get_by_text(f"{3 * synth.DEMO_PER_CLASS} of {3 * synth.DEMO_PER_CLASS} scans match").wait_for()
    # Open under the fourth thumbnail (counting order) shows that scan in detail. The browser may
    # still be drawing the grid after the script has finished: all 24 of the page first.
    opens = page.locator("[class*='st-key-dataset_open_'] button")
    playwright_api.expect(opens).to_have_count(24, timeout=30_000)
    opens.nth(3).click()
    playwright_api.expect(page.get_by_label("Scan", exact=True)).to_have_value("benign/benign (4).png", timeout=30_000)
    settle(page, "Validation report")
    page.get_by_label("Group", exact=True).fill("3")
    page.get_by_label("Group", exact=True).press("Enter")
    settle(page, f"1 of {3 * synth.DEMO_PER_CLASS} scans match")

    open_page(page, server, "playground", "model input", shots, "playground")
    model_input = page.locator("[data-testid='stImage']").filter(has_text="model input").locator("img")
    before = model_input.get_attribute("src")
    page.locator("input[type=range][aria-label='Contrast limit']").focus()
    page.keyboard.press("ArrowRight")
    page.keyboard.press("ArrowRight")
    page.wait_for_function("(before) => document.querySelectorAll('[data-testid=\"stImage\"] img')[5].src !== before",
                           arg=before, timeout=30_000)
    settle(page, "model input")
    assert model_input.get_attribute("src") != before

    open_page(page, server, "training", "Start training", shots, "training-form")
    page.get_by_label("Network", exact=True).click()
    page.get_by_role("option", name="resnet18").click()
    page.get_by_label("Epochs", exact=True).fill("3")
    page.get_by_label("Batch size", exact=True).fill("4")
    page.get_by_label("Image size (px)", exact=True).fill("64")
    page.get_by_role("button", name="Start training").click()
    page.get_by_text("is running").first.wait_for(timeout=60_000)
    chart = page.locator(".st-key-tr_batch_chart .scatterlayer path.js-line")
    chart.first.wait_for(timeout=90_000)
    first_path = chart.first.get_attribute("d")
    page.wait_for_function(
        "(first) => { const p = document.querySelector('.st-key-tr_batch_chart .scatterlayer path.js-line');"
        " return p && p.getAttribute('d').length > first.length; }", arg=first_path, timeout=90_000)
    settle(page, "Finished: the model is epoch", timeout=180_000)
    # The picker names the run's state as it is now, not as it was when it was first drawn.
    follow = page.get_by_label("Follow run", exact=True)
    playwright_api.expect(follow).to_have_count(1, timeout=30_000)  # the one drawn while running may linger a moment
    playwright_api.expect(follow).to_have_value(re.compile("· finished and evaluated ·"), timeout=30_000)
    no_error_box(page)
    page.screenshot(path=str(shots / "training-done.png"), full_page=True)

    open_page(page, server, "evaluation", "Classification report", shots, "evaluation")
    # The run's Grad-CAMs are prepared in the background once; then every click answers at once.
    page.get_by_text("Preparing the Grad-CAMs").wait_for(state="detached", timeout=300_000)
    settle(page, "Classification report")
    squares = page.locator(".st-key-ev_confusion .scatterlayer .point")
    playwright_api.expect(squares).to_have_count(9, timeout=30_000)  # plotly.js draws after the script has finished
    page.locator(".st-key-ev_confusion").scroll_into_view_if_needed()
    box = squares.nth(0).bounding_box()  # true benign, predicted benign; plotly's drag layer takes the click
    page.mouse.click(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    page.get_by_text(re.compile(r"scans\W+true benign, predicted benign")).wait_for(timeout=60_000)
    settle(page, "true benign, predicted benign")
    no_error_box(page)
    page.screenshot(path=str(shots / "evaluation-cell.png"), full_page=True)

    # With every scan called malignant (threshold 0), the benign test scans all move to the
    # off-diagonal square (true benign, predicted malignant): its gallery must show exactly them.
    page.get_by_text("Call a scan malignant when p(malignant) reaches a threshold").click()
    settle(page, "Threshold")
    page.locator("input[type=range][aria-label='Threshold']").focus()
    page.keyboard.press("Home")
    page.get_by_text(re.compile(r"Sensitivity for malignant")).first.wait_for()
    settle(page, "Specificity for malignant")
    (run,) = [folder for folder in server["runs"].iterdir() if folder.is_dir()]
    with open(run / "predictions.csv", newline="") as file:
        benign_tests = {row["path"] for row in csv.DictReader(file) if row["split"] == "test" and row["label"] == "benign"}
    # plotly.js redraws the matrix after the script has finished: wait for the new count in the square.
    page.wait_for_function("(n) => { const t = document.querySelectorAll('.st-key-ev_confusion .textpoint text');"
                           " return t.length === 9 && t[1].textContent === n; }", arg=str(len(benign_tests)), timeout=30_000)
    page.locator(".st-key-ev_confusion").scroll_into_view_if_needed()
    box = squares.nth(1).bounding_box()  # row benign, column malignant
    page.mouse.click(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    page.get_by_text(re.compile(rf"{len(benign_tests)} scans\W+true benign, predicted malignant")).wait_for(timeout=60_000)
    settle(page, "true benign, predicted malignant")
    cell = page.locator(".st-key-ev_cell_gallery")  # Grad-CAMs come from the background: wait for every pair
    playwright_api.expect(cell.get_by_text("Grad-CAM for malignant")).to_have_count(len(benign_tests), timeout=120_000)
    shown = set(re.findall(r"benign/benign \(\d+\)\.png", cell.inner_text()))
    assert shown == benign_tests, (shown, benign_tests)
    no_error_box(page)
    page.screenshot(path=str(shots / "evaluation-off-diagonal.png"), full_page=True)

    open_page(page, server, "compare", "Comparing needs two finished runs", shots, "compare")

    open_page(page, server, "prediction", "Upload one or more", shots, "prediction")
    scan = tmp_path / "upload-scan.png"
    scan.write_bytes(png_bytes(synth.make_phantom("malignant", 11, (128, 128))[0]))
    page.locator("input[type=file]").set_input_files(str(scan))
    settle(page, "Predicted class")
    assert page.get_by_text("Grad-CAM for").count() >= 1
    # The probability chart's title is drawn by plotly.js after the script has finished.
    page.get_by_text("Class probabilities").first.wait_for(timeout=30_000)
    no_error_box(page)
    page.screenshot(path=str(shots / "prediction-result.png"), full_page=True)
    assert len(list(shots.iterdir())) == 11


def test_two_sessions_one_training_one_predicting_stay_apart(server, browser, model, tmp_path):
    trainer = browser.new_context(viewport={"width": 1400, "height": 1000}).new_page()
    other = browser.new_context(viewport={"width": 1400, "height": 1000}).new_page()
    trainer.goto(f"{server['url']}/training")
    settle(trainer, "Start training")
    trainer.get_by_label("Network", exact=True).click()
    trainer.get_by_role("option", name="resnet18").click()
    trainer.get_by_label("Epochs", exact=True).fill("50")
    trainer.get_by_label("Image size (px)", exact=True).fill("64")
    trainer.get_by_role("button", name="Start training").click()
    trainer.get_by_text("is running").first.wait_for(timeout=60_000)

    other.goto(f"{server['url']}/prediction")
    settle(other, "Upload one or more")
    upload = tmp_path / "other-session.png"
    upload.write_bytes(png_bytes(synth.make_phantom("benign", 12, (128, 128))[0]))
    other.locator("input[type=file]").set_input_files(str(upload))
    settle(other, "Predicted class")
    other.goto(f"{server['url']}/training")
    settle(other, "is running")
    assert other.get_by_role("button", name="Start training").is_disabled()  # read-only while the job runs
    assert other.get_by_role("button", name="Stop training").count() == 0  # another session's job: no Stop here
    other.get_by_text("only that session can stop or resume it").wait_for()

    trainer.goto(f"{server['url']}/prediction")
    settle(trainer, "Upload one or more")
    assert trainer.get_by_text("other-session.png").count() == 0  # the other session's upload is not here
    trainer.goto(f"{server['url']}/training")
    settle(trainer, "is running")
    trainer.get_by_role("button", name="Stop training").click()
    # While the ended job's fragment hands over to a whole-page rerun, its old message can stay on
    # screen beside the new one for a moment; once settled there must be exactly one.
    settle(trainer, "The run was stopped", timeout=120_000)
    playwright_api.expect(trainer.get_by_text("The run was stopped")).to_have_count(1, timeout=30_000)
    follow = trainer.get_by_label("Follow run", exact=True)
    playwright_api.expect(follow).to_have_count(1, timeout=30_000)
    playwright_api.expect(follow).to_have_value(re.compile("· stopped at epoch "), timeout=30_000)


def test_file_names_are_shown_as_themselves(server, browser, model):
    requests = []

    class Counting(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (the standard library's name)
            requests.append(self.path)
            self.send_response(404)
            self.end_headers()

        def log_message(self, *args):
            pass

    listener = http.server.HTTPServer(("127.0.0.1", 0), Counting)
    threading.Thread(target=listener.serve_forever, daemon=True).start()
    names = [f"![t](http://127.0.0.1:{listener.server_port}/x.png).png", "[x](javascript:alert(1)).png", ":red[alarm] $x$.png"]
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    try:
        page.goto(f"{server['url']}/prediction")
        settle(page, "Upload one or more")
        # Three different scans: the page shows a file added twice once.
        page.locator("input[type=file]").set_input_files([
            {"name": name, "mimeType": "image/png", "buffer": png_bytes(synth.make_phantom("benign", 14 + seed, (128, 128))[0])}
            for seed, name in enumerate(names)])
        playwright_api.expect(page.get_by_text("Predicted class")).to_have_count(3, timeout=90_000)
        settle(page, "Predicted class")
        for name in names:  # each heading reads exactly as the file was named
            assert page.get_by_role("heading", name=name, exact=True).count() == 1, name
        assert page.locator("a[href^='javascript:']").count() == 0
        page.screenshot(path=str(SCREENSHOTS / "prediction-literal-names.png"), full_page=True)
    finally:
        listener.shutdown()
    assert requests == []  # no image was fetched from the link in a name


# System calls that create a file or directory, open one for writing, or name one anew.
_WRITING_CALLS = ("open", "openat", "openat2", "creat", "mkdir", "mkdirat", "rename", "renameat", "renameat2", "link",
                  "linkat", "symlink", "symlinkat", "mknod", "mknodat", "truncate")
_CALL = re.compile(r'^\d+\s+(?P<call>\w+)\((?P<arguments>.*)\)\s+=\s+(?P<result>-?\d+)')


def _written_paths(trace: str) -> list[str]:
    """The paths that successful writing calls in an strace log touched (pseudo-files aside)."""
    paths = []
    for line in trace.splitlines():
        match = _CALL.match(line)
        if not match or match["result"].startswith("-"):
            continue
        if match["call"].startswith("open") and not re.search(r"O_WRONLY|O_RDWR|O_CREAT|O_TRUNC", match["arguments"]):
            continue  # read only
        paths += [path for path in re.findall(r'"([^"]*)"', match["arguments"])
                  if not path.startswith(("/dev/null", "/proc/", "/sys/"))]
    return paths


@contextlib.contextmanager
def files_written_by(pid: int, log: Path):
    """Yields a list that, after the block, holds every path process ``pid`` (all its threads and
    children) created or opened for writing during it, anywhere on the machine. strace sees the
    system calls, so a write from C code (OpenCV, torch) counts as much as one from Python."""
    tracer = subprocess.Popen(["strace", "-f", "-p", str(pid), "-o", str(log), "-e", "trace=" + ",".join(_WRITING_CALLS)],
                              stderr=subprocess.PIPE, text=True)
    said = tracer.stderr.readline()
    if "attached" not in said:  # a watch that never started would see nothing and pass
        tracer.kill()
        pytest.fail(f"strace could not watch process {pid}: {said}{tracer.stderr.read()}")
    written: list[str] = []
    try:
        yield written
    finally:
        still_watching = tracer.poll() is None
        tracer.send_signal(signal.SIGINT)  # detaches; the server runs on untouched
        tracer.wait(timeout=30)
        written += _written_paths(log.read_text())
    assert still_watching, f"strace stopped watching process {pid} early: {tracer.stderr.read()}"


def test_the_write_watch_sees_a_temporary_file_made_and_deleted(tmp_path):
    script = ("import sys, tempfile, time; sys.stdin.readline(); f = tempfile.NamedTemporaryFile(); f.write(b'x'); "
              "f.close(); print('written', flush=True); time.sleep(60)")
    process = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        with files_written_by(process.pid, tmp_path / "trace.log") as written:
            process.stdin.write("go\n")
            process.stdin.flush()
            assert process.stdout.readline() == "written\n"
    finally:
        process.kill()
        process.wait()
    assert any(Path(path).parent == Path(tempfile.gettempdir()) for path in written), written


@pytest.mark.skipif(not STRACE and not REQUIRED, reason="strace is not installed (apt-get install strace)")
def test_uploads_are_never_written_to_disk_or_logged(server, browser, model, tmp_path):
    page = browser.new_page()
    page.goto(f"{server['url']}/prediction")
    settle(page, "Upload one or more")
    secret = tmp_path / "patient-4711.png"
    pixels = synth.make_phantom("malignant", 13, (128, 128))[0]
    secret.write_bytes(png_bytes(pixels))
    with files_written_by(server["pid"], tmp_path / "trace.log") as written:
        page.locator("input[type=file]").set_input_files(str(secret))
        settle(page, "Predicted class")
        page.goto(f"{server['url']}/playground")
        settle(page, "model input")
        page.get_by_text("Upload a scan").click()
        settle(page, "Choose a PNG")
        page.locator("input[type=file]").set_input_files(str(secret))
        settle(page, "model input")
    assert written == []
    assert "patient-4711" not in (server["base"] / "server.log").read_text()


def _websocket_status(port: int, host: str, origin: str) -> int:
    """The HTTP status the app answers a websocket handshake with (101: the socket opens)."""
    key = base64.b64encode(os.urandom(16)).decode()
    request = (f"GET /_stcore/stream HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
               f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\nOrigin: {origin}\r\n\r\n")
    with socket.create_connection(("127.0.0.1", port), timeout=10) as connection:
        connection.sendall(request.encode())
        return int(connection.recv(1024).split(b" ", 2)[1])


def test_a_websocket_called_by_another_name_is_refused(server):
    port = server["port"]
    assert _websocket_status(port, f"127.0.0.1:{port}", f"http://127.0.0.1:{port}") == 101
    # DNS rebinding: a page of another site whose name now points at this machine.
    assert _websocket_status(port, f"rebound.example:{port}", f"http://rebound.example:{port}") != 101


def _outward_address() -> str | None:
    """This machine's address on its network (no packet is sent), or None when it has only loopback."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("10.255.255.255", 1))
            address = probe.getsockname()[0]
        except OSError:
            return None
    return None if address.startswith("127.") else address


def test_by_default_the_app_listens_on_this_machine_only(tmp_path):
    outward = _outward_address()
    if outward is None:
        pytest.skip("this machine has no network address besides loopback")
    process, port, _ = start_app(tmp_path)
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            pass
        with pytest.raises(OSError):
            socket.create_connection((outward, port), timeout=5).close()
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_two_runs_are_compared_on_the_scans_they_both_held_out(server, browser, tiny_run):
    # Last in this module: the two runs it adds would otherwise be offered to the tests above.
    names = ("20200101-000000-first", "20200102-000000-second")
    for name in names:
        shutil.copytree(tiny_run, server["runs"] / name)
    with open(tiny_run / "predictions.csv", newline="") as file:
        tests = sum(row["split"] == "test" for row in csv.DictReader(file))
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.goto(f"{server['url']}/compare")
    settle(page, "Score them on")
    # Opened from its address in a new session, the page still uses the whole width.
    assert page.locator("h1").first.bounding_box()["x"] < 420
    chosen = page.locator(".st-key-cmp_runs")
    remove = chosen.get_by_role("button", name=re.compile("^Remove "))
    for left in reversed(range(remove.count())):  # whatever runs came first
        remove.first.click()
        # The rerun may not have begun when the click returns; clicking again before the chip is
        # gone hits a button the rerun is about to replace (CI timed out on one).
        playwright_api.expect(remove).to_have_count(left, timeout=60_000)
        settle(page, "Score them on")
    for name in names:
        chosen.locator("input").click()
        page.get_by_role("option", name=re.compile("^" + name)).click()
        settle(page, "Score them on")
    settle(page, "Malignant against the rest")
    page.get_by_text(f"the {tests} scans that every one of these runs held out").wait_for()
    page.get_by_text(f"Each run against {names[0]}").wait_for()
    no_error_box(page)
    for name in names:  # the legends of the overlaid ROC and PR curves
        playwright_api.expect(page.locator(".legendtext", has_text=name)).to_have_count(2, timeout=30_000)
    page.keyboard.press("Escape")  # the picker's list closed, and gone before the screenshot
    playwright_api.expect(page.get_by_role("option")).to_have_count(0, timeout=30_000)
    page.screenshot(path=str(SCREENSHOTS / "compare-two-runs.png"), full_page=True)
