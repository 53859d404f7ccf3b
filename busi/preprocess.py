"""Preprocessing steps as small pure functions, and the pipeline that runs them by name.

Every function takes and returns numpy arrays and never modifies its input. Images are uint8
grey (H, W) in 0..255 unless stated; masks are bool (H, W). Parameters are validated and a bad
value raises ParameterError (a ValueError) saying what is allowed. The playground, training and
prediction all run this same code.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import cv2
import numpy as np

from busi.config import check_choice, config_from_dict, config_from_json, config_to_json
from busi.errors import ParameterError

MORPHOLOGY_OPERATIONS = ("none", "open", "close")
OVERLAY_STYLES = ("fill", "contour")
_CV_MORPHOLOGY = {"open": cv2.MORPH_OPEN, "close": cv2.MORPH_CLOSE}


# -- validation ---------------------------------------------------------------------------------

def _check_range(name: str, value: float, low: float, high: float) -> None:
    if not low <= value <= high:
        raise ParameterError(f"{name} must be between {low} and {high}, got {value}.")


def _check_odd_kernel(name: str, size: int, *, allow_off: bool = False) -> None:
    if allow_off and size == 0:
        return
    if size < 1 or size % 2 == 0 or size > 99:
        off = " or 0 to turn it off" if allow_off else ""
        raise ParameterError(f"{name} must be an odd number of pixels from 1 to 99{off}, got {size}.")


def _check_image(image: np.ndarray) -> None:
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 2:
        shape = getattr(image, "shape", None)
        dtype = getattr(image, "dtype", type(image).__name__)
        raise ParameterError(f"Expected a uint8 grey image of shape (H, W), got {dtype} {shape}.")
    if min(image.shape) == 0:
        raise ParameterError("The image is empty (a side of 0 pixels).")


def _check_mask(mask: np.ndarray, shape: tuple[int, int]) -> None:
    if not isinstance(mask, np.ndarray) or mask.dtype != bool or mask.shape != shape:
        raise ParameterError(f"Expected a bool mask of shape {shape}, got {getattr(mask, 'dtype', None)} {getattr(mask, 'shape', None)}.")


# -- steps --------------------------------------------------------------------------------------

def resize(image: np.ndarray, size: int, *, keep_aspect: bool = True) -> np.ndarray:
    """Grey uint8 or bool mask -> (size, size) of the same dtype.

    ``keep_aspect`` scales the longer side to ``size`` and pads the rest with zeros (black,
    outside the field of view) so lesion shapes are not distorted; otherwise it stretches.
    Masks use nearest-neighbour so they stay binary; scans use area averaging when shrinking.
    """
    _check_range("size", size, 16, 2048)
    is_mask = image.dtype == bool
    if not is_mask:
        _check_image(image)
    height, width = image.shape
    if keep_aspect:
        scale = size / max(height, width)
        new_width, new_height = max(1, round(width * scale)), max(1, round(height * scale))
    else:
        new_width = new_height = size
    scaled = rescale(image, new_width, new_height)
    if keep_aspect:
        top, left = (size - new_height) // 2, (size - new_width) // 2
        padded = np.zeros((size, size), dtype=scaled.dtype)
        padded[top : top + new_height, left : left + new_width] = scaled
        scaled = padded
    return scaled


def rescale(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """Grey uint8 or bool mask -> (height, width) of the same dtype: nearest neighbour for masks
    (they stay binary), area averaging when shrinking a scan, linear when enlarging one."""
    if image.dtype == bool:
        return cv2.resize(image.astype(np.uint8), (width, height), interpolation=cv2.INTER_NEAREST).astype(bool)
    shrinking = width * height < image.shape[0] * image.shape[1]
    return cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)


def to_scan_geometry(values: np.ndarray, shape: tuple[int, int], *, keep_aspect: bool) -> np.ndarray:
    """Undo ``resize``: a float map (size, size) over the model input -> float32 (H, W) over the
    original scan, so heatmaps line up with the scan the user sees. Padding is dropped."""
    size = values.shape[0]
    height, width = shape
    values = values.astype(np.float32)
    if keep_aspect:
        scale = size / max(height, width)
        new_width, new_height = max(1, round(width * scale)), max(1, round(height * scale))
        top, left = (size - new_height) // 2, (size - new_width) // 2
        values = values[top : top + new_height, left : left + new_width]
    return cv2.resize(values, (width, height), interpolation=cv2.INTER_LINEAR)


def clahe(image: np.ndarray, clip_limit: float = 2.0, tile_grid: int = 8) -> np.ndarray:
    """Contrast-limited adaptive histogram equalisation; grey uint8 -> grey uint8."""
    _check_image(image)
    _check_range("clip_limit", clip_limit, 0.1, 40.0)
    _check_range("tile_grid", tile_grid, 1, 64)
    equaliser = cv2.createCLAHE(clipLimit=float(clip_limit), tileGridSize=(int(tile_grid), int(tile_grid)))
    return equaliser.apply(image)


def median_blur(image: np.ndarray, ksize: int = 3) -> np.ndarray:
    """Median filter (removes speckle outliers); odd ``ksize``; grey uint8 -> grey uint8."""
    _check_image(image)
    _check_odd_kernel("median ksize", ksize)
    return cv2.medianBlur(image, ksize)


def gaussian_blur(image: np.ndarray, ksize: int = 3, sigma: float = 0.0) -> np.ndarray:
    """Gaussian smoothing; ``sigma`` 0 derives it from ``ksize``; grey uint8 -> grey uint8."""
    _check_image(image)
    _check_odd_kernel("gaussian ksize", ksize)
    _check_range("sigma", sigma, 0.0, 50.0)
    return cv2.GaussianBlur(image, (ksize, ksize), sigma)


def canny_edges(image: np.ndarray, low: int = 50, high: int = 150) -> np.ndarray:
    """Canny edge map; grey uint8 -> bool (H, W), True on edge pixels."""
    _check_image(image)
    _check_range("low threshold", low, 0, 1000)
    _check_range("high threshold", high, 0, 1000)
    if low > high:
        raise ParameterError(f"The low Canny threshold ({low}) must not exceed the high one ({high}).")
    return cv2.Canny(image, low, high) > 0


def morphology(mask: np.ndarray, operation: str = "close", kernel_size: int = 5, iterations: int = 1) -> np.ndarray:
    """Opening (drops specks) or closing (fills gaps) of a bool mask with an elliptic kernel."""
    check_choice("operation", operation, MORPHOLOGY_OPERATIONS)
    _check_odd_kernel("kernel_size", kernel_size)
    _check_range("iterations", iterations, 1, 20)
    if mask.dtype != bool or mask.ndim != 2:
        raise ParameterError(f"Expected a bool mask of shape (H, W), got {mask.dtype} {mask.shape}.")
    if operation == "none":
        return mask.copy()
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (kernel_size, kernel_size))
    result = cv2.morphologyEx(mask.astype(np.uint8), _CV_MORPHOLOGY[operation], kernel, iterations=iterations)
    return result.astype(bool)


def overlay(
    image: np.ndarray,
    mask: np.ndarray,
    colour: tuple[int, int, int] = (255, 64, 64),
    opacity: float = 0.4,
    style: str = "contour",
) -> np.ndarray:
    """Draw a mask (or edge map) on a grey scan; returns uint8 RGB (H, W, 3).

    ``fill`` blends ``colour`` into the masked pixels at ``opacity``; ``contour`` draws the
    mask's outline, blended at the same opacity, so the lesion itself stays visible.
    """
    _check_image(image)
    _check_mask(mask, image.shape)
    _check_range("opacity", opacity, 0.0, 1.0)
    check_choice("style", style, OVERLAY_STYLES)
    if len(colour) != 3 or any(not 0 <= channel <= 255 for channel in colour):
        raise ParameterError(f"colour must be three values from 0 to 255, got {colour}.")
    rgb = np.repeat(image[:, :, None], 3, axis=2)
    if style == "contour":
        outline = np.zeros(image.shape, dtype=np.uint8)
        contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        thickness = max(1, round(max(image.shape) / 250))
        cv2.drawContours(outline, contours, -1, 1, thickness)
        painted = outline.astype(bool)
    else:
        painted = mask
    blended = rgb.astype(np.float32)
    blended[painted] = (1 - opacity) * blended[painted] + opacity * np.asarray(colour, np.float32)
    return np.round(blended).astype(np.uint8)


def lesion_bounds(mask: np.ndarray, margin: float = 0.1) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) of the mask's bounding box grown by ``margin`` of its size.

    An empty mask gives the whole image.
    """
    _check_range("margin", margin, 0.0, 2.0)
    rows, columns = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    height, width = mask.shape
    if rows.size == 0:
        return 0, height, 0, width
    grow_y = round((rows[-1] - rows[0] + 1) * margin)
    grow_x = round((columns[-1] - columns[0] + 1) * margin)
    return (
        max(0, rows[0] - grow_y),
        min(height, rows[-1] + 1 + grow_y),
        max(0, columns[0] - grow_x),
        min(width, columns[-1] + 1 + grow_x),
    )


def crop_to_lesion(image: np.ndarray, mask: np.ndarray, margin: float = 0.1) -> np.ndarray:
    """The part of ``image`` (any dtype, (H, W[, C])) around the lesion in ``mask``."""
    _check_mask(mask, image.shape[:2])
    top, bottom, left, right = lesion_bounds(mask, margin)
    return image[top:bottom, left:right].copy()


def horizontal_flip(image: np.ndarray) -> np.ndarray:
    """Mirror left-right. Never flip vertically: the skin line belongs at the top of a scan."""
    return np.ascontiguousarray(image[:, ::-1])


# -- configuration and pipeline ---------------------------------------------------------------

# "grey": the processed scan, which the model copies into its three input channels. "stacked":
# three different views as the channels - the resized scan before CLAHE and denoising, the
# processed scan, and its Canny edges - the study's edge overlay made into an input the network
# can weigh, never a mask.
INPUT_CHANNELS = ("grey", "stacked")
_PROCESSED_CHANNEL = 1


def grey_view(model_input: np.ndarray) -> np.ndarray:
    """The processed grey scan inside a model input of either channel layout, for display."""
    return model_input if model_input.ndim == 2 else model_input[..., _PROCESSED_CHANNEL]


@dataclass(frozen=True)
class PreprocessConfig:
    """What the model sees, saved with its weights and keying the input cache. Defaults follow
    the study: 224 px, CLAHE, median and Gaussian denoising. A kernel size of 0 turns that
    denoising step off; the Canny thresholds shape the edge channel of ``channels="stacked"``."""

    size: int = 224
    keep_aspect: bool = False
    clahe: bool = True
    clahe_clip_limit: float = 2.0
    clahe_tile_grid: int = 8
    median_ksize: int = 3
    gaussian_ksize: int = 3
    gaussian_sigma: float = 0.0
    canny_low: int = 50
    canny_high: int = 150
    channels: str = "grey"

    def __post_init__(self) -> None:
        _check_range("size", self.size, 16, 2048)
        _check_range("clahe_clip_limit", self.clahe_clip_limit, 0.1, 40.0)
        _check_range("clahe_tile_grid", self.clahe_tile_grid, 1, 64)
        _check_odd_kernel("median_ksize", self.median_ksize, allow_off=True)
        _check_odd_kernel("gaussian_ksize", self.gaussian_ksize, allow_off=True)
        _check_range("gaussian_sigma", self.gaussian_sigma, 0.0, 50.0)
        _check_range("canny_low", self.canny_low, 0, 1000)
        _check_range("canny_high", self.canny_high, self.canny_low, 1000)
        check_choice("channels", self.channels, INPUT_CHANNELS)

    def to_json(self) -> str:
        return config_to_json(self)

    @classmethod
    def from_json(cls, text: str) -> PreprocessConfig:
        return config_from_json(cls, text)

    @classmethod
    def from_saved(cls, values: dict) -> PreprocessConfig:
        """From a run or checkpoint of any version: older ones also held the display settings
        (now ``DisplayConfig``), which never changed what the model saw."""
        return config_from_dict(cls, {key: value for key, value in values.items() if key not in _DISPLAY_SETTINGS})


@dataclass(frozen=True)
class DisplayConfig:
    """What the playground only shows: mask morphology, overlays, the lesion crop and the flip
    preview. None of it reaches the model, so changing it invalidates no cache and no run."""

    mask_operation: str = "close"
    mask_kernel: int = 5
    mask_iterations: int = 1
    overlay_colour: tuple[int, int, int] = (255, 64, 64)
    overlay_opacity: float = 0.4
    overlay_style: str = "contour"
    crop_margin: float = 0.1
    flip: bool = False

    def __post_init__(self) -> None:
        check_choice("mask_operation", self.mask_operation, MORPHOLOGY_OPERATIONS)
        _check_odd_kernel("mask_kernel", self.mask_kernel)
        _check_range("mask_iterations", self.mask_iterations, 1, 20)
        _check_range("overlay_opacity", self.overlay_opacity, 0.0, 1.0)
        check_choice("overlay_style", self.overlay_style, OVERLAY_STYLES)
        _check_range("crop_margin", self.crop_margin, 0.0, 2.0)


_DISPLAY_SETTINGS = frozenset(field.name for field in dataclasses.fields(DisplayConfig))


class Pipeline:
    """Runs the configured steps in order and hands back every stage by name.

    ``model_input`` is the deterministic part a classifier sees (never the mask); ``stages``
    adds the display stages, drawn as ``display`` says: edges, mask morphology, overlays, lesion
    crop and flip.
    """

    def __init__(self, config: PreprocessConfig = PreprocessConfig(), display: DisplayConfig = DisplayConfig()) -> None:
        self.config = config
        self.display = display

    def _denoise_stages(self, scan: np.ndarray) -> dict[str, np.ndarray]:
        c = self.config
        stages = {"original": scan, "resized": resize(scan, c.size, keep_aspect=c.keep_aspect)}
        current = stages["resized"]
        if c.clahe:
            current = stages["clahe"] = clahe(current, c.clahe_clip_limit, c.clahe_tile_grid)
        if c.median_ksize:
            current = stages["median"] = median_blur(current, c.median_ksize)
        if c.gaussian_ksize:
            current = stages["gaussian"] = gaussian_blur(current, c.gaussian_ksize, c.gaussian_sigma)
        stages["model_input"] = current if c.channels == "grey" else np.dstack(
            [stages["resized"], current, canny_edges(current, c.canny_low, c.canny_high).astype(np.uint8) * 255])
        return stages

    def model_input(self, scan: np.ndarray) -> np.ndarray:
        """uint8 grey scan of any size -> what the classifier sees: uint8 (size, size) for
        ``channels="grey"``, (size, size, 3) for ``"stacked"``."""
        _check_image(scan)
        return self._denoise_stages(scan)["model_input"]

    def stages(self, scan: np.ndarray, mask: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """Every stage, in order: grey uint8 images, bool masks/edges, RGB uint8 overlays."""
        _check_image(scan)
        c, d = self.config, self.display
        stages = self._denoise_stages(scan)
        processed = grey_view(stages["model_input"])
        stages["edges"] = canny_edges(processed, c.canny_low, c.canny_high)
        stages["edge_overlay"] = overlay(processed, stages["edges"], d.overlay_colour, d.overlay_opacity, "fill")
        if mask is not None:
            _check_mask(mask, scan.shape)
            stages["mask"] = resize(mask, c.size, keep_aspect=c.keep_aspect)
            stages["mask_morphology"] = morphology(stages["mask"], d.mask_operation, d.mask_kernel, d.mask_iterations)
            stages["mask_overlay"] = overlay(
                processed, stages["mask_morphology"], d.overlay_colour, d.overlay_opacity, d.overlay_style
            )
            stages["lesion_crop"] = crop_to_lesion(processed, stages["mask_morphology"], d.crop_margin)
        if d.flip:
            stages["flipped"] = horizontal_flip(processed)
        return stages
