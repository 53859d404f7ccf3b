"""A two-stage model, by group-aware cross-validation (issue 6): find the lesion, then classify it
with its context.

    .venv/bin/python -m bench.two_stage --folds 5 --threads 1 [--only K]

Stage 1, a localiser (the ResNet-18 trunk with a small feature-pyramid decoder), learns the
lesion masks of the training scans and then maps every scan from the scan alone. Stage 2, the
from-scratch recipe's classifier, is trained and scored on square crops around the most lesion-like
region of each map, with as much context again on every side, cut from the 256 px processed
scan and scaled to the recipe's 128 px. Every scan is cropped by that one rule from its
predicted map, training scans and normal scans included, never from its ground-truth mask: a
new scan has no mask, and a crop placed by the mask would tell the classifier the class.

Each fold keeps its lesion maps and the crop model's logits in
``bench/out/two-stage-seed0/5fold/fold-K`` (a finished fold is reused). The tables score the
crop model alone, and the average of its calibrated probabilities with those of the whole-scan
from-scratch model of the same fold (``bench.accuracy --recipe scratch``, which must have run first).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import math
import time
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from bench.accuracy import DEFAULT_DATA, OUT, print_table, results_folder, scored_fold
from busi.arrays import class_numbers, lesion_masks, masks_known, model_inputs
from busi.augment import augment_batch
from busi.batches import TrainingBatches
from busi.data import CLASSES, DatasetIndex, index_dataset
from busi.evaluate import run_predictions
from busi.events import EpochEnd
from busi.metrics import apply_temperature, calibration, fit_temperature
from busi.model import batched_logits, build_model, to_model_tensor
from busi.preprocess import PreprocessConfig
from busi.recipes import recipe
from busi.runs import RunFolder
from busi.split import cross_validation_split
from busi.train import build_optimiser, class_weights, fit, new_training_state

SOURCE_SIZE = 256  # crops are cut from the processed scan at this size, then scaled to the recipe's
CONTEXT = 0.5  # context around the lesion region on each side, as a share of the region's side
MIN_SIDE = 0.4  # share of the scan's side: small lesions still come with surrounding tissue
LOCALISER = dict(arch="resnet18", epochs=20, batch_size=16, lr=0.001, optimizer="adamw", weight_decay=0.05,
                 schedule="cosine", warmup_epochs=1)


class Localiser(nn.Module):
    """Lesion-map logits at a quarter of the input side: the ResNet-18 trunk's four stages merged
    top-down as in a feature pyramid (Lin et al. 2017), small enough to train from scratch on a CPU."""

    def __init__(self, width: int = 64) -> None:
        super().__init__()
        trunk = build_model("resnet18", len(CLASSES))  # the classifier's head is left unused
        self.stem = nn.Sequential(trunk.conv1, trunk.bn1, trunk.relu, trunk.maxpool)
        self.stages = nn.ModuleList([trunk.layer1, trunk.layer2, trunk.layer3, trunk.layer4])
        self.lateral = nn.ModuleList(nn.Conv2d(channels, width, 1) for channels in (64, 128, 256, 512))
        self.out = nn.Sequential(nn.Conv2d(width, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(), nn.Conv2d(width, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features, x = [], self.stem(x)
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        merged = self.lateral[-1](features[-1])
        for lateral, feature in zip(self.lateral[-2::-1], features[-2::-1]):
            merged = F.interpolate(merged, size=feature.shape[-2:], mode="nearest") + lateral(feature)
        return self.out(merged)[:, 0]


def _localiser_loss(logits: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Cross-entropy against the lesion share of each cell plus a soft Dice over the batch, which
    keeps small lesions from drowning in background."""
    target = F.adaptive_avg_pool2d(masks.float()[:, None] / 255.0, logits.shape[-2:])[:, 0]
    probabilities = torch.sigmoid(logits)
    dice = 1 - (2 * (probabilities * target).sum() + 1) / (probabilities.sum() + target.sum() + 1)
    return F.binary_cross_entropy_with_logits(logits, target) + dice


def train_localiser(images: np.ndarray, masks: np.ndarray, rows: np.ndarray, rng: np.random.Generator,
                    device: torch.device) -> Localiser:
    """Trained on ``rows`` (scans with a known mask; normal scans' masks are empty), with the
    recipe's ultrasound augmentation moving scans and masks alike."""
    config = dataclasses.replace(recipe("scratch").train, **LOCALISER)
    model = Localiser().to(device)
    optimiser, schedule = build_optimiser(model, config)
    for _ in range(config.epochs):
        model.train()
        for batch in np.array_split(rng.permutation(rows), math.ceil(len(rows) / config.batch_size)):
            scans, lesions = augment_batch(images[batch], rng, "ultrasound", masks[batch])
            logits = model(to_model_tensor(torch.from_numpy(scans).to(device)))
            loss = _localiser_loss(logits, torch.from_numpy(lesions).to(device))
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
        schedule.step()
    return model.eval()


def lesion_maps(model: Localiser, images: np.ndarray, device: torch.device, batch_size: int = 32) -> np.ndarray:
    """float32 (N, H, W) lesion probabilities at the input size."""
    with torch.inference_mode():
        maps = [torch.sigmoid(model(to_model_tensor(torch.from_numpy(images[start:start + batch_size]).to(device))))
                for start in range(0, len(images), batch_size)]
    return F.interpolate(torch.cat(maps)[:, None], size=images.shape[1:3], mode="bilinear")[:, 0].cpu().numpy()


def crop_box(lesion_map: np.ndarray, context: float = CONTEXT, min_side: float = MIN_SIDE) -> tuple[float, float, float]:
    """(top, left, side) as shares of the map's side: a square around the connected region of at
    least half the map's peak that holds the peak, grown by ``context`` of its side on every side,
    at least ``min_side`` and inside the scan. The rule never looks at a mask and always finds a
    region, so normal scans get a crop of their most lesion-like tissue."""
    height, width = lesion_map.shape
    peak = np.unravel_index(int(lesion_map.argmax()), lesion_map.shape)
    _, components = cv2.connectedComponents((lesion_map >= 0.5 * lesion_map.max()).astype(np.uint8))
    rows, columns = np.nonzero(components == components[peak])
    extent = max(rows.max() - rows.min() + 1, columns.max() - columns.min() + 1)
    side = min(1.0, max(min_side, extent * (1 + 2 * context) / max(height, width)))
    centre_y, centre_x = (rows.min() + rows.max() + 1) / 2 / height, (columns.min() + columns.max() + 1) / 2 / width
    clamp = lambda centre: min(max(centre - side / 2, 0.0), 1.0 - side)  # noqa: E731
    return clamp(centre_y), clamp(centre_x), side


def cut(image: np.ndarray, box: tuple[float, float, float], size: int, interpolation: int = cv2.INTER_AREA) -> np.ndarray:
    """The square ``box`` of ``image`` (H, W), scaled to ``size`` x ``size``."""
    top, left, side = (round(share * image.shape[0]) for share in box)
    return cv2.resize(image[top:top + side, left:left + side], (size, size), interpolation=interpolation)


def train_crop_classifier(crops: np.ndarray, masks: np.ndarray, known: np.ndarray, labels: np.ndarray, parts: np.ndarray,
                          rng: np.random.Generator, device: torch.device) -> np.ndarray:
    """The from-scratch recipe's training on the crops, the epoch chosen on the validation crops' macro-F1
    as the engine does with keep=best (the setting it was measured with); logits (N, C) of every crop with the chosen weights."""
    scratch = recipe("scratch")
    config = dataclasses.replace(scratch.train, keep="best")
    train_rows, val_rows = np.flatnonzero(parts == "train"), np.flatnonzero(parts == "val")
    state = new_training_state(config, device, class_weight=class_weights(labels[train_rows]), size=scratch.preprocess.size)
    batches = TrainingBatches(crops, labels, train_rows, config.batch_size, rng=rng, device=device, to_tensor=to_model_tensor,
                              augment=config.augment, mixup=config.mixup, cutmix=config.cutmix, masks=masks, mask_known=known)
    kept = None
    for event in fit(state, batches, (crops[val_rows], labels[val_rows]), config, device):
        if isinstance(event, EpochEnd) and event.kept:
            kept = copy.deepcopy(state.model.state_dict())
    state.head.remove()
    state.model.load_state_dict(kept)
    return batched_logits(state.model, crops, device, config.batch_size, state.normalisation).numpy()


def _run_fold(index: DatasetIndex, fold: int, folds: int, seed: int, out: Path) -> dict:
    """Both stages for one fold, saved in ``out``; a finished fold is read back."""
    if (out / "fold.npz").is_file():
        return dict(np.load(out / "fold.npz"))
    started = time.perf_counter()
    torch.manual_seed(seed)
    rng = np.random.default_rng((seed, fold))
    device = torch.device("cpu")
    size = recipe("scratch").preprocess.size
    small, large = PreprocessConfig(size=size), PreprocessConfig(size=SOURCE_SIZE)
    images, masks = model_inputs(index, small), lesion_masks(index, small)
    labels = class_numbers(index)
    known = masks_known(index)
    parts = cross_validation_split(index.labels, index.groups, fold=fold, n_splits=folds, seed=seed)

    localiser = train_localiser(images, masks, np.flatnonzero((parts == "train") & known), rng, device)
    maps = lesion_maps(localiser, images, device)
    localiser_minutes = (time.perf_counter() - started) / 60
    boxes = np.array([crop_box(lesion_map) for lesion_map in maps])
    sources, source_masks = model_inputs(index, large), lesion_masks(index, large)
    crops = np.stack([cut(source, box, size) for source, box in zip(sources, boxes)])
    crop_masks = np.stack([cut(mask, box, size, cv2.INTER_NEAREST) for mask, box in zip(source_masks, boxes)])
    logits = train_crop_classifier(crops, crop_masks, known, labels, parts, rng, device)
    result = {"logits": logits, "maps": maps.astype(np.float16), "boxes": boxes, "parts": parts.astype(str),
              "minutes": np.array([localiser_minutes, (time.perf_counter() - started) / 60])}
    out.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out / "fold.npz", **result)
    return result


def _localisation(maps: np.ndarray, boxes: np.ndarray, masks: np.ndarray, rows: list[int]) -> dict[str, float]:
    """On the lesion scans in ``rows``: Dice of the map at 0.5, and how often the crop holds at
    least half of the lesion."""
    dice, covered = [], []
    for row in rows:
        truth = masks[row] > 0
        predicted = maps[row] >= 0.5
        dice.append(2 * (truth & predicted).sum() / max(1, truth.sum() + predicted.sum()))
        top, left, side = (round(share * truth.shape[0]) for share in boxes[row])
        covered.append(truth[top:top + side, left:left + side].sum() >= 0.5 * truth.sum())
    return {"dice": float(np.mean(dice)), "crop_holds_half_the_lesion": float(np.mean(covered))}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--only", help="comma-separated folds to run (default: all)")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    folds = [int(f) for f in args.only.split(",")] if args.only else range(args.folds)
    out = OUT / f"two-stage-seed{args.seed}" / f"{args.folds}fold"
    whole = results_folder("scratch", [], args.seed, args.folds)
    index = index_dataset(args.data)
    masks = lesion_masks(index, PreprocessConfig(size=recipe("scratch").preprocess.size))
    lesion = masks_known(index) & (np.array(index.labels) != "normal")
    position = {index.relative_path(record): row for row, record in enumerate(index.records)}
    missing = [fold for fold in folds if not RunFolder(whole / f"fold-{fold}").has_predictions]
    if missing:  # checked first: each fold here trains for about ten minutes before it needs them
        raise SystemExit(f"The whole-scan models of fold(s) {', '.join(map(str, missing))} are missing from {whole}: run "
                         f".venv/bin/python -m bench.accuracy --recipe scratch --folds {args.folds} --seed {args.seed} first.")
    crop_only, combined, located = [], [], []
    for fold in folds:
        result = _run_fold(index, fold, args.folds, args.seed, out / f"fold-{fold}")
        parts, logits = result["parts"], result["logits"]
        test_whole, val_whole = run_predictions(whole / f"fold-{fold}", "test"), run_predictions(whole / f"fold-{fold}", "val")
        rows = {part: [position[path] for path in p.paths]
                for part, p in (("test", test_whole), ("val", val_whole))}
        if any(sorted(rows[part]) != list(np.flatnonzero(parts == part)) for part in rows):
            raise SystemExit(f"fold {fold}: the whole-scan model in {whole} was split differently")
        temperature = fit_temperature(val_whole.labels, logits[rows["val"]])
        test = dataclasses.replace(test_whole, probabilities=apply_temperature(logits[rows["test"]], temperature))
        val = dataclasses.replace(val_whole, probabilities=apply_temperature(logits[rows["val"]], temperature))
        ece_before = calibration(test.labels, apply_temperature(logits[rows["test"]], 1.0))["ece"]
        minutes = float(result["minutes"][1]) * 60
        crop_only.append(scored_fold(fold, test, val, test.probabilities, ece_before, minutes))
        averaged_val = dataclasses.replace(val, probabilities=(val.probabilities + val_whole.probabilities) / 2)
        combined.append(scored_fold(fold, test, averaged_val, (test.probabilities + test_whole.probabilities) / 2, ece_before,
                                    minutes))
        located.append({"fold": fold, "localiser_minutes": round(float(result["minutes"][0]), 1)}
                       | _localisation(result["maps"].astype(np.float32), result["boxes"], masks,
                                       [row for row in rows["test"] if lesion[row]]))
    print(f"two-stage, seed {args.seed}, data {args.data}; localiser on the test folds' lesion scans:")
    for row in located:
        print("  " + json.dumps(row))
    print("\ncrop model alone (minutes: localiser and crop classifier together)")
    print_table(crop_only)
    print("\nwhole-scan from-scratch model and crop model, calibrated probabilities averaged (ece_before: the crop model's; "
          "minutes: without the whole-scan model's ≈ 6)")
    print_table(combined)


if __name__ == "__main__":
    main()
