"""Reading and writing images and files: the only place where colour conversion happens.

Scans may arrive in any mode PIL knows (1-bit, palette, grey, RGB, RGBA, CMYK, 16-bit) and as
paths or in-memory bytes (uploads, which must never touch the disk).
"""

from __future__ import annotations

import io
import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

from busi.errors import ImageError

Source = str | os.PathLike | bytes

# Ultrasound frames are well under 4 Mpx (BUSI's are about 500x500); a 4K frame (3840x2160) is
# the largest accepted, so that a small file cannot make the server decode hundreds of megabytes.
MAX_PIXELS = 3840 * 2160
MIN_SCAN_SIDE = 32
# A pixel counts as coloured when its channels differ this much (Doppler, coloured markers);
# JPEG chroma noise on grey scans stays well below it.
_COLOUR_CHANNEL_SPREAD = 40
COLOUR_FRACTION_MIN = 1e-4


def _describe(source: Source) -> str:
    return "the uploaded image" if isinstance(source, bytes) else f"'{source}'"


def _open(source: Source, max_pixels: int) -> Image.Image:
    name = _describe(source)
    if isinstance(source, bytes):
        if not source:
            raise ImageError(f"{name} is empty (0 bytes): choose a PNG, JPEG, BMP or TIFF scan.")
        stream: io.BytesIO | Path = io.BytesIO(source)
    else:
        stream = Path(source)
        if not stream.is_file():
            raise ImageError(f"{name} does not exist or is not a file.")
        if stream.stat().st_size == 0:
            raise ImageError(f"{name} is empty (0 bytes): replace it with a valid image.")
    try:
        with warnings.catch_warnings():
            # Our own pixel limit below decides; PIL's warning would only be noise.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(stream)
            width, height = image.size
            if width * height > max_pixels:
                raise ImageError(
                    f"{name} is {width}x{height} px, over the limit of {max_pixels:,} pixels: "
                    "downscale it before use."
                )
            image.load()
    except Image.DecompressionBombError as error:
        raise ImageError(f"{name} is too large to decode safely ({error}).") from error
    except UnidentifiedImageError as error:
        raise ImageError(
            f"{name} is not an image PIL can read: save it as PNG, JPEG, BMP or TIFF."
        ) from error
    except (OSError, SyntaxError, ValueError) as error:
        raise ImageError(f"{name} is damaged or truncated ({error}): export it again.") from error
    return image


def _to_array(image: Image.Image) -> np.ndarray:
    """Any PIL mode -> uint8 grey (H, W) or RGB (H, W, 3); transparency composited on black."""
    mode = image.mode
    # 16-bit scans use the full range; scaling by 257 keeps their meaning, not stretched. No
    # floating-point copy of a 16-bit frame is made: OpenCV scales, rounds and saturates in one pass.
    if mode in ("I;16", "I;16B", "I;16L"):
        values = np.asarray(image)
        if values.max(initial=0) <= 255:
            return values.astype(np.uint8)
        return cv2.convertScaleAbs(np.ascontiguousarray(values), alpha=1 / 257)
    if mode in ("I", "F"):
        values = np.asarray(image, dtype=np.float32)
        scale = 257.0 if values.max(initial=0) > 255 else 1.0
        return cv2.convertScaleAbs(np.clip(values, 0, None), alpha=1 / scale)
    if mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    elif mode in ("LA", "PA", "La"):
        image = image.convert("RGBA")
    elif mode not in ("1", "L", "RGB", "RGBA"):
        image = image.convert("RGB")  # CMYK, YCbCr, LAB ...
    if image.mode == "1":
        image = image.convert("L")
    array = np.asarray(image)
    if image.mode == "RGBA":  # composited in uint8, without a float copy of the frame
        rgb, alpha = np.ascontiguousarray(array[..., :3]), np.ascontiguousarray(array[..., 3])
        array = cv2.multiply(rgb, cv2.cvtColor(alpha, cv2.COLOR_GRAY2RGB), scale=1 / 255)
    return np.ascontiguousarray(array)


def read_image(source: Source, *, max_pixels: int = MAX_PIXELS, frame: int = 0) -> np.ndarray:
    """Decode a path or bytes into uint8 grey (H, W) or RGB (H, W, 3): a PNG, JPEG, BMP or TIFF
    image, or a DICOM file (its ``frame``, counted from 0, when it holds several).

    Raises ImageError with a message naming the file and what to do when the input is empty,
    truncated, not an image, or larger than ``max_pixels``.
    """
    if is_dicom(source):
        return _read_dicom(source, max_pixels, frame)
    return _to_array(_open(source, max_pixels))


# -- DICOM ----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class DicomFrames:
    """What a DICOM file holds, in technical terms only: never a patient's identifiers."""

    frames: int
    rows: int
    columns: int
    photometric: str


def _head(source: Source) -> bytes:
    if isinstance(source, bytes):
        return source[:132]
    try:
        with open(source, "rb") as file:
            return file.read(132)
    except OSError:
        return b""


def is_dicom(source: Source) -> bool:
    """A DICOM file (Part 10): 128 bytes of preamble, then "DICM"."""
    return _head(source)[128:132] == b"DICM"


def _dicom_dataset(source: Source):
    import pydicom  # imported on first use: most scans are not DICOM

    try:
        # The header only: the pixel data (possibly hundreds of frames) is decoded one frame at a time.
        dataset = pydicom.dcmread(io.BytesIO(source) if isinstance(source, bytes) else source, stop_before_pixels=True)
        return dataset, (int(dataset.Rows), int(dataset.Columns), int(getattr(dataset, "NumberOfFrames", 1) or 1),
                         str(dataset.PhotometricInterpretation), int(getattr(dataset, "BitsStored", 8)))
    except Exception as error:  # pydicom raises many types for damaged or partial files
        raise ImageError(f"{_describe(source)} is not a DICOM image this program can read ({type(error).__name__}): "
                         "export it again, or as PNG.") from None


def dicom_frames(source: Source) -> DicomFrames | None:
    """The frames of a DICOM file, or None when ``source`` is not DICOM."""
    if not is_dicom(source):
        return None
    _, (rows, columns, frames, photometric, _) = _dicom_dataset(source)
    return DicomFrames(frames, rows, columns, photometric)


def _read_dicom(source: Source, max_pixels: int, frame: int) -> np.ndarray:
    from pydicom.pixels import pixel_array

    _, (rows, columns, frames, photometric, bits) = _dicom_dataset(source)
    name = _describe(source)
    if rows * columns > max_pixels:
        raise ImageError(f"{name} is {columns}x{rows} px, over the limit of {max_pixels:,} pixels: downscale it before use.")
    if not 0 <= frame < frames:
        raise ImageError(f"{name} holds {frames} frame(s): choose one from 0 to {frames - 1}.")
    try:
        # One frame decoded; YBR colour converted to RGB on the way.
        pixels = pixel_array(io.BytesIO(source) if isinstance(source, bytes) else source, index=frame)
    except Exception as error:  # missing codecs, truncated pixel data
        raise ImageError(f"{name}'s pixel data cannot be decoded here ({type(error).__name__}): export it uncompressed or as "
                         "PNG.") from None
    if pixels.dtype != np.uint8:  # 10- to 16-bit grey: scaled by its own depth, not stretched
        pixels = cv2.convertScaleAbs(np.clip(pixels, 0, None).astype(np.float32), alpha=255 / (2 ** max(bits, 8) - 1))
    if photometric == "MONOCHROME1":  # stored with 0 as white
        pixels = 255 - pixels
    if pixels.ndim == 3 and pixels.shape[2] not in (3,):
        raise ImageError(f"{name} has {pixels.shape[2]} samples a pixel: expected grey or RGB.")
    return np.ascontiguousarray(pixels)


def to_grey(image: np.ndarray) -> np.ndarray:
    """uint8 (H, W) or (H, W, 3) RGB -> uint8 (H, W) luminance."""
    if image.ndim == 2:
        return image
    if image.ndim == 3 and image.shape[2] == 3:
        return cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    raise ImageError(f"Expected a grey or RGB image, got an array of shape {image.shape}.")


def colour_fraction(image: np.ndarray) -> float:
    """Fraction of pixels whose RGB channels clearly differ (0 for grey images)."""
    if image.ndim == 2:
        return 0.0
    # max - min over the channels equals the largest pairwise difference; OpenCV computes that
    # about fifty times faster than numpy's strided reductions over the last axis.
    red, green, blue = cv2.split(np.ascontiguousarray(image[..., :3]))
    spread = cv2.max(cv2.max(cv2.absdiff(red, green), cv2.absdiff(green, blue)), cv2.absdiff(red, blue))
    return float(np.count_nonzero(spread > _COLOUR_CHANNEL_SPREAD)) / spread.size


def require_scan_size(grey: np.ndarray, source: Source) -> np.ndarray:
    """Return ``grey`` unchanged, or raise ImageError when it is too small to be a scan."""
    height, width = grey.shape[:2]
    if min(height, width) < MIN_SCAN_SIDE:
        raise ImageError(
            f"{_describe(source)} is {width}x{height} px; a scan must be at least "
            f"{MIN_SCAN_SIDE}x{MIN_SCAN_SIDE} px."
        )
    return grey


def read_scan(source: Source, *, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Decode a scan as uint8 grey (H, W), refusing images too small to be a scan."""
    return require_scan_size(to_grey(read_image(source, max_pixels=max_pixels)), source)


def read_mask(source: Source) -> np.ndarray:
    """Decode a lesion mask as bool (H, W): any pixel brighter than mid-grey is lesion."""
    return to_grey(read_image(source)) >= 128


def encode_png(image: np.ndarray) -> bytes:
    """uint8 grey/RGB array or bool mask -> PNG bytes."""
    if image.dtype == bool:
        image = image.astype(np.uint8) * 255
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def write_atomic(path: str | os.PathLike, data: bytes | str) -> None:
    """Write a file so that readers see either the old or the complete new content."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = data.encode() if isinstance(data, str) else data
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(payload)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
