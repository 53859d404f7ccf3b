"""Training that reports progress as typed events and keeps everything in a run folder.

``train(...)`` is a generator: the CLI renders its events as a progress bar, the app as live
charts, and every event is also appended to ``events.jsonl`` (flushed) so another process can
follow the run. The library never prints.
"""

from __future__ import annotations

import functools
import json
import math
import os
import platform
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn, update_bn

from busi.augment import augment_batch
from busi.cache import cached_inputs
from busi.config import config_from_dict, config_to_dict
from busi.data import CLASSES, DatasetIndex, index_dataset, load_mask, load_scan
from busi.errors import BusiError, ParameterError
from busi.imageio import write_atomic
from busi.metrics import apply_temperature, calibration, fit_temperature, summarise
from busi.model import batched_logits, build_model, lesion_map_stages, to_model_tensor
from busi.preprocess import Pipeline, PreprocessConfig, resize
from busi.split import cross_validation_split, three_way_split, write_manifest

STOP_FILE = "STOP"
CHECKPOINT = "checkpoint.pt"
BEST_CHECKPOINT = "best.pt"


@dataclass(frozen=True)
class TrainConfig:
    """Defaults reproduce the study: ResNet-50, SGD 0.001 momentum 0.9, StepLR 5 x0.1,
    10 epochs, batch 8, horizontal flips, 72.25/12.75/15 split."""

    arch: str = "resnet50"
    pretrained: str = "none"
    epochs: int = 10
    batch_size: int = 8
    lr: float = 0.001
    optimizer: str = "sgd"
    momentum: float = 0.9
    weight_decay: float = 0.0
    schedule: str = "step"
    step_size: int = 5
    gamma: float = 0.1
    class_weighting: str = "none"  # none | loss | sampler
    label_smoothing: float = 0.0
    flip: bool = True
    augment: str = "none"  # none | ultrasound (flips, small affine, gain/contrast, speckle) | strong (the same, wider)
    warmup_epochs: int = 0  # linear warm-up before the cosine schedule
    mask_weight: float = 0.0  # weight of the auxiliary lesion-map loss (masks as training-only supervision)
    mask_scales: int = 1  # lesion maps from the last stage (1) and from one or two earlier, finer stages (2, 3)
    ema: float = 0.0  # decay per step of an exponential moving average of the weights, evaluated and saved; 0 = off
    mixup: float = 0.0  # alpha of the Beta distribution of mixup's blend share; 0 = off
    cutmix: float = 0.0  # alpha of the Beta distribution of CutMix's kept share; 0 = off; with mixup, half the batches each
    # Before each validation, recompute BatchNorm's statistics over the un-augmented training scans:
    # the running averages gathered on augmented, blended batches do not describe clean scans.
    precise_bn: bool = False
    # Which epoch's weights become the model (best.pt): the one with the best validation macro-F1,
    # or the last. With a few dozen validation scans the best-scoring epoch is partly luck, and the
    # end of a decaying schedule is the steadier choice (BENCHMARKS.md).
    keep: str = "best"
    seed: int = 0
    # Ensemble member: the split that `seed` gives, with another initialisation and batch order.
    member: int = 0
    folds: int = 0  # 0: the study's three-way split; K >= 2: test on fold `fold` of group-aware K-fold
    fold: int = 0
    device: str = "auto"
    threads: int = 0  # 0 = torch's default

    def __post_init__(self) -> None:
        for name, low in (("epochs", 1), ("batch_size", 1), ("step_size", 1)):
            if getattr(self, name) < low:
                raise ParameterError(f"{name} must be at least {low}, got {getattr(self, name)}.")
        if not self.lr > 0:
            raise ParameterError(f"lr must be positive, got {self.lr}.")
        choices = {"optimizer": ("sgd", "adamw"), "schedule": ("step", "cosine"),
                   "class_weighting": ("none", "loss", "sampler"), "device": ("auto", "cpu", "cuda", "mps"),
                   "augment": ("none", "ultrasound", "strong"), "keep": ("best", "last")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ParameterError(f"{name} must be one of {', '.join(allowed)}, got '{getattr(self, name)}'.")
        if not 0 <= self.warmup_epochs < self.epochs:
            raise ParameterError(f"warmup_epochs must be between 0 and epochs - 1, got {self.warmup_epochs}.")
        if self.folds == 1 or self.folds < 0:
            raise ParameterError(f"folds must be 0 (single split) or at least 2, got {self.folds}.")
        if self.folds and not 0 <= self.fold < self.folds:
            raise ParameterError(f"fold must be between 0 and {self.folds - 1}, got {self.fold}.")
        if self.mask_weight < 0:
            raise ParameterError(f"mask_weight must be 0 or more, got {self.mask_weight}.")
        if self.mask_scales not in (1, 2, 3):
            raise ParameterError(f"mask_scales must be 1, 2 or 3, got {self.mask_scales}.")
        if not 0 <= self.label_smoothing < 1:
            raise ParameterError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}.")
        if not 0 <= self.ema < 1:
            raise ParameterError(f"ema must be in [0, 1) (0 turns it off), got {self.ema}.")
        if self.member < 0:
            raise ParameterError(f"member must be 0 or more, got {self.member}.")
        for name in ("mixup", "cutmix"):
            if getattr(self, name) < 0:
                raise ParameterError(f"{name} must be 0 (off) or more, got {getattr(self, name)}.")


# -- events -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class BatchEnd:
    epoch: int
    batch: int
    batches: int
    loss: float
    images_per_s: float
    size: int
    kind: str = "batch_end"


@dataclass(frozen=True)
class EpochEnd:
    epoch: int
    epochs: int
    train_loss: float
    val_loss: float
    val_accuracy: float
    val_macro_f1: float
    val_malignant_recall: float
    lr: float
    eta_s: float
    kind: str = "epoch_end"


@dataclass(frozen=True)
class Done:
    """The run ended; ``best_epoch`` is the epoch whose weights the model keeps (``TrainConfig.keep``)."""

    best_epoch: int
    best_val_macro_f1: float
    kind: str = "done"

    def describe(self) -> str:
        return f"the model is epoch {self.best_epoch}'s (validation macro-F1 {self.best_val_macro_f1:.3f})"


@dataclass(frozen=True)
class Stopped:
    epoch: int
    reason: str
    kind: str = "stopped"


@dataclass(frozen=True)
class Failed:
    message: str
    kind: str = "failed"


Event = BatchEnd | EpochEnd | Done | Stopped | Failed
EVENT_TYPES = {cls.kind: cls for cls in (BatchEnd, EpochEnd, Done, Stopped, Failed)}  # type: ignore[attr-defined]


def read_events(run_dir: str | os.PathLike) -> list[Event]:
    """Events written so far; a half-written last line (run still going) is left for later."""
    path = Path(run_dir) / "events.jsonl"
    if not path.exists():
        return []
    events = []
    for line in path.read_text().splitlines():
        try:
            values = json.loads(line)
        except json.JSONDecodeError:
            continue
        events.append(EVENT_TYPES[values["kind"]](**values))
    return events


# -- run folder ---------------------------------------------------------------------------------

@dataclass
class _Data:
    images: np.ndarray  # uint8 (N, size, size[, 3]), preprocessed once
    labels: np.ndarray  # int (N,)
    parts: np.ndarray  # "train" | "val" | "test"
    paths: list[str] = field(default_factory=list)
    masks: np.ndarray | None = None  # uint8 (N, size, size) 0/255 lesion masks, training supervision only
    mask_known: np.ndarray | None = None  # bool (N,): False for a lesion scan without a usable mask


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise BusiError("CUDA was requested but no CUDA GPU is available: choose 'auto' or 'cpu'.")
    return torch.device(name)


def describe_device(name: str = "auto") -> str:
    """Human-readable name of the device ``name`` resolves to on this machine."""
    device = resolve_device(name)
    if device.type == "cuda":
        return f"GPU: {torch.cuda.get_device_name(device)}"
    if device.type == "mps":
        return "Apple GPU (MPS)"
    return f"CPU ({os.cpu_count()} cores)"


def _prepare_data(data_dir: Path, preprocess: PreprocessConfig, config: TrainConfig) -> tuple[_Data, DatasetIndex]:
    index = index_dataset(data_dir)
    if not index.records:
        raise BusiError(f"No readable scans in '{data_dir}': nothing to train on.")
    images = model_inputs(index, preprocess)
    labels = np.array([CLASSES.index(label) for label in index.labels])
    if config.folds:
        parts = cross_validation_split(index.labels, index.groups, fold=config.fold, n_splits=config.folds, seed=config.seed)
    else:
        parts = three_way_split(index.labels, index.groups, seed=config.seed)
    data = _Data(images, labels, parts, [index.relative_path(r) for r in index.records])
    if config.mask_weight:
        data.masks = lesion_masks(index, preprocess)
        data.mask_known = masks_known(index)
    return data, index


def model_inputs(index: DatasetIndex, preprocess: PreprocessConfig) -> np.ndarray:
    """uint8 (N, size, size[, 3]): every scan through the deterministic pipeline, cached on disk."""
    pipeline = Pipeline(preprocess)
    return cached_inputs(preprocess.to_json(), [record.path for record in index.records],
                         lambda: np.stack([pipeline.model_input(load_scan(record)) for record in index.records]))


def masks_known(index: DatasetIndex) -> np.ndarray:
    """bool (N,): whether each scan's lesion mask is known. A normal scan's is (it has no lesion);
    a lesion scan filed without a mask is not, and must not teach that it has no lesion."""
    return np.array([record.label == "normal" or bool(record.mask_paths) for record in index.records])


def lesion_masks(index: DatasetIndex, preprocess: PreprocessConfig) -> np.ndarray:
    """uint8 (N, size, size), 255 inside the lesion, resized like the scans; cached on disk."""
    paths = [path for record in index.records for path in (record.path, *record.mask_paths)]

    def compute() -> np.ndarray:
        return np.stack([resize(load_mask(record), preprocess.size, keep_aspect=preprocess.keep_aspect)
                         for record in index.records]).astype(np.uint8) * 255

    return cached_inputs(preprocess.to_json() + "masks", paths, compute)


class LesionHead(nn.Module):
    """Training-only auxiliary head: predicts lesion maps from backbone stages (captured by hooks),
    so the classifier learns where lesions are. ``stages`` run from the last stage (``conv``, the
    coarsest map) to earlier, finer ones (``finer``), whose maps also ask the earlier layers to
    trace the lesion's outline. It is not part of the saved model: at prediction time the model
    sees the scan alone."""

    def __init__(self, stages: Sequence[nn.Module], channels: Sequence[int]) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels[0], 1, kernel_size=1)
        self.finer = nn.ModuleList(nn.Conv2d(count, 1, kernel_size=1) for count in channels[1:])
        self._features: list[torch.Tensor | None] = [None] * len(stages)
        self._handles = [stage.register_forward_hook(functools.partial(self._capture, position))
                         for position, stage in enumerate(stages)]

    def _capture(self, position: int, module, inputs, output: torch.Tensor) -> None:
        self._features[position] = output

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()

    def loss(self, masks: torch.Tensor, known: torch.Tensor) -> torch.Tensor:
        """Binary cross-entropy against the share of lesion in each cell, scans with a known mask
        only; the mean over the maps."""
        per_scan = 0
        for conv, features in zip((self.conv, *self.finer), self._features, strict=True):
            logits = conv(features)[:, 0]
            target = F.adaptive_avg_pool2d(masks.float()[:, None] / 255.0, logits.shape[-2:])[:, 0]
            per_scan = per_scan + F.binary_cross_entropy_with_logits(logits, target, reduction="none").mean(dim=(1, 2))
        per_scan = per_scan / len(self._features)
        return (per_scan * known).sum() / known.sum().clamp(min=1)


def attach_lesion_head(model: nn.Module, arch: str, size: int, device: torch.device, scales: int = 1) -> LesionHead:
    """A ``LesionHead`` hooked on ``model``'s last convolutional stage and ``scales`` - 1 earlier
    ones (``size``: the input side)."""
    stages = lesion_map_stages(model, arch, scales)
    channels = [0] * len(stages)

    def remember_channels(position: int):
        def hook(module, inputs, output: torch.Tensor) -> None:
            channels[position] = output.shape[1]
        return hook

    with torch.no_grad():  # one tiny pass to learn the stages' channel counts
        handles = [stage.register_forward_hook(remember_channels(position)) for position, stage in enumerate(stages)]
        was_training = model.training
        model.eval()
        model(torch.zeros(1, 3, min(size, 64), min(size, 64), device=device))
        model.train(was_training)
        for handle in handles:
            handle.remove()
    return LesionHead(stages, channels).to(device)


def input_statistics(images: np.ndarray) -> dict[str, float]:
    """Spread of per-image brightness and contrast over the training inputs, kept with the
    weights so prediction can warn about scans unlike anything the model has seen."""
    flat = images.reshape(len(images), -1).astype(np.float32)
    means, stds = flat.mean(1), flat.std(1)
    return {"brightness_mean": float(means.mean()), "brightness_sd": float(means.std()),
            "contrast_mean": float(stds.mean()), "contrast_sd": float(stds.std())}


def _write_json(path: Path, values: dict) -> None:
    write_atomic(path, json.dumps(values, indent=2, sort_keys=True))


def _environment(device: torch.device) -> dict:
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "device": str(device),
        "gpu": torch.cuda.get_device_name(0) if device.type == "cuda" else None,
        "cpu_threads": torch.get_num_threads(),
    }


def _model_state(model: nn.Module, config: TrainConfig, preprocess: PreprocessConfig, stats: dict[str, float]) -> dict:
    """What inference needs: the weights travel with their preprocessing and class names."""
    return {"model": model.state_dict(), "train_config": config_to_dict(config),
            "preprocess_config": config_to_dict(preprocess), "classes": list(CLASSES), "input_stats": stats}


def _save_checkpoint(path: Path, model: nn.Module, optimizer, scheduler, epoch: int, config: TrainConfig,
                     preprocess: PreprocessConfig, stats: dict[str, float], best: tuple[int, float],
                     head: nn.Module | None = None, averaged: AveragedModel | None = None) -> None:
    state = _model_state(model, config, preprocess, stats) | {
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "epoch": epoch,
        "best_epoch": best[0],
        "best_val_macro_f1": best[1],
    } | ({"lesion_head": head.state_dict()} if head else {}) | ({"ema": averaged.state_dict()} if averaged else {})
    _save_atomic(path, state)


def _save_atomic(path: Path, state: dict) -> None:
    """A crash mid-save leaves the previous checkpoint intact, never half of a new one."""
    temporary = path.with_suffix(".tmp")
    torch.save(state, temporary)
    os.replace(temporary, path)


def load_checkpoint(path: str | os.PathLike) -> dict:
    """A checkpoint dict, loaded safely (``weights_only``): no code in the file runs."""
    path = Path(path)
    if not path.is_file():
        raise BusiError(f"No checkpoint at '{path}': train a model first, or choose another run.")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for truncated, foreign or unsafe files
        raise BusiError(f"'{path}' is not a usable busi checkpoint ({type(error).__name__}: {error}). "
                        "Retrain, or resume from the run's other checkpoint.") from error
    required = {"model", "train_config", "preprocess_config", "classes"}
    if not isinstance(state, dict) or required - set(state):
        raise BusiError(f"'{path}' is not a busi checkpoint (expected keys {', '.join(sorted(required))}).")
    return state


def evaluate(model: nn.Module, criterion: nn.Module, images: np.ndarray, labels: np.ndarray, device: torch.device,
             batch_size: int) -> tuple[float, np.ndarray]:
    """Mean loss and softmax probabilities (N, C) of ready model inputs."""
    if not len(images):
        return math.nan, np.zeros((0, len(CLASSES)), dtype=np.float32)
    logits = batched_logits(model, images, device, batch_size)
    loss = criterion(logits.to(device), torch.from_numpy(labels).to(device)).item()
    return loss, torch.softmax(logits, 1).numpy()


def recompute_batch_norm(model: nn.Module, images: np.ndarray, device: torch.device, batch_size: int) -> None:
    """Replace the BatchNorm running statistics of ``model`` by their average over ``images``
    (uint8 model inputs), the "precise BN" of Wu & Johnson (2021)."""
    update_bn((to_model_tensor(torch.from_numpy(np.ascontiguousarray(images[start:start + batch_size])).to(device))
               for start in range(0, len(images), batch_size)), model)


@dataclass(frozen=True)
class Mix:
    """How one batch is mixed: row i with row ``partner[i]``, keeping ``share`` of its own label.
    Without ``box`` the two scans are blended (mixup); with it, the partner's pixels inside
    ``box`` = (top, left, bottom, right) replace the row's own (CutMix)."""

    share: float
    partner: torch.Tensor
    box: tuple[int, int, int, int] | None = None

    def __call__(self, values: torch.Tensor) -> torch.Tensor:
        """``values`` (N, ..., H, W), scans or lesion maps alike, mixed."""
        if self.box is None:
            return self.share * values + (1 - self.share) * values[self.partner]
        top, left, bottom, right = self.box
        mixed = values.clone()
        mixed[..., top:bottom, left:right] = values[self.partner][..., top:bottom, left:right]
        return mixed


def draw_mix(rng: np.random.Generator, rows: int, side: int, mixup: float, cutmix: float,
             device: torch.device) -> Mix | None:
    """This batch's ``Mix`` (``None`` when both are off). With both on, each batch is one or the other at even odds."""
    if not (mixup or cutmix):
        return None
    if mixup and (not cutmix or rng.random() < 0.5):
        share = float(rng.beta(mixup, mixup))
        return Mix(share, torch.from_numpy(rng.permutation(rows)).to(device))
    # CutMix (Yun et al. 2019): a box of area 1 - λ of the scan around a uniform centre, clipped
    # to the scan; the label share is the area actually kept.
    cut = round(side * math.sqrt(1 - rng.beta(cutmix, cutmix)))
    centre_y, centre_x = rng.integers(side, size=2)
    top, bottom = max(centre_y - cut // 2, 0), min(centre_y + cut - cut // 2, side)
    left, right = max(centre_x - cut // 2, 0), min(centre_x + cut - cut // 2, side)
    share = 1 - (bottom - top) * (right - left) / side**2
    return Mix(share, torch.from_numpy(rng.permutation(rows)).to(device), (int(top), int(left), int(bottom), int(right)))


def train_one_epoch(model: nn.Module, criterion: nn.Module, optimizer: torch.optim.Optimizer, images: np.ndarray,
                    labels: np.ndarray, order: np.ndarray, batch_size: int, device: torch.device, augment: str | None,
                    rng: np.random.Generator, epoch: int, lesion: tuple[LesionHead, np.ndarray, np.ndarray, float] | None = None,
                    averaged: AveragedModel | None = None, mixup: float = 0.0, cutmix: float = 0.0) -> Iterator[BatchEnd]:
    """One pass over ``order`` (row numbers) in batches; yields after each optimiser step so the
    caller can report progress and stop between batches. ``lesion`` = (head, masks, mask_known,
    weight) adds the auxiliary lesion-map loss; ``averaged`` follows the weights after every step;
    ``mixup`` > 0 trains on blends of two scans (Zhang et al. 2018), the blend share drawn from
    Beta(mixup, mixup), with the same blend of their labels and lesion maps; ``cutmix`` > 0 pastes a
    box of another scan instead (see ``draw_mix``), its lesion map alike, the labels shared by area."""
    model.train()
    batches = math.ceil(len(order) / batch_size)
    for batch, rows in enumerate(np.array_split(order, batches), start=1):
        started = time.perf_counter()
        batch_images = images[rows]
        batch_masks = lesion[1][rows] if lesion else None
        if augment:  # drawn afresh every batch, after the cached deterministic preprocessing
            batch_images, batch_masks = augment_batch(batch_images, rng, augment, batch_masks)
        x = to_model_tensor(torch.from_numpy(np.ascontiguousarray(batch_images)).to(device))
        targets = torch.from_numpy(labels[rows]).to(device)
        mix = draw_mix(rng, len(rows), x.shape[-1], mixup, cutmix, device)
        outputs = model(mix(x) if mix else x)
        # The blend of the losses against both labels, as in the mixup authors' reference code; with unweighted
        # classes this equals the loss of the blended label (cross-entropy is linear in its target).
        loss = criterion(outputs, targets) if mix is None else \
            mix.share * criterion(outputs, targets) + (1 - mix.share) * criterion(outputs, targets[mix.partner])
        if lesion:
            head, _, known, weight = lesion
            masks = torch.from_numpy(np.ascontiguousarray(batch_masks)).to(device).float()
            mask_known = torch.from_numpy(known[rows]).float().to(device)
            # A mix has a known lesion map only when both its scans do.
            loss = loss + weight * (head.loss(masks, mask_known) if mix is None else
                                    head.loss(mix(masks), mask_known * mask_known[mix.partner]))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if averaged:
            averaged.update_parameters(model)
        yield BatchEnd(epoch, batch, batches, loss.item(), len(rows) / (time.perf_counter() - started), len(rows))


def class_weights(labels: np.ndarray) -> torch.Tensor:
    """Per-class loss weights inversely proportional to the class counts in ``labels`` (0 for an absent class)."""
    counts = np.bincount(labels, minlength=len(CLASSES)).astype(float)
    weights = np.where(counts > 0, counts.sum() / (len(CLASSES) * np.maximum(counts, 1)), 0.0)
    return torch.tensor(weights, dtype=torch.float32)


def _augmentation_policy(config: TrainConfig) -> str | None:
    if config.augment != "none":
        return config.augment
    return "flip" if config.flip else None


def build_optimiser(model: nn.Module, config: TrainConfig, head: nn.Module | None = None,
                    ) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """The optimiser and per-epoch schedule ``config`` names, over the model's and the head's parameters."""
    parameters = [*model.parameters(), *(head.parameters() if head else ())]
    if config.optimizer == "sgd":
        optimizer = torch.optim.SGD(parameters, config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    else:
        optimizer = torch.optim.AdamW(parameters, config.lr, weight_decay=config.weight_decay)
    if config.schedule == "step":
        return optimizer, torch.optim.lr_scheduler.StepLR(optimizer, config.step_size, config.gamma)
    warmup, epochs = config.warmup_epochs, config.epochs

    def cosine_with_warmup(epoch: int) -> float:
        if epoch < warmup:
            return (epoch + 1) / (warmup + 1)
        return 0.5 * (1 + math.cos(math.pi * (epoch - warmup) / max(1, epochs - warmup)))

    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, cosine_with_warmup)


def train(
    data_dir: str | os.PathLike,
    run_dir: str | os.PathLike,
    config: TrainConfig = TrainConfig(),
    preprocess: PreprocessConfig = PreprocessConfig(),
    *,
    resume: bool = False,
) -> Iterator[Event]:
    """Train into ``run_dir``, yielding events; stops at the next batch when ``run_dir/STOP``
    appears (the app and signal handlers create it) after saving a usable checkpoint."""
    run = Path(run_dir)
    run.mkdir(parents=True, exist_ok=True)
    (run / STOP_FILE).unlink(missing_ok=True)
    log = open(run / "events.jsonl", "a")

    def emit(event: Event) -> Event:
        log.write(json.dumps(asdict(event)) + "\n")
        log.flush()
        return event

    try:
        start_epoch, best = 1, (0, -1.0)
        checkpoint = None
        if resume:
            checkpoint = load_checkpoint(run / CHECKPOINT)
            config = config_from_dict(TrainConfig, checkpoint["train_config"])
            preprocess = config_from_dict(PreprocessConfig, checkpoint["preprocess_config"])
            start_epoch = checkpoint["epoch"] + 1
            best = (checkpoint["best_epoch"], checkpoint["best_val_macro_f1"])
        torch.manual_seed(_training_seed(config))
        rng = np.random.default_rng((_training_seed(config), start_epoch))
        if config.threads:
            torch.set_num_threads(config.threads)
        device = resolve_device(config.device)
        data, index = _prepare_data(Path(data_dir), preprocess, config)
        train_rows = np.flatnonzero(data.parts == "train")
        val_rows = np.flatnonzero(data.parts == "val")
        if len(train_rows) < config.batch_size:
            raise ParameterError(f"batch_size {config.batch_size} exceeds the {len(train_rows)} training scans: lower it.")
        stats = input_statistics(data.images[train_rows])
        _write_json(run / "config.json", {"train": config_to_dict(config), "preprocess": config_to_dict(preprocess),
                                          "classes": list(CLASSES), "data_dir": str(index.root)})
        write_manifest(run / "split.csv", index, data.parts)
        _write_json(run / "environment.json", _environment(device))

        model = build_model(config.arch, len(CLASSES), config.pretrained).to(device)
        # Copied before the lesion head hooks the model, so the copy carries no hook.
        averaged = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(config.ema), use_buffers=True) \
            if config.ema else None
        scored = averaged.module if averaged else model
        weights = class_weights(data.labels[train_rows]).to(device) if config.class_weighting == "loss" else None
        criterion = nn.CrossEntropyLoss(weight=weights, label_smoothing=config.label_smoothing)
        head = attach_lesion_head(model, config.arch, preprocess.size, device, config.mask_scales) \
            if config.mask_weight else None
        optimizer, scheduler = build_optimiser(model, config, head)
        if checkpoint:
            model.load_state_dict(checkpoint["model"])
            optimizer.load_state_dict(checkpoint["optimizer"])
            scheduler.load_state_dict(checkpoint["scheduler"])
            if head:
                head.load_state_dict(checkpoint["lesion_head"])
            if averaged:
                averaged.load_state_dict(checkpoint["ema"])

        sample_weights = None
        if config.class_weighting == "sampler":
            per_class = class_weights(data.labels[train_rows]).numpy()[data.labels[train_rows]]
            sample_weights = per_class / per_class.sum()
        started = time.perf_counter()
        for epoch in range(start_epoch, config.epochs + 1):
            if sample_weights is not None:
                order = rng.choice(train_rows, len(train_rows), p=sample_weights)
            else:
                order = rng.permutation(train_rows)
            epoch_loss = 0.0
            for event in train_one_epoch(model, criterion, optimizer, data.images, data.labels, order,
                                         config.batch_size, device, _augmentation_policy(config), rng, epoch,
                                         (head, data.masks, data.mask_known, config.mask_weight) if head else None,
                                         averaged, config.mixup, config.cutmix):
                epoch_loss += event.loss * event.size
                yield emit(event)
                if (run / STOP_FILE).exists():
                    # The epoch is incomplete: record the previous one so resume redoes this one.
                    _save_checkpoint(run / CHECKPOINT, model, optimizer, scheduler, epoch - 1, config, preprocess, stats, best,
                                     head, averaged)
                    (run / STOP_FILE).unlink(missing_ok=True)
                    yield emit(Stopped(epoch, "stop requested"))
                    return
            lr = optimizer.param_groups[0]["lr"]
            scheduler.step()
            if config.precise_bn:
                recompute_batch_norm(scored, data.images[train_rows], device, config.batch_size)
            val_loss, probabilities = evaluate(scored, criterion, data.images[val_rows], data.labels[val_rows], device, config.batch_size)
            summary = summarise(data.labels[val_rows], probabilities.argmax(1))
            kept = summary["macro_f1"] > best[1] if config.keep == "best" else epoch == config.epochs
            if kept:
                best = (epoch, summary["macro_f1"])
                _save_atomic(run / BEST_CHECKPOINT, _model_state(scored, config, preprocess, stats))
            _save_checkpoint(run / CHECKPOINT, model, optimizer, scheduler, epoch, config, preprocess, stats, best, head, averaged)
            elapsed = time.perf_counter() - started
            yield emit(EpochEnd(epoch, config.epochs, epoch_loss / len(train_rows), val_loss, summary["accuracy"],
                                summary["macro_f1"], summary["malignant_recall"], lr,
                                elapsed / (epoch - start_epoch + 1) * (config.epochs - epoch)))
        _write_predictions(run, model, data, device, config.batch_size)
        yield emit(Done(*best))
    except BusiError as error:
        yield emit(Failed(str(error)))
    except torch.OutOfMemoryError:
        yield emit(Failed("Out of memory: lower the batch size or the image size, or train on the CPU."))
    finally:
        log.close()


def _training_seed(config: TrainConfig) -> int:
    """Seed of the initial weights and of the random draws while training; member 0 keeps the
    plain ``seed``, so runs made before ensembles existed are reproduced exactly."""
    return config.seed + 1_000_003 * config.member


def _write_predictions(run: Path, model: nn.Module, data: _Data, device: torch.device, batch_size: int) -> None:
    """With the best model: temperature scaling fitted on the validation scans (saved with the
    weights), then predictions.csv (per scan: split, true class, calibrated probabilities) and
    metrics.json (with the calibration error before and after scaling)."""
    state = load_checkpoint(run / BEST_CHECKPOINT)
    model.load_state_dict(state["model"])
    logits = batched_logits(model, data.images, device, batch_size).numpy()
    validation = data.parts == "val"
    temperature = fit_temperature(data.labels[validation], logits[validation])
    _save_atomic(run / BEST_CHECKPOINT, state | {"temperature": temperature})
    raw, probabilities = apply_temperature(logits, 1.0), apply_temperature(logits, temperature)
    lines = ["path,split,label," + ",".join(f"p_{c}" for c in CLASSES)]
    for path, part, label, row in zip(data.paths, data.parts, data.labels, probabilities):
        quoted = '"' + path.replace('"', '""') + '"'
        lines.append(f"{quoted},{part},{CLASSES[label]}," + ",".join(f"{p:.6f}" for p in row))
    write_atomic(run / "predictions.csv", "\n".join(lines) + "\n")
    metrics: dict = {"temperature": temperature}
    for part in ("train", "val", "test"):
        rows = data.parts == part
        if rows.any():
            metrics[part] = summarise(data.labels[rows], probabilities[rows].argmax(1)) | {
                "ece_before_scaling": calibration(data.labels[rows], raw[rows])["ece"],
                "ece": calibration(data.labels[rows], probabilities[rows])["ece"]}
    _write_json(run / "metrics.json", metrics)
