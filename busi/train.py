"""The trainer, in the shape of torchvision's reference ``train.py``: ``train_one_epoch`` and
``evaluate`` are small, ``fit`` runs the epochs over arrays in memory, and ``train`` wires a
dataset folder, a recipe and a run folder together.

``train(...)`` is a generator of events (``busi.events``); every event is also appended to the
run's ``events.jsonl`` so another process can follow it. Nothing imports this module but its
consumers: the command line, the app's job runner (through the command line) and the recipes.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn, update_bn

from busi.arrays import class_numbers, lesion_masks, masks_known, model_inputs
from busi.batches import Batch, TrainingBatches
from busi.config import JobOptions, TrainConfig, train_config_from_saved
from busi.data import CLASSES, index_dataset, is_synthetic
from busi.device import environment, resolve_device
from busi.distributed import Ranks, lost_peer, lost_rank_message, process_group, ranks_from_environment, stop_signalled
from busi.errors import BusiError, ParameterError
from busi.events import BatchEnd, Done, EpochEnd, Event, Failed, Started, Stopped
from busi.lesion import LesionHead, attach_lesion_head
from busi.metrics import apply_temperature, calibration, fit_temperature, summarise
from busi.model import IMAGENET, Normalisation, backbone, batched_logits, build_model, to_model_tensor
from busi.ood import Familiarity, encoded_scans
from busi.preprocess import PreprocessConfig
from busi.runs import Provenance, RunFolder, model_record
from busi.split import PARTS, cross_validation_split, three_way_split

_STUDY, _STUDY_PREPROCESS, _LOCAL = TrainConfig(), PreprocessConfig(), JobOptions()


def class_weights(labels: np.ndarray) -> torch.Tensor:
    """Per-class loss weights inversely proportional to the class counts in ``labels`` (0 for an absent class)."""
    counts = np.bincount(labels, minlength=len(CLASSES)).astype(float)
    weights = np.where(counts > 0, counts.sum() / (len(CLASSES) * np.maximum(counts, 1)), 0.0)
    return torch.tensor(weights, dtype=torch.float32)


def body_parameters(model: nn.Module, arch: str) -> list[nn.Parameter]:
    """The parameters of ``model`` outside its classification head."""
    head = {id(parameter) for parameter in model.get_submodule(backbone(arch).head).parameters()}
    return [parameter for parameter in model.parameters() if id(parameter) not in head]


def build_optimiser(model: nn.Module, config: TrainConfig, head: nn.Module | None = None,
                    ) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """The optimiser and per-epoch schedule ``config`` names, over the model's and the lesion head's
    parameters; the body learns at ``config.backbone_lr`` of the rate."""
    parameters: list = [*model.parameters(), *(head.parameters() if head else ())]
    if config.backbone_lr != 1.0:
        body = {id(parameter) for parameter in body_parameters(model, config.arch)}
        parameters = [{"params": [p for p in parameters if id(p) not in body]},
                      {"params": [p for p in parameters if id(p) in body], "lr": config.lr * config.backbone_lr}]
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


def input_statistics(images: np.ndarray) -> dict[str, float]:
    """Spread of per-image brightness and contrast over the training inputs, kept with the
    weights so prediction can warn about scans unlike anything the model has seen."""
    flat = images.reshape(len(images), -1).astype(np.float32)
    means, stds = flat.mean(1), flat.std(1)
    return {"brightness_mean": float(means.mean()), "brightness_sd": float(means.std()),
            "contrast_mean": float(stds.mean()), "contrast_sd": float(stds.std())}


def train_one_epoch(model: nn.Module, batches: TrainingBatches | Sequence[Batch], optimizer: torch.optim.Optimizer, *,
                    criterion: nn.Module, epoch: int, lesion_head: LesionHead | None = None, lesion_weight: float = 0.0,
                    averaged: AveragedModel | None = None) -> Iterator[BatchEnd]:
    """One pass over ``batches``; yields after each optimiser step so the caller can report progress
    and stop between batches. ``lesion_head`` adds its lesion-map loss times ``lesion_weight``
    (the batches then carry lesion maps); ``averaged`` follows the weights after every step."""
    model.train()
    started = time.perf_counter()
    for number, batch in enumerate(batches, start=1):
        loss = batch.loss(criterion, model(batch.images))
        if lesion_head is not None:
            loss = loss + lesion_weight * lesion_head.loss(batch.masks, batch.mask_known)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if averaged:
            averaged.update_parameters(model)
        yield BatchEnd(epoch, number, len(batches), loss.item(), len(batch) / (time.perf_counter() - started), len(batch))
        started = time.perf_counter()  # the caller's time between batches is not the training's


def evaluate(model: nn.Module, criterion: nn.Module, images: np.ndarray, labels: np.ndarray, device: torch.device,
             batch_size: int, normalisation: Normalisation = IMAGENET) -> tuple[float, np.ndarray]:
    """Mean loss and softmax probabilities (N, C) of ready model inputs."""
    if not len(images):
        return math.nan, np.zeros((0, len(CLASSES)), dtype=np.float32)
    logits = batched_logits(model, images, device, batch_size, normalisation)
    loss = criterion(logits.to(device), torch.from_numpy(labels).to(device)).item()
    return loss, torch.softmax(logits, 1).numpy()


def recompute_batch_norm(model: nn.Module, images: np.ndarray, device: torch.device, batch_size: int,
                         normalisation: Normalisation = IMAGENET) -> None:
    """Replace the BatchNorm running statistics of ``model`` by their average over ``images``
    (uint8 model inputs), the "precise BN" of Wu & Johnson (2021)."""
    update_bn((to_model_tensor(torch.from_numpy(np.ascontiguousarray(images[start:start + batch_size])).to(device),
                               normalisation) for start in range(0, len(images), batch_size)), model)


@dataclass
class TrainingState:
    """Everything training changes, and what a checkpoint holds to resume it."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    criterion: nn.Module
    normalisation: Normalisation  # of the backbone's inputs, as its pretrained weights expect
    head: LesionHead | None = None
    averaged: AveragedModel | None = None
    replicated: nn.Module | None = None  # the model wrapped in DistributedDataParallel, on several ranks
    epoch: int = 0  # the last finished epoch
    model_epoch: int = 0  # the epoch whose weights are the model, and their validation macro-F1
    model_val_macro_f1: float = -1.0

    def to_tensor(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 scans -> the model's normalised input."""
        return to_model_tensor(images, self.normalisation)

    @property
    def trained(self) -> nn.Module:
        """What the training steps run: the replicated model when there is one."""
        return self.replicated or self.model

    @property
    def scored(self) -> nn.Module:
        """The weights that are validated and kept: the moving average when there is one."""
        return self.averaged.module if self.averaged else self.model

    def state_dict(self) -> dict:
        return {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(), "epoch": self.epoch,
                "best_epoch": self.model_epoch, "best_val_macro_f1": self.model_val_macro_f1} \
            | ({"lesion_head": self.head.state_dict()} if self.head else {}) \
            | ({"ema": self.averaged.state_dict()} if self.averaged else {})

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.head:
            self.head.load_state_dict(state["lesion_head"])
        if self.averaged:
            self.averaged.load_state_dict(state["ema"])
        self.epoch, self.model_epoch, self.model_val_macro_f1 = state["epoch"], state["best_epoch"], state["best_val_macro_f1"]


def new_training_state(config: TrainConfig, device: torch.device, *, class_weight: torch.Tensor | None = None,
                       size: int, model: nn.Module | None = None) -> TrainingState:
    """The model ``config`` names (or ``model``, built from it already) with its optimiser,
    schedule, loss, lesion head (``size``: the input side) and weight average, before any step.
    Seed torch first for a reproducible start."""
    model = (model or build_model(config.arch, len(CLASSES), config.pretrained)).to(device)
    # Copied before the lesion head hooks the model, so the copy carries no hook.
    averaged = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(config.ema), use_buffers=True) if config.ema else None
    criterion = nn.CrossEntropyLoss(weight=None if class_weight is None else class_weight.to(device),
                                    label_smoothing=config.label_smoothing)
    head = attach_lesion_head(model, config.arch, size, device, config.mask_scales) if config.mask_weight else None
    optimizer, scheduler = build_optimiser(model, config, head)
    return TrainingState(model, optimizer, scheduler, criterion, backbone(config.arch).normalisation, head, averaged)


def fit(state: TrainingState, batches: TrainingBatches, validation: tuple[np.ndarray, np.ndarray], config: TrainConfig,
        device: torch.device, *, stop_requested: Callable[[], bool] = lambda: False) -> Iterator[Event]:
    """Train from ``state.epoch + 1`` to ``config.epochs``, yielding every ``BatchEnd``, then an
    ``EpochEnd`` after validating on ``validation`` (uint8 inputs, labels), whose ``kept`` says
    that this epoch's weights are now the model (``config.keep``), and ``Done`` at the end. When
    ``stop_requested()`` turns true it yields ``Stopped`` after the current batch and ends, with
    ``state.epoch`` still the last finished epoch. The caller saves what it wants to keep."""
    started, first = time.perf_counter(), state.epoch + 1
    body = body_parameters(state.model, config.arch) if config.freeze_epochs else []
    for epoch in range(first, config.epochs + 1):
        for parameter in body:  # the new head learns alone first, so its random start does not unsettle the body
            parameter.requires_grad_(epoch > config.freeze_epochs)
        epoch_loss = 0.0
        for event in train_one_epoch(state.trained, batches, state.optimizer, criterion=state.criterion, epoch=epoch,
                                     lesion_head=state.head, lesion_weight=config.mask_weight, averaged=state.averaged):
            epoch_loss += event.loss * event.size
            yield event
            if stop_requested():
                yield Stopped(epoch, "stop requested")
                return
        lr = state.optimizer.param_groups[0]["lr"]
        state.scheduler.step()
        if config.precise_bn:
            recompute_batch_norm(state.scored, batches.images[batches.rows], device, config.batch_size, state.normalisation)
        val_loss, probabilities = evaluate(state.scored, state.criterion, *validation, device, config.batch_size,
                                           state.normalisation)
        summary = summarise(validation[1], probabilities.argmax(1))
        kept = summary["macro_f1"] > state.model_val_macro_f1 if config.keep == "best" else epoch == config.epochs
        state.epoch = epoch
        if kept:
            state.model_epoch, state.model_val_macro_f1 = epoch, summary["macro_f1"]
        elapsed = time.perf_counter() - started
        yield EpochEnd(epoch, config.epochs, epoch_loss / len(batches.rows), val_loss, summary["accuracy"], summary["macro_f1"],
                       summary["malignant_recall"], lr, elapsed / (epoch - first + 1) * (config.epochs - epoch), kept)
    yield Done(state.model_epoch, state.model_val_macro_f1)


def train(data_dir: str | os.PathLike, run_dir: str | os.PathLike, config: TrainConfig = _STUDY,
          preprocess: PreprocessConfig = _STUDY_PREPROCESS, *, job: JobOptions = _LOCAL, resume: bool = False) -> Iterator[Event]:
    """Train into ``run_dir``, yielding events; stops at the next batch when the run folder's
    STOP file appears (the app and signal handlers create it) after saving a usable checkpoint.
    ``resume`` continues from the run's last checkpoint with its saved recipe."""
    run, ranks = RunFolder(run_dir), ranks_from_environment()
    if ranks.main:
        run.create()
        run.clear_stop()
    with run.event_log() if ranks.main else nullcontext(lambda event: event) as emit:
        checkpoint = None
        try:
            device = ranks.device(resolve_device(job.device))
            with process_group(ranks, device):
                if resume:
                    checkpoint = ranks.from_main(run.load_checkpoint() if ranks.main else None)
                    config = train_config_from_saved(checkpoint["train_config"])
                    preprocess = PreprocessConfig.from_saved(checkpoint["preprocess_config"])
                yield emit(Started(checkpoint["epoch"] + 1 if checkpoint else 1, config.epochs, os.getpid(), resume))
                yield from _train(run, emit, data_dir, config, preprocess, job, checkpoint, ranks, device)
        except BusiError as error:
            yield emit(Failed(str(error)))
        except torch.OutOfMemoryError:
            yield emit(Failed("Out of memory: lower the batch size or the image size, or train on the CPU."))
        except RuntimeError as error:
            if not (ranks.distributed and lost_peer(error)):
                raise
            yield emit(Failed(lost_rank_message(error, _last_saved_epoch(run) if ranks.main else 0)))


def _last_saved_epoch(run: RunFolder) -> int:
    try:
        return run.load_checkpoint()["epoch"]
    except BusiError:
        return 0


def _train(run: RunFolder, emit: Callable[[Event], Event], data_dir, config: TrainConfig, preprocess: PreprocessConfig,
           job: JobOptions, checkpoint: dict | None, ranks: Ranks, device: torch.device) -> Iterator[Event]:
    if ranks.distributed:
        _check_distributable(config, ranks)
    torch.manual_seed(config.training_seed)
    first_epoch = checkpoint["epoch"] + 1 if checkpoint else 1
    rng = np.random.default_rng((config.training_seed, first_epoch))
    # Each rank augments its own scans: its own draws, the same on every resume of the same epoch.
    draws = np.random.default_rng((config.training_seed, first_epoch, ranks.rank)) if ranks.distributed else rng
    if job.threads:
        torch.set_num_threads(job.threads)
    # Built before any data is read, so that a wrong architecture or weights source fails at once.
    model = build_model(config.arch, len(CLASSES), config.pretrained)
    index = index_dataset(data_dir, roots=tuple(map(Path, job.roots)) if job.roots else None)
    if not index.records:
        raise BusiError(f"No readable scans in '{data_dir}': nothing to train on.")
    images, labels = model_inputs(index, preprocess), class_numbers(index)
    if config.folds:
        parts = cross_validation_split(index.labels, index.groups, fold=config.fold, n_splits=config.folds, seed=config.seed)
    else:
        parts = three_way_split(index.labels, index.groups, seed=config.seed)
    train_rows, val_rows = np.flatnonzero(parts == "train"), np.flatnonzero(parts == "val")
    if len(train_rows) < config.batch_size:
        raise ParameterError(f"batch_size {config.batch_size} exceeds the {len(train_rows)} training scans: lower it.")
    stats = input_statistics(images[train_rows])
    trained_on = Provenance(str(index.root), is_synthetic(index.root), index.class_counts(),
                            {part: int((parts == part).sum()) for part in PARTS})
    if ranks.main:
        run.write_config(config, preprocess, job, trained_on)
        run.write_split(index, parts)
        run.write_environment(environment(device) | {"processes": ranks.world})

    state = new_training_state(config, device, size=preprocess.size, model=model,
                               class_weight=class_weights(labels[train_rows]) if config.class_weighting == "loss" else None)
    if checkpoint:
        state.load_state_dict(checkpoint)
    if ranks.distributed:
        # Every rank starts from rank 0's weights (DDP broadcasts them) and averages its gradients
        # with the others'. With the body frozen at first, its parameters get no gradient then.
        state.replicated = DistributedDataParallel(state.model, device_ids=[device.index] if device.type == "cuda" else None,
                                                   find_unused_parameters=config.freeze_epochs > 0)
    sample_weights = None
    if config.class_weighting == "sampler":
        per_class = class_weights(labels[train_rows]).numpy()[labels[train_rows]]
        sample_weights = per_class / per_class.sum()
    masks = lesion_masks(index, preprocess) if config.mask_weight else None
    batches = TrainingBatches(images, labels, train_rows, config.batch_size, rng=rng, device=device, to_tensor=state.to_tensor,
                              augment=config.augment, mixup=config.mixup, cutmix=config.cutmix, masks=masks,
                              mask_known=masks_known(index) if config.mask_weight else None, sample_weights=sample_weights,
                              rank=ranks.rank, world=ranks.world, draws=draws)

    def record(model: nn.Module) -> dict:
        return model_record(model.state_dict(), config, preprocess, stats, state.normalisation.to_dict(), trained_on)

    def save(epoch: int) -> None:
        run.save_checkpoint(record(state.model) | state.state_dict() | {"epoch": epoch})

    def stop_requested() -> bool:  # any rank's request stops every rank after the same batch
        return ranks.any(run.stop_requested() if ranks.main else stop_signalled(), device)

    for event in fit(state, batches, (images[val_rows], labels[val_rows]), config, device, stop_requested=stop_requested):
        if isinstance(event, BatchEnd) and ranks.distributed:  # rank 0 speaks for the whole batch
            event = dataclasses.replace(event, size=event.size * ranks.world, images_per_s=event.images_per_s * ranks.world)
        if not ranks.main:
            yield event
            continue
        if isinstance(event, Stopped):
            save(state.epoch)  # the interrupted epoch is redone on resume
            run.clear_stop()
        elif isinstance(event, EpochEnd):
            if event.kept:
                run.save_model(record(state.scored))
            save(state.epoch)
        elif isinstance(event, Done):
            _write_predictions(run, state, encoded_scans(index), images, labels, parts,
                               [index.relative_path(r) for r in index.records], device, config.batch_size)
        yield emit(event)


def _check_distributable(config: TrainConfig, ranks: Ranks) -> None:
    if config.batch_size % ranks.world:
        raise ParameterError(f"batch_size {config.batch_size} is the global batch, split evenly over the {ranks.world} "
                             f"processes: choose a multiple of {ranks.world}.")
    if config.mask_weight:
        raise ParameterError("The lesion masks as extra supervision (mask_weight) train on one process only: set "
                             "mask_weight to 0 or train without torchrun.")


def _write_predictions(run: RunFolder, training: TrainingState, encoded: np.ndarray, images: np.ndarray, labels: np.ndarray,
                       parts: np.ndarray, paths: list[str], device: torch.device, batch_size: int) -> None:
    """With the kept model: temperature scaling fitted on the validation scans and what the
    training scans look like (``busi.ood``; both saved with the weights), then predictions.csv
    (per scan: part, true class, calibrated probabilities) and metrics.json (with the
    calibration error before and after scaling). ``encoded``: every scan's ``ood.encode``."""
    state = run.load_model()
    training.model.load_state_dict(state["model"])
    logits = batched_logits(training.model, images, device, batch_size, training.normalisation).numpy()
    validation = parts == "val"
    temperature = fit_temperature(labels[validation], logits[validation])
    familiarity = Familiarity.fit(encoded[parts == "train"], encoded[validation]) if validation.any() else None
    run.save_model(state | {"temperature": temperature} | ({"familiarity": familiarity.to_state()} if familiarity else {}))
    raw, probabilities = apply_temperature(logits, 1.0), apply_temperature(logits, temperature)
    run.write_predictions(paths, parts, labels, probabilities)
    metrics: dict = {"temperature": temperature}
    for part in PARTS:
        rows = parts == part
        if rows.any():
            metrics[part] = summarise(labels[rows], probabilities[rows].argmax(1)) | {
                "ece_before_scaling": calibration(labels[rows], raw[rows])["ece"],
                "ece": calibration(labels[rows], probabilities[rows])["ece"]}
    run.write_metrics(metrics)
