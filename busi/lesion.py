"""The lesion-map head: the lesion masks as extra supervision while training, never as input.

It reads feature maps of the backbone through forward hooks and is not part of the saved model:
at prediction time the model sees the scan alone.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from busi.model import lesion_map_stages


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
