import cv2
import numpy as np

from busi import synth
from busi.duplicates import describe, find_label_conflicts, group_near_duplicates


def _scan(seed, label="benign"):
    return synth.make_phantom(label, seed, (200, 240))[0]


def _groups(images):
    return group_near_duplicates(np.stack([describe(image) for image in images]))


def test_copies_resaved_resized_or_annotated_join_one_group():
    original = _scan(1)
    resized = cv2.resize(original, (300, 250), interpolation=cv2.INTER_LINEAR)
    annotated = original.copy()
    cv2.putText(annotated, "RT 9", (10, 190), cv2.FONT_HERSHEY_SIMPLEX, 0.5, 255, 1)
    cv2.drawMarker(annotated, (120, 100), 255, cv2.MARKER_CROSS, 8)
    noisy = np.clip(original + np.random.default_rng(0).normal(0, 4, original.shape), 0, 255).astype(np.uint8)
    groups = _groups([original, resized, annotated, noisy, _scan(2)])
    assert len(set(groups[:4].tolist())) == 1
    assert groups[4] != groups[0]


def test_different_scans_stay_apart_even_of_the_same_class():
    images = [_scan(seed, label) for seed in range(6) for label in ("benign", "malignant", "normal")]
    assert len(set(_groups(images).tolist())) == len(images)


def test_grouping_is_transitive_and_ids_follow_first_members():
    a = _scan(7)
    b = cv2.resize(a, (260, 210))
    groups = _groups([_scan(8), a, _scan(9), b])
    assert groups.tolist() == [0, 1, 2, 1]


def test_label_conflicts_name_the_mixed_groups_only():
    groups = np.array([0, 0, 1, 1, 2])
    labels = ["benign", "malignant", "normal", "normal", "benign"]
    assert find_label_conflicts(labels, groups) == {0: [0, 1]}


def test_descriptor_of_a_flat_image_is_finite():
    assert np.isfinite(describe(np.full((64, 64), 80, np.uint8))).all()
