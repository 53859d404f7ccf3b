import shutil
import threading

import numpy as np
import pytest
import torch

from busi.errors import BusiError, ImageError, ParameterError
from busi.imageio import read_scan
from busi.predict import (
    Classifier,
    image_files,
    load_classifier,
    predict,
    predict_files,
    rows_to_csv,
)
from busi.runs import load_checkpoint
from tests.helpers import first_prediction_row, png_bytes


def test_path_bytes_and_array_give_the_training_time_probabilities(tiny_run, synthetic_dataset):
    row = first_prediction_row(tiny_run)
    path = synthetic_dataset / row["path"]
    classifier = load_classifier(tiny_run)
    scan = read_scan(path)
    expected = [float(row[f"p_{c}"]) for c in classifier.classes]
    for image in (path, str(path), path.read_bytes(), scan, np.repeat(scan[..., None], 3, axis=2)):
        result = classifier.predict(image)
        np.testing.assert_allclose(list(result.probabilities.values()), expected, atol=1e-5)
        assert result.label == classifier.classes[int(np.argmax(expected))]
        assert result.model_input.shape == (32, 32) and result.warnings == ()
    assert predict(tiny_run, path).probabilities == classifier.predict(path).probabilities


def test_unusual_images_carry_warnings(tiny_run):
    classifier = load_classifier(tiny_run)
    rng = np.random.default_rng(0)
    photo = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    assert any("coloured" in w for w in classifier.predict(photo).warnings)
    white = np.full((64, 64), 255, np.uint8)
    assert any("brightness" in w for w in classifier.predict(png_bytes(white)).warnings)


@pytest.mark.parametrize("image, message", [
    (b"", "empty"),
    (b"not an image", "not a readable image|cannot be read|not an image"),
    (np.zeros((8, 8), np.uint8), "at least 32x32"),
    (np.zeros((64, 64), np.float32), "uint8"),
])
def test_bad_images_are_refused_clearly(tiny_run, image, message):
    with pytest.raises(ImageError, match=message):
        load_classifier(tiny_run).predict(image)


def test_explanation_is_at_scan_resolution_and_leaves_the_model_alone(tiny_run, synthetic_dataset):
    classifier = load_classifier(tiny_run)
    before = {k: v.clone() for k, v in classifier.model.state_dict().items()}
    path = synthetic_dataset / first_prediction_row(tiny_run)["path"]
    explanation = classifier.explain(path)
    assert explanation.heat.shape == explanation.scan.shape == read_scan(path).shape
    assert 0 <= explanation.heat.min() and explanation.heat.max() <= 1
    assert explanation.class_name == max(explanation.probabilities, key=explanation.probabilities.get)
    assert classifier.explain(path, "normal").class_name == "normal"
    with pytest.raises(ParameterError, match="class_name"):
        classifier.explain(path, "cyst")
    assert all(torch.equal(before[k], v) for k, v in classifier.model.state_dict().items())
    assert not classifier.model.training
    assert all(not m._forward_hooks for m in classifier.model.modules())


def test_concurrent_users_of_one_classifier_get_the_sequential_answers(tiny_run, synthetic_dataset):
    classifier = load_classifier(tiny_run)
    paths = image_files([synthetic_dataset / "benign"])[:4]
    expected = [(classifier.predict(p).probabilities, classifier.explain(p).heat) for p in paths]
    results = {}

    def work(position):
        path = paths[position % len(paths)]
        results[position] = (classifier.predict(path).probabilities, classifier.explain(path).heat)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for position, (probabilities, heat) in results.items():
        assert probabilities == expected[position % len(paths)][0]
        np.testing.assert_allclose(heat, expected[position % len(paths)][1], atol=1e-6)


def test_run_folders_without_checkpoints_and_foreign_weights_are_refused(tiny_run, tmp_path):
    with pytest.raises(BusiError, match="no checkpoint yet"):
        load_classifier(tmp_path)
    with pytest.raises(BusiError, match="neither a run folder nor a checkpoint"):
        load_classifier(tmp_path / "missing")
    state = load_checkpoint(tiny_run / "best.pt")
    state["train_config"] = state["train_config"] | {"arch": "efficientnet_b0"}
    with pytest.raises(BusiError, match="do not fit a efficientnet_b0"):
        Classifier(state, tmp_path / "x.pt")


def test_a_stopped_run_without_best_uses_its_last_checkpoint(tiny_run, tmp_path):
    shutil.copy(tiny_run / "checkpoint.pt", tmp_path / "checkpoint.pt")
    assert load_classifier(tmp_path).source == tmp_path / "checkpoint.pt"


def test_batch_prediction_keeps_going_past_a_bad_file(tiny_run, synthetic_dataset, tmp_path):
    (tmp_path / "broken.png").write_bytes(b"\x89PNG truncated")
    files = image_files([synthetic_dataset / "normal", tmp_path / "broken.png"])
    assert all("_mask" not in f.name for f in files) and len(files) == 7
    rows = predict_files(load_classifier(tiny_run), files)
    assert [bool(r["error"]) for r in rows] == [False] * 6 + [True]
    assert all(r["label"] in ("benign", "malignant", "normal") for r in rows[:6])
    text = rows_to_csv(rows)
    assert text.splitlines()[0] == "path,label,p_benign,p_malignant,p_normal,warnings,error"
    with pytest.raises(BusiError, match="does not exist"):
        image_files([tmp_path / "nowhere"])
