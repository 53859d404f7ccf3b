"""Which data folders the dashboard may read.

The app is a web server: a folder typed into it is read with the server's rights. Only folders
under configured roots are accepted: the demo cache, ``BUSI_DATA`` and the roots listed in
``BUSI_ROOTS`` (separated by the OS path separator).
"""

from __future__ import annotations

import os
from pathlib import Path

from busi.cache import default_cache_dir
from busi.errors import DatasetError
from busi.synth import ensure_demo_dataset

DEMO_SOURCE = "Synthetic demo data"


def allowed_roots() -> list[Path]:
    roots = [default_cache_dir()]
    if os.environ.get("BUSI_DATA"):
        roots.append(Path(os.environ["BUSI_DATA"]))
    roots += [Path(p) for p in os.environ.get("BUSI_ROOTS", "").split(os.pathsep) if p]
    return [root.expanduser().resolve() for root in roots]


def resolve_data_folder(text: str, roots: list[Path] | None = None) -> Path:
    """The folder named by ``text`` if it lies under an allowed root; otherwise a clear refusal."""
    roots = allowed_roots() if roots is None else roots
    if not text.strip():
        raise DatasetError("Type the path of a dataset folder.")
    folder = Path(text.strip()).expanduser().resolve()  # resolves '..' and links before the check
    if not any(folder.is_relative_to(root) for root in roots):
        raise DatasetError(f"'{folder}' is outside the folders this app may read ({', '.join(map(str, roots))}). "
                           "Ask whoever runs the app to add it to BUSI_ROOTS.")
    if not folder.is_dir():
        raise DatasetError(f"'{folder}' is not a folder.")
    return folder


def data_sources() -> dict[str, Path]:
    """The named sources offered by default: BUSI_DATA when set (first, so it is the default),
    and the demo data."""
    sources = {"BUSI_DATA": Path(os.environ["BUSI_DATA"]).expanduser()} if os.environ.get("BUSI_DATA") else {}
    return sources | {DEMO_SOURCE: ensure_demo_dataset()}
