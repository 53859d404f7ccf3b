"""Seeded ultrasound-like phantoms in the BUSI layout: the demo data and the tests' data.

Each phantom has layered tissue (skin, subcutaneous fat, gland, retromammary fat, muscle) with
depth attenuation and correlated speckle, plus dark fat lobules in every class so that "dark
blob" alone does not give the answer. Benign lesions are oval, smooth, wider than tall, often
with posterior enhancement; malignant ones are irregular, spiculated or lobulated, often taller
than wide and usually cast a posterior acoustic shadow; normal scans have none. The classes
overlap (lobulated benign, unshadowed malignant) so the task is learnable but not trivial.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import cv2
import numpy as np

from busi.cache import default_cache_dir
from busi.data import CLASSES, DATASET_FOLDER, SYNTHETIC_MARKER
from busi.errors import ParameterError
from busi.imageio import encode_png

DEMO_PER_CLASS = 40
DEMO_SEED = 0
DEMO_VERSION = 2  # bump when phantoms or their folder change so caches regenerate


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: tuple[float, float]) -> np.ndarray:
    field = cv2.GaussianBlur(rng.standard_normal(shape).astype(np.float32), (0, 0), sigmaX=sigma[1], sigmaY=sigma[0])
    return field / (field.std() + 1e-6)


def _tissue(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Echogenicity map in 0..1 of layered breast tissue."""
    y = np.linspace(0, 1, height, dtype=np.float32)[:, None]
    x = np.linspace(0, 1, width, dtype=np.float32)[None, :]
    def boundary(depth: float) -> np.ndarray:
        return depth + 0.03 * np.sin(2 * np.pi * (rng.uniform(0.5, 2) * x + rng.uniform(0, 1))) + 0.02 * rng.standard_normal() 
    skin, fat, gland, retro = (boundary(d) for d in (rng.uniform(0.03, 0.06), rng.uniform(0.15, 0.3), rng.uniform(0.5, 0.65), rng.uniform(0.72, 0.85)))
    echo = np.full((height, width), 0.35, np.float32)
    echo = np.where(y < skin, 0.9, np.where(y < fat, 0.3, np.where(y < gland, 0.6, np.where(y < retro, 0.3, 0.5))))
    # Glandular texture and muscle striations: elongated lateral structures.
    echo += 0.12 * _smooth_noise(rng, (height, width), (height / 60, width / 12)) * (y > fat)
    return echo.astype(np.float32)


def _add_lobules(rng: np.random.Generator, echo: np.ndarray) -> None:
    """Dark oval fat lobules: lesion-like distractors present in every class."""
    height, width = echo.shape
    for _ in range(rng.integers(1, 5)):
        centre = (int(rng.uniform(0.1, 0.9) * width), int(rng.uniform(0.1, 0.45) * height))
        axes = (int(rng.uniform(0.04, 0.1) * width), int(rng.uniform(0.02, 0.05) * height))
        lobule = np.zeros_like(echo, dtype=np.uint8)
        cv2.ellipse(lobule, centre, axes, rng.uniform(-15, 15), 0, 360, 1, -1)
        echo[lobule > 0] *= rng.uniform(0.5, 0.8)


def _lesion_outline(rng: np.random.Generator, label: str, height: int, width: int) -> np.ndarray:
    """bool (H, W) lesion mask: smooth oval (benign) or irregular, spiculated shape (malignant)."""
    radius = rng.uniform(0.08, 0.2) * min(height, width)
    centre_x, centre_y = rng.uniform(0.3, 0.7) * width, rng.uniform(0.3, 0.55) * height
    angles = np.linspace(0, 2 * np.pi, 360, endpoint=False)
    if label == "benign":
        aspect_x, aspect_y = rng.uniform(1.2, 1.8), 1.0  # wider than tall
        wobble = sum(rng.uniform(0, 0.06) * np.cos(k * angles + rng.uniform(0, 2 * np.pi)) for k in (2, 3, 4))
    else:
        aspect_x, aspect_y = 1.0, rng.uniform(0.9, 1.5)  # often taller than wide
        wobble = sum(rng.uniform(0.03, 0.12) * np.cos(k * angles + rng.uniform(0, 2 * np.pi)) for k in range(3, 9))
        if rng.random() < 0.7:  # spicules
            spikes = np.zeros_like(angles)
            for centre in rng.uniform(0, 2 * np.pi, rng.integers(5, 12)):
                spikes += rng.uniform(0.2, 0.6) * np.exp(-((np.angle(np.exp(1j * (angles - centre)))) ** 2) / 0.003)
            wobble = wobble + spikes
    rho = radius * (1 + wobble)
    points = np.stack([centre_x + aspect_x * rho * np.cos(angles), centre_y + aspect_y * rho * np.sin(angles)], axis=1)
    mask = np.zeros((height, width), np.uint8)
    cv2.fillPoly(mask, [np.round(points).astype(np.int32)], 1)
    return mask.astype(bool)


def _add_lesion(rng: np.random.Generator, echo: np.ndarray, mask: np.ndarray, label: str) -> None:
    height, width = echo.shape
    soft = cv2.GaussianBlur(mask.astype(np.float32), (0, 0), 1.5 if label == "benign" else 0.8)
    inside = rng.uniform(0.05, 0.25) + (0.12 * _smooth_noise(rng, echo.shape, (3, 3)) if label == "malignant" else 0)
    echo[:] = echo * (1 - soft) + inside * soft
    columns = np.flatnonzero(mask.any(axis=0))
    bottom = int(np.flatnonzero(mask.any(axis=1))[-1])
    below = np.zeros_like(echo)
    below[bottom:, columns[0] : columns[-1] + 1] = 1
    below = cv2.GaussianBlur(below, (0, 0), max(2.0, columns.size / 8))
    if label == "malignant" and rng.random() < 0.8:
        echo *= 1 - rng.uniform(0.35, 0.65) * below  # posterior acoustic shadow
    elif label == "benign" and rng.random() < 0.6:
        echo *= 1 + rng.uniform(0.2, 0.5) * below  # posterior enhancement (fluid transmits well)


def make_phantom(label: str, seed: int, size: tuple[int, int] = (256, 256)) -> tuple[np.ndarray, list[np.ndarray]]:
    """One phantom: uint8 grey scan (H, W) and a list of bool lesion masks (empty for normal)."""
    if label not in CLASSES:
        raise ParameterError(f"label must be one of {', '.join(CLASSES)}, got '{label}'.")
    height, width = size
    if min(height, width) < 32:
        raise ParameterError(f"Phantoms must be at least 32x32 px, got {width}x{height}.")
    # The label joins the seed so phantoms of different classes never share their tissue.
    rng = np.random.default_rng((seed, CLASSES.index(label)))
    echo = _tissue(rng, height, width)
    _add_lobules(rng, echo)
    masks: list[np.ndarray] = []
    if label != "normal":
        lesion_count = 2 if label == "benign" and rng.random() < 0.15 else 1
        for _ in range(lesion_count):
            mask = _lesion_outline(rng, label, height, width)
            _add_lesion(rng, echo, mask, label)
            masks.append(mask)
    depth = np.linspace(0, 1, height, dtype=np.float32)[:, None]
    echo *= np.exp(-rng.uniform(0.6, 1.4) * depth)  # attenuation with depth
    # Speckle: Rayleigh-distributed, correlated over a few pixels, wider laterally than axially.
    grain = (height / 256 * 1.2, height / 256 * 2.4)
    speckle = np.abs(_smooth_noise(rng, (height, width), grain) + 1j * _smooth_noise(rng, (height, width), grain))
    # Scanners smooth speckle; mixing in the mean keeps tissue contrast readable, as in BUSI.
    speckle = 0.45 + 0.55 * speckle / np.sqrt(np.pi / 2)
    image = echo * speckle * rng.uniform(0.65, 1.35)  # gain varies between scanners and users
    image = 255 * np.clip(image, 0, 1.5) / 1.5
    return np.clip(image, 0, 255).astype(np.uint8), masks


def near_duplicate(image: np.ndarray, scale: float = 0.9) -> np.ndarray:
    """A re-exported copy of a scan, as BUSI holds them: resized, slightly brighter, with a
    burned-in caliper mark. The near-duplicate grouping must put it with its original."""
    height, width = image.shape
    copy = cv2.resize(image, (round(width * scale), round(height * scale)), interpolation=cv2.INTER_AREA)
    copy = cv2.convertScaleAbs(copy, alpha=1.05, beta=4)
    cv2.drawMarker(copy, (copy.shape[1] // 8, copy.shape[0] // 8), 255, cv2.MARKER_CROSS, max(3, width // 20), 1)
    return copy


def write_dataset(out: str | os.PathLike, per_class: int, seed: int = 0, size: tuple[int, int] = (256, 256), *,
                  copies: int = 0) -> Path:
    """Write ``per_class`` phantoms per class in the BUSI layout; returns the dataset folder.

    ``copies`` > 0 adds that many near-duplicates per class (``near_duplicate`` of phantoms 1,
    2, ..., numbered after the originals, masks resized alike), so that tests can check that
    splits keep copies of one lesion together."""
    if per_class < 1:
        raise ParameterError(f"per_class must be at least 1, got {per_class}.")
    if not 0 <= copies <= per_class:
        raise ParameterError(f"copies must be between 0 and per_class ({per_class}), got {copies}.")
    root = Path(out) / DATASET_FOLDER
    root.mkdir(parents=True, exist_ok=True)
    (root / SYNTHETIC_MARKER).write_text("Synthetic ultrasound-like phantoms made by busi.synth: not scans of patients.\n")
    for label in CLASSES:
        folder = root / label
        folder.mkdir(parents=True, exist_ok=True)
        phantoms = [make_phantom(label, seed * 1_000_003 + number, size) for number in range(1, per_class + 1)]
        for number, (image, masks) in enumerate(phantoms, start=1):
            _write_scan(folder, f"{label} ({number})", image, masks or [np.zeros(size, bool)])
        for number, (image, masks) in enumerate(phantoms[:copies], start=per_class + 1):
            copy = near_duplicate(image)
            copy_masks = [cv2.resize(mask.astype(np.uint8), copy.shape[::-1], interpolation=cv2.INTER_NEAREST) > 0
                          for mask in masks or [np.zeros(size, bool)]]
            _write_scan(folder, f"{label} ({number})", copy, copy_masks)
    return root


def _write_scan(folder: Path, name: str, image: np.ndarray, masks: list[np.ndarray]) -> None:
    (folder / f"{name}.png").write_bytes(encode_png(image))
    for mask_number, mask in enumerate(masks):
        suffix = "_mask" if mask_number == 0 else f"_mask_{mask_number}"
        (folder / f"{name}{suffix}.png").write_bytes(encode_png(mask))


def ensure_demo_dataset(cache_dir: str | os.PathLike | None = None) -> Path:
    """The embedded demo dataset, generated once into the cache; returns its dataset folder.

    It is written to a temporary folder and renamed into place, so a crash or a second process
    never leaves a half-written dataset behind.
    """
    cache = Path(cache_dir) if cache_dir else default_cache_dir()
    final = cache / f"demo-v{DEMO_VERSION}-seed{DEMO_SEED}-n{DEMO_PER_CLASS}"
    if not (final / DATASET_FOLDER).is_dir():
        cache.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=cache, prefix=".demo-"))
        try:
            write_dataset(staging, DEMO_PER_CLASS, DEMO_SEED)
            staging.rename(final)
        except OSError:
            if not (final / DATASET_FOLDER).is_dir():  # another process did not win the race
                raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return final / DATASET_FOLDER
