"""Prediction over a whole archive: a folder tree of scans, tens of thousands of them.

``predict_archive`` walks the folders (an export is nested; masks and hidden files are left
out), decodes and preprocesses scans in worker threads while the model classifies the batch
before, and appends each batch's rows to the CSV as soon as they are known. Memory holds two
batches of scans at most, whatever the archive's size. A run that was interrupted resumes: the
scans already in the CSV are skipped (a row cut short by the interruption is dropped and done
again). A file that cannot be read becomes a row with its error, never a crash.
"""

from __future__ import annotations

import csv
import os
import time
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

from busi.data import UPLOAD_TYPES
from busi.errors import BusiError, ImageError
from busi.evaluate import ScreeningThreshold
from busi.predict import Classifier, Prepared, is_scan_file, prediction_row

ARCHIVE_BATCH = 32


def archive_files(folders: Iterable[str | os.PathLike]) -> Iterator[Path]:
    """The scans under each folder (or a file given itself), depth first, each folder's entries
    in name order: the same order on every run, which resuming relies on. Streams: nothing is
    listed ahead but the folder being read."""
    for folder in map(Path, folders):
        if folder.is_file():
            yield folder
            continue
        if not folder.is_dir():
            raise BusiError(f"'{folder}' does not exist.")
        for parent, folders_inside, files in os.walk(folder):
            folders_inside.sort()
            folders_inside[:] = [name for name in folders_inside if not name.startswith(".")]
            for name in sorted(files):
                path = Path(parent, name)
                if is_scan_file(path):
                    yield path


def finished_paths(out_csv: Path) -> set[str]:
    """The scans an earlier run already wrote to ``out_csv``. A last line cut short when that run
    was interrupted is removed from the file, so that its scan is done again."""
    if not out_csv.exists():
        return set()
    with open(out_csv, "rb+") as file:
        data = file.read()
        complete = data.rfind(b"\n") + 1
        if complete < len(data):
            file.truncate(complete)
    with open(out_csv, newline="", encoding="utf-8") as file:
        rows = csv.DictReader(file)
        if rows.fieldnames is None:
            return set()
        if "path" not in rows.fieldnames:
            raise BusiError(f"'{out_csv}' is not a CSV written by busi predict (it has no 'path' column): "
                            "choose a new file name.")
        return {row["path"] for row in rows}


@dataclass(frozen=True)
class ArchiveProgress:
    done: int  # scans classified by this run (errors included)
    total: int  # scans this run has to do
    skipped: int  # scans already in the CSV from an earlier run
    errors: int
    seconds: float

    @property
    def rate(self) -> float:
        return self.done / self.seconds if self.seconds > 0 else 0.0

    def describe(self) -> str:
        left = (self.total - self.done) / self.rate if self.rate else float("nan")
        eta = "" if left != left else f", about {left / 60:.0f} min left" if left >= 90 else f", about {left:.0f} s left"
        return (f"{self.done} of {self.total} scans ({self.rate:.1f}/s{eta})"
                + (f"; {self.errors} unreadable" if self.errors else "")
                + (f"; {self.skipped} already done earlier" if self.skipped else ""))


def screening_flag(row: dict[str, str], screening: ScreeningThreshold | None) -> str:
    """A row's screening flag: 'review' or 'none'; empty where the scan could not be read or the
    run has no screening threshold."""
    if screening is None or row["error"]:
        return ""
    return screening.flag(float(row["p_malignant"]))


def _prepare(classifier: Classifier, path: Path) -> Prepared | BusiError:
    try:
        return classifier.prepare(path)
    except ImageError as error:
        return error


def _batches(paths: Iterable[Path], size: int) -> Iterator[list[Path]]:
    iterator = iter(paths)
    while batch := list(islice(iterator, size)):
        yield batch


def predict_archive(classifier: Classifier, folders: Sequence[str | os.PathLike], out_csv: str | os.PathLike, *,
                    screening: ScreeningThreshold | None = None, batch_size: int = ARCHIVE_BATCH,
                    workers: int = 2) -> Iterator[ArchiveProgress]:
    """Classify every scan under ``folders`` into ``out_csv`` (see the module docstring), yielding
    progress after each batch. ``workers`` threads decode and preprocess (OpenCV and the decoders
    release the interpreter's lock) while the model runs."""
    out_csv = Path(out_csv)
    before = finished_paths(out_csv)
    total = sum(str(path) not in before for path in archive_files(folders))
    skipped = len(before)
    if total == 0 and not skipped:
        raise BusiError(f"No scans in {', '.join(map(str, folders))}: give folders holding scan files "
                        f"({', '.join(UPLOAD_TYPES)}, or DICOM).")
    pending = (path for path in archive_files(folders) if str(path) not in before)
    columns = list(prediction_row("", BusiError(""), classifier.classes)) + ["screening_flag"]
    started, done, errors = time.monotonic(), 0, 0
    new_file = not out_csv.exists() or out_csv.stat().st_size == 0
    with open(out_csv, "a", newline="", encoding="utf-8") as file, ThreadPoolExecutor(workers) as pool:
        writer = csv.DictWriter(file, fieldnames=columns, lineterminator="\n")
        if new_file:
            writer.writeheader()
        batches = _batches(pending, batch_size)

        def submit(batch: list[Path] | None) -> list[tuple[Path, Future]] | None:
            return None if batch is None else [(path, pool.submit(_prepare, classifier, path)) for path in batch]

        ahead = submit(next(batches, None))
        while ahead is not None:
            current, ahead = ahead, submit(next(batches, None))  # the next batch decodes while this one is classified
            prepared = [(path, future.result()) for path, future in current]
            good = [scan for _, scan in prepared if isinstance(scan, Prepared)]
            predictions = iter(classifier.predict_prepared(good, batch_size))
            for path, scan in prepared:
                outcome = scan if isinstance(scan, BusiError) else next(predictions)
                row = prediction_row(str(path), outcome, classifier.classes)
                row["screening_flag"] = screening_flag(row, screening)
                writer.writerow(row)
                errors += bool(row["error"])
            file.flush()
            done += len(prepared)
            yield ArchiveProgress(done, total, skipped, errors, time.monotonic() - started)
    if total == 0:
        yield ArchiveProgress(0, 0, skipped, 0, time.monotonic() - started)
