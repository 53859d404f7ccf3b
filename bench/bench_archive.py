"""Prediction over an archive: scans per second batched and threaded against one scan at a time,
and peak memory at 1,000 and 10,000 scans (it must stay flat).

    .venv/bin/python -m bench.bench_archive [--sizes 1000,10000] [--one-by-one 300]

Writes phantom scans (256x256 PNG) in nested folders under a temporary folder, trains the quick
demo model (ResNet-18 at 64 px, about 30 s), then runs ``busi predict RUN FOLDER --csv`` in a
fresh process per size and reads that process's peak resident memory from the kernel.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from busi import synth
from busi.imageio import encode_png
from busi.predict import load_classifier
from busi.recipes import recipe
from busi.synth import ensure_demo_dataset
from busi.train import train


def write_archive(root: Path, count: int) -> Path:
    for number in range(count):
        folder = root / f"patient {number // 50:04d}" / f"study {number % 3}"
        folder.mkdir(parents=True, exist_ok=True)
        scan, _ = synth.make_phantom(("benign", "malignant", "normal")[number % 3], number, (256, 256))
        (folder / f"scan {number}.png").write_bytes(encode_png(scan))
    return root


def archive_run(run: Path, archive: Path, out: Path) -> tuple[float, float]:
    """Seconds and peak resident MiB of ``busi predict RUN ARCHIVE --csv OUT`` in its own process."""
    started = time.perf_counter()
    process = subprocess.Popen([sys.executable, "-m", "busi", "predict", str(run), str(archive), "--csv", str(out)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(process.pid, 0)  # the rusage of this child alone
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise RuntimeError(f"busi predict exited with {process.returncode}")
    return time.perf_counter() - started, usage.ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,10000")
    parser.add_argument("--one-by-one", type=int, default=300, help="scans classified one at a time for the comparison")
    args = parser.parse_args()
    sizes = sorted(int(size) for size in args.sizes.split(","))
    with tempfile.TemporaryDirectory() as base:
        base = Path(base)
        quick = recipe("quick")
        events = list(train(ensure_demo_dataset(), base / "run", quick.train, quick.preprocess))
        assert events[-1].kind == "done", events[-1]
        print("model: the quick demo recipe (ResNet-18 at 64 px); every prediction also measures the scan's distance "
              "from the training scans (EfficientNet-Lite0 features)")

        classifier = load_classifier(base / "run")
        sample = write_archive(base / "sample", args.one_by_one)
        files = sorted(sample.rglob("*.png"))
        classifier.predict(files[0])  # the first call loads the feature encoder
        started = time.perf_counter()
        for path in files:
            classifier.predict(path)
        print(f"one scan at a time (Classifier.predict in a loop), {len(files)} scans: "
              f"{len(files) / (time.perf_counter() - started):.1f} scans/s")
        del classifier

        for size in sizes:
            archive = write_archive(base / f"archive-{size}", size)
            seconds, peak = archive_run(base / "run", archive, base / f"out-{size}.csv")
            print(f"busi predict --csv, {size} scans in nested folders: {size / seconds:.1f} scans/s "
                  f"({seconds:.0f} s, process start and model load included), peak memory {peak:.0f} MiB")


if __name__ == "__main__":
    main()
