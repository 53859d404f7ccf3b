"""The CUDA path end to end. Skipped where no NVIDIA GPU is present (CI); run on a GPU machine
with ``python -m pytest tests/test_cuda.py`` (the last run is recorded in BENCHMARKS.md)."""

import json

import numpy as np
import pytest
import torch

from busi.arrays import model_inputs
from busi.config import JobOptions, TrainConfig
from busi.data import index_dataset, load_scan
from busi.device import describe_device
from busi.events import Done, EpochEnd, Failed, Stopped
from busi.predict import load_classifier
from busi.preprocess import PreprocessConfig
from busi.train import train

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU on this machine")

SMALL = PreprocessConfig(size=32)
# Every training-time ingredient of the best recipe and of its measured variants, so each one runs on the GPU.
GPU = TrainConfig(arch="resnet18", epochs=2, batch_size=4, lr=0.01, seed=1, optimizer="adamw",
                  schedule="cosine", warmup_epochs=1, class_weighting="loss", label_smoothing=0.1, augment="ultrasound",
                  mask_weight=1.0, mask_scales=3, mixup=0.4, cutmix=1.0, ema=0.9, precise_bn=True, keep="last")
ON_GPU = JobOptions(device="cuda")
# cuDNN convolutions may use TF32 on Ampere and later, so GPU and CPU agree to about 1e-3, not 1e-6;
# weights that failed to load would differ by orders of magnitude more.
ACROSS_DEVICES = 5e-3


@pytest.fixture(scope="module")
def gpu_run(synthetic_dataset, tmp_path_factory):
    """A run trained on the GPU, stopped after its first epoch and resumed there."""
    run = tmp_path_factory.mktemp("gpu_run")
    events = []
    for event in train(synthetic_dataset, run, GPU, SMALL, job=ON_GPU):
        events.append(event)
        if isinstance(event, EpochEnd):
            (run / "STOP").touch()
    assert isinstance(events[-1], Stopped), events[-1]
    resumed = list(train(synthetic_dataset, run, resume=True, job=ON_GPU))
    assert isinstance(resumed[-1], Done), resumed[-1]
    return run


def test_the_gpu_is_named_and_recorded_with_the_run(gpu_run):
    name = torch.cuda.get_device_name(0)
    assert describe_device("auto") == describe_device("cuda") == f"GPU: {name}"
    environment = json.loads((gpu_run / "environment.json").read_text())
    assert environment["device"].startswith("cuda") and environment["gpu"] == name


def test_gpu_trained_weights_predict_alike_on_the_cpu_and_the_gpu(gpu_run, synthetic_dataset):
    inputs = model_inputs(index_dataset(synthetic_dataset), SMALL)
    on_cpu, on_gpu = (load_classifier(gpu_run, device).probabilities(inputs) for device in ("cpu", "cuda"))
    np.testing.assert_allclose(on_gpu, on_cpu, atol=ACROSS_DEVICES)
    assert np.allclose(on_cpu.sum(1), 1, atol=1e-5)


def test_grad_cam_runs_on_the_gpu_and_matches_the_cpu(gpu_run, synthetic_dataset):
    index = index_dataset(synthetic_dataset)
    scan = load_scan(index.records[0])
    on_cpu, on_gpu = (load_classifier(gpu_run, device).explain(scan, "malignant") for device in ("cpu", "cuda"))
    assert on_gpu.heat.shape == scan.shape and on_gpu.heat.max() <= 1
    np.testing.assert_allclose(on_gpu.heat, on_cpu.heat, atol=20 * ACROSS_DEVICES)


def test_running_out_of_gpu_memory_fails_with_advice_and_the_gpu_stays_usable(synthetic_dataset, tmp_path):
    torch.cuda.empty_cache()
    # A cap far below ResNet-18's 45 MB of weights: a genuine CUDA out-of-memory error.
    torch.cuda.set_per_process_memory_fraction(1e6 / torch.cuda.get_device_properties(0).total_memory)
    try:
        events = list(train(synthetic_dataset, tmp_path, GPU, SMALL, job=ON_GPU))
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)
    assert isinstance(events[-1], Failed) and events[-1].message.startswith("Out of memory: lower the batch size")
    torch.cuda.empty_cache()
    assert isinstance(list(train(synthetic_dataset, tmp_path / "again", GPU, SMALL, job=ON_GPU))[-1], Done)
