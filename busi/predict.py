"""Prediction with exactly the training-time preprocessing, and Grad-CAM on top of it.

A ``Classifier`` is loaded from a run folder (its best checkpoint) and carries the weights with
their preprocessing, class names and the statistics of the training inputs, so nothing is
guessed at prediction time. One instance may be shared by several threads (the app caches it
for every session): forward passes are serialised by a lock and never change the model.
"""

from __future__ import annotations

import csv
import io
import os
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import cv2
import numpy as np
import torch

from busi.config import train_config_from_saved
from busi.data import UPLOAD_TYPES
from busi.errors import BusiError, ImageError, ParameterError
from busi.explain import GradCam
from busi.imageio import (
    Source,
    colour_fraction,
    is_dicom,
    read_image,
    require_scan_size,
    to_grey,
    write_atomic,
)
from busi.metrics import apply_temperature
from busi.model import IMAGENET, Normalisation, batched_logits, build_model, last_conv_stage, to_model_tensor
from busi.ood import Familiarity, encode
from busi.preprocess import Pipeline, PreprocessConfig, to_scan_geometry
from busi.runs import Provenance, RunFolder, load_checkpoint

# Grey scans with a few coloured calipers stay far below this; photographs and Doppler do not.
COLOUR_WARNING_FRACTION = 0.05
# Brightness or contrast this many standard deviations from the training inputs is unusual.
OUTLIER_Z = 4.0

ImageInput = Source | np.ndarray


@dataclass(frozen=True)
class Prediction:
    label: str
    probabilities: dict[str, float]
    model_input: np.ndarray  # uint8 (size, size) or (size, size, 3): what the model saw
    warnings: tuple[str, ...]
    # How unlike the training scans the scan is (busi.ood), None for models trained before it was recorded.
    distance: float | None = None
    unusual: bool = False


@dataclass(frozen=True)
class Prepared:
    """A scan ready for the model (``Classifier.prepare``)."""

    grey: np.ndarray  # uint8 (H, W)
    coloured: float  # the fraction of clearly coloured pixels it came with
    model_input: np.ndarray


@dataclass(frozen=True)
class Explanation:
    class_name: str
    heat: np.ndarray  # float32 (H, W) in [0, 1] over the original scan
    scan: np.ndarray  # uint8 grey (H, W)
    probabilities: dict[str, float]

    def shrunk(self, side: int) -> Explanation:
        """The same explanation with the scan and its heatmap scaled down so that neither side
        exceeds ``side`` pixels: what a page keeps per scan, instead of full-size frames."""
        height, width = self.scan.shape
        scale = side / max(height, width)
        if scale >= 1:
            return self
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        return replace(self, heat=cv2.resize(self.heat, size, interpolation=cv2.INTER_AREA),
                       scan=cv2.resize(self.scan, size, interpolation=cv2.INTER_AREA))


def _as_grey(image: ImageInput) -> tuple[np.ndarray, float]:
    """A grey scan and the fraction of clearly coloured pixels it came with."""
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or not (image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 3)):
            raise ImageError(f"Expected a uint8 grey (H, W) or RGB (H, W, 3) array, got {image.dtype} {image.shape}.")
        pixels, source = image, "the scan"
    else:
        pixels, source = read_image(image), image
    return require_scan_size(to_grey(pixels), source), colour_fraction(pixels)


class Classifier:
    def __init__(self, state: dict, source: Path, device: str | torch.device = "cpu") -> None:
        self.source = source
        try:
            self.train_config = train_config_from_saved(state["train_config"])
            self.preprocess = PreprocessConfig.from_saved(state["preprocess_config"])
        except (BusiError, TypeError) as error:
            raise BusiError(f"'{source}' holds settings this version cannot read ({error}): retrain the run.") from error
        self.classes = tuple(state["classes"])
        self.input_stats = state.get("input_stats", {})
        self.temperature = float(state.get("temperature", 1.0))  # fitted on validation scans when trained
        self.normalisation = Normalisation.from_dict(state["normalisation"]) if "normalisation" in state else IMAGENET
        self.familiarity = Familiarity.from_state(state["familiarity"]) if "familiarity" in state else None
        self.trained_on = Provenance.from_dict(state["trained_on"]) if isinstance(state.get("trained_on"), dict) else None
        self.device = torch.device(device)
        self.pipeline = Pipeline(self.preprocess)
        model = build_model(self.train_config.arch, len(self.classes))
        try:
            model.load_state_dict(state["model"])
        except RuntimeError as error:
            raise BusiError(f"The weights in '{source}' do not fit a {self.train_config.arch} with "
                            f"{len(self.classes)} classes: the checkpoint is damaged or from another model.") from error
        self.model = model.to(self.device).eval()
        self._lock = threading.Lock()

    @property
    def training_warning(self) -> str | None:
        """Said with every prediction of a model that learnt from phantoms: its answers on real scans mean nothing."""
        if self.trained_on is None or not self.trained_on.synthetic:
            return None
        return (f"This model learnt from {self.trained_on.scans} synthetic phantoms, not from scans of patients: its "
                "predictions on real scans mean nothing. Train the recommended recipe on real scans first.")

    def _warnings(self, model_input: np.ndarray, coloured: float, distance: float | None) -> tuple[str, ...]:
        found = []
        if distance is not None and distance > self.familiarity.limit:
            found.append(f"This scan looks unlike the scans the model learnt from (a distance of {distance:.2f}, where 99 % "
                         f"of its validation scans stay within {self.familiarity.limit:.2f}): its prediction is unreliable.")
        if coloured >= COLOUR_WARNING_FRACTION:
            found.append(f"{coloured:.0%} of the pixels are coloured; ultrasound scans are grey. This may not be a "
                         "breast ultrasound scan, so the prediction is meaningless.")
        stats = self.input_stats
        if stats:
            for name, value in (("brightness", model_input.mean()), ("contrast", model_input.std())):
                spread = max(stats[f"{name}_sd"], 1e-6)
                if abs(value - stats[f"{name}_mean"]) / spread > OUTLIER_Z:
                    found.append(f"The scan's {name} ({value:.0f}) is far outside what the model was trained on "
                                 f"({stats[f'{name}_mean']:.0f} ± {stats[f'{name}_sd']:.0f}): treat the prediction with caution.")
        return tuple(found)

    def predict(self, image: ImageInput) -> Prediction:
        return self.predict_many([image])[0]

    def predict_many(self, images: Sequence[ImageInput], batch_size: int = 16) -> list[Prediction]:
        """Predictions in order; raises on the first unreadable image (see ``predict_files``)."""
        return self.predict_prepared([self.prepare(image) for image in images], batch_size)

    def prepare(self, image: ImageInput) -> Prepared:
        """A scan decoded and preprocessed for the model: the part of a prediction that needs no
        model, safe to run in worker threads (``busi.archive`` does); raises ImageError."""
        grey, coloured = _as_grey(image)
        return Prepared(grey, coloured, self.pipeline.model_input(grey))

    def predict_prepared(self, prepared: Sequence[Prepared], batch_size: int = 16) -> list[Prediction]:
        if not prepared:
            return []
        inputs = np.stack([scan.model_input for scan in prepared])
        probabilities = self.probabilities(inputs, batch_size)
        distances = self.distances([scan.grey for scan in prepared])
        return [Prediction(self.classes[int(row.argmax())], dict(zip(self.classes, map(float, row))), scan.model_input,
                           self._warnings(scan.model_input, scan.coloured, distance), distance,
                           distance is not None and distance > self.familiarity.limit)
                for row, scan, distance in zip(probabilities, prepared, distances)]

    def probabilities(self, inputs: np.ndarray, batch_size: int = 16) -> np.ndarray:
        """float (N, C) for ready uint8 model inputs (N, size, size[, 3])."""
        with self._lock:
            logits = batched_logits(self.model, inputs, self.device, batch_size, self.normalisation)
        return torch.softmax(logits / self.temperature, 1).numpy()

    def distances(self, scans: Sequence[np.ndarray]) -> list[float | None]:
        """Each grey scan's distance from the training scans (``busi.ood``); None for a model
        trained before they were recorded."""
        if self.familiarity is None:
            return [None] * len(scans)
        with self._lock:
            return [float(distance) for distance in self.familiarity.distance(encode(scans))]

    def explain(self, image: ImageInput, class_name: str | None = None) -> Explanation:
        """Grad-CAM for ``class_name`` (default: the predicted class) at the scan's resolution."""
        if class_name is not None and class_name not in self.classes:
            raise ParameterError(f"class_name must be one of {', '.join(self.classes)}, got '{class_name}'.")
        grey, _ = _as_grey(image)
        model_input = self.pipeline.model_input(grey)
        x = to_model_tensor(torch.from_numpy(model_input[None]).to(self.device), self.normalisation)
        layer = last_conv_stage(self.model, self.train_config.arch)
        with self._lock, GradCam(self.model, layer) as cam:
            heat, logits = cam(x, None if class_name is None else self.classes.index(class_name))
        probabilities = apply_temperature(logits[None], self.temperature)[0]
        chosen = class_name or self.classes[int(probabilities.argmax())]
        heat = np.clip(to_scan_geometry(heat, grey.shape, keep_aspect=self.preprocess.keep_aspect), 0, 1)
        return Explanation(chosen, heat, grey, dict(zip(self.classes, map(float, probabilities))))


def checkpoint_of(run: str | os.PathLike) -> Path:
    """The checkpoint a run folder (or a checkpoint file) is used through: its model, else its last epoch."""
    path = Path(run)
    if path.is_file():
        return path
    if not path.is_dir():
        raise BusiError(f"'{path}' is neither a run folder nor a checkpoint file.")
    return RunFolder(path).model_file()


def load_classifier(run: str | os.PathLike, device: str | torch.device = "cpu") -> Classifier:
    checkpoint = checkpoint_of(run)
    return Classifier(load_checkpoint(checkpoint), checkpoint, device)


def predict(run: str | os.PathLike | Classifier, image: ImageInput) -> Prediction:
    classifier = run if isinstance(run, Classifier) else load_classifier(run)
    return classifier.predict(image)


def is_scan_file(path: Path) -> bool:
    """Whether a file found in a folder is a scan to classify: an image or DICOM file, not a mask."""
    return ("_mask" not in path.stem.lower() and not path.name.startswith(".")
            and (path.suffix.lower().lstrip(".") in UPLOAD_TYPES or (not path.suffix and is_dicom(path))))


def image_files(paths: Iterable[str | os.PathLike]) -> list[Path]:
    """Files as given, and the scans inside folders (recursively, masks left out), in order."""
    found = []
    for path in map(Path, paths):
        if path.is_dir():
            found += sorted(p for p in path.rglob("*") if p.is_file() and is_scan_file(p))
        elif path.exists():
            found.append(path)
        else:
            raise BusiError(f"'{path}' does not exist.")
    return found


def prediction_row(path: str, outcome: Prediction | BusiError, classes: Sequence[str]) -> dict[str, str]:
    """One CSV row: the scan, its class and probabilities and warnings, or the error that stopped it."""
    row = {"path": path, "label": "", **{f"p_{c}": "" for c in classes}, "warnings": "", "error": ""}
    if isinstance(outcome, BusiError):
        row["error"] = str(outcome)
    else:
        row["label"] = outcome.label
        row |= {f"p_{c}": f"{p:.6f}" for c, p in outcome.probabilities.items()}
        row["warnings"] = " | ".join(outcome.warnings)
    return row


def predict_files(classifier: Classifier, paths: Sequence[Path]) -> list[dict[str, str]]:
    """One CSV row per file; an unreadable file gets its error in the row instead of stopping
    the batch."""
    rows = []
    for path in paths:
        try:
            outcome = classifier.predict(path)
        except ImageError as error:
            outcome = error
        rows.append(prediction_row(str(path), outcome, classifier.classes))
    return rows


def rows_to_csv(rows: list[dict[str, str]]) -> str:
    buffer = io.StringIO()
    if rows:
        writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    return buffer.getvalue()


def write_rows_csv(path: str | os.PathLike, rows: list[dict[str, str]]) -> None:
    write_atomic(path, rows_to_csv(rows))
