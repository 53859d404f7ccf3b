"""Reading a BUSI-style dataset folder into an index of scans, with a validation report.

Expected layout (the public download)::

    ROOT/Dataset_BUSI_with_GT/{benign,malignant,normal}/NAME.png, NAME_mask.png, NAME_mask_1.png

ROOT itself may also be the folder holding the class folders. Problems in the folder become
findings in the report rather than exceptions, so one bad file never hides the rest.
"""

from __future__ import annotations

import csv
import io
import math
import os
import re
from collections import Counter
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from busi import duplicates
from busi.errors import DatasetError, ImageError
from busi.imageio import (
    COLOUR_FRACTION_MIN,
    colour_fraction,
    read_image,
    read_mask,
    read_scan,
    require_scan_size,
    to_grey,
    write_atomic,
)

CLASSES = ("benign", "malignant", "normal")
LESION_CLASSES = ("benign", "malignant")
DATASET_FOLDER = "Dataset_BUSI_with_GT"
# Written by busi.synth beside the class folders of the phantoms it makes: whatever is trained on
# such a folder knows nothing about scans of patients, and every run says so.
SYNTHETIC_MARKER = "SYNTHETIC-PHANTOMS.txt"
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"})
# The file types a scan may be uploaded or predicted from (no leading dot): DICOM as well.
UPLOAD_TYPES = tuple(sorted({suffix.lstrip(".") for suffix in IMAGE_SUFFIXES} | {"dcm"}))
_MASK_NAME = re.compile(r"^(?P<scan>.+)_mask(?:_(?P<number>\d+))?$", re.IGNORECASE)
# Files that operating systems and tools drop into folders; not worth a finding.
_IGNORED_NAMES = frozenset({".ds_store", "thumbs.db", "desktop.ini"})

EXPECTED_LAYOUT = (
    "Expected a folder containing 'Dataset_BUSI_with_GT/' or the class folders themselves: "
    "benign/, malignant/, normal/, each with scans NAME.png and masks NAME_mask.png."
)

INDEX_COLUMNS = (
    "path",
    "label",
    "width",
    "height",
    "masks",
    "lesion_fraction",
    "group",
    "flags",
)


@dataclass(frozen=True)
class Finding:
    """One problem found in a dataset folder. Errors exclude a file; warnings keep it."""

    severity: str  # "error" | "warning"
    code: str
    path: str
    message: str


@dataclass(frozen=True)
class ScanRecord:
    path: Path
    label: str
    width: int
    height: int
    mask_paths: tuple[Path, ...]
    lesion_fraction: float  # NaN when the scan has no usable mask
    group: int
    flags: tuple[str, ...]

    @property
    def name(self) -> str:
        return self.path.stem


@dataclass
class DatasetIndex:
    root: Path
    records: list[ScanRecord]
    findings: list[Finding] = field(default_factory=list)

    @property
    def labels(self) -> list[str]:
        return [record.label for record in self.records]

    @property
    def groups(self) -> np.ndarray:
        return np.array([record.group for record in self.records], dtype=int)

    def class_counts(self) -> dict[str, int]:
        counts = Counter(self.labels)
        return {label: counts.get(label, 0) for label in CLASSES}

    def label_conflicts(self) -> dict[int, list[ScanRecord]]:
        conflicts = duplicates.find_label_conflicts(self.labels, self.groups)
        return {g: [self.records[p] for p in members] for g, members in conflicts.items()}

    def relative_path(self, record: ScanRecord) -> str:
        return record.path.relative_to(self.root).as_posix()

    def record(self, relative_path: str) -> ScanRecord:
        for record in self.records:
            if self.relative_path(record) == relative_path:
                return record
        raise DatasetError(f"'{relative_path}' is not in the dataset at '{self.root}' (moved or renamed?).")

    def scan_of(self, relative_path: str) -> str | None:
        """The scan a file of the dataset belongs to (the scan itself, or the scan of one of its
        masks), as a relative path; None for a file that is no indexed scan's."""
        for record in self.records:
            if relative_path in (self.relative_path(record), *(mask.relative_to(self.root).as_posix() for mask in record.mask_paths)):
                return self.relative_path(record)
        return None

    def group_members(self, record: ScanRecord) -> list[ScanRecord]:
        """The scan's near-duplicate group, the scan itself included."""
        return [other for other in self.records if other.group == record.group]

    def select(self, *, classes: Iterable[str] | None = None, flags: Iterable[str] | None = None,
               shared_groups_only: bool = False, group: int | None = None) -> list[int]:
        """Positions of the records that match every filter given; ``flags`` match if any is present."""
        classes = set(classes) if classes is not None else None
        flags = set(flags or ())
        sizes = Counter(record.group for record in self.records)
        return [
            position for position, record in enumerate(self.records)
            if (classes is None or record.label in classes)
            and (not flags or flags & set(record.flags))
            and (not shared_groups_only or sizes[record.group] > 1)
            and (group is None or record.group == group)
        ]

    def to_csv(self) -> str:
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(INDEX_COLUMNS)
        for record in self.records:
            writer.writerow(
                [
                    self.relative_path(record),
                    record.label,
                    record.width,
                    record.height,
                    len(record.mask_paths),
                    "" if math.isnan(record.lesion_fraction) else f"{record.lesion_fraction:.6f}",
                    record.group,
                    ";".join(record.flags),
                ]
            )
        return buffer.getvalue()

    def write_csv(self, path: str | os.PathLike) -> None:
        write_atomic(path, self.to_csv())


def _class_folders(folder: Path) -> dict[str, Path]:
    return {
        child.name.lower(): child
        for child in folder.iterdir()
        if child.is_dir() and child.name.lower() in CLASSES
    }


def find_dataset_root(path: str | os.PathLike) -> Path:
    """The folder that holds the class folders, given it or its parent."""
    folder = Path(path).expanduser()
    if not folder.exists():
        raise DatasetError(f"'{folder}' does not exist. {EXPECTED_LAYOUT}")
    if not folder.is_dir():
        raise DatasetError(f"'{folder}' is a file, not a folder. {EXPECTED_LAYOUT}")
    candidates = [folder] + [
        child for child in folder.iterdir() if child.is_dir() and child.name.lower() == DATASET_FOLDER.lower()
    ]
    for candidate in candidates:
        if _class_folders(candidate):
            return candidate
    raise DatasetError(f"'{folder}' is not a BUSI dataset: no class folders found. {EXPECTED_LAYOUT}")


@dataclass(frozen=True)
class _Listing:
    scans: list[tuple[str, Path, tuple[Path, ...]]]  # label, scan, its masks
    findings: list[Finding]


def _inside(path: Path, roots: tuple[Path, ...] | None) -> bool:
    """Whether ``path``, its links followed, lies under one of ``roots`` (None: no confinement)."""
    if roots is None:
        return True
    try:
        resolved = path.resolve()
    except (OSError, RuntimeError):  # a link loop, a name too long: not somewhere we may read
        return False
    return any(resolved.is_relative_to(root) for root in roots)


def _outside(path: Path) -> Finding:
    # The target is not named: a visitor must learn nothing about the world outside the roots.
    return Finding("warning", "outside_roots", str(path),
                   f"'{path.name}' leads outside the folders this app may read; skipped.")


def _list_files(root: Path, roots: tuple[Path, ...] | None) -> _Listing:
    findings: list[Finding] = []
    scans: list[tuple[str, Path, tuple[Path, ...]]] = []
    folders = _class_folders(root)
    for label, folder in list(folders.items()):
        if not _inside(folder, roots):
            findings.append(_outside(folder))
            del folders[label]
    for child in sorted(root.iterdir()):
        if child.is_dir() and child.name.lower() not in CLASSES:
            findings.append(
                Finding("warning", "unknown_folder", str(child), f"Folder '{child.name}' is not a class ({', '.join(CLASSES)}); ignored.")
            )
    for label in CLASSES:
        if label not in folders:
            findings.append(
                Finding("warning", "missing_class", str(root / label), f"No '{label}' folder: this dataset has no {label} scans.")
            )
            continue
        folder = folders[label]
        scan_paths: dict[str, Path] = {}
        mask_paths: dict[str, list[tuple[int, Path]]] = {}
        for file in sorted(folder.iterdir()):
            if file.name.lower() in _IGNORED_NAMES or file.name.startswith("."):
                continue
            if not _inside(file, roots):
                findings.append(_outside(file))
                continue
            if file.is_dir() or file.suffix.lower() not in IMAGE_SUFFIXES:
                findings.append(
                    Finding("warning", "unknown_file", str(file), f"'{file.name}' is not a PNG/JPEG/BMP/TIFF image; ignored.")
                )
                continue
            mask_match = _MASK_NAME.match(file.stem)
            if mask_match:
                number = int(mask_match["number"] or 0)
                mask_paths.setdefault(mask_match["scan"].lower(), []).append((number, file))
            else:
                scan_paths[file.stem.lower()] = file
        if not scan_paths:
            findings.append(Finding("warning", "empty_class", str(folder), f"Folder '{folder.name}' holds no scans."))
        for stem, masks in sorted(mask_paths.items()):
            if stem not in scan_paths:
                for _, mask in masks:
                    findings.append(
                        Finding("warning", "orphan_mask", str(mask), f"Mask '{mask.name}' has no scan of the same name; ignored.")
                    )
        for stem, scan in sorted(scan_paths.items()):
            masks = tuple(path for _, path in sorted(mask_paths.get(stem, [])))
            scans.append((label, scan, masks))
    return _Listing(scans, findings)


@dataclass(frozen=True)
class _Inspection:
    width: int = 0
    height: int = 0
    usable_masks: tuple[Path, ...] = ()
    lesion_fraction: float = math.nan
    flags: tuple[str, ...] = ()
    descriptor: np.ndarray | None = None
    findings: tuple[Finding, ...] = ()


def _inspect(label: str, scan: Path, masks: tuple[Path, ...]) -> _Inspection:
    try:
        pixels = read_image(scan)
    except ImageError as error:
        return _Inspection(findings=(Finding("error", "unreadable", str(scan), f"{error} The scan is skipped."),))
    try:
        grey = require_scan_size(to_grey(pixels), scan)
    except ImageError as error:
        return _Inspection(findings=(Finding("error", "too_small", str(scan), f"{error} The scan is skipped."),))
    height, width = grey.shape
    flags: list[str] = []
    findings: list[Finding] = []
    if colour_fraction(pixels) >= COLOUR_FRACTION_MIN:
        flags.append("colour_overlay")
    lesion = np.zeros((height, width), dtype=bool)
    usable: list[Path] = []
    for mask_path in masks:
        try:
            mask = read_mask(mask_path)
        except ImageError as error:
            findings.append(Finding("warning", "unreadable_mask", str(mask_path), f"{error} The mask is ignored."))
            continue
        if mask.shape != lesion.shape:
            findings.append(
                Finding(
                    "warning",
                    "mask_size_mismatch",
                    str(mask_path),
                    f"Mask '{mask_path.name}' is {mask.shape[1]}x{mask.shape[0]} px but its scan is "
                    f"{width}x{height} px; the mask is ignored. Re-export it at the scan's size.",
                )
            )
            flags.append("mask_size_mismatch")
            continue
        lesion |= mask
        usable.append(mask_path)
    if not masks:
        findings.append(Finding("warning", "missing_mask", str(scan), f"Scan '{scan.name}' has no mask (NAME_mask.png)."))
        flags.append("no_mask")
    fraction = float(lesion.mean()) if usable else math.nan
    if len(usable) > 1:
        flags.append("multiple_masks")
    if usable and label in LESION_CLASSES and fraction == 0:
        flags.append("empty_lesion_mask")
    if label == "normal" and fraction > 0:
        flags.append("lesion_in_normal")
    return _Inspection(width, height, tuple(usable), fraction, tuple(flags), duplicates.describe(grey), tuple(findings))


def index_dataset(path: str | os.PathLike, *, workers: int | None = None,
                  roots: tuple[Path, ...] | None = None) -> DatasetIndex:
    """Index every scan under ``path``: sizes, merged masks, near-duplicate groups, findings.

    ``roots`` confines it (the app: a visitor's folder is read with the server's rights): a class
    folder or file whose links lead outside every root is skipped and reported, never read.
    Raises DatasetError only when ``path`` is not a dataset at all; everything else is reported
    in ``DatasetIndex.findings``.
    """
    root = find_dataset_root(path)
    listing = _list_files(root, roots)
    # Decoding (PIL, OpenCV) releases the GIL, so threads use every core without pickling.
    with ThreadPoolExecutor(max_workers=workers or os.cpu_count()) as pool:
        inspections = list(pool.map(lambda item: _inspect(*item), listing.scans))
    findings = list(listing.findings)
    kept: list[tuple[str, Path, _Inspection]] = []
    for (label, scan, _), inspection in zip(listing.scans, inspections):
        findings.extend(inspection.findings)
        if inspection.descriptor is not None:
            kept.append((label, scan, inspection))
    descriptors = np.stack([inspection.descriptor for *_, inspection in kept]) if kept else np.zeros((0, 1))
    groups = duplicates.group_near_duplicates(descriptors)
    group_sizes = Counter(groups.tolist())
    conflicts = duplicates.find_label_conflicts([label for label, *_ in kept], groups)
    records = []
    for (label, scan, inspection), group in zip(kept, groups.tolist()):
        flags = list(inspection.flags)
        if group_sizes[group] > 1:
            flags.append("near_duplicate")
        if group in conflicts:
            flags.append("label_conflict")
        records.append(
            ScanRecord(scan, label, inspection.width, inspection.height, inspection.usable_masks,
                       inspection.lesion_fraction, group, tuple(flags))
        )
    for _, positions in sorted(conflicts.items()):
        members = ", ".join(f"{records[p].label}/{records[p].path.name}" for p in positions)
        findings.append(
            Finding("warning", "label_conflict", str(records[positions[0]].path),
                    f"Near-duplicate scans filed under different classes: {members}.")
        )
    if not records:
        findings.append(Finding("error", "no_scans", str(root), f"No readable scans under '{root}'. {EXPECTED_LAYOUT}"))
    return DatasetIndex(root, records, [_within(finding, root) for finding in findings])


def _within(finding: Finding, root: Path) -> Finding:
    """The finding with its file named relative to the dataset folder, in its path and its message:
    a report shown to a visitor must not spell out the server's folders."""
    path = Path(finding.path)
    relative = path.relative_to(root).as_posix() if path.is_relative_to(root) else path.name
    message = finding.message.replace(str(path), relative or root.name).replace(str(root), root.name)
    return replace(finding, path=relative or ".", message=message)


def natural_sorted(names: Iterable[str]) -> list[str]:
    """Names in the order people count: "benign (2)" before "benign (10)"."""
    return sorted(names, key=lambda name: [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name)])


def is_synthetic(root: str | os.PathLike) -> bool:
    """Whether a dataset folder (as ``find_dataset_root`` gives it) holds busi's synthetic phantoms."""
    return (Path(root) / SYNTHETIC_MARKER).is_file()


def load_scan(record: ScanRecord) -> np.ndarray:
    """uint8 grey (H, W) pixels of an indexed scan."""
    return read_scan(record.path)


def load_mask(record: ScanRecord) -> np.ndarray:
    """bool (H, W): the union of all the scan's usable masks (all False when it has none)."""
    lesion = np.zeros((record.height, record.width), dtype=bool)
    for mask_path in record.mask_paths:
        lesion |= read_mask(mask_path)
    return lesion
