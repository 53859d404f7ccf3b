"""A screen of variants of a recipe, with its decision rule fixed before it runs.

    python3 -m bench.screen --data .gpu/busi --jobs 20 --budget 420 \\
        --variant "--pre size=224" --variant "--set augment=strong --set epochs=90"
    python3 -m bench.screen --recipe best --rule spread --jobs 2 --budget 86400 --variant "--pre size=288"

Every fold is one ``bench.accuracy`` process on one CPU thread, up to ``--jobs`` side by side
(on a lent GPU machine many, where one fold leaves the GPU mostly idle; on two CPU cores two).

``--rule spread`` (for the CPU, where fifteen folds per variant cost too much): partition 0
only. A variant is adopted when its mean gain over the recipe in the primary score, the mean of
accuracy, macro-F1 and malignant recall, exceeds the fold-to-fold spread of that gain (its
standard deviation over the five paired folds); when it loses no more than 0.02 on average in
any of accuracy, macro-F1, malignant recall and malignant AUC; and when its folds took at most
``--max-ratio`` times the recipe's training time. With ``--sequential`` the variants go one at
a time in the order given, each adopted one joining the recipe the next are measured against,
until three in a row are not adopted. Otherwise the two-phase rule below decides.

Phase 1: the recipe and each variant on the five folds of partition 0 (seed 0), paired fold by
fold. A variant qualifies when it gains at least ``--bar`` in accuracy and in macro-F1 without
losing malignant recall. Phase 2: the variant with the largest gain in accuracy plus macro-F1
(a qualified one first; an unqualified one only for information, and none when no variant
gains) and the recipe on partitions 1 and 2. The variant is adopted only if it qualified and,
on those ten fresh folds, gains at least ``--confirm`` in accuracy and in macro-F1, raises the
malignant AUC and loses at most 0.01 of malignant recall. Partition 0 is where the recipe was
tuned, so it flatters whatever resembles the recipe's own choices; the fresh partitions decide.
Jobs still running when ``--budget`` seconds are spent are stopped and their folds left out;
``--phases 1`` stops after phase 1, saying which variant phase 2 would run and whether it qualified.
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench.accuracy import COLUMNS, OUT, recorded

RECIPE = ()  # the recipe as it stands: no options
SCORES = tuple(column for column in COLUMNS if column != "ece_before")
Job = tuple[tuple[str, ...], int, int]  # options, seed (partition), fold


def fold_row(log: Path, fold: int) -> dict[str, float] | None:
    """The fold's row of the table ``bench.accuracy`` printed into ``log``, or None when it printed none."""
    columns = None
    for line in log.read_text().splitlines():
        words = line.split()
        if words[:1] == ["fold"]:
            columns = words
        elif columns and words[:1] == [str(fold)] and len(words) == len(columns):
            return dict(zip(columns, map(float, words)))
    return None


def _log_name(job: Job) -> str:
    options, seed, fold = job
    label = "-".join(word.lstrip("-").replace("=", "_") for word in options if word not in ("--set", "--pre")) or "recipe"
    return f"{label}-seed{seed}-fold{fold}.log"


def run_folds(jobs: list[Job], args: argparse.Namespace, deadline: float) -> dict[Job, dict[str, float]]:
    """Each job's fold row; a job that fails or outlasts the deadline has none."""
    pending, running, rows = list(jobs), {}, {}
    while pending or running:
        while pending and len(running) < args.jobs and time.monotonic() < deadline:
            job = pending.pop(0)
            options, seed, fold = job
            log = args.logs / _log_name(job)
            command = [sys.executable, "-m", "bench.accuracy", "--recipe", args.recipe, "--folds", "5", "--only", str(fold),
                       "--threads", "1", "--seed", str(seed), "--data", str(args.data), *options, *shlex.split(args.common)]
            with log.open("w") as out:
                running[job] = (subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT), log)
        if not running:
            break
        time.sleep(2)
        for job, (process, log) in list(running.items()):
            if process.poll() is None and time.monotonic() >= deadline:
                process.kill()
                process.wait()
                print(f"stopped at the budget's end: {log.name}")
            if process.poll() is not None:
                del running[job]
                row = fold_row(log, job[2]) if process.returncode == 0 else None
                if row is None:
                    last = (log.read_text().strip().splitlines() or ["(empty log)"])[-1]
                    print(f"no score from {log.name} (exit {process.returncode}): {last}")
                else:
                    rows[job] = row
    return rows


def paired(rows: dict[Job, dict[str, float]], variant: tuple[str, ...], seeds: tuple[int, ...],
           base: tuple[str, ...] = RECIPE) -> dict[str, list[float]]:
    """Per score, the variant's gain over ``base`` (the recipe) on each fold both finished."""
    common = [(seed, fold) for seed in seeds for fold in range(5)
              if (base, seed, fold) in rows and (variant, seed, fold) in rows]
    return {score: [rows[(variant, *key)][score] - rows[(base, *key)][score] for key in common] for score in SCORES}


def describe(rows: dict[Job, dict[str, float]], options: tuple[str, ...], seeds: tuple[int, ...]) -> str:
    mine = [row for (o, seed, _), row in rows.items() if o == options and seed in seeds]
    if not mine:
        return f"{shlex.join(options) or 'the recipe'}: no fold finished"
    means = " ".join(f"{score} {statistics.mean(row[score] for row in mine):.3f}" for score in SCORES)
    return f"{shlex.join(options) or 'the recipe'}, {len(mine)} folds: {means}"


def describe_gain(gains: dict[str, list[float]]) -> str:
    if not gains["accuracy"]:
        return "no paired folds"
    return f"{len(gains['accuracy'])} paired folds: " + ", ".join(
        f"{score} {statistics.mean(values):+.3f} (lower on {sum(v < 0 for v in values)})" for score, values in gains.items())


def mean_gain(gains: dict[str, list[float]], score: str) -> float:
    return statistics.mean(gains[score]) if gains[score] else float("-inf")


def qualifies(gains: dict[str, list[float]], bar: float) -> bool:
    """Phase 1's rule: all five folds of partition 0, at least ``bar`` more accuracy and macro-F1,
    no less malignant recall."""
    return (len(gains["accuracy"]) == 5 and mean_gain(gains, "accuracy") >= bar and mean_gain(gains, "macro_f1") >= bar
            and mean_gain(gains, "malignant_recall") >= 0)


def pick(gains: dict[tuple[str, ...], dict[str, list[float]]], bar: float) -> tuple[tuple[str, ...] | None, bool]:
    """The variant phase 2 runs, and whether it qualified: the qualified variant with the largest
    gain in accuracy plus macro-F1, else the unqualified one with the largest positive gain."""
    qualified = [options for options in gains if qualifies(gains[options], bar)]

    def gain(options):
        return mean_gain(gains[options], "accuracy") + mean_gain(gains[options], "macro_f1")

    best = max(qualified or gains, key=gain, default=None)
    if best is None or gain(best) <= 0:
        return None, False
    return best, bool(qualified)


def adopted(fresh: dict[str, list[float]], qualified: bool, confirm: float) -> bool:
    """Phase 2's rule, on the ten folds of partitions 1 and 2."""
    return (qualified and len(fresh["accuracy"]) == 10
            and all(mean_gain(fresh, score) >= confirm for score in ("accuracy", "macro_f1"))
            and mean_gain(fresh, "malignant_auc") > 0 and mean_gain(fresh, "malignant_recall") >= -0.01)


PRIMARY = ("accuracy", "macro_f1", "malignant_recall")
GUARDED = (*PRIMARY, "malignant_auc")
MAX_LOSS = 0.02


def primary_gains(gains: dict[str, list[float]]) -> list[float]:
    """Per paired fold, the gain in the mean of accuracy, macro-F1 and malignant recall."""
    return [statistics.mean(fold) for fold in zip(*(gains[score] for score in PRIMARY))]


def adopted_by_spread(gains: dict[str, list[float]], minutes_ratio: float, max_ratio: float) -> tuple[bool, str]:
    """The spread rule (see the module docstring) on partition 0's five paired folds, and why."""
    primary = primary_gains(gains)
    if len(primary) != 5:
        return False, f"only {len(primary)} of 5 folds paired"
    mean, spread = statistics.mean(primary), statistics.stdev(primary)
    losses = [score for score in GUARDED if mean_gain(gains, score) < -MAX_LOSS]
    reasons = [f"primary gain {mean:+.3f} vs spread {spread:.3f}"] + [f"{score} {mean_gain(gains, score):+.3f}" for score in losses] \
        + ([f"time {minutes_ratio:.2f}x the recipe's"] if minutes_ratio > max_ratio else [])
    return mean > spread and mean > 0 and not losses and minutes_ratio <= max_ratio, "; ".join(reasons)


def _minutes(rows: dict[Job, dict[str, float]], options: tuple[str, ...]) -> float:
    """Mean training minutes of the folds whose time was recorded."""
    values = recorded(row["minutes"] for (o, seed, _), row in rows.items() if o == options and seed == 0)
    return statistics.mean(values) if values else float("nan")


def screen_in_sequence(variants: list[tuple[str, ...]], args: argparse.Namespace, deadline: float) -> tuple[str, ...]:
    """The spread rule one variant at a time, in the order given: an adopted variant joins the
    recipe that the next ones are measured against; three successive misses end the screen.
    Returns the options the recipe gained."""
    carried, misses = RECIPE, 0
    for options in variants:
        candidate = carried + options
        rows = run_folds([(lane, 0, fold) for lane in (candidate, carried) for fold in range(5)], args, deadline)
        gains = paired(rows, candidate, (0,), carried)
        decision, why = adopted_by_spread(gains, _minutes(rows, candidate) / _minutes(rows, carried), args.max_ratio)
        print(describe(rows, carried, (0,)))
        print(describe(rows, candidate, (0,)))
        print("  gain:", describe_gain(gains))
        print(f"{shlex.join(options)} on top of {shlex.join(carried) or 'the recipe'}: "
              f"{'adopt' if decision else 'keep the recipe'} ({why})", flush=True)
        carried, misses = (candidate, 0) if decision else (carried, misses + 1)
        if misses == 3:
            print("three successive variants were not adopted: the screen stops")
            break
    print(f"the recipe now: {shlex.join(carried) or 'as it was'}")
    return carried


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant", action="append", required=True, help="bench.accuracy options, quoted as one argument")
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--recipe", default="scratch", help="the recipe the variants are measured against")
    parser.add_argument("--rule", choices=("two-phase", "spread"), default="two-phase")
    parser.add_argument("--max-ratio", type=float, default=2.5, help="spread rule: a variant's time over the recipe's, at most")
    parser.add_argument("--sequential", action="store_true",
                        help="spread rule: one variant at a time, adopted ones carried into the recipe, three misses stop")
    parser.add_argument("--common", default="", help="options for every lane, the recipe's too (a quick trial of the screen)")
    parser.add_argument("--jobs", type=int, default=16)
    parser.add_argument("--budget", type=float, default=420, help="seconds for both phases")
    parser.add_argument("--bar", type=float, default=0.03)
    parser.add_argument("--confirm", type=float, default=0.015)
    parser.add_argument("--logs", type=Path, default=OUT / "screen", help="one log per fold and variant")
    parser.add_argument("--phases", type=int, choices=(1, 2), default=2,
                        help="1: partition 0 only, when the machine's time cannot hold phase 2's twenty models")
    args = parser.parse_args()
    args.logs.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + args.budget
    variants = [tuple(shlex.split(variant)) for variant in args.variant]
    if args.sequential:
        if args.rule != "spread":
            parser.error("--sequential goes with --rule spread")
        screen_in_sequence(variants, args, deadline)
        return

    rows = run_folds([(options, 0, fold) for options in (*variants, RECIPE) for fold in range(5)], args, deadline)
    print("phase 1, partition 0")
    print(describe(rows, RECIPE, (0,)))
    gains = {}
    for options in variants:
        gains[options] = paired(rows, options, (0,))
        print(describe(rows, options, (0,)))
        print("  gain:", describe_gain(gains[options]))
    if args.rule == "spread":
        for options in variants:
            decision, why = adopted_by_spread(gains[options], _minutes(rows, options) / _minutes(rows, RECIPE), args.max_ratio)
            print(f"{shlex.join(options)}: {'adopt' if decision else 'keep the recipe'} ({why})")
        return
    chosen, qualified = pick(gains, args.bar)
    if args.phases == 1:
        print(f"phase 1 picks: {shlex.join(chosen) if chosen else 'no variant'} ({'qualified' if qualified else 'not qualified'})")
        return
    if chosen is None:
        print("phase 2: no variant gains; nothing to run")
        return
    print(f"phase 2 ({'decides' if qualified else 'for information only'}): {shlex.join(chosen)} on partitions 1 and 2")
    rows |= run_folds([(options, seed, fold) for options in (chosen, RECIPE) for seed in (1, 2) for fold in range(5)],
                      args, deadline)
    print(describe(rows, RECIPE, (1, 2)))
    print(describe(rows, chosen, (1, 2)))
    fresh = paired(rows, chosen, (1, 2))
    print("  gain:", describe_gain(fresh))
    print(f"all 15 folds, gain: {describe_gain(paired(rows, chosen, (0, 1, 2)))}")
    print("decision:", "adopt" if adopted(fresh, qualified, args.confirm) else "keep the recipe")


if __name__ == "__main__":
    main()
