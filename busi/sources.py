"""Which folders and files the dashboard may read.

The app is a web server: a path typed into it is read with the server's rights. Only paths
under configured roots are accepted: the demo cache, ``BUSI_DATA`` and the roots listed in
``BUSI_ROOTS`` (separated by the OS path separator). Links are followed before the check, and
every refusal is one line that says nothing about what lies outside the roots.
"""

from __future__ import annotations

import os
from pathlib import Path

from busi.cache import default_cache_dir
from busi.errors import DatasetError
from busi.synth import ensure_demo_dataset

DEMO_SOURCE = "Synthetic demo data"
# The folder the person running the app set up (BUSI_DATA), named for visitors, who need neither
# the setting's name nor the server's path.
CONFIGURED_SOURCE = "Dataset set up for this app"
# Longer than any real path, short enough that a pasted essay is not handed to the file system.
MAX_PATH_CHARACTERS = 1024
# A weights file larger than this is not a classifier's backbone (ResNet-50's is about 100 MB).
MAX_WEIGHTS_BYTES = 1 << 30


def allowed_roots() -> tuple[Path, ...]:
    roots = [default_cache_dir()]
    if os.environ.get("BUSI_DATA"):
        roots.append(Path(os.environ["BUSI_DATA"]))
    roots += [Path(p) for p in os.environ.get("BUSI_ROOTS", "").split(os.pathsep) if p]
    return tuple(root.expanduser().resolve() for root in roots)


def _resolve_inside(text: str, roots: tuple[Path, ...], what: str) -> Path:
    """The path ``text`` names, links followed, if it lies under one of ``roots``."""
    text = text.strip()
    if not text:
        raise DatasetError(f"Type the path of a {what}.")
    if "\0" in text or len(text) > MAX_PATH_CHARACTERS:
        raise DatasetError(f"That is not a path of a {what}: check what was pasted.")
    try:
        path = Path(text).expanduser().resolve()  # resolves '..' and links before the check
    except (OSError, RuntimeError, ValueError):
        raise DatasetError(f"That is not a path of a {what}: check what was pasted.") from None
    if not any(path.is_relative_to(root) for root in roots):
        raise DatasetError("That path is outside the folders this app may read. Ask whoever runs the app to add "
                           "its folder to the allowed roots (BUSI_ROOTS).")
    return path


def resolve_data_folder(text: str, roots: tuple[Path, ...] | None = None) -> Path:
    """The folder named by ``text`` if it lies under an allowed root; otherwise a clear refusal."""
    folder = _resolve_inside(text, allowed_roots() if roots is None else roots, "dataset folder")
    try:
        is_folder = folder.is_dir()
    except OSError:
        is_folder = False
    if not is_folder:
        raise DatasetError(f"'{folder.name}' is not a folder.")
    return folder


def resolve_weights_file(text: str, roots: tuple[Path, ...] | None = None) -> Path:
    """The weights file named by ``text`` if it lies under an allowed root and could be weights."""
    path = _resolve_inside(text, allowed_roots() if roots is None else roots, "weights file")
    try:
        size = path.stat().st_size if path.is_file() else None
    except OSError:
        size = None
    if size is None:
        raise DatasetError(f"'{path.name}' is not a file in the folders this app may read.")
    if size > MAX_WEIGHTS_BYTES:
        raise DatasetError(f"'{path.name}' is {size / (1 << 30):.1f} GB, too large to be a classifier's weights.")
    return path


def data_sources() -> dict[str, Path]:
    """The named sources offered by default: the folder BUSI_DATA names, when set (first, so it is
    the default), and the demo data."""
    sources = {CONFIGURED_SOURCE: Path(os.environ["BUSI_DATA"]).expanduser()} if os.environ.get("BUSI_DATA") else {}
    return sources | {DEMO_SOURCE: ensure_demo_dataset()}
