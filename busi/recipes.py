"""Named training recipes: a training config and the preprocessing it was chosen with."""

from __future__ import annotations

from busi.errors import ParameterError
from busi.preprocess import PreprocessConfig
from busi.train import TrainConfig

RECIPES: dict[str, tuple[TrainConfig, PreprocessConfig]] = {
    # The study exactly: ResNet-50, SGD 0.001 momentum 0.9, StepLR 5 x0.1, 10 epochs, batch 8, 224 px.
    "study": (TrainConfig(), PreprocessConfig()),
    # Our recipe from scratch for CPUs (issue 6): a smaller backbone at 128 px for many epochs
    # (90: about 10 minutes on two CPU cores, 18 on one thread), AdamW with warm-up and cosine decay,
    # class-weighted loss with label smoothing, strong ultrasound augmentation (the longer
    # schedule needs the wider views: with the milder policy 90 epochs rank malignant scans
    # worse), mixup, and the lesion masks as auxiliary supervision during training only; the
    # final epoch's weights. Each ingredient's share was measured by group-aware
    # cross-validation (BENCHMARKS.md).
    "best": (TrainConfig(arch="resnet18", epochs=90, batch_size=16, lr=0.001, optimizer="adamw", weight_decay=0.05,
                         schedule="cosine", warmup_epochs=2, class_weighting="loss", label_smoothing=0.1,
                         augment="strong", mask_weight=1.0, mixup=0.4, keep="last"), PreprocessConfig(size=128)),
    # A model to click through the app with, trained on the demo phantoms in well under 2 minutes
    # on one CPU core. Not for real scans.
    "quick": (TrainConfig(arch="resnet18", epochs=12, batch_size=16, lr=0.003, optimizer="adamw", schedule="cosine",
                          weight_decay=0.01), PreprocessConfig(size=64)),
}


def recipe(name: str) -> tuple[TrainConfig, PreprocessConfig]:
    if name not in RECIPES:
        raise ParameterError(f"recipe must be one of {', '.join(RECIPES)}, got '{name}'.")
    return RECIPES[name]
