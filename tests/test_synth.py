import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression

from busi import synth
from busi.data import CLASSES, index_dataset
from busi.errors import ParameterError
from busi.preprocess import resize


def test_phantoms_are_seeded_and_shaped():
    first, masks = synth.make_phantom("malignant", 4, (96, 128))
    again, _ = synth.make_phantom("malignant", 4, (96, 128))
    other, _ = synth.make_phantom("malignant", 5, (96, 128))
    assert first.dtype == np.uint8 and first.shape == (96, 128)
    assert (first == again).all() and (first != other).any()
    assert len(masks) == 1 and masks[0].shape == (96, 128) and masks[0].any()


def test_normal_phantoms_have_no_lesion_and_lesions_are_dark():
    assert synth.make_phantom("normal", 1)[1] == []
    for label in ("benign", "malignant"):
        image, masks = synth.make_phantom(label, 2)
        assert image[masks[0]].mean() < image[~masks[0]].mean()


def test_malignant_outlines_are_less_regular_than_benign():
    def solidity(mask):
        import cv2

        contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        contour = max(contours, key=cv2.contourArea)
        return cv2.contourArea(contour) / cv2.contourArea(cv2.convexHull(contour))

    benign = [solidity(synth.make_phantom("benign", s)[1][0]) for s in range(10)]
    malignant = [solidity(synth.make_phantom("malignant", s)[1][0]) for s in range(10)]
    assert np.mean(benign) > 0.97 > np.mean(malignant)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: synth.make_phantom("cyst", 0), "label must be one of"),
        (lambda: synth.make_phantom("benign", 0, (8, 8)), "at least 32x32"),
        (lambda: synth.write_dataset("unused", 0), "per_class"),
    ],
)
def test_bad_arguments(call, message):
    with pytest.raises(ParameterError, match=message):
        call()


def test_demo_dataset_is_generated_once_and_reused(tmp_path):
    root = synth.ensure_demo_dataset(tmp_path)
    index = index_dataset(root)
    assert index.class_counts() == dict.fromkeys(CLASSES, synth.DEMO_PER_CLASS)
    stamp = (root / "benign" / "benign (1).png").stat().st_mtime_ns
    assert synth.ensure_demo_dataset(tmp_path) == root
    assert (root / "benign" / "benign (1).png").stat().st_mtime_ns == stamp
    assert [p.name for p in tmp_path.iterdir()] == [root.parent.name]  # no staging left


def _dataset(seeds, side=64):
    images, labels = [], []
    for number, label in enumerate(CLASSES):
        for seed in seeds:
            image, _ = synth.make_phantom(label, seed, (128, 128))
            images.append(resize(image, side))
            labels.append(number)
    return np.stack(images).astype(np.float32), np.array(labels)


def test_phantoms_are_learnable_by_a_small_cnn_but_not_by_global_statistics():
    train_x, train_y = _dataset(range(60))
    test_x, test_y = _dataset(range(1000, 1030))

    def statistics(x):
        return np.stack([x.mean((1, 2)), x.std((1, 2)), np.percentile(x, 5, (1, 2)), np.median(x, (1, 2))], 1)

    baseline = LogisticRegression(max_iter=2000).fit(statistics(train_x), train_y).score(statistics(test_x), test_y)

    def standardise(x):
        return torch.tensor((x - x.mean((1, 2), keepdims=True)) / x.std((1, 2), keepdims=True))[:, None]

    torch.manual_seed(0)
    block = lambda i, o: [torch.nn.Conv2d(i, o, 3, padding=1), torch.nn.GroupNorm(4, o), torch.nn.ReLU(), torch.nn.MaxPool2d(2)]  # noqa: E731
    net = torch.nn.Sequential(*block(1, 16), *block(16, 32), *block(32, 64), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(64, 3))
    optimiser = torch.optim.AdamW(net.parameters(), 2e-3)
    inputs, targets = standardise(train_x), torch.tensor(train_y)
    for _ in range(50):
        for batch in torch.randperm(len(inputs)).split(16):
            x = inputs[batch].flip(3) if torch.rand(1) < 0.5 else inputs[batch]
            loss = torch.nn.functional.cross_entropy(net(x), targets[batch])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
    with torch.no_grad():
        accuracy = (net(standardise(test_x)).argmax(1).numpy() == test_y).mean()
    assert accuracy > 0.8  # chance is 0.33
    # Brightness and contrast alone fall well short: the class lives in shape and shadow.
    assert accuracy - baseline > 0.15
