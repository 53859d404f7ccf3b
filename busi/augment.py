"""Random training augmentation suited to ultrasound, applied to preprocessed uint8 inputs.

As in MONAI, drawing the randomness (``draw``) is separate from applying it (``apply``), so a
test can apply known parameters. Only horizontal flips: a vertical flip would put the skin line
at the bottom, which no real scan shows. Rotations stay small for the same reason.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from busi.errors import ParameterError


@dataclass(frozen=True)
class _Ranges:
    """The spread of each random change a policy draws from."""
    angle: float  # degrees either way
    scale: tuple[float, float]
    shift: float  # fraction of the width or height either way
    gain: tuple[float, float]
    gamma: tuple[float, float]
    speckle: float  # largest standard deviation of the multiplicative noise


# "strong" widens every range, the usual remedy when a network trained from scratch on a few
# hundred scans memorises them; rotations stay within 15 degrees so the skin line stays on top.
_RANGES = {"ultrasound": _Ranges(angle=10, scale=(0.9, 1.1), shift=0.06, gain=(0.8, 1.2), gamma=(0.8, 1.25), speckle=0.12),
           "strong": _Ranges(angle=15, scale=(0.8, 1.25), shift=0.10, gain=(0.7, 1.3), gamma=(0.7, 1 / 0.7), speckle=0.2)}
POLICIES = ("flip", *_RANGES)


@dataclass(frozen=True)
class Augmentation:
    flip: bool = False
    angle: float = 0.0  # degrees
    scale: float = 1.0
    shift: tuple[float, float] = (0.0, 0.0)  # fraction of the width, height
    gain: float = 1.0  # multiplies intensities (transducer gain)
    gamma: float = 1.0  # contrast curve
    speckle: float = 0.0  # standard deviation of multiplicative noise


def draw(rng: np.random.Generator, policy: str) -> Augmentation:
    if policy not in POLICIES:
        raise ParameterError(f"augmentation policy must be one of {', '.join(POLICIES)}, got '{policy}'.")
    flip = bool(rng.random() < 0.5)
    if policy == "flip":
        return Augmentation(flip=flip)
    ranges = _RANGES[policy]
    return Augmentation(
        flip=flip,
        angle=float(rng.uniform(-ranges.angle, ranges.angle)),
        scale=float(rng.uniform(*ranges.scale)),
        shift=(float(rng.uniform(-ranges.shift, ranges.shift)), float(rng.uniform(-ranges.shift, ranges.shift))),
        gain=float(rng.uniform(*ranges.gain)),
        gamma=float(np.exp(rng.uniform(*np.log(ranges.gamma)))),
        speckle=float(rng.uniform(0.0, ranges.speckle)),
    )


def apply(image: np.ndarray, augmentation: Augmentation, rng: np.random.Generator | None = None) -> np.ndarray:
    """uint8 (H, W) or (H, W, channels) -> the same shape; ``rng`` supplies the speckle noise when
    there is any. Every channel moves and changes alike: they are views of one scan."""
    a = augmentation
    out = image[:, ::-1] if a.flip else image
    height, width = out.shape[:2]
    if a.angle or a.scale != 1.0 or a.shift != (0.0, 0.0):
        matrix = cv2.getRotationMatrix2D((width / 2, height / 2), a.angle, a.scale)
        matrix[:, 2] += (a.shift[0] * width, a.shift[1] * height)
        out = cv2.warpAffine(np.ascontiguousarray(out), matrix, (width, height), flags=cv2.INTER_LINEAR,
                             borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    if a.gain != 1.0 or a.gamma != 1.0 or a.speckle:
        values = out.astype(np.float32) / 255.0
        values = np.power(values, a.gamma) * a.gain
        if a.speckle:
            if rng is None:
                raise ParameterError("Speckle noise needs a random generator.")
            noise = rng.standard_normal((height, width), dtype=np.float32)
            values *= 1.0 + a.speckle * (noise if values.ndim == 2 else noise[..., None])
        out = np.clip(values * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return np.ascontiguousarray(out)


def apply_to_mask(mask: np.ndarray, augmentation: Augmentation) -> np.ndarray:
    """The same geometry for a uint8 lesion mask (H, W); intensity changes do not apply."""
    geometry = Augmentation(flip=augmentation.flip, angle=augmentation.angle, scale=augmentation.scale,
                            shift=augmentation.shift)
    return apply(mask, geometry)


def augment_batch(images: np.ndarray, rng: np.random.Generator, policy: str,
                  masks: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """Freshly augmented copies of a uint8 batch (N, H, W[, channels]) and, moved alike, of its masks."""
    drawn = [draw(rng, policy) for _ in images]
    images = np.stack([apply(image, a, rng) for image, a in zip(images, drawn)])
    if masks is not None:
        masks = np.stack([apply_to_mask(mask, a) for mask, a in zip(masks, drawn)])
    return images, masks
