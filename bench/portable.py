"""A copy of the dataset small enough to carry to a lent GPU machine (64 MiB in all may travel;
the BUSI scans take 111 MB): every scan in grey with its longer side shrunk to ``--side`` pixels,
its masks shrunk alike, the public layout and file names kept.

    .venv/bin/python -m bench.portable --out .gpu/busi [--side 320] [--data ../shared/busi]

The recipes shrink scans to 224 or 128 px first, so models see nearly the same pixels as from the
originals (area averaging twice instead of once); near-duplicate groups are found again on the copy.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from bench.accuracy import DEFAULT_DATA
from busi.data import index_dataset, load_scan
from busi.imageio import encode_png, read_mask
from busi.preprocess import rescale


def write_portable_copy(data: Path, out: Path, side: int) -> int:
    """Bytes written for every indexed scan of ``data`` and its masks under ``out``."""
    index = index_dataset(data)
    written = 0
    for record in index.records:
        target = out / "Dataset_BUSI_with_GT" / record.label
        target.mkdir(parents=True, exist_ok=True)
        for path, image in ((record.path, load_scan(record)), *((mask, read_mask(mask)) for mask in record.mask_paths)):
            payload = encode_png(shrunk(image, side))
            (target / path.name).write_bytes(payload)
            written += len(payload)
    return written


def shrunk(image: np.ndarray, side: int) -> np.ndarray:
    """A grey scan (area averaging) or bool mask (nearest neighbour) with its longer side at most ``side``."""
    height, width = image.shape
    scale = side / max(height, width)
    if scale >= 1:
        return image
    return rescale(image, max(1, round(width * scale)), max(1, round(height * scale)))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--side", type=int, default=320)
    args = parser.parse_args()
    written = write_portable_copy(args.data, args.out, args.side)
    print(f"{written / 2**20:.1f} MiB written to {args.out}")


if __name__ == "__main__":
    main()
