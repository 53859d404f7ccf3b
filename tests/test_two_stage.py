"""The two-stage benchmark's pieces: the crop rule and the localiser (bench/two_stage.py)."""

import numpy as np
import pytest
import torch

from bench.two_stage import Localiser, _localiser_loss, crop_box, cut


def _blob(top: int, left: int, side: int, value: float = 0.9, size: int = 128) -> np.ndarray:
    lesion_map = np.full((size, size), 0.05, np.float32)
    lesion_map[top:top + side, left:left + side] = value
    return lesion_map


def _pixels(box: tuple[float, float, float], size: int = 128) -> tuple[int, int, int]:
    return tuple(round(share * size) for share in box)


def test_a_small_lesion_gets_the_minimum_square_around_it_inside_the_scan():
    top, left, side = _pixels(crop_box(_blob(10, 100, 10)))
    assert side == round(0.4 * 128)
    assert top == 0 and left + side <= 128  # pushed inside the scan, not cut off
    assert top <= 10 and 20 <= top + side and left <= 100 and 110 <= left + side


def test_a_large_lesion_gets_as_much_context_again_on_every_side():
    top, left, side = _pixels(crop_box(_blob(48, 48, 32)))
    assert side == 64  # 32 + 2 x 0.5 x 32
    assert (top, left) == (32, 32)


def test_the_crop_follows_the_peak_region_not_a_weaker_one():
    lesion_map = _blob(20, 20, 30, value=0.9)
    lesion_map[90:120, 90:120] = 0.6  # above half the peak, but a separate region
    top, left, side = _pixels(crop_box(lesion_map))
    assert top + side <= 90 and left + side <= 90


def test_a_featureless_map_gives_the_whole_scan():
    assert crop_box(np.zeros((64, 64), np.float32)) == (0.0, 0.0, 1.0)


def test_cut_scales_the_square_to_the_requested_size():
    image = np.arange(256 * 256, dtype=np.float32).reshape(256, 256)
    crop = cut(image, (0.25, 0.5, 0.5), 64)
    assert crop.shape == (64, 64)
    assert image[64:192, 128:256].min() <= crop.min() and crop.max() <= image[64:192, 128:256].max()


def test_the_localiser_maps_at_a_quarter_of_the_input_side_and_its_loss_prefers_the_truth():
    torch.manual_seed(0)
    logits = Localiser().eval()(torch.zeros(2, 3, 64, 96))
    assert logits.shape == (2, 16, 24)
    masks = torch.zeros(1, 64, 64, dtype=torch.uint8)
    masks[:, 16:48, 16:48] = 255
    right = torch.full((1, 16, 16), -8.0)
    right[:, 4:12, 4:12] = 8.0
    assert _localiser_loss(right, masks) < 0.05 < _localiser_loss(-right, masks)


@pytest.mark.parametrize("context, min_side", [(0.0, 0.0), (2.0, 0.1)])
def test_every_box_is_a_square_inside_the_scan(context, min_side):
    rng = np.random.default_rng(0)
    for _ in range(20):
        top, left, side = crop_box(rng.random((40, 40)).astype(np.float32), context, min_side)
        assert 0 <= top and 0 <= left and top + side <= 1 + 1e-9 and left + side <= 1 + 1e-9 and 0 < side <= 1
