import json

import cv2
import numpy as np
import pytest

from busi.config import config_from_json, config_to_dict, config_to_json
from busi.errors import ParameterError
from busi.preprocess import (
    DisplayConfig,
    Pipeline,
    PreprocessConfig,
    canny_edges,
    clahe,
    crop_to_lesion,
    gaussian_blur,
    grey_view,
    horizontal_flip,
    lesion_bounds,
    median_blur,
    morphology,
    overlay,
    resize,
    to_scan_geometry,
)

RNG = np.random.default_rng(0)
SIDE = 128


def disc_on_noise(radius=30, centre=(64, 64)):
    """A bright disc on speckle-like noise, and its mask."""
    yy, xx = np.mgrid[:SIDE, :SIDE]
    mask = (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= radius**2
    image = RNG.normal(60, 10, (SIDE, SIDE))
    image[mask] += 120
    return np.clip(image, 0, 255).astype(np.uint8), mask


def test_resize_plain_and_aspect_preserving():
    image = np.full((100, 200), 200, np.uint8)
    assert resize(image, 64, keep_aspect=False).shape == (64, 64)
    padded = resize(image, 64, keep_aspect=True)
    assert padded.shape == (64, 64)
    assert padded[:16].max() == 0 and padded[48:].max() == 0  # letterbox bands
    assert padded[16:48].min() == 200


def test_resize_keeps_masks_binary():
    _, mask = disc_on_noise()
    small = resize(mask, 50)
    assert small.dtype == bool
    assert small.mean() == pytest.approx(mask.mean(), abs=0.02)


def test_clahe_raises_local_contrast_of_a_dim_image():
    dim = (disc_on_noise()[0] // 4).astype(np.uint8)
    assert clahe(dim).std() > dim.std() * 1.5


def test_median_removes_salt_noise_and_gaussian_smooths():
    image = np.full((64, 64), 100, np.uint8)
    image[RNG.random((64, 64)) < 0.02] = 255
    assert median_blur(image, 3).max() == 100
    noisy = disc_on_noise()[0]
    assert gaussian_blur(noisy, 5).std() < noisy.std()


def test_edges_lie_on_the_ring_around_the_disc():
    image, mask = disc_on_noise()
    edges = canny_edges(gaussian_blur(image, 5, 2.0), 50, 150)
    ring = cv2.dilate(mask.astype(np.uint8), np.ones((5, 5))) & ~cv2.erode(mask.astype(np.uint8), np.ones((5, 5))).astype(bool)
    assert edges.sum() > 100
    assert edges[ring.astype(bool)].sum() / edges.sum() > 0.95


def test_flat_image_has_no_edges():
    assert not canny_edges(np.zeros((64, 64), np.uint8)).any()


def test_morphology_open_removes_specks_close_fills_holes():
    _, mask = disc_on_noise()
    specks = mask.copy()
    specks[5, 5] = True
    holes = mask.copy()
    holes[64, 64] = False
    assert not morphology(specks, "open", 5)[5, 5]
    assert morphology(holes, "close", 5)[64, 64]
    assert (morphology(mask, "none") == mask).all()


def test_overlay_fill_and_contour():
    image, mask = disc_on_noise()
    filled = overlay(image, mask, (255, 0, 0), 1.0, "fill")
    assert filled.shape == (SIDE, SIDE, 3) and filled.dtype == np.uint8
    assert (filled[mask] == (255, 0, 0)).all()
    assert (filled[~mask][:, 0] == image[~mask]).all()
    outlined = overlay(image, mask, (255, 0, 0), 1.0, "contour")
    assert (outlined[64, 64] == image[64, 64]).all()  # interior untouched
    assert (outlined[64, 64 - 30] == (255, 0, 0)).all()  # on the outline
    transparent = overlay(image, mask, (255, 0, 0), 0.0, "fill")
    assert (transparent == np.repeat(image[:, :, None], 3, axis=2)).all()


def test_crop_to_lesion_with_margin():
    image, mask = disc_on_noise(radius=10)
    assert lesion_bounds(mask, 0.0) == (54, 75, 54, 75)
    assert crop_to_lesion(image, mask, 0.5).shape == (41, 41)
    assert crop_to_lesion(image, np.zeros_like(mask), 0.1).shape == image.shape


def test_horizontal_flip_mirrors_and_does_not_touch_the_input():
    image = np.arange(12, dtype=np.uint8).reshape(3, 4)
    flipped = horizontal_flip(image)
    assert flipped[0].tolist() == [3, 2, 1, 0]
    assert image[0].tolist() == [0, 1, 2, 3]


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda i, m: resize(i, 8), "size must be between"),
        (lambda i, m: clahe(i, clip_limit=0), "clip_limit"),
        (lambda i, m: clahe(i, tile_grid=0), "tile_grid"),
        (lambda i, m: median_blur(i, 4), "odd number"),
        (lambda i, m: gaussian_blur(i, -3), "odd number"),
        (lambda i, m: gaussian_blur(i, 3, sigma=-1), "sigma"),
        (lambda i, m: canny_edges(i, 200, 100), "must not exceed"),
        (lambda i, m: morphology(m, "erode"), "one of none, open, close"),
        (lambda i, m: morphology(m, "open", 5, 0), "iterations"),
        (lambda i, m: overlay(i, m, opacity=1.5), "opacity"),
        (lambda i, m: overlay(i, m, colour=(300, 0, 0)), "colour"),
        (lambda i, m: overlay(i, m, style="glow"), "one of fill, contour"),
        (lambda i, m: overlay(i, m[:10]), "bool mask of shape"),
        (lambda i, m: clahe(i.astype(np.float32)), "uint8 grey image"),
        (lambda i, m: clahe(np.dstack([i, i, i])), "uint8 grey image"),
        (lambda i, m: crop_to_lesion(i, m, margin=-1), "margin"),
    ],
)
def test_bad_parameters_raise_and_say_what_is_allowed(call, message):
    image, mask = disc_on_noise()
    with pytest.raises(ParameterError, match=message):
        call(image, mask)


def test_steps_never_modify_their_input():
    image, mask = disc_on_noise()
    before_image, before_mask = image.copy(), mask.copy()
    Pipeline(PreprocessConfig(), DisplayConfig(flip=True)).stages(image, mask)
    assert (image == before_image).all() and (mask == before_mask).all()


def test_config_round_trips_through_json():
    config = PreprocessConfig(size=128, median_ksize=0, channels="stacked")
    assert PreprocessConfig.from_json(config.to_json()) == config
    assert json.loads(config.to_json())["size"] == 128
    display = DisplayConfig(overlay_colour=(0, 255, 0), mask_kernel=7)
    assert config_from_json(DisplayConfig, config_to_json(display)) == display


def test_what_the_model_sees_is_apart_from_what_the_playground_shows():
    image, mask = disc_on_noise()
    plain, coloured = Pipeline(PreprocessConfig(size=64)), Pipeline(PreprocessConfig(size=64), DisplayConfig(
        overlay_colour=(0, 255, 0), overlay_style="fill", mask_operation="open", crop_margin=0.5))
    assert (plain.model_input(image) == coloured.model_input(image)).all()
    assert (plain.stages(image, mask)["mask_overlay"] != coloured.stages(image, mask)["mask_overlay"]).any()
    # The input cache is keyed on the model's settings alone: display settings are not among them.
    assert not set(config_to_dict(DisplayConfig())) & set(json.loads(PreprocessConfig().to_json()))


def test_settings_saved_by_older_runs_still_load():
    saved = config_to_dict(PreprocessConfig(size=96)) | {"overlay_colour": [255, 64, 64], "overlay_opacity": 0.4,
                                                         "overlay_style": "contour", "mask_operation": "close",
                                                         "mask_kernel": 5, "mask_iterations": 1, "crop_margin": 0.1,
                                                         "flip": False}
    assert PreprocessConfig.from_saved(saved) == PreprocessConfig(size=96)
    with pytest.raises(ParameterError, match="Unknown PreprocessConfig setting"):
        PreprocessConfig.from_saved({"sharpen": 3})


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"median_ksize": 2}, "odd number"),
        ({"canny_low": 200, "canny_high": 100}, "canny_high"),
        ({"size": 4}, "size"),
    ],
)
def test_invalid_config_is_refused(settings, message):
    with pytest.raises(ParameterError, match=message):
        PreprocessConfig(**settings)


@pytest.mark.parametrize("settings, message", [({"mask_operation": "dilate"}, "mask_operation"),
                                               ({"overlay_opacity": 2.0}, "overlay_opacity")])
def test_invalid_display_config_is_refused(settings, message):
    with pytest.raises(ParameterError, match=message):
        DisplayConfig(**settings)


def test_unknown_or_malformed_config_json_is_refused():
    with pytest.raises(ParameterError, match="Unknown PreprocessConfig setting"):
        PreprocessConfig.from_json('{"sharpen": 3}')
    with pytest.raises(ParameterError, match="malformed"):
        PreprocessConfig.from_json("{size: 3")


def test_pipeline_stages_are_named_and_ordered():
    image, mask = disc_on_noise()
    stages = Pipeline(PreprocessConfig(size=64), DisplayConfig(flip=True)).stages(image, mask)
    assert list(stages) == [
        "original", "resized", "clahe", "median", "gaussian", "model_input", "edges",
        "edge_overlay", "mask", "mask_morphology", "mask_overlay", "lesion_crop", "flipped",
    ]
    assert stages["model_input"].shape == (64, 64)
    assert stages["mask_overlay"].shape == (64, 64, 3)


def test_disabled_steps_are_skipped_and_model_input_never_needs_a_mask():
    image, _ = disc_on_noise()
    pipeline = Pipeline(PreprocessConfig(size=64, clahe=False, median_ksize=0, gaussian_ksize=0))
    stages = pipeline.stages(image)
    assert "clahe" not in stages and "mask" not in stages
    assert (pipeline.model_input(image) == stages["resized"]).all()


def test_stacked_channels_are_the_unprocessed_scan_the_processed_scan_and_its_edges():
    image, mask = disc_on_noise()
    grey, stacked = (PreprocessConfig(size=64), PreprocessConfig(size=64, channels="stacked"))
    stages = Pipeline(stacked).stages(image, mask)
    model_input = Pipeline(stacked).model_input(image)
    assert model_input.shape == (64, 64, 3) and model_input.dtype == np.uint8
    assert (model_input == stages["model_input"]).all()
    assert (model_input[..., 0] == stages["resized"]).all()
    assert (model_input[..., 1] == Pipeline(grey).model_input(image)).all()
    assert (model_input[..., 2] == np.where(stages["edges"], 255, 0)).all() and stages["edges"].any()
    assert (grey_view(model_input) == model_input[..., 1]).all()
    # The display stages stay those of the grey pipeline.
    grey_stages = Pipeline(grey).stages(image, mask)
    for name in ("edges", "edge_overlay", "mask_overlay", "lesion_crop"):
        assert (stages[name] == grey_stages[name]).all(), name
    with pytest.raises(ParameterError, match="channels must be one of grey, stacked"):
        PreprocessConfig(channels="rgb")


@pytest.mark.parametrize("keep_aspect", [True, False])
def test_scan_geometry_undoes_the_resize(keep_aspect):
    mask = np.zeros((60, 120), bool)
    mask[10:40, 70:110] = True
    small = resize(mask, 64, keep_aspect=keep_aspect).astype(np.float32)
    back = to_scan_geometry(small, mask.shape, keep_aspect=keep_aspect)
    assert back.shape == (60, 120) and back.dtype == np.float32
    restored = back > 0.5
    # Nearest-neighbour quantisation blurs the edges by a pixel; misplaced padding would shift it.
    assert (restored & mask).sum() / (restored | mask).sum() > 0.85
    centre = np.argwhere(mask).mean(0)
    assert np.abs(np.argwhere(restored).mean(0) - centre).max() < 1.5
