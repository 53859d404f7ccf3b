"""Time indexing a dataset folder (decode, masks, near-duplicate grouping) and the pipeline.

    .venv/bin/python -m bench.bench_index [DATA_DIR]   # default ../shared/busi

Targets (issue 2): the 663-scan folder in under 20 s on 2 cores; the full preprocessing
pipeline on a 500x500 scan in under 30 ms on one core.
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from pathlib import Path

import cv2
import numpy as np

from busi.data import index_dataset, load_mask, load_scan
from busi.preprocess import DisplayConfig, Pipeline, PreprocessConfig


def time_index(folder: Path, repeats: int = 3) -> list[float]:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        index = index_dataset(folder)
        times.append(time.perf_counter() - started)
    print(f"index {index.root}: {len(index.records)} scans, {os.cpu_count()} cores")
    print(f"  wall s per run: {', '.join(f'{t:.2f}' for t in times)}  (median {statistics.median(times):.2f})")
    return times


def time_pipeline(scan: np.ndarray, mask: np.ndarray, repeats: int = 200) -> float:
    cv2.setNumThreads(1)  # the target is per core
    scan = cv2.resize(scan, (500, 500), interpolation=cv2.INTER_AREA)
    mask = cv2.resize(mask.astype(np.uint8), (500, 500), interpolation=cv2.INTER_NEAREST).astype(bool)
    pipeline = Pipeline(PreprocessConfig(), DisplayConfig(flip=True))
    for _ in range(10):
        pipeline.stages(scan, mask)
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        pipeline.stages(scan, mask)
        samples.append((time.perf_counter() - started) * 1000)
    model_only = []
    for _ in range(repeats):
        started = time.perf_counter()
        pipeline.model_input(scan)
        model_only.append((time.perf_counter() - started) * 1000)
    print("pipeline on 500x500, one OpenCV thread:")
    print(f"  all stages   median {statistics.median(samples):.2f} ms, p95 {np.percentile(samples, 95):.2f} ms")
    print(f"  model input  median {statistics.median(model_only):.2f} ms")
    return statistics.median(samples)


def main() -> None:
    folder = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parents[2] / "shared" / "busi"
    time_index(folder)
    index = index_dataset(folder)
    record = next(r for r in index.records if r.label == "malignant" and r.mask_paths)
    time_pipeline(load_scan(record), load_mask(record))


if __name__ == "__main__":
    main()
