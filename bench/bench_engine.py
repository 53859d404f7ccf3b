"""Training throughput and prediction latency of the engine against bare-model baselines.

    .venv/bin/python -m bench.bench_engine [DATA_DIR] [--scans 64] [--arch resnet50] [--size 224]

Targets (issue 3):
- an epoch of our data path (preprocessed once, cached; flips applied per batch) within 1.15x
  of the model's own forward+backward+step time on ready tensors; a plain reference loop that
  decodes and preprocesses every scan every epoch is timed in the same run for comparison;
- ``Classifier.predict`` on one scan file (decode and preprocessing included) within 1.3x of
  the bare forward pass on a ready tensor; Grad-CAM reported next to it.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from busi.arrays import model_inputs
from busi.batches import TrainingBatches
from busi.config import TrainConfig, config_to_dict
from busi.data import CLASSES, index_dataset, load_scan
from busi.model import build_model, to_model_tensor
from busi.predict import Classifier
from busi.preprocess import Pipeline, PreprocessConfig
from busi.train import train_one_epoch

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "busi"


def _model_step(model: nn.Module, optimizer, criterion, x: torch.Tensor, y: torch.Tensor) -> None:
    loss = criterion(model(x), y)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def time_epochs(index, arch: str, batch_size: int, size: int) -> dict[str, float]:
    preprocess = PreprocessConfig(size=size)
    pipeline = Pipeline(preprocess)
    labels = np.array([CLASSES.index(label) for label in index.labels])
    torch.manual_seed(0)
    model = build_model(arch, len(CLASSES))
    optimizer = torch.optim.SGD(model.parameters(), 0.001, momentum=0.9)
    criterion = nn.CrossEntropyLoss()
    batches = np.array_split(np.arange(len(labels)), math.ceil(len(labels) / batch_size))

    started = time.perf_counter()
    images = model_inputs(index, preprocess)
    one_off = time.perf_counter() - started

    source = TrainingBatches(images, labels, np.arange(len(labels)), batch_size, rng=np.random.default_rng(0),
                             device=torch.device("cpu"), to_tensor=to_model_tensor, augment="flip")

    def ours() -> None:
        for _ in train_one_epoch(model, source, optimizer, criterion=criterion, epoch=1):
            pass

    def plain() -> None:
        model.train()
        for rows in batches:
            batch = np.stack([pipeline.model_input(load_scan(index.records[i])) for i in rows])
            flips = np.random.random(len(rows)) < 0.5
            batch = np.where(flips[:, None, None], batch[:, :, ::-1], batch)
            _model_step(model, optimizer, criterion, to_model_tensor(torch.from_numpy(np.ascontiguousarray(batch))),
                        torch.from_numpy(labels[rows]))

    ready = [(to_model_tensor(torch.from_numpy(images[rows])), torch.from_numpy(labels[rows])) for rows in batches]

    def model_only() -> None:
        model.train()
        for x, y in ready:
            _model_step(model, optimizer, criterion, x, y)

    model_only()  # warm-up: allocator and kernels
    times = {"model": [], "ours": [], "plain": []}
    for _ in range(2):  # interleaved so drifts in machine load hit all three alike
        for name, epoch in (("model", model_only), ("ours", ours), ("plain", plain)):
            started = time.perf_counter()
            epoch()
            times[name].append(time.perf_counter() - started)
    result = {name: min(values) for name, values in times.items()}
    print(f"epoch of {len(labels)} scans, {arch}, batch {batch_size}, {size} px, {torch.get_num_threads()} threads:")
    print(f"  model forward+backward+step on ready tensors  {result['model']:.1f} s")
    print(f"  ours (cached inputs, flips per batch)          {result['ours']:.1f} s  ratio {result['ours'] / result['model']:.3f}")
    print(f"  plain loop (decode + preprocess every epoch)   {result['plain']:.1f} s  ratio {result['plain'] / result['model']:.3f}")
    print(f"  one-off preprocessing (or cache load) before the first epoch: {one_off:.1f} s")
    return result


def time_prediction(index, arch: str, size: int, repeats: int = 20) -> None:
    state = {"model": build_model(arch, len(CLASSES)).state_dict(), "train_config": config_to_dict(TrainConfig(arch=arch)),
             "preprocess_config": config_to_dict(PreprocessConfig(size=size)), "classes": list(CLASSES)}
    classifier = Classifier(state, Path("bench"))
    path = index.records[0].path
    x = to_model_tensor(torch.from_numpy(classifier.pipeline.model_input(load_scan(index.records[0]))[None]))

    def bare() -> None:
        with torch.inference_mode():
            classifier.model(x)

    samples: dict[str, list[float]] = {"bare forward": [], "predict (file)": [], "Grad-CAM (file)": []}
    calls = {"bare forward": bare, "predict (file)": lambda: classifier.predict(path),
             "Grad-CAM (file)": lambda: classifier.explain(path)}
    for call in calls.values():
        call()
    for _ in range(repeats):
        for name, call in calls.items():
            started = time.perf_counter()
            call()
            samples[name].append((time.perf_counter() - started) * 1000)
    medians = {name: statistics.median(values) for name, values in samples.items()}
    print(f"one scan ({path.name}), {arch} at {size} px, median of {repeats}:")
    for name, value in medians.items():
        print(f"  {name:16} {value:7.1f} ms  ratio {value / medians['bare forward']:.3f}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("data", nargs="?", default=DEFAULT_DATA)
    parser.add_argument("--scans", type=int, default=64)
    parser.add_argument("--arch", default="resnet50")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--size", type=int, default=PreprocessConfig().size)
    args = parser.parse_args()
    index = index_dataset(args.data)
    index.records = index.records[:: max(1, len(index.records) // args.scans)][: args.scans]
    print(f"{os.cpu_count()} cores, torch {torch.__version__}")
    time_epochs(index, args.arch, args.batch_size, args.size)
    time_prediction(index, args.arch, args.size)


if __name__ == "__main__":
    main()
