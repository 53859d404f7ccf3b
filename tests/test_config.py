"""Training settings, job options and their JSON round trips, old shapes included."""

import dataclasses
import json

import pytest

from busi.config import JobOptions, TrainConfig, config_from_json, config_to_dict, config_to_json, train_config_from_saved
from busi.errors import BusiError, ParameterError
from busi.recipes import RECIPES


@pytest.mark.parametrize(
    "settings, message",
    [({"epochs": 0}, "epochs"), ({"optimizer": "rmsprop"}, "optimizer"), ({"lr": 0}, "lr"),
     ({"label_smoothing": 1.0}, "label_smoothing"), ({"folds": 1}, "folds"),
     ({"folds": 5, "fold": 5}, "fold must be between 0 and 4"), ({"augment": "vertical"}, "augment"),
     ({"epochs": 3, "warmup_epochs": 3}, "warmup_epochs"), ({"ema": 1.0}, "ema must be in"), ({"mixup": -1}, "mixup"), ({"cutmix": -0.5}, "cutmix"),
     ({"member": -1}, "member must be 0 or more"), ({"mask_scales": 4}, "mask_scales must be 1, 2 or 3"),
     ({"keep": "first"}, "keep must be one of best, last")],
)
def test_invalid_training_settings(settings, message):
    with pytest.raises(BusiError, match=message):
        TrainConfig(**settings)


@pytest.mark.parametrize("settings, message", [({"device": "tpu"}, "device must be one of auto, cpu, cuda, mps"),
                                               ({"threads": -1}, "threads must be 0")])
def test_invalid_job_options(settings, message):
    with pytest.raises(ParameterError, match=message):
        JobOptions(**settings)


def test_every_recipe_round_trips_through_json():
    for recipe in RECIPES.values():
        assert config_from_json(TrainConfig, config_to_json(recipe.train)) == recipe.train


@pytest.mark.parametrize("flip, augment, expected", [(True, "none", "flip"), (False, "none", "none"),
                                                     (True, "ultrasound", "ultrasound"), (False, "strong", "strong")])
def test_training_settings_saved_by_older_runs_mean_the_same_today(flip, augment, expected):
    # Before one 'augment' setting, flips were their own switch (ignored under a policy, which
    # flips anyway), and the job's device and threads were saved among the training settings.
    saved = config_to_dict(TrainConfig(epochs=3)) | {"flip": flip, "augment": augment, "device": "cpu", "threads": 1}
    assert train_config_from_saved(saved) == TrainConfig(epochs=3, augment=expected)


def test_unknown_settings_are_refused_with_the_allowed_ones():
    with pytest.raises(ParameterError, match="Unknown TrainConfig setting.*sharpen.*Allowed: arch"):
        train_config_from_saved({"sharpen": 3})
    with pytest.raises(ParameterError, match="must be a mapping"):
        config_from_json(TrainConfig, json.dumps([1, 2]))


def test_the_training_seed_of_member_zero_is_the_plain_seed():
    config = TrainConfig(seed=4)
    assert config.training_seed == 4 and dataclasses.replace(config, member=1).training_seed != 4
