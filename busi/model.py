"""The one model factory: torchvision backbones with a 3-class head and their weights.

Scans are grey; models take them replicated to 3 channels and normalised with the ImageNet
statistics, so that ImageNet weights (when a user has them) see the input they were trained on.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torchvision import models

from busi.errors import BusiError, ParameterError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class _Architecture:
    build: Callable[..., nn.Module]
    weights: models.WeightsEnum
    head: str  # attribute path of the final Linear layer
    last_conv_stage: str  # attribute path Grad-CAM hooks
    # The stages before it at 1/16 and 1/8 of the input's side, for finer auxiliary lesion maps.
    earlier_stages: tuple[str, str]


ARCHITECTURES: dict[str, _Architecture] = {
    "resnet50": _Architecture(models.resnet50, models.ResNet50_Weights.DEFAULT, "fc", "layer4", ("layer3", "layer2")),
    "resnet18": _Architecture(models.resnet18, models.ResNet18_Weights.DEFAULT, "fc", "layer4", ("layer3", "layer2")),
    "efficientnet_b0": _Architecture(models.efficientnet_b0, models.EfficientNet_B0_Weights.DEFAULT, "classifier.1",
                                     "features", ("features.5", "features.3")),
    "densenet121": _Architecture(models.densenet121, models.DenseNet121_Weights.DEFAULT, "classifier", "features",
                                 ("features.denseblock3", "features.denseblock2")),
}


def _architecture(arch: str) -> _Architecture:
    if arch not in ARCHITECTURES:
        raise ParameterError(f"Unknown architecture '{arch}'. Choose one of {', '.join(ARCHITECTURES)}.")
    return ARCHITECTURES[arch]


def _replace_head(model: nn.Module, path: str, num_classes: int) -> None:
    *parents, name = path.split(".")
    owner = model
    for parent in parents:
        owner = getattr(owner, parent) if not parent.isdigit() else owner[int(parent)]
    old = owner[int(name)] if name.isdigit() else getattr(owner, name)
    new = nn.Linear(old.in_features, num_classes)
    if name.isdigit():
        owner[int(name)] = new
    else:
        setattr(owner, name, new)


def last_conv_stage(model: nn.Module, arch: str) -> nn.Module:
    """The module whose output Grad-CAM explains (the last convolutional stage)."""
    return model.get_submodule(_architecture(arch).last_conv_stage)


def lesion_map_stages(model: nn.Module, arch: str, scales: int) -> list[nn.Module]:
    """The last convolutional stage and then up to two earlier ones, each finer by a factor of two:
    the stages that auxiliary lesion maps are predicted from (``scales``: how many, 1 to 3)."""
    if not 1 <= scales <= 3:
        raise ParameterError(f"scales must be 1, 2 or 3, got {scales}.")
    spec = _architecture(arch)
    return [model.get_submodule(path) for path in (spec.last_conv_stage, *spec.earlier_stages)[:scales]]


def _imagenet_state_dict(arch: str) -> dict[str, torch.Tensor]:
    weights = _architecture(arch).weights
    try:
        return weights.get_state_dict(progress=False, check_hash=True)
    except (OSError, RuntimeError) as error:  # URLError is an OSError; offline, proxy, bad file
        file = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name
        raise BusiError(
            f"Could not load ImageNet weights for {arch} ({error}). When offline, download "
            f"{weights.url} elsewhere and place it at {file}, pass the file's path as the "
            "pretrained source, or choose 'none' to train from scratch."
        ) from error


def _local_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise ParameterError(
            f"Pretrained source '{path}' is neither 'none', 'imagenet' nor an existing weights file."
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for foreign or damaged files
        raise BusiError(f"'{path}' is not a readable torchvision state dict ({error}).") from error
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise BusiError(f"'{path}' does not hold a state dict (a mapping of tensor names to tensors).")
    return state


def build_model(arch: str = "resnet50", num_classes: int = 3, pretrained: str | os.PathLike = "none") -> nn.Module:
    """A torchvision ``arch`` with a fresh ``num_classes`` head.

    ``pretrained``: ``"none"`` (random init), ``"imagenet"`` (torchvision's weights API,
    downloaded and cached on first use) or a path to a local torchvision-format state dict
    (air-gapped machines). The backbone's weights are loaded; the 1000-class head is not.
    """
    spec = _architecture(arch)
    if num_classes < 2:
        raise ParameterError(f"num_classes must be at least 2, got {num_classes}.")
    model = spec.build(weights=None)
    if str(pretrained) != "none":
        state = _imagenet_state_dict(arch) if str(pretrained) == "imagenet" else _local_state_dict(Path(pretrained))
        head_prefix = spec.head + "."
        backbone = {k: v for k, v in state.items() if not k.startswith(head_prefix)}
        missing, unexpected = model.load_state_dict(backbone, strict=False)
        missing = [k for k in missing if not k.startswith(head_prefix)]
        if missing or unexpected:
            raise BusiError(
                f"The weights do not fit {arch}: {len(missing)} missing and {len(unexpected)} unexpected "
                f"tensors (e.g. {(missing + unexpected)[0]}). Use weights saved from torchvision's {arch}."
            )
    _replace_head(model, spec.head, num_classes)
    return model


def to_model_tensor(images: torch.Tensor) -> torch.Tensor:
    """uint8 (N, H, W) grey, copied into three channels, or (N, H, W, 3) stacked channels ->
    float (N, 3, H, W) normalised as ImageNet-style models expect."""
    x = images.float().div_(255)
    x = x.unsqueeze(1).expand(-1, 3, -1, -1) if x.ndim == 3 else x.permute(0, 3, 1, 2)
    mean = torch.tensor(IMAGENET_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


def batched_logits(model: nn.Module, images: np.ndarray, device: torch.device, batch_size: int) -> torch.Tensor:
    """Logits (N, C) on the CPU for uint8 model inputs (N, H, W[, 3]), in eval mode, without gradients."""
    model.eval()
    outputs = []
    with torch.inference_mode():
        for start in range(0, len(images), batch_size):
            batch = torch.from_numpy(np.ascontiguousarray(images[start:start + batch_size])).to(device)
            outputs.append(model(to_model_tensor(batch)).float().cpu())
    return torch.cat(outputs) if outputs else torch.zeros((0, 0))
