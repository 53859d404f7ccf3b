"""Command line: ``python -m busi COMMAND``. Renders library results; holds no logic of its own."""

from __future__ import annotations

import argparse
import dataclasses
import json
import signal
import sys
import textwrap
import time
from collections import Counter
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist

from busi import NOTICE, synth
from busi.archive import ARCHIVE_BATCH, finished_paths, merge_parts, part_path, predict_archive, screening_flag
from busi.config import DEVICES, JobOptions, TrainConfig, config_to_dict, train_config_from_saved
from busi.data import CLASSES, UPLOAD_TYPES, DatasetIndex, index_dataset
from busi.device import resolve_device
from busi.distributed import process_group, ranks_from_environment, signal_stop
from busi.errors import BusiError, ParameterError
from busi.evaluate import (
    BOOTSTRAP_SAMPLES,
    SPLITS,
    ScreeningThreshold,
    evaluate_run,
    format_report,
    screening_threshold,
    write_report_json,
)
from busi.events import BatchEnd, Done, EpochEnd, Failed, Started, Stopped
from busi.explain import energy_inside, heatmap_overlay
from busi.imageio import encode_png, read_mask, write_atomic
from busi.predict import Classifier, image_files, load_classifier, predict_files
from busi.preprocess import INPUT_CHANNELS, PreprocessConfig
from busi.recipes import RECIPES, recipe
from busi.report import run_report_html
from busi.runs import RunFolder
from busi.split import PARTS, group_kfold, three_way_split, write_manifest
from busi.train import train


def _print_summary(index: DatasetIndex) -> None:
    counts = index.class_counts()
    print(f"Dataset: {index.root}")
    print(f"Scans: {len(index.records)} (" + ", ".join(f"{counts[c]} {c}" for c in CLASSES) + ")")
    multi = sum("multiple_masks" in r.flags for r in index.records)
    groups = len(set(index.groups.tolist()))
    print(f"Scans with several masks (merged): {multi}")
    print(f"Independent groups after near-duplicate grouping: {groups}")


def _print_findings(index: DatasetIndex) -> None:
    if not index.findings:
        print("Validation: no problems found.")
        return
    by_code = Counter((f.severity, f.code) for f in index.findings)
    print("Validation report:")
    for (severity, code), count in sorted(by_code.items()):
        print(f"  {severity:7} {code:20} {count}")
    for finding in index.findings:
        print(f"  - [{finding.severity}] {finding.message}")


def _index(args: argparse.Namespace) -> int:
    index = index_dataset(args.directory)
    _print_summary(index)
    _print_findings(index)
    if args.csv:
        index.write_csv(args.csv)
        print(f"Index written to {args.csv}")
    return 0


def _duplicates(args: argparse.Namespace) -> int:
    index = index_dataset(args.directory)
    members: dict[int, list] = {}
    for record in index.records:
        members.setdefault(record.group, []).append(record)
    shared = {g: m for g, m in members.items() if len(m) > 1}
    print(f"{sum(map(len, shared.values()))} scans in {len(shared)} near-duplicate groups.")
    conflicts = index.label_conflicts()
    for group, records in sorted(shared.items()):
        marker = "  LABEL CONFLICT" if group in conflicts else ""
        print(f"group {group}:{marker}")
        for record in records:
            print(f"  {record.label:9} {index.relative_path(record)}")
    print(f"{len(conflicts)} groups mix classes (label conflicts).")
    return 0


def _split(args: argparse.Namespace) -> int:
    index = index_dataset(args.directory)
    parts = three_way_split(index.labels, index.groups, seed=args.seed)
    folds = group_kfold(index.labels, index.groups, n_splits=args.folds, seed=args.seed) if args.folds else None
    write_manifest(args.out, index, parts, folds)
    for part in PARTS:
        counts = Counter(label for label, p in zip(index.labels, parts) if p == part)
        print(f"{part:5} {sum(counts.values()):4}  " + "  ".join(f"{c} {counts[c]}" for c in CLASSES))
    print(f"Manifest written to {args.out}")
    return 0


def _synth(args: argparse.Namespace) -> int:
    root = synth.write_dataset(args.out, args.per_class, args.seed, (args.size, args.size))
    print(f"Wrote {args.per_class * len(CLASSES)} phantoms to {root}")
    return 0


def _render_event(event) -> None:
    if isinstance(event, Started) and event.resumed:
        print(f"resuming at epoch {event.epoch} of {event.epochs}")
    elif isinstance(event, BatchEnd):
        filled = round(20 * event.batch / event.batches)
        print(f"\repoch {event.epoch} [{'#' * filled}{'.' * (20 - filled)}] batch {event.batch}/{event.batches} "
              f"loss {event.loss:.4f} {event.images_per_s:.1f} img/s", end="", flush=True)
    elif isinstance(event, EpochEnd):
        print(f"\repoch {event.epoch}/{event.epochs} train loss {event.train_loss:.4f} val loss {event.val_loss:.4f} "
              f"acc {event.val_accuracy:.3f} macro-F1 {event.val_macro_f1:.3f} "
              f"malignant recall {event.val_malignant_recall:.3f} lr {event.lr:.2g} ETA {event.eta_s:.0f} s")
    elif isinstance(event, Done):
        print(f"done: {event.describe()}")
    elif isinstance(event, Stopped):
        print(f"\nstopped in epoch {event.epoch} ({event.reason}); resume with --resume")


DISTRIBUTED_HELP = """\
several GPUs or machines (torchrun starts one process per GPU; gloo between CPUs, NCCL between GPUs):
  torchrun --nproc-per-node N -m busi train --data DATA --out RUN ...
  --batch-size is the global batch, split evenly over the N processes (a multiple of N), and --lr
  applies to that global batch: the same flags on more processes train the same recipe. To fill
  more GPUs, raise --batch-size and scale --lr by the same factor (the linear scaling rule, Goyal
  et al. 2017), with a warm-up. Only rank 0 writes RUN; a STOP file or Ctrl-C stops every rank
  after the same batch with a checkpoint, and --resume (with the same torchrun command) continues.
  Batch norm statistics are per process, as in torchvision's reference without --sync-bn."""

# The flags that choose what is trained; --resume continues with the run's saved ones instead.
_RECIPE_FLAGS = ("recipe", "config", "image_size", "channels", *(field.name for field in dataclasses.fields(TrainConfig)))


def _train_configs(args: argparse.Namespace) -> tuple[TrainConfig, PreprocessConfig]:
    """The recipe (or a saved config.json), then any flags given on top of it."""
    if args.config:
        try:
            saved = json.loads(Path(args.config).read_text())
            config = train_config_from_saved(saved["train"])
            preprocess = PreprocessConfig.from_saved(saved["preprocess"])
        except (json.JSONDecodeError, KeyError, TypeError, ParameterError) as error:
            raise BusiError(f"'{args.config}' is not a busi config file (a run's config.json): {error}.") from error
    else:
        chosen = recipe(args.recipe or "study")
        config, preprocess = chosen.train, chosen.preprocess
    overrides = {name: getattr(args, name) for name in config_to_dict(config) if getattr(args, name, None) is not None}
    config = dataclasses.replace(config, **overrides)
    if args.image_size:
        preprocess = dataclasses.replace(preprocess, size=args.image_size)
    if args.channels:
        preprocess = dataclasses.replace(preprocess, channels=args.channels)
    return config, preprocess


def _train(args: argparse.Namespace) -> int:
    job = JobOptions(args.device, args.threads, tuple(args.only_under))
    if args.resume:
        ignored = ["--" + name.replace("_", "-") for name in _RECIPE_FLAGS if getattr(args, name, None) is not None]
        if ignored:
            print(f"warning: --resume continues with the run's saved settings; ignored: {', '.join(ignored)}", file=sys.stderr)
        config, preprocess = TrainConfig(), PreprocessConfig()  # replaced by the checkpoint's
    else:
        config, preprocess = _train_configs(args)
    run = RunFolder(args.out)

    main = ranks_from_environment().main

    def request_stop(signum, frame) -> None:  # the engine stops at the next batch, checkpointed
        if main:
            run.request_stop()
        else:
            signal_stop()

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    for event in train(args.data, args.out, config, preprocess, job=job, resume=args.resume):
        if main:  # under torchrun, rank 0 speaks for the job
            _render_event(event)
        if isinstance(event, Failed):
            print(f"\nerror: {event.message}", file=sys.stderr)
            return 2
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    split = args.split or ("all" if args.data else "test")
    _, result = evaluate_run(args.run, data_dir=args.data, split=split, threshold=args.threshold,
                                       samples=args.bootstrap)
    source = args.data or f"its {split} split"
    print(f"Run {args.run} on {source}: {result['n']} scans")
    print(format_report(result))
    if args.json:
        write_report_json(args.json, result)
        print(f"Report written to {args.json}")
    return 0


# Seconds between progress lines of a long prediction: a log, not a flood.
PROGRESS_EVERY = 5.0
# How long a rank that finished its share of an archive waits for the slowest one.
ARCHIVE_WAIT = timedelta(hours=24)


def _predict(args: argparse.Namespace) -> int:
    classifier = load_classifier(args.run, ranks_from_environment().device(resolve_device(args.device)))
    try:
        screening = screening_threshold(args.run)
    except BusiError as error:  # the predictions do not depend on it, so they go on without it
        screening = None
        print(f"warning: no screening threshold for this run: {error}", file=sys.stderr)
    print(NOTICE)
    if classifier.training_warning:
        print(f"warning: {classifier.training_warning}")
    if args.csv:
        return _predict_archive(args, classifier, screening)
    files = image_files(args.images)
    if not files:
        raise BusiError(f"No scans in {', '.join(args.images)}: give scan files ({', '.join(UPLOAD_TYPES)}) or folders "
                        "holding them.")
    rows = [row | {"screening_flag": screening_flag(row, screening)} for row in predict_files(classifier, files)]
    for row in rows:
        if row["error"]:
            print(f"{row['path']}: error: {row['error']}", file=sys.stderr)
            continue
        probabilities = "  ".join(f"{c} {float(row[f'p_{c}']):.3f}" for c in classifier.classes)
        flag = "  [screening flag: review]" if row["screening_flag"] == "review" else ""
        print(f"{row['path']}: {row['label']}  ({probabilities}){flag}")
        for warning in filter(None, row["warnings"].split(" | ")):
            print(f"  warning: {warning}")
    if screening:
        print(screening.describe())
    return 2 if any(row["error"] for row in rows) else 0


def _predict_archive(args: argparse.Namespace, classifier: Classifier, screening: ScreeningThreshold | None) -> int:
    """Many scans into a CSV: streamed, resumable, with progress on stderr (busi.archive); under
    torchrun each rank its share into a part file, merged into the CSV by rank 0 at the end."""
    ranks, out = ranks_from_environment(), Path(args.csv)
    with process_group(ranks, torch.device("cpu"), timeout=ARCHIVE_WAIT):  # gloo only coordinates: no tensors travel
        target = part_path(out, ranks.rank, ranks.world) if ranks.distributed else out
        who = f"rank {ranks.rank}: " if ranks.distributed else ""
        last_report = 0.0
        progress = None
        for progress in predict_archive(classifier, args.images, target, screening=screening, batch_size=args.batch_size,
                                        workers=args.workers, share=(ranks.rank, ranks.world),
                                        done_elsewhere=frozenset(finished_paths(out)) if ranks.distributed else frozenset()):
            if progress.done == progress.total or time.monotonic() - last_report >= PROGRESS_EVERY:
                print(who + progress.describe(), file=sys.stderr, flush=True)
                last_report = time.monotonic()
        if ranks.distributed:
            dist.barrier()  # every share is written before rank 0 merges them
            if ranks.main:
                merge_parts([part_path(out, rank, ranks.world) for rank in range(ranks.world)], out)
            # The sum of the ranks' counts, and no rank leaves (ending the job) before the merge is done.
            counts = torch.tensor([progress.done, progress.skipped, progress.errors])
            dist.all_reduce(counts)
            progress = dataclasses.replace(progress, done=int(counts[0]), skipped=int(counts[1]), errors=int(counts[2]))
    if not ranks.main:
        return 0  # rank 0 reports for the job
    if screening:
        print(screening.describe())
    print(f"Predictions written to {args.csv}: {progress.done} scans by this run"
          + (f", {progress.skipped} already there" if progress.skipped else "")
          + (f"; {progress.errors} could not be read (their rows say why)" if progress.errors else "") + ".")
    return 2 if progress.errors else 0


def _cam(args: argparse.Namespace) -> int:
    classifier = load_classifier(args.run)
    explanation = classifier.explain(args.image, args.class_name)
    write_atomic(args.out, encode_png(heatmap_overlay(explanation.scan, explanation.heat, args.opacity)))
    print(NOTICE)
    print(f"Grad-CAM for {explanation.class_name} written to {args.out}; probabilities: "
          + ", ".join(f"{c} {p:.3f}" for c, p in explanation.probabilities.items()))
    if args.mask:
        mask = read_mask(args.mask)
        if mask.shape != explanation.heat.shape:
            raise BusiError(f"The mask is {mask.shape[1]}x{mask.shape[0]} px but the scan is "
                            f"{explanation.heat.shape[1]}x{explanation.heat.shape[0]} px: choose the scan's own mask.")
        print(f"Heatmap energy inside the lesion mask: {energy_inside(explanation.heat, mask):.1%}")
    return 0


def _report(args: argparse.Namespace) -> int:
    write_atomic(args.out, run_report_html(args.run, threshold=args.threshold, scope=args.data))
    print(f"Report written to {args.out}")
    return 0


def _probability(text: str) -> float:
    value = float(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {value}")
    return value


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m busi", description="Breast-ultrasound (BUSI) tumour classification tools.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    index = commands.add_parser("index", help="summarise and validate a dataset folder")
    index.add_argument("directory", help="folder holding Dataset_BUSI_with_GT or the class folders")
    index.add_argument("--csv", help="also write the per-scan index table to this CSV file")
    index.set_defaults(run_command=_index)

    dup = commands.add_parser("duplicates", help="list near-duplicate groups and label conflicts")
    dup.add_argument("directory")
    dup.set_defaults(run_command=_duplicates)

    split = commands.add_parser("split", help="write a stratified, group-aware train/val/test manifest")
    split.add_argument("directory")
    split.add_argument("--out", required=True, help="manifest CSV to write")
    split.add_argument("--seed", type=int, default=0)
    split.add_argument("--folds", type=int, default=0, help="also assign K cross-validation folds (K >= 2)")
    split.set_defaults(run_command=_split)

    synth_parser = commands.add_parser("synth", help="generate synthetic phantoms in the BUSI layout")
    synth_parser.add_argument("--out", required=True, help="folder to create Dataset_BUSI_with_GT in")
    synth_parser.add_argument("--per-class", type=int, default=synth.DEMO_PER_CLASS)
    synth_parser.add_argument("--seed", type=int, default=0)
    synth_parser.add_argument("--size", type=int, default=256, help="side of each phantom in pixels")
    synth_parser.set_defaults(run_command=_synth)

    recipes = "recipes:\n" + "\n".join(textwrap.fill(f"{name}: {item.summary}", 100, initial_indent="  ",
                                                    subsequent_indent="    ", break_on_hyphens=False) for name, item in RECIPES.items())
    train_parser = commands.add_parser("train", help="train a classifier into a run folder (defaults: the study's recipe)",
                                       epilog=recipes + "\n\n" + DISTRIBUTED_HELP,
                                       formatter_class=argparse.RawDescriptionHelpFormatter)
    train_parser.add_argument("--data", required=True, help="dataset folder")
    train_parser.add_argument("--out", required=True, help="run folder to create or resume")
    train_parser.add_argument("--resume", action="store_true",
                              help="continue the run in --out from its last checkpoint, with its saved settings")
    train_parser.add_argument("--recipe", choices=list(RECIPES),
                              help="starting settings (default: study, the study's exact recipe); flags override them")
    train_parser.add_argument("--config", help="start from a run's config.json (training and preprocessing) instead")
    train_parser.add_argument("--image-size", type=int, help="model input side in pixels (default 224)")
    train_parser.add_argument("--channels", choices=INPUT_CHANNELS,
                              help="model input: the processed scan (grey), or the unprocessed scan, the processed scan "
                                   "and its edges as three channels (stacked)")
    for name, value in config_to_dict(TrainConfig()).items():
        flag = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            train_parser.add_argument(flag, type=lambda text: text.lower() in ("1", "true", "yes"), dest=name,
                                      help=f"true/false (study recipe: {value})")
        else:
            train_parser.add_argument(flag, type=type(value), dest=name, help=f"study recipe: {value}")
    train_parser.add_argument("--device", choices=DEVICES, default="auto", help="where to train (default: auto, a GPU if any)")
    train_parser.add_argument("--threads", type=int, default=0, help="CPU threads (default 0: torch's choice)")
    train_parser.add_argument("--only-under", action="append", default=[], metavar="FOLDER",
                              help="read data only under this folder (repeatable); what links elsewhere is skipped")
    train_parser.set_defaults(run_command=_train)

    evaluate = commands.add_parser("evaluate", help="classification report with 95%% intervals, ROC/PR, calibration")
    evaluate.add_argument("run", help="run folder")
    evaluate.add_argument("--data", help="evaluate on every scan of this dataset folder instead of the run's split")
    evaluate.add_argument("--split", choices=SPLITS, help="part of the run's split (default test; 'all' with --data)")
    evaluate.add_argument("--threshold", type=_probability,
                          help="call a scan malignant when p(malignant) reaches this (default: most probable class)")
    evaluate.add_argument("--bootstrap", type=int, default=BOOTSTRAP_SAMPLES, help="bootstrap resamples for the intervals")
    evaluate.add_argument("--json", help="also write the full report (curves, bins) to this JSON file")
    evaluate.set_defaults(run_command=_evaluate)

    predict_parser = commands.add_parser("predict", help="classify scans with a trained run")
    predict_parser.add_argument("run", help="run folder or checkpoint file")
    predict_parser.add_argument("images", nargs="+", metavar="IMAGE", help="scan files or folders of scans")
    predict_parser.add_argument("--csv", help="write one row per scan to this CSV file instead of printing them: folders "
                                "are walked with their subfolders, scans streamed in batches with progress on stderr, and "
                                "an interrupted run resumes (scans already in the file are skipped)")
    predict_parser.add_argument("--batch-size", type=int, default=ARCHIVE_BATCH, help="scans per batch with --csv")
    predict_parser.add_argument("--workers", type=int, default=2, help="threads decoding scans with --csv")
    predict_parser.add_argument("--device", choices=DEVICES, default="cpu",
                                help="where the model runs (under torchrun each rank takes its own GPU)")
    predict_parser.set_defaults(run_command=_predict)

    report_parser = commands.add_parser("report", help="write a self-contained HTML report of a run, to hand out")
    report_parser.add_argument("run", help="run folder")
    report_parser.add_argument("--out", required=True, help="HTML file to write")
    report_parser.add_argument("--data", help="score it on every scan of this dataset folder instead of its test split")
    report_parser.add_argument("--threshold", type=_probability,
                               help="call a scan malignant when p(malignant) reaches this (default: most probable class)")
    report_parser.set_defaults(run_command=_report)

    cam = commands.add_parser("cam", help="write a Grad-CAM overlay of one scan")
    cam.add_argument("run", help="run folder or checkpoint file")
    cam.add_argument("image", help="scan file")
    cam.add_argument("--out", required=True, help="PNG file to write")
    cam.add_argument("--class", dest="class_name", choices=CLASSES, help="class to explain (default: the predicted one)")
    cam.add_argument("--mask", help="lesion mask of the scan: also report the heatmap energy inside it")
    cam.add_argument("--opacity", type=_probability, default=0.45)
    cam.set_defaults(run_command=_cam)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    try:
        return args.run_command(args)
    except BusiError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except OSError as error:  # disk full, permission denied: the user's environment, not a bug
        print(f"error: {error.strerror or error}: {error.filename or ''}".rstrip(": "), file=sys.stderr)
        return 2
