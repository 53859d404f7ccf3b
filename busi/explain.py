"""Grad-CAM: which part of the scan pushed the model towards a class.

The model is usually shared (the app caches one per checkpoint for every session), so the
context manager leaves it exactly as it found it: hooks removed, train/eval mode restored, no
gradients accumulated in its parameters, no ``inplace`` flags touched.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from busi.errors import ParameterError


class GradCam:
    """``with GradCam(model, layer) as cam: heat, logits = cam(x, class_index)``.

    ``x`` is one normalised model input (1, 3, H, W); ``heat`` is float32 (H, W) in [0, 1] at
    the input's resolution (all zero when nothing supports the class); ``logits`` (C,) come along.
    """

    def __init__(self, model: nn.Module, layer: nn.Module) -> None:
        self.model, self.layer = model, layer
        self._activation: torch.Tensor | None = None

    def _capture(self, module: nn.Module, inputs, output: torch.Tensor) -> torch.Tensor:
        # Cutting the graph here makes the backward pass stop at this layer (cheaper) and work
        # even when the shared model's parameters are frozen; the clone keeps in-place
        # activations downstream (DenseNet's final ReLU) off the leaf we differentiate.
        self._activation = output.detach().requires_grad_(True)
        return self._activation.clone()

    def __enter__(self) -> GradCam:
        self._was_training = self.model.training
        self._handle = self.layer.register_forward_hook(self._capture)
        self.model.eval()
        return self

    def __exit__(self, *exc_info) -> None:
        self._handle.remove()
        self.model.train(self._was_training)
        self._activation = None

    def __call__(self, x: torch.Tensor, class_index: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        if x.ndim != 4 or x.shape[0] != 1:
            raise ParameterError(f"Grad-CAM explains one image at a time: expected (1, 3, H, W), got {tuple(x.shape)}.")
        with torch.enable_grad():
            logits = self.model(x)
            if class_index is None:
                class_index = int(logits.argmax(1))
            if not 0 <= class_index < logits.shape[1]:
                raise ParameterError(f"class_index must be between 0 and {logits.shape[1] - 1}, got {class_index}.")
            (gradients,) = torch.autograd.grad(logits[0, class_index], self._activation)
        activation = self._activation.detach()
        weights = gradients.mean(dim=(2, 3), keepdim=True)
        cam = F.relu((weights * activation).sum(1, keepdim=True))
        cam = F.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False)[0, 0]
        peak = cam.max()
        heat = (cam / peak if peak > 0 else cam).cpu().numpy().astype(np.float32)
        return heat, logits.detach()[0].cpu().numpy()


def energy_inside(heat: np.ndarray, mask: np.ndarray) -> float:
    """Fraction of the heatmap's total energy that falls inside the lesion mask (nan if none)."""
    if heat.shape != mask.shape:
        raise ParameterError(f"Heatmap {heat.shape} and mask {mask.shape} differ in size.")
    total = float(heat.sum())
    return float(heat[mask].sum()) / total if total > 0 else float("nan")


def heatmap_overlay(grey: np.ndarray, heat: np.ndarray, opacity: float = 0.45) -> np.ndarray:
    """uint8 grey (H, W) and float heat (H, W) in [0, 1] -> uint8 RGB (H, W, 3) for display."""
    if grey.shape != heat.shape:
        raise ParameterError(f"Scan {grey.shape} and heatmap {heat.shape} differ in size.")
    if not 0 <= opacity <= 1:
        raise ParameterError(f"opacity must be between 0 and 1, got {opacity}.")
    colours = cv2.cvtColor(cv2.applyColorMap(np.uint8(np.clip(heat, 0, 1) * 255), cv2.COLORMAP_JET), cv2.COLOR_BGR2RGB)
    base = np.repeat(grey[..., None], 3, axis=2).astype(np.float32)
    # Weight the colour by the heat itself so cold regions keep the plain scan visible.
    alpha = opacity * np.clip(heat, 0, 1)[..., None]
    return np.uint8(np.round(base * (1 - alpha) + colours * alpha))
