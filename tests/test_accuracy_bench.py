"""The accuracy benchmark's reuse of finished folds (bench/accuracy.py)."""

import json
from dataclasses import replace

import pytest

from bench.accuracy import _train_fold
from busi.config import config_to_dict
from busi.recipes import recipe


def test_a_finished_fold_is_reused_only_for_the_settings_it_was_trained_with(tmp_path):
    config, preprocess = recipe("best")
    run = tmp_path / "fold-0"
    run.mkdir()
    (run / "predictions.csv").write_text("path,split,label,p_benign,p_malignant,p_normal\n")
    trained = replace(config, keep="best", threads=1)
    (run / "config.json").write_text(json.dumps({"train": config_to_dict(trained), "preprocess": config_to_dict(preprocess)}))
    with pytest.raises(SystemExit, match="other settings \\(keep 'best' -> 'last'\\)"):
        _train_fold(tmp_path, run, config, preprocess)
    with pytest.raises(SystemExit, match="size 128 -> 160"):
        _train_fold(tmp_path, run, trained, replace(preprocess, size=160))
    assert _train_fold(tmp_path, run, replace(trained, threads=2), preprocess) == 0.0
