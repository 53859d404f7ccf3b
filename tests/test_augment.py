import numpy as np
import pytest

from busi.augment import Augmentation, apply, augment_batch, draw
from busi.errors import ParameterError


def _disc(size=64, centre=(32, 32), radius=8):
    yy, xx = np.mgrid[:size, :size]
    return np.where((yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 < radius**2, 200, 40).astype(np.uint8)


def test_no_augmentation_returns_the_image_and_flip_mirrors_it():
    image = np.arange(64 * 64, dtype=np.uint32).reshape(64, 64).astype(np.uint8)
    assert (apply(image, Augmentation()) == image).all()
    assert (apply(image, Augmentation(flip=True)) == image[:, ::-1]).all()


def test_shift_moves_the_lesion_by_that_fraction():
    moved = apply(_disc(), Augmentation(shift=(0.25, 0.0)))
    yy, xx = np.nonzero(moved > 120)
    assert xx.mean() == pytest.approx(32 + 16, abs=1) and yy.mean() == pytest.approx(32, abs=1)


def test_gain_brightens_and_speckle_needs_a_seeded_generator():
    image = _disc()
    assert apply(image, Augmentation(gain=1.2)).mean() > image.mean()
    first = apply(image, Augmentation(speckle=0.1), np.random.default_rng(3))
    assert (first == apply(image, Augmentation(speckle=0.1), np.random.default_rng(3))).all()
    assert (first != image).any()
    with pytest.raises(ParameterError, match="random generator"):
        apply(image, Augmentation(speckle=0.1))


@pytest.mark.parametrize("policy, angle, scale, gain", [("ultrasound", 10, (0.9, 1.1), (0.8, 1.2)),
                                                     ("strong", 15, (0.8, 1.25), (0.7, 1.3))])
def test_ultrasound_policies_keep_the_skin_line_at_the_top(policy, angle, scale, gain):
    gradient = np.repeat(np.linspace(255, 30, 64, dtype=np.float32)[:, None], 64, axis=1).astype(np.uint8)
    rng = np.random.default_rng(0)
    augmented, _ = augment_batch(np.stack([gradient] * 200), rng, policy)
    assert augmented.shape == (200, 64, 64) and augmented.dtype == np.uint8
    assert (augmented[:, 8:24].mean(axis=(1, 2)) > augmented[:, 40:56].mean(axis=(1, 2))).all()
    drawn = [draw(rng, policy) for _ in range(500)]
    assert all(-angle <= d.angle <= angle and scale[0] <= d.scale <= scale[1] and gain[0] <= d.gain <= gain[1] for d in drawn)
    # The whole range is used, not only the part the milder policy shares.
    assert max(abs(d.angle) for d in drawn) > angle - 1 and min(d.scale for d in drawn) < scale[0] + 0.02
    assert 0.4 < np.mean([d.flip for d in drawn]) < 0.6


def test_flip_policy_only_flips_and_unknown_policies_are_refused():
    drawn = draw(np.random.default_rng(1), "flip")
    assert drawn.angle == 0 and drawn.gain == 1 and drawn.speckle == 0
    with pytest.raises(ParameterError, match="policy must be one of"):
        draw(np.random.default_rng(1), "vertical")


def test_channels_of_a_stacked_input_move_and_change_alike():
    channels = [_disc(), _disc(centre=(20, 40)), np.full((64, 64), 90, np.uint8)]
    stacked = np.dstack(channels)
    augmentation = Augmentation(flip=True, angle=7, scale=1.05, shift=(0.05, -0.03), gain=1.1, gamma=0.9, speckle=0.1)
    moved = apply(stacked, augmentation, np.random.default_rng(4))
    assert moved.shape == (64, 64, 3)
    # Each channel as if augmented alone with the same draw: one speckle field for all of them.
    for channel, image in enumerate(channels):
        assert (moved[..., channel] == apply(image, augmentation, np.random.default_rng(4))).all()


def test_masks_move_with_their_scans():
    images = np.stack([_disc(centre=(20, 40))] * 20)
    masks = np.where(images > 120, 255, 0).astype(np.uint8)
    moved, moved_masks = augment_batch(images, np.random.default_rng(5), "ultrasound", masks)
    for image, mask in zip(moved, moved_masks):
        lesion = mask > 127
        assert lesion.any() and image[lesion].mean() > image[~lesion].mean() + 50
