import io
import tracemalloc

import numpy as np
import pytest
from PIL import Image

from busi.errors import ImageError
from busi.imageio import (
    colour_fraction,
    encode_png,
    read_image,
    read_mask,
    read_scan,
    to_grey,
    write_atomic,
)
from tests.helpers import png_bytes

GRADIENT = np.tile(np.arange(0, 256, 4, dtype=np.uint8), (64, 1))  # 64x64, 0..252


def _encode(image: Image.Image, format: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=format)
    return buffer.getvalue()


@pytest.mark.parametrize(
    "mode",
    ["L", "RGB", "RGBA", "P", "LA", "I;16"],
)
def test_every_png_mode_reads_as_the_same_grey_scan(mode):
    if mode == "I;16":
        image = Image.fromarray(GRADIENT.astype(np.uint16) * 257)
    elif mode == "P":
        image = Image.fromarray(GRADIENT).convert("RGB").convert("P", palette=Image.Palette.ADAPTIVE, colors=256)
    else:
        image = Image.fromarray(GRADIENT).convert(mode)
    grey = read_scan(_encode(image))
    assert grey.dtype == np.uint8 and grey.shape == (64, 64)
    assert np.abs(grey.astype(int) - GRADIENT).max() <= 2


def test_cmyk_jpeg_reads_as_grey():
    data = _encode(Image.fromarray(GRADIENT).convert("CMYK"), "JPEG")
    grey = read_scan(data)
    assert grey.shape == (64, 64)
    assert np.corrcoef(grey.ravel(), GRADIENT.ravel())[0, 1] > 0.99


@pytest.mark.parametrize("format", ["BMP", "TIFF", "JPEG"])
def test_other_formats_read_from_disk(tmp_path, format):
    path = tmp_path / f"scan.{format.lower()}"
    Image.fromarray(GRADIENT).save(path, format=format)
    assert np.abs(read_scan(path).astype(int) - GRADIENT).max() <= 3


def test_transparent_pixels_become_black():
    rgba = np.zeros((40, 40, 4), np.uint8)
    rgba[..., :3] = 200
    rgba[:20, :, 3] = 255
    grey = read_scan(png_bytes(rgba))
    assert grey[:20].min() == 200 and grey[20:].max() == 0


@pytest.mark.parametrize(
    "data, message",
    [
        (b"", "empty"),
        (b"this is a text file, not an image", "not an image"),
        (png_bytes(np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8))[:500], "damaged or truncated"),
    ],
    ids=["empty", "text", "truncated"],
)
def test_bad_bytes_raise_a_clear_error(data, message):
    with pytest.raises(ImageError, match=message):
        read_image(data)


def test_bad_files_name_the_file(tmp_path):
    missing = tmp_path / "missing.png"
    with pytest.raises(ImageError, match="missing.png' does not exist"):
        read_image(missing)
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    with pytest.raises(ImageError, match="empty.png' is empty"):
        read_image(empty)


def test_pixel_limit_refuses_decompression_bombs():
    data = png_bytes(np.zeros((300, 400), np.uint8))
    with pytest.raises(ImageError, match="over the limit of 100,000 pixels"):
        read_image(data, max_pixels=100_000)
    assert read_image(data, max_pixels=120_000).shape == (300, 400)


def test_tiny_image_is_not_a_scan():
    with pytest.raises(ImageError, match="1x1 px; a scan must be at least 32x32"):
        read_scan(png_bytes(np.zeros((1, 1), np.uint8)))


@pytest.mark.parametrize("mode", ["1", "L", "RGB", "RGBA"])
def test_masks_of_any_mode_are_binary(mode):
    mask = np.zeros((32, 32), np.uint8)
    mask[8:16, 8:24] = 255
    decoded = read_mask(png_bytes(mask, mode))
    assert decoded.dtype == bool
    np.testing.assert_array_equal(decoded, mask > 0)


def test_colour_fraction_sees_overlays_not_grey():
    grey_rgb = np.repeat(GRADIENT[:, :, None], 3, axis=2)
    assert colour_fraction(grey_rgb) == 0.0
    marked = grey_rgb.copy()
    marked[:4, :4] = (255, 0, 0)
    assert colour_fraction(marked) == pytest.approx(16 / 64**2)
    assert colour_fraction(GRADIENT) == 0.0


def test_to_grey_rejects_other_shapes():
    with pytest.raises(ImageError, match="grey or RGB"):
        to_grey(np.zeros((4, 4, 2), np.uint8))


def test_encode_png_round_trips_masks_and_scans():
    mask = GRADIENT > 100
    np.testing.assert_array_equal(read_mask(encode_png(mask)), mask)
    np.testing.assert_array_equal(read_image(encode_png(GRADIENT)), GRADIENT)


def test_write_atomic_replaces_whole_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "sub" / "file.txt"
    write_atomic(target, "first")
    write_atomic(target, b"second")
    assert target.read_text() == "second"
    assert [p.name for p in target.parent.iterdir()] == ["file.txt"]


def test_the_default_limit_fits_ultrasound_frames_and_refuses_larger_ones():
    assert read_image(png_bytes(np.zeros((2160, 3840), np.uint8))).shape == (2160, 3840)  # a 4K frame
    # 143 KB of zeros that would decode to 7000 x 7000 RGB: refused before decoding.
    small_file = png_bytes(np.zeros((7000, 7000, 3), np.uint8))
    assert len(small_file) < 200_000
    with pytest.raises(ImageError, match="7000x7000 px, over the limit of 8,294,400 pixels"):
        read_image(small_file)


@pytest.mark.parametrize("mode", ["I;16", "RGBA"])
def test_decoding_makes_no_floating_point_copy_of_the_frame(mode):
    side = 2000
    if mode == "I;16":
        data = png_bytes(np.random.default_rng(0).integers(0, 65536, (side, side), dtype=np.uint16))
    else:
        data = png_bytes(np.random.default_rng(0).integers(0, 256, (side, side, 4), dtype=np.uint8))
    tracemalloc.start()
    try:
        image = read_image(data)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert image.dtype == np.uint8
    # PIL's frame and numpy's copy of it, then uint8 results: a float copy would add 4 or 8 bytes
    # a pixel and channel (the 16-bit frame alone went through 8 bytes a pixel before).
    assert peak < (6 if mode == "I;16" else 20) * side * side, peak / side / side
