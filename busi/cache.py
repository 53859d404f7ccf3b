"""The on-disk cache: the demo dataset and preprocessed model inputs.

Preprocessing every scan costs seconds per run; cross-validation and repeated runs would redo it
each time. The inputs are stored under a key made of the preprocessing config and each scan's
path, size and modification time, so a changed setting or an edited file never reuses stale
pixels.
"""

from __future__ import annotations

import hashlib
import io
import os
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np

from busi.imageio import write_atomic


def default_cache_dir() -> Path:
    return Path(os.environ.get("BUSI_CACHE", Path.home() / ".cache" / "busi"))


def _inputs_key(config_json: str, paths: list[Path]) -> str:
    digest = hashlib.sha256(config_json.encode())
    for path in paths:
        status = path.stat()
        digest.update(f"\0{path.resolve()}\0{status.st_size}\0{status.st_mtime_ns}".encode())
    return digest.hexdigest()[:32]


def cached_inputs(config_json: str, paths: list[Path], compute: Callable[[], np.ndarray],
                  cache_dir: str | os.PathLike | None = None) -> np.ndarray:
    """``compute()`` the first time for this config and these files, the stored array after."""
    directory = Path(cache_dir) if cache_dir else default_cache_dir()
    file = directory / "inputs" / f"{_inputs_key(config_json, paths)}.npy"
    if file.is_file():
        try:
            return np.load(file, allow_pickle=False)
        except (OSError, ValueError):
            file.unlink(missing_ok=True)  # a damaged entry is recomputed below
    images = compute()
    buffer = io.BytesIO()
    np.save(buffer, images, allow_pickle=False)
    try:
        write_atomic(file, buffer.getvalue())
    except OSError as error:  # a read-only or full cache costs speed only, never the run
        warnings.warn(f"Could not cache preprocessed inputs in {directory}: {error}", stacklevel=2)
    return images
