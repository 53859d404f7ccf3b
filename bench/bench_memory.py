"""The server's memory under adversarial uploads: one session, then eight at once.

    .venv/bin/python -m bench.bench_memory [--sessions 8]

Starts ``streamlit run app.py`` as configured (trains the quick demo model into its runs folder
first), opens the Prediction page in Chromium and uploads small files that decode to large
frames: the largest accepted (a 3840 x 2160 frame, grey 16-bit and RGB, a few hundred kB each)
and one over the limit (7000 x 7000 RGB zeros, 143 kB). For each step it prints the server's
resident memory before, its peak during (the kernel's high-water mark, reset before each step)
and what it still holds after. Every session runs in its own browser context, all uploading at
the same moment for the load test. Linux only (/proc).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image
from playwright.async_api import async_playwright

from bench.appserver import start_app
from busi.recipes import recipe
from busi.synth import ensure_demo_dataset
from busi.train import train

CHROMIUM = "/usr/bin/chromium"


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def adversarial_files() -> dict[str, bytes]:
    rng = np.random.default_rng(0)
    grey16 = np.zeros((2160, 3840), np.uint16)
    grey16[::37, ::41] = rng.integers(0, 65535, grey16[::37, ::41].shape)  # sparse detail: a small file, a full frame
    rgb = np.zeros((2160, 3840, 3), np.uint8)
    rgb[::53, ::59] = 200
    return {"4K 16-bit grey": _png(grey16), "4K RGB": _png(rgb), "7000x7000 RGB zeros": _png(np.zeros((7000, 7000, 3), np.uint8))}


def _memory_mb(pid: int, field: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} for process {pid}")


def _reset_peak(pid: int) -> None:
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # the high-water mark restarts from the current size


async def _upload(browser, url: str, name: str, data: bytes) -> None:
    context = await browser.new_context()
    page = await context.new_page()
    await page.goto(f"{url}/prediction")
    await page.get_by_text("Upload one or more").first.wait_for(timeout=120_000)
    await page.locator("input[type=file]").set_input_files([{"name": name, "mimeType": "image/png", "buffer": data}])
    # An answer either way: a prediction, or the one-line refusal of the oversized frame.
    await page.get_by_text("Predicted class").or_(page.get_by_text("over the limit")).first.wait_for(timeout=300_000)
    await page.wait_for_function("() => !document.querySelector('[data-testid=\"stStatusWidget\"]')", timeout=300_000)
    await context.close()


async def measure(url: str, pid: int, files: dict[str, bytes], sessions: int) -> list[tuple[str, float, float, float]]:
    rows = []
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu",
                                                                                   "--disable-background-networking"])
        await _upload(browser, url, "warm-up.png", _png(np.full((400, 500), 90, np.uint8)))  # model and pages loaded
        steps = [(f"one session: {name} ({len(data) // 1024} kB)", [(name, data)]) for name, data in files.items()]
        steps.append((f"{sessions} sessions at once, each the 4K 16-bit frame", [("4K 16-bit grey", files["4K 16-bit grey"])] * sessions))
        for label, uploads in steps:
            time.sleep(2)
            before = _memory_mb(pid, "VmRSS")
            _reset_peak(pid)
            await asyncio.gather(*(_upload(browser, url, f"{name}-{n}.png", data) for n, (name, data) in enumerate(uploads)))
            peak = _memory_mb(pid, "VmHWM")
            time.sleep(2)
            rows.append((label, before, peak, _memory_mb(pid, "VmRSS")))
        await browser.close()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sessions", type=int, default=8)
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="busi-memory-"))
    process, port, folders = start_app(base)
    try:
        quick = recipe("quick")
        list(train(ensure_demo_dataset(folders["cache"]), folders["runs"] / "quick", quick.train, quick.preprocess))
        rows = asyncio.run(measure(f"http://127.0.0.1:{port}", process.pid, adversarial_files(), args.sessions))
    finally:
        process.terminate()
        process.wait(timeout=30)
    print(f"server resident memory (MB), {base}:")
    print(f"  {'step':62} {'before':>8} {'peak':>8} {'after':>8}")
    for label, before, peak, after in rows:
        print(f"  {label:62} {before:8.0f} {peak:8.0f} {after:8.0f}")


if __name__ == "__main__":
    main()
