"""A dataset index as the arrays a model trains and is scored on, preprocessed once and cached.

Row i of every array is ``index.records[i]``. The scans go through the same ``Pipeline`` as
prediction; the lesion masks are training-only supervision and never model input.
"""

from __future__ import annotations

import numpy as np

from busi.cache import cached_inputs
from busi.data import CLASSES, DatasetIndex, load_mask, load_scan
from busi.preprocess import Pipeline, PreprocessConfig, resize


def model_inputs(index: DatasetIndex, preprocess: PreprocessConfig) -> np.ndarray:
    """uint8 (N, size, size[, 3]): every scan through the deterministic pipeline, cached on disk."""
    pipeline = Pipeline(preprocess)
    return cached_inputs(preprocess.to_json(), [record.path for record in index.records],
                         lambda: np.stack([pipeline.model_input(load_scan(record)) for record in index.records]))


def class_numbers(index: DatasetIndex) -> np.ndarray:
    """int (N,): each scan's class as its position in ``CLASSES``."""
    return np.array([CLASSES.index(label) for label in index.labels], dtype=int)


def masks_known(index: DatasetIndex) -> np.ndarray:
    """bool (N,): whether each scan's lesion mask is known. A normal scan's is (it has no lesion);
    a lesion scan filed without a mask is not, and must not teach that it has no lesion."""
    return np.array([record.label == "normal" or bool(record.mask_paths) for record in index.records])


def lesion_masks(index: DatasetIndex, preprocess: PreprocessConfig) -> np.ndarray:
    """uint8 (N, size, size), 255 inside the lesion, resized like the scans; cached on disk."""
    paths = [path for record in index.records for path in (record.path, *record.mask_paths)]

    def compute() -> np.ndarray:
        return np.stack([resize(load_mask(record), preprocess.size, keep_aspect=preprocess.keep_aspect)
                         for record in index.records]).astype(np.uint8) * 255

    return cached_inputs(preprocess.to_json() + "masks", paths, compute)
