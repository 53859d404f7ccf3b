"""Prediction over a whole archive: a folder tree of scans, tens of thousands of them.

``predict_archive`` walks the folders (an export is nested; masks and hidden files are left
out), decodes and preprocesses scans in worker threads while the model classifies the batch
before, and appends each batch's rows to the CSV as soon as they are known. Memory holds two
batches of scans at most, whatever the archive's size. A run that was interrupted resumes: the
scans already in the CSV are skipped (a row cut short by the interruption is dropped and done
again). A file that cannot be read becomes a row with its error, never a crash.

Under torchrun each rank takes every world-th scan of the same walk into its own part file
beside the CSV (``part_path``); once every rank is through, rank 0 merges the parts into the
CSV (``merge_parts``). An interrupted distributed run resumes from the parts and the CSV alike.
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


def drop_cut_line(csv_path: Path) -> None:
    """Remove a last line that an interrupted writer left without its newline."""
    with open(csv_path, "rb+") as file:
        data = file.read()
        complete = data.rfind(b"\n") + 1
        if complete < len(data):
            file.truncate(complete)


def finished_paths(out_csv: Path) -> set[str]:
    """The scans an earlier run already wrote to ``out_csv``. A last line cut short when that run
    was interrupted is removed from the file, so that its scan is done again."""
    if not out_csv.exists():
        return set()
    drop_cut_line(out_csv)
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


def _header(out_csv: Path) -> list[str]:
    if not out_csv.exists():
        return []
    with open(out_csv, newline="", encoding="utf-8") as file:
        return next(csv.reader(file), [])


def _batches(paths: Iterable[Path], size: int) -> Iterator[list[Path]]:
    iterator = iter(paths)
    while batch := list(islice(iterator, size)):
        yield batch


def part_path(out_csv: Path, rank: int, world: int) -> Path:
    """Where rank ``rank`` of ``world`` writes its share before the merge."""
    return out_csv.with_name(f"{out_csv.name}.part-{rank}-of-{world}")


def merge_parts(parts: Sequence[Path], out_csv: Path) -> int:
    """Append the rows of ``parts`` (the ranks' CSVs, in rank order) to ``out_csv`` (its header
    when new), leaving out scans already there; then delete the parts. The rows added."""
    before = finished_paths(out_csv)
    new_file = not out_csv.exists() or out_csv.stat().st_size == 0
    added = 0
    with open(out_csv, "a", newline="", encoding="utf-8") as out:
        writer = None
        for part in parts:
            drop_cut_line(part)
            with open(part, newline="", encoding="utf-8") as file:
                rows = csv.DictReader(file)
                if writer is None:
                    writer = csv.DictWriter(out, fieldnames=rows.fieldnames or [], lineterminator="\n")
                    if new_file:
                        writer.writeheader()
                for row in rows:
                    if row["path"] not in before:
                        writer.writerow(row)
                        added += 1
    for part in parts:
        part.unlink()
    return added


def predict_archive(classifier: Classifier, folders: Sequence[str | os.PathLike], out_csv: str | os.PathLike, *,
                    screening: ScreeningThreshold | None = None, batch_size: int = ARCHIVE_BATCH,
                    workers: int = 2, share: tuple[int, int] = (0, 1),
                    done_elsewhere: frozenset[str] = frozenset()) -> Iterator[ArchiveProgress]:
    """Classify every scan under ``folders`` into ``out_csv`` (see the module docstring), yielding
    progress after each batch. ``workers`` threads decode and preprocess (OpenCV and the decoders
    release the interpreter's lock) while the model runs. ``share`` = (rank, world): this process
    takes every world-th scan from its rank on; ``done_elsewhere``: scans already in the merged CSV."""
    out_csv = Path(out_csv)
    if next(archive_files(folders), None) is None:
        raise BusiError(f"No scans in {', '.join(map(str, folders))}: give folders holding scan files "
                        f"({', '.join(UPLOAD_TYPES)}, or DICOM).")
    rank, world = share
    before = finished_paths(out_csv) | done_elsewhere

    def mine() -> Iterator[Path]:
        return (path for number, path in enumerate(archive_files(folders)) if number % world == rank)

    total = skipped = 0
    for path in mine():
        if str(path) in before:
            skipped += 1
        else:
            total += 1
    pending = (path for path in mine() if str(path) not in before)
    columns = list(prediction_row("", BusiError(""), classifier.classes)) + ["screening_flag"]
    written = _header(out_csv)
    if written and written != columns:  # another model's classes, or another program's file
        raise BusiError(f"'{out_csv}' holds other columns than this model writes ({', '.join(written)}): choose a new "
                        "file name, or the run that wrote it.")
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
