"""The training settings, how a job runs, and their JSON round trips.

``TrainConfig`` is a recipe's training half: what is trained and how (saved with the run and in
every checkpoint, so a resumed run rebuilds the same model). ``JobOptions`` is how this one
process runs it (device, threads): it may differ between a run and its resumption and never
changes what is learnt. The preprocessing half of a recipe is ``busi.preprocess.PreprocessConfig``.

Runs saved before a setting moved still load: ``train_config_from_saved`` reads the old shapes.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from dataclasses import dataclass
from typing import Any, TypeVar

from busi.errors import ParameterError

Config = TypeVar("Config")

# The choices of each setting; the CLI, the app's forms and the validation below all read these.
OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("step", "cosine")
CLASS_WEIGHTINGS = ("none", "loss", "sampler")
# none | flip (horizontal flips) | ultrasound (flips, small affine, gain/contrast, speckle) | strong (the same, wider)
AUGMENTATIONS = ("none", "flip", "ultrasound", "strong")
KEEP_CHOICES = ("best", "last")
DEVICES = ("auto", "cpu", "cuda", "mps")
PRETRAINED_CHOICES = ("none", "imagenet")  # or a path to a local weights file


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
    augment: str = "flip"  # one of AUGMENTATIONS, drawn afresh for every batch
    warmup_epochs: int = 0  # linear warm-up before the cosine schedule
    # Fine-tuning pretrained weights: the body's learning rate as a share of the head's, and how many
    # first epochs train the new head alone (the body frozen) before everything trains.
    backbone_lr: float = 1.0
    freeze_epochs: int = 0
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

    def __post_init__(self) -> None:
        for name, low in (("epochs", 1), ("batch_size", 1), ("step_size", 1)):
            if getattr(self, name) < low:
                raise ParameterError(f"{name} must be at least {low}, got {getattr(self, name)}.")
        if not self.lr > 0:
            raise ParameterError(f"lr must be positive, got {self.lr}.")
        choices = {"optimizer": OPTIMIZERS, "schedule": SCHEDULES, "class_weighting": CLASS_WEIGHTINGS,
                   "augment": AUGMENTATIONS, "keep": KEEP_CHOICES}
        for name, allowed in choices.items():
            check_choice(name, getattr(self, name), allowed)
        if not 0 <= self.warmup_epochs < self.epochs:
            raise ParameterError(f"warmup_epochs must be between 0 and epochs - 1, got {self.warmup_epochs}.")
        if not 0 <= self.freeze_epochs < self.epochs:
            raise ParameterError(f"freeze_epochs must be between 0 and epochs - 1, got {self.freeze_epochs}.")
        if not 0 < self.backbone_lr <= 1:
            raise ParameterError(f"backbone_lr is the body's share of the learning rate, in (0, 1]; got {self.backbone_lr}.")
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

    @property
    def training_seed(self) -> int:
        """Seed of the initial weights and of the random draws while training; member 0 keeps the
        plain ``seed``, so runs made before ensembles existed are reproduced exactly."""
        return self.seed + 1_000_003 * self.member


@dataclass(frozen=True)
class JobOptions:
    """How one training process runs: where, on how many CPU threads (0: torch's default), and
    under which folders alone it may read data (empty: anywhere; the app confines its jobs)."""

    device: str = "auto"
    threads: int = 0
    roots: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        check_choice("device", self.device, DEVICES)
        if self.threads < 0:
            raise ParameterError(f"threads must be 0 (torch's default) or more, got {self.threads}.")


def check_choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ParameterError(f"{name} must be one of {', '.join(allowed)}, got '{value}'.")


def config_to_dict(config: Any) -> dict[str, Any]:
    return dataclasses.asdict(config)


def config_from_dict(cls: type[Config], values: dict[str, Any]) -> Config:
    """Build ``cls`` from a dict, refusing unknown keys; missing keys take their defaults.

    JSON has no tuples, so list values become tuples where the field is a tuple.
    """
    if not isinstance(values, dict):
        raise ParameterError(f"{cls.__name__} settings must be a mapping of names to values, got {type(values).__name__}.")
    names = {field.name for field in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ParameterError(f"Unknown {cls.__name__} setting(s): {', '.join(unknown)}. Allowed: {', '.join(sorted(names))}.")
    hints = typing.get_type_hints(cls)
    converted = {
        key: tuple(value) if isinstance(value, list) and typing.get_origin(hints[key]) is tuple else value
        for key, value in values.items()
    }
    return cls(**converted)


def config_to_json(config: Any) -> str:
    return json.dumps(config_to_dict(config), indent=2, sort_keys=True)


def config_from_json(cls: type[Config], text: str) -> Config:
    try:
        values = json.loads(text)
    except json.JSONDecodeError as error:
        raise ParameterError(f"{cls.__name__} JSON is malformed ({error}).") from error
    return config_from_dict(cls, values)


def train_config_from_saved(values: dict[str, Any]) -> TrainConfig:
    """A ``TrainConfig`` from a run or checkpoint of any version. Older runs kept the job's
    device and threads among the training settings, and flips as a switch beside ``augment``
    (which, when set, flipped anyway): both map onto today's settings unchanged in meaning."""
    values = {key: value for key, value in values.items() if key not in ("device", "threads")}
    if "flip" in values:
        flip = values.pop("flip")
        if values.get("augment", "none") == "none":
            values["augment"] = "flip" if flip else "none"
    return config_from_dict(TrainConfig, values)
