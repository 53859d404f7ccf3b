"""Is a scan like the ones a model learnt from? Its distance from the training scans in the
feature space of an ImageNet network, with a limit calibrated on the validation scans.

A model answers for any image, and a confident answer on a scan unlike its training data (a
phantom-trained model on a patient's scan, a photograph, another organ) means nothing. The
features of a small ImageNet network (EfficientNet-Lite0, whose weights install with the
package) describe what an image looks like whatever the classifier learnt, so every model,
pretrained or not, is checked the same way. A scan's distance is that of its normalised
features to its k-th nearest training scan (Sun et al., "Out-of-distribution detection with deep
nearest neighbors", ICML 2022); the limit is the distance that 99 % of the validation scans,
which the model never trained on, stay within. Measured on BUSI (BENCHMARKS.md): a BUSI model
flags 1 % of its test scans, most phantoms and every photograph; a phantom model flags every real scan.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from busi.cache import cached_inputs
from busi.data import DatasetIndex, load_scan
from busi.errors import BusiError
from busi.model import TF_INCEPTION, batched_logits_and_features, build_model
from busi.preprocess import Pipeline, PreprocessConfig

ENCODER = "efficientnet_lite0"
# The encoder sees the scan plainly resized: no enhancement that a classifier's recipe might choose.
ENCODER_INPUT = PreprocessConfig(size=224, clahe=False, median_ksize=0, gaussian_ksize=0)
NEIGHBOUR = 5  # the k of the k-th nearest training scan
QUANTILE = 0.99  # share of the validation scans that must stay within the limit


@functools.cache
def _encoder() -> torch.nn.Module:
    return build_model(ENCODER, 3, "imagenet").eval()  # its random 3-class head is never read


def encode(scans: Sequence[np.ndarray], batch_size: int = 32) -> np.ndarray:
    """float32 (N, 1280): unit-length ImageNet features of uint8 grey scans of any size."""
    pipeline = Pipeline(ENCODER_INPUT)
    inputs = np.stack([pipeline.model_input(scan) for scan in scans])
    _, features = batched_logits_and_features(_encoder(), ENCODER, inputs, torch.device("cpu"), batch_size, TF_INCEPTION)
    features = features.numpy().astype(np.float32)
    return features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)


def encoded_scans(index: DatasetIndex) -> np.ndarray:
    """``encode`` of every scan of a dataset, cached on disk like the model inputs."""
    return cached_inputs(ENCODER_INPUT.to_json() + ENCODER, [record.path for record in index.records],
                         lambda: encode([load_scan(record) for record in index.records]))


@dataclass(frozen=True)
class Familiarity:
    training: np.ndarray  # float16 (N, D): the training scans' unit-length features
    limit: float  # the distance within which QUANTILE of the validation scans stay

    @classmethod
    def fit(cls, training: np.ndarray, validation: np.ndarray) -> Familiarity:
        """From the encoded training scans, the limit set on the encoded validation scans and on
        each training scan's distance from the others (it is left out of its own neighbours):
        both are scans of the kind the model knows, and together they steady the quantile when
        the validation part is small."""
        if len(training) <= NEIGHBOUR or not len(validation):
            raise BusiError("Too few training or validation scans to tell typical scans from unusual ones.")
        unlimited = cls(training.astype(np.float16), np.inf)
        left_out = unlimited.distance(training, skip=1)
        return cls(unlimited.training, float(np.quantile(np.r_[unlimited.distance(validation), left_out], QUANTILE)))

    def distance(self, features: np.ndarray, skip: int = 0) -> np.ndarray:
        """float (N,): from 0 (a training scan itself) to 2 (opposite); typical scans of the training
        data lie well within ``limit``. ``skip`` nearest neighbours are passed over (a scan's own
        entry, when measuring training scans)."""
        similarity = features.astype(np.float32) @ self.training.astype(np.float32).T
        nearest = -np.sort(-similarity, axis=1)[:, min(NEIGHBOUR + skip, self.training.shape[0]) - 1]
        return np.sqrt(np.maximum(2 - 2 * nearest, 0.0))

    def to_state(self) -> dict[str, torch.Tensor]:
        """Tensors for a checkpoint (loadable with ``weights_only``)."""
        return {"training": torch.from_numpy(self.training), "limit": torch.tensor(self.limit)}

    @classmethod
    def from_state(cls, state: dict) -> Familiarity:
        try:
            return cls(state["training"].numpy(), float(state["limit"]))
        except (KeyError, AttributeError, TypeError) as error:
            raise BusiError(f"The checkpoint's record of its training scans is unreadable ({error}): retrain the run.") from error
