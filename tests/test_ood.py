"""Telling scans like the training scans from others (busi/ood.py)."""

import cv2
import numpy as np
import pytest
from sklearn.datasets import load_sample_image

from busi import synth
from busi.config import TrainConfig
from busi.data import index_dataset, load_scan
from busi.errors import BusiError
from busi.ood import Familiarity, encode
from busi.predict import load_classifier
from busi.preprocess import PreprocessConfig
from busi.runs import RunFolder
from busi.train import train


def _unit(rows: np.ndarray) -> np.ndarray:
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def test_the_limit_keeps_the_validation_scans_and_an_outlier_falls_beyond_it():
    rng = np.random.default_rng(0)
    centre = rng.normal(size=64)
    near = _unit(centre + 0.3 * rng.normal(size=(120, 64)))
    familiarity = Familiarity.fit(near[:100], near[100:])
    assert (familiarity.distance(near[100:]) <= familiarity.limit).mean() >= 0.95
    far = _unit(-centre + 0.3 * rng.normal(size=(5, 64)))
    assert (familiarity.distance(far) > familiarity.limit).all()
    assert familiarity.distance(near[:1])[0] < familiarity.limit  # a training scan itself
    again = Familiarity.from_state(familiarity.to_state())
    np.testing.assert_allclose(again.distance(far), familiarity.distance(far), rtol=1e-6)
    with pytest.raises(BusiError, match="Too few"):
        Familiarity.fit(near[:3], near[3:5])


def test_encoded_scans_are_unit_length_and_tell_photographs_from_scans():
    photo = cv2.cvtColor(load_sample_image("china.jpg"), cv2.COLOR_RGB2GRAY)
    scans = [synth.make_phantom(label, 7, (128, 160))[0] for label in ("benign", "malignant", "normal")]
    features = encode([*scans, photo])
    assert features.shape == (4, 1280) and np.allclose(np.linalg.norm(features, axis=1), 1, atol=1e-5)
    similarity = features @ features.T
    assert similarity[:3, :3].min() > similarity[:3, 3].max()  # phantoms resemble each other more than the photo


@pytest.fixture(scope="module")
def phantom_run(tmp_path_factory):
    """A one-epoch model on 60 phantoms: enough scans for the limit to mean something."""
    data = synth.write_dataset(tmp_path_factory.mktemp("phantoms"), per_class=20, seed=5, size=(96, 96))
    run = tmp_path_factory.mktemp("phantom_run")
    events = list(train(data, run, TrainConfig(arch="resnet18", epochs=1, batch_size=8), PreprocessConfig(size=32)))
    assert events[-1].kind == "done", events[-1]
    return data, run


def test_a_phantom_model_says_so_and_flags_a_photograph(phantom_run):
    data, run = phantom_run
    classifier = load_classifier(run)
    assert classifier.trained_on.synthetic and "learnt from 60 synthetic phantoms" in classifier.training_warning
    photo = cv2.cvtColor(load_sample_image("china.jpg"), cv2.COLOR_RGB2GRAY)
    prediction = classifier.predict(photo)
    assert prediction.unusual and any("looks unlike the scans the model learnt from" in w for w in prediction.warnings)
    test = [data / row["path"] for row in RunFolder(run).read_split() if row["split"] == "test"]
    flagged = [p.unusual for p in classifier.predict_many(test)]
    assert len(flagged) >= 9 and sum(flagged) <= len(flagged) / 5  # its own kind of scan: rarely


def test_a_phantom_model_flags_every_real_scan(phantom_run, real_busi):
    classifier = load_classifier(phantom_run[1])
    index = index_dataset(real_busi)
    real = [load_scan(record) for record in index.records[::33]]
    assert all(p.unusual for p in classifier.predict_many(real))
