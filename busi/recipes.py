"""Named training recipes: the training settings, the preprocessing they were chosen with, and
one paragraph saying what they are. The README, the Training page and ``busi train --help``
all render that paragraph, so it is written here once."""

from __future__ import annotations

from dataclasses import dataclass

from busi.config import TrainConfig
from busi.errors import ParameterError
from busi.preprocess import PreprocessConfig


@dataclass(frozen=True)
class Recipe:
    name: str
    title: str  # in plain words, for the app's menus
    summary: str
    train: TrainConfig
    preprocess: PreprocessConfig


RECIPES: dict[str, Recipe] = {recipe.name: recipe for recipe in (
    # Chosen by group-aware cross-validation with rules fixed before the folds ran (BENCHMARKS.md).
    Recipe("best", "Recommended: EfficientNet-Lite0 from ImageNet weights", "Our recipe: EfficientNet-Lite0 starting from ImageNet weights (installed with the package, no "
                   "network needed), fine-tuned at 224 px for 12 epochs (about 8 minutes on two CPU cores), AdamW "
                   "0.0005 with a warm-up epoch and cosine decay, weight decay 0.05, class-weighted loss with label "
                   "smoothing 0.1, ultrasound augmentation (horizontal flips, small rotations, scaling and shifts, "
                   "gain, contrast and speckle), and the final epoch's weights as the model.",
           TrainConfig(arch="efficientnet_lite0", pretrained="imagenet", epochs=12, batch_size=16, lr=0.0005,
                       optimizer="adamw", weight_decay=0.05, schedule="cosine", warmup_epochs=1, class_weighting="loss",
                       label_smoothing=0.1, augment="ultrasound", keep="last"), PreprocessConfig(size=224)),
    Recipe("study", "The study's recipe: ResNet-50 from scratch", "The study's exact recipe: ResNet-50 from scratch, SGD 0.001 with momentum 0.9, the learning rate "
                    "divided by ten every 5 epochs, 10 epochs, batch 8, horizontal flips, 224 px.",
           TrainConfig(), PreprocessConfig()),
    # Each ingredient's share was measured by group-aware cross-validation (BENCHMARKS.md).
    Recipe("scratch", "From scratch: ResNet-18, when no pretrained weights can be had", "Our recipe from random weights, for machines without the pretrained ones: ResNet-18 at 128 px "
                      "for 90 epochs (about 10 minutes on two CPU cores), AdamW 0.001 with 2 warm-up epochs and cosine "
                      "decay, weight decay 0.05, class-weighted loss with label smoothing 0.1, strong ultrasound "
                      "augmentation (horizontal flips, ±15° rotation, scale 0.8–1.25, ±10 % shift, gain 0.7–1.3, gamma "
                      "0.7–1.43 and speckle), mixup (Beta(0.4, 0.4) blends of scans, labels and masks), the lesion masks "
                      "as training-only supervision of an auxiliary lesion-map head, and the final epoch's weights as "
                      "the model.",
           TrainConfig(arch="resnet18", epochs=90, batch_size=16, lr=0.001, optimizer="adamw", weight_decay=0.05,
                       schedule="cosine", warmup_epochs=2, class_weighting="loss", label_smoothing=0.1, augment="strong",
                       mask_weight=1.0, mixup=0.4, keep="last"), PreprocessConfig(size=128)),
    Recipe("quick", "Quick demo model, for the synthetic phantoms only", "A demo model for the synthetic phantoms, trained in well under two minutes on one CPU core "
                    "(ResNet-18 at 64 px, 12 epochs); it knows nothing about real scans.",
           TrainConfig(arch="resnet18", epochs=12, batch_size=16, lr=0.003, optimizer="adamw", schedule="cosine",
                       weight_decay=0.01), PreprocessConfig(size=64)),
)}


def recipe_names(for_phantoms: bool) -> list[str]:
    """The recipes in the order to offer them: on real scans the pretrained recipe first, on the
    synthetic phantoms the quick demo model (the others take minutes to learn what it learns in seconds)."""
    first = "quick" if for_phantoms else "best"
    return [first, *(name for name in RECIPES if name != first)]


def recipe(name: str) -> Recipe:
    if name not in RECIPES:
        raise ParameterError(f"recipe must be one of {', '.join(RECIPES)}, got '{name}'.")
    return RECIPES[name]
