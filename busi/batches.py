"""Training batches, made on the data side: each epoch's seeded order of the training rows, the
random augmentation of every batch, mixup or CutMix, and the lesion maps moved and mixed with
their scans. The training step only sees finished ``Batch`` es (as mixing lives in
torchvision's ``collate_fn``).

Every random draw comes from one generator in a fixed order (the epoch's order, then per batch
the augmentation and the mix), so a seed reproduces a run exactly.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch

from busi.augment import augment_batch


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


@dataclass(frozen=True)
class Batch:
    images: torch.Tensor  # float (N, 3, H, W), normalised for the model, already mixed when ``mix`` is set
    targets: torch.Tensor  # int (N,): each row's own class
    mix: Mix | None = None
    masks: torch.Tensor | None = None  # float (N, H, W), 255 inside the lesion, moved and mixed like the scans
    mask_known: torch.Tensor | None = None  # float (N,): 1 where the lesion map is known (a mix: both scans')

    def __len__(self) -> int:
        return len(self.targets)

    def loss(self, criterion: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], outputs: torch.Tensor) -> torch.Tensor:
        """``criterion`` against the batch's labels: for a mix, the blend of the losses against both
        labels, as in the mixup authors' reference code (with unweighted classes that equals the loss
        of the blended label, cross-entropy being linear in its target)."""
        if self.mix is None:
            return criterion(outputs, self.targets)
        return (self.mix.share * criterion(outputs, self.targets)
                + (1 - self.mix.share) * criterion(outputs, self.targets[self.mix.partner]))


class TrainingBatches:
    """Iterating gives one epoch of ``Batch`` es over ``rows`` of the arrays.

    ``images`` uint8 (N, H, W[, 3]) and ``labels`` int (N,) hold every scan; ``rows`` the
    training ones. ``sample_weights`` (one per row, summing to 1) draws the epoch with
    replacement instead of shuffling. ``augment`` names an ``busi.augment`` policy ("none": off).
    ``masks`` and ``mask_known`` (per scan) come along for the lesion-map loss. ``to_tensor``
    turns a uint8 batch on ``device`` into the model's normalised input.

    On rank ``rank`` of ``world`` processes (``busi.distributed``), ``rng`` must draw the same on
    every rank: each rank takes its share of the same epoch order and makes the same number of
    batches, each about ``batch_size / world`` scans, augmented and mixed with ``draws`` (its own
    generator, so ranks do not repeat each other's augmentations).
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray, rows: np.ndarray, batch_size: int, *,
                 rng: np.random.Generator, device: torch.device, to_tensor: Callable[[torch.Tensor], torch.Tensor],
                 augment: str = "none", mixup: float = 0.0, cutmix: float = 0.0, masks: np.ndarray | None = None,
                 mask_known: np.ndarray | None = None, sample_weights: np.ndarray | None = None,
                 rank: int = 0, world: int = 1, draws: np.random.Generator | None = None) -> None:
        self.images, self.labels, self.rows, self.batch_size = images, labels, rows, batch_size
        self.rng, self.device, self.to_tensor = rng, device, to_tensor
        self.rank, self.world, self.draws = rank, world, draws or rng
        self.augment, self.mixup, self.cutmix = augment, mixup, cutmix
        self.masks, self.mask_known, self.sample_weights = masks, mask_known, sample_weights

    def __len__(self) -> int:
        return math.ceil(len(self.rows) / self.batch_size)

    def __iter__(self) -> Iterator[Batch]:
        if self.sample_weights is not None:
            order = self.rng.choice(self.rows, len(self.rows), p=self.sample_weights)
        else:
            order = self.rng.permutation(self.rows)
        if self.world > 1:
            # As torch's DistributedSampler: the order padded with its own first rows to a multiple
            # of the ranks, then every world-th row, so every rank makes batches of the same sizes.
            order = np.resize(order, math.ceil(len(order) / self.world) * self.world)[self.rank :: self.world]
        for rows in np.array_split(order, len(self)):
            yield self._batch(rows)

    def _batch(self, rows: np.ndarray) -> Batch:
        images = self.images[rows]
        masks = self.masks[rows] if self.masks is not None else None
        if self.augment != "none":  # drawn afresh every batch, after the cached deterministic preprocessing
            images, masks = augment_batch(images, self.draws, self.augment, masks)
        x = self.to_tensor(torch.from_numpy(np.ascontiguousarray(images)).to(self.device))
        targets = torch.from_numpy(self.labels[rows]).to(self.device)
        mix = draw_mix(self.draws, len(rows), x.shape[-1], self.mixup, self.cutmix, self.device)
        if masks is None:
            return Batch(mix(x) if mix else x, targets, mix)
        lesions = torch.from_numpy(np.ascontiguousarray(masks)).to(self.device).float()
        known = torch.from_numpy(self.mask_known[rows]).float().to(self.device)
        if mix is None:
            return Batch(x, targets, None, lesions, known)
        # A mix has a known lesion map only when both its scans do.
        return Batch(mix(x), targets, mix, mix(lesions), known * known[mix.partner])
