"""How often the familiarity check (busi/ood.py) flags scans, of the kind a model learnt from and not.

    .venv/bin/python -m bench.bench_ood [DATA_DIR]

Real data: the study's group-aware split (seed 0) of DATA_DIR; the limit is fitted on its
training and validation scans as training does, then the test scans, 60 phantoms and two
photographs are measured. Phantoms: the same on 120 phantoms, then the real scans are measured.
No classifier is trained: the check does not depend on one.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import cv2
import numpy as np
from sklearn.datasets import load_sample_image

from busi import synth
from busi.data import index_dataset, load_scan
from busi.ood import Familiarity, encode, encoded_scans
from busi.split import three_way_split

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "busi"


def _fitted(folder: Path) -> tuple[Familiarity, np.ndarray, list[np.ndarray]]:
    """The check fitted on a folder's split, its test scans' features, and all its scans."""
    index = index_dataset(folder)
    parts = three_way_split(index.labels, index.groups, seed=0)
    features = encoded_scans(index)
    return Familiarity.fit(features[parts == "train"], features[parts == "val"]), features[parts == "test"], \
        [load_scan(record) for record in index.records]


def _flagged(familiarity: Familiarity, features: np.ndarray) -> str:
    unusual = familiarity.distance(features) > familiarity.limit
    return f"{unusual.sum()} of {len(unusual)} ({unusual.mean():.0%})"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("data", nargs="?", type=Path, default=DEFAULT_DATA)
    args = parser.parse_args()
    photos = [cv2.cvtColor(load_sample_image(name), cv2.COLOR_RGB2GRAY) for name in ("china.jpg", "flower.jpg")]
    phantoms = [synth.make_phantom(label, 900 + n, (256, 256))[0] for label in ("benign", "malignant", "normal") for n in range(20)]
    real, real_test, real_scans = _fitted(args.data)
    print(f"fitted on {args.data}: limit {real.limit:.3f}")
    print(f"  its test scans flagged:   {_flagged(real, real_test)}")
    print(f"  phantoms flagged:         {_flagged(real, encode(phantoms))}")
    print(f"  photographs flagged:      {_flagged(real, encode(photos))}")
    phantom_folder = synth.write_dataset(tempfile.mkdtemp(), per_class=40, seed=0)
    fake, fake_test, _ = _fitted(phantom_folder)
    print(f"fitted on 120 phantoms: limit {fake.limit:.3f}")
    print(f"  its test phantoms flagged: {_flagged(fake, fake_test)}")
    print(f"  real scans flagged:        {_flagged(fake, encode(real_scans))}")
    print(f"  photographs flagged:       {_flagged(fake, encode(photos))}")


if __name__ == "__main__":
    main()
