"""Near-duplicate detection: exact copies, re-saved or annotated copies, and frames of one lesion.

Two cues must agree. Coarse appearance (a 16 px thumbnail) alone links unrelated scans, because
every breast ultrasound shares the bright-skin-to-dark-depth profile; fine structure (a 32 px
thumbnail with that profile removed by a high-pass) alone is too noisy. Thresholds were chosen by
inspecting pairs of the real BUSI data around each cut-off (see BENCHMARKS.md).
"""

from __future__ import annotations

from collections import defaultdict

import cv2
import numpy as np

COARSE_SIDE = 16
STRUCTURE_SIDE = 32
COARSE_MIN_CORRELATION = 0.93
STRUCTURE_MIN_CORRELATION = 0.45
_ROWS_PER_BLOCK = 1024  # bounds the pairwise matrix memory for large folders


def _unit(vector: np.ndarray) -> np.ndarray:
    centred = vector - vector.mean()
    return centred / (np.linalg.norm(centred) + 1e-9)


def describe(grey: np.ndarray) -> np.ndarray:
    """uint8 grey (H, W) -> float32 descriptor: unit coarse thumbnail, then unit structure."""
    image = grey.astype(np.float32)
    coarse = cv2.resize(image, (COARSE_SIDE, COARSE_SIDE), interpolation=cv2.INTER_AREA)
    fine = cv2.resize(image, (STRUCTURE_SIDE, STRUCTURE_SIDE), interpolation=cv2.INTER_AREA)
    structure = fine - cv2.GaussianBlur(fine, (0, 0), STRUCTURE_SIDE / 8)
    return np.concatenate([_unit(coarse.ravel()), _unit(structure.ravel())]).astype(np.float32)


def _near_duplicate_pairs(descriptors: np.ndarray) -> list[tuple[int, int]]:
    split = COARSE_SIDE * COARSE_SIDE
    coarse, structure = descriptors[:, :split], descriptors[:, split:]
    pairs = []
    for start in range(0, len(descriptors), _ROWS_PER_BLOCK):
        rows = slice(start, start + _ROWS_PER_BLOCK)
        linked = (coarse[rows] @ coarse.T >= COARSE_MIN_CORRELATION) & (
            structure[rows] @ structure.T >= STRUCTURE_MIN_CORRELATION
        )
        for i, j in zip(*np.nonzero(linked)):
            if start + i < j:
                pairs.append((start + i, int(j)))
    return pairs


def group_near_duplicates(descriptors: np.ndarray) -> np.ndarray:
    """(N, D) descriptors -> int group id per item; linked items share a group (transitively).

    Ids count from 0 in order of each group's first member, so they are stable for a stable
    input order.
    """
    parent = list(range(len(descriptors)))

    def root(item: int) -> int:
        while parent[item] != item:
            parent[item] = parent[parent[item]]
            item = parent[item]
        return item

    for first, second in _near_duplicate_pairs(descriptors):
        parent[root(second)] = root(first)
    ids: dict[int, int] = {}
    return np.array([ids.setdefault(root(item), len(ids)) for item in range(len(parent))], int)


def find_label_conflicts(labels: list[str], groups: np.ndarray) -> dict[int, list[int]]:
    """Groups whose members carry more than one label -> member positions."""
    members: dict[int, list[int]] = defaultdict(list)
    for position, group in enumerate(groups):
        members[int(group)].append(position)
    return {
        group: positions
        for group, positions in members.items()
        if len({labels[p] for p in positions}) > 1
    }
