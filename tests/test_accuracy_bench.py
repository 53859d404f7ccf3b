"""The accuracy benchmark's reuse of finished folds (bench/accuracy.py)."""

import json
import math
from dataclasses import replace

import pytest

from bench.accuracy import OUT, TRAIN_SECONDS, _train_fold, results_folder
from busi.config import JobOptions, TrainConfig, config_to_dict
from busi.preprocess import PreprocessConfig
from busi.recipes import recipe


def test_a_finished_fold_is_reused_only_for_the_settings_it_was_trained_with(tmp_path):
    config, preprocess = recipe("scratch").train, recipe("scratch").preprocess
    run = tmp_path / "fold-0"
    run.mkdir()
    (run / "predictions.csv").write_text("path,split,label,p_benign,p_malignant,p_normal\n")
    trained = replace(config, keep="best")
    (run / "config.json").write_text(json.dumps({"train": config_to_dict(trained), "preprocess": config_to_dict(preprocess),
                                                 "job": config_to_dict(JobOptions(threads=1)), "data_dir": str(tmp_path)}))
    with pytest.raises(SystemExit, match="other settings \\(keep 'best' -> 'last'\\)"):
        _train_fold(tmp_path, run, config, preprocess)
    with pytest.raises(SystemExit, match="size 128 -> 160"):
        _train_fold(tmp_path, run, trained, replace(preprocess, size=160))
    # How the job ran is not a setting: trained on one thread, reused for two.
    assert math.isnan(_train_fold(tmp_path, run, trained, preprocess, JobOptions(threads=2)))  # trained before times were kept
    (run / TRAIN_SECONDS).write_text("321.5\n")
    assert _train_fold(tmp_path, run, trained, preprocess) == 321.5


def test_a_trained_fold_keeps_its_time_for_when_it_is_reused(synthetic_dataset, tmp_path):
    config = TrainConfig(arch="resnet18", epochs=1, batch_size=4, lr=0.01, seed=1, folds=3)
    run = tmp_path / "fold-0"
    seconds = _train_fold(synthetic_dataset, run, config, PreprocessConfig(size=32))
    assert seconds > 0
    assert _train_fold(synthetic_dataset, run, config, PreprocessConfig(size=32)) == round(seconds, 1)


def test_each_variant_has_its_own_results_folder_one_level_deep():
    plain = results_folder("scratch", [], 0, 5)
    weights = results_folder("scratch", ["pretrained=/weights/r18.pth", "mixup=0"], 2, 5)
    assert plain == OUT / "accuracy-scratch-seed0" / "5fold"
    assert weights.parent.parent == OUT and weights.parent.name == "accuracy-scratch-mixup=0-pretrained=_weights_r18.pth-seed2"
    assert results_folder("study", [], 0, 0).name == "split"
