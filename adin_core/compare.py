"""Paired-seed comparison of training arms on the synthetic benchmark: `python -m adin_core.compare --help`.

Seeds vary results by about as much as the effects we look for, so every claim about the method is a paired
comparison: each seed fixes the data (the benchmark is generated from it), the initialisation and the batch
order, and the arms differ only in their config overrides. Per arm it prints the mean +/- sd of source / select
/ report mAP and of the nuisance probe; per arm against the reference arm (the identity-only baseline) the
per-seed differences, their sign count and a paired-t 95% interval. The torch thread count is fixed (it alone
moves a run by ~0.02 mAP) and recorded.

    python -m adin_core.compare                                   # default arms, preset `shortcut`, seeds 0-4
    python -m adin_core.compare --presets shortcut hard --seeds 0 1 2 3 4 5 6 7 --jobs 2 --json runs/cmp.json
    python -m adin_core.compare --arm baseline:adv_loss=none --arm b3:beta=3 --arm b10:beta=10

An arm is `NAME:FIELD=VALUE,FIELD=VALUE` (any TrainConfig field; `NAME:` alone is the defaults). `--set` applies
to every arm. `--gen FIELD=VALUE` changes the benchmark generator (a SynthConfig field) for every preset, to check
a result on settings it was not designed on.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from typing import Any

import numpy as np

from adin_core.stats import Paired

DEFAULT_ARMS = (
    "baseline:adv_loss=none",
    "adin:",  # the default config: adv_loss kl (KL(u || c)), beta 0.1
    "control:shuffle_nuisance=true",  # the default config on permuted nuisance labels
    "kl_class_prior:calibration=class_prior",  # the paper's calibration on the non-saturating form
    "paper_cane:adv_loss=ne,calibration=class_prior,freeze_encoder_for_nuisance=true,beta=1",  # PAPER_CANE
)
COLUMNS = (
    ("source", "source/mAP"),
    ("select", "select/select/mAP"),
    ("report", "report/report/mAP"),
    ("transfer", "transfer"),
    ("probe camera", "probe/camera_acc"),
    ("probe camera, targets", "target_probe"),
)
REFERENCE = "baseline"


@dataclass(frozen=True)
class Arm:
    name: str
    overrides: dict[str, Any]


def parse_value(raw: str) -> Any:
    import yaml

    try:
        return yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        raise ValueError(f"cannot read value {raw!r}: {exc}") from None


def _split_top_level(text: str) -> list[str]:
    """Split on commas outside brackets, so `FIELD=[a, b]` stays one item."""
    items, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch in "[{(":
            depth += 1
        elif ch in "]})":
            depth -= 1
        elif ch == "," and depth == 0:
            items.append(text[start:i])
            start = i + 1
    items.append(text[start:])
    return [item.strip() for item in items if item.strip()]


def parse_assignments(text: str, what: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in _split_top_level(text):
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ValueError(f"{what} {item!r}: expected FIELD=VALUE")
        out[key.strip()] = parse_value(raw.strip())
    return out


def parse_arm(text: str) -> Arm:
    name, sep, rest = text.partition(":")
    if not sep or not name:
        raise ValueError(f"--arm {text!r}: expected NAME:FIELD=VALUE,... (or NAME: for the defaults)")
    return Arm(name, parse_assignments(rest, f"--arm {name}"))


def value(run: dict[str, Any], key: str) -> float:
    m = run["metrics"]
    if key == "transfer":  # direct transfer: the mean of the select and report targets
        return 0.5 * (m["select/select/mAP"] + m["report/report/mAP"])
    if key == "target_probe":  # the camera probe on the targets' unseen cameras, mean of select and report
        return 0.5 * (m["select/select/probe_camera_acc"] + m["report/report/probe_camera_acc"])
    return float(m.get(key, float("nan")))


# ---------------------------------------------------------------------------------------------------------
# running
# ---------------------------------------------------------------------------------------------------------
def _init_worker(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def _run(preset: str, seed: int, overrides: dict[str, Any], gen: dict[str, Any], data_root: str) -> dict[str, Any]:
    from adin_core.benchmark import run_benchmark

    return run_benchmark(preset, seed, overrides, data_root=data_root, gen=gen)


def run_all(
    arms: list[Arm],
    presets: list[str],
    seeds: list[int],
    common: dict[str, Any],
    gen: dict[str, Any],
    jobs: int,
    threads: int,
    data_root: str,
    log=None,
) -> list[dict[str, Any]]:
    import multiprocessing as mp

    from adin_core.data.datasets import open_benchmark

    log = log or (lambda line: print(line, flush=True))
    for preset in presets:  # each benchmark is generated once, here, not by every arm's process at once
        for seed in seeds:
            open_benchmark(preset, seed, data_root, **gen)
    tasks = [(arm, preset, seed) for preset in presets for seed in seeds for arm in arms]
    runs: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    with ProcessPoolExecutor(
        jobs, mp_context=mp.get_context("spawn"), initializer=_init_worker, initargs=(threads,)
    ) as pool:
        futures = {
            pool.submit(_run, preset, seed, {**common, **arm.overrides}, gen, data_root): (arm, preset, seed)
            for arm, preset, seed in tasks
        }
        for fut in as_completed(futures):
            arm, preset, seed = futures[fut]
            run = fut.result()
            run["arm"] = arm.name
            runs.append(run)
            log(
                f"[{len(runs)}/{len(tasks)} {time.perf_counter() - t0:5.0f} s] {preset} seed {seed} {arm.name}: "
                f"source {value(run, 'source/mAP'):.3f} transfer {value(run, 'transfer'):.3f} "
                f"probe {value(run, 'probe/camera_acc'):.3f}"
            )
    return runs


# ---------------------------------------------------------------------------------------------------------
# reporting
# ---------------------------------------------------------------------------------------------------------
def summarise(
    runs: list[dict[str, Any]],
    arms: list[str],
    presets: list[str],
    reference: str = REFERENCE,
    control: str | None = "control",
) -> str:
    lines = []
    for preset in presets:
        by_arm = {
            a: sorted((r for r in runs if r["preset"] == preset and r["arm"] == a), key=lambda r: r["seed"])
            for a in arms
        }
        n = len(by_arm[arms[0]])
        chance = np.mean([value(r, "probe/camera_chance") for r in by_arm[arms[0]]])
        t_chance = np.mean(
            [
                0.5 * (value(r, "select/select/probe_camera_chance") + value(r, "report/report/probe_camera_chance"))
                for r in by_arm[arms[0]]
            ]
        )
        lines.append(f"## preset `{preset}`: {n} paired seeds, torch threads {by_arm[arms[0]][0]['threads']}")
        lines.append("")
        head = ["arm", *[c for c, _ in COLUMNS], "grip adv/id", "adversarial share"]
        lines.append("| " + " | ".join(head) + " |")
        lines.append("|" + " --- |" * len(head))
        for a in arms:
            cells = [a]
            for _, key in COLUMNS:
                vals = [value(r, key) for r in by_arm[a]]
                cells.append(f"{np.mean(vals):.3f} ± {np.std(vals, ddof=1) if len(vals) > 1 else 0:.3f}")
            grips = [r["metrics"].get("grip/adv_to_id") for r in by_arm[a]]
            cells.append("-" if None in grips else f"{np.mean(grips):.2f}")
            shares = [r["metrics"].get("phase_share/adversarial", 0.0) for r in by_arm[a]]
            cells.append(f"{np.mean(shares):.2f}")
            lines.append("| " + " | ".join(cells) + " |")
        lines.append(
            f"\n(probe camera: chance {chance:.3f} on the source, {t_chance:.3f} on the targets; transfer = "
            "mean of select and report mAP)\n"
        )
        pairs = [(a, reference) for a in arms if a != reference]
        if control in arms:
            pairs += [(a, control) for a in arms if a not in (reference, control)]
        if reference in arms:
            lines.append("Paired differences, mean [95% paired-t interval], seeds > 0 (per seed):\n")
            for a, b in pairs:
                for label, key in (
                    ("transfer", "transfer"),
                    ("source", "source/mAP"),
                    ("probe camera", "probe/camera_acc"),
                    ("probe camera, targets", "target_probe"),
                ):
                    p = Paired.of([value(r, key) for r in by_arm[a]], [value(r, key) for r in by_arm[b]])
                    lines.append(f"- {a} − {b}, {label}: {p}")
            lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from adin_core.benchmark import DEFAULT_DATA_ROOT, benchmark_config, generator_config
    from adin_core.data.synthetic import PRESETS, SynthConfig

    ap = argparse.ArgumentParser(
        prog="python -m adin_core.compare", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--presets", nargs="+", default=["shortcut"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    ap.add_argument(
        "--arm",
        action="append",
        default=None,
        metavar="NAME:FIELD=VALUE,...",
        help=f"an arm (repeatable; default: {' '.join(DEFAULT_ARMS)})",
    )
    ap.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", help="for every arm")
    ap.add_argument(
        "--gen",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="a benchmark generator (SynthConfig) field for every preset, e.g. --gen num_cameras=8",
    )
    ap.add_argument(
        "--data-root",
        default=os.environ.get("ADIN_DATA_ROOT", DEFAULT_DATA_ROOT),
        help="where the benchmarks are sharded on first use (default runs/data; ADIN_DATA_ROOT)",
    )
    ap.add_argument("--jobs", type=int, default=2, help="runs at once (processes)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per run (fixed: it moves results)")
    ap.add_argument("--json", metavar="FILE", help="also write every run's record")
    args = ap.parse_args(argv)
    try:
        arms = [parse_arm(a) for a in (args.arm or DEFAULT_ARMS)]
        common = parse_assignments(",".join(args.set), "--set")
        gen = parse_assignments(",".join(args.gen), "--gen")
        unknown = [p for p in args.presets if p not in PRESETS]
        if unknown:
            raise ValueError(f"--presets: unknown {unknown}; choose from {sorted(PRESETS)}")
        bad_gen = sorted(set(gen) - set(SynthConfig.__dataclass_fields__))
        if bad_gen:
            raise ValueError(
                f"--gen: unknown generator field(s) {bad_gen}; known: {sorted(SynthConfig.__dataclass_fields__)}"
            )
        for p in args.presets:
            synth = generator_config(p, gen)  # validates the generator settings now
            for arm in arms:  # every arm's config is valid before any training starts
                benchmark_config(synth, {**common, **arm.overrides}, 0)
        if len({a.name for a in arms}) != len(arms):
            raise ValueError("--arm: arm names must be distinct")
        if args.jobs < 1 or args.threads < 1:
            raise ValueError("--jobs and --threads must be >= 1")
    except (ValueError, TypeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(
        f"{len(arms)} arms x {len(args.seeds)} seeds x {len(args.presets)} presets; {args.jobs} jobs of "
        f"{args.threads} torch thread(s); generator overrides {gen or 'none'}",
        flush=True,
    )
    runs = run_all(arms, args.presets, args.seeds, common, gen, args.jobs, args.threads, args.data_root)
    names = [a.name for a in arms]
    print()
    print(summarise(runs, names, args.presets, reference=REFERENCE if REFERENCE in names else names[0]))
    if args.json:
        tmp = args.json + ".tmp"
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(tmp, "w") as fh:
            json.dump(
                {
                    "argv": sys.argv[1:] if argv is None else argv,
                    "arms": names,
                    "generator": gen,
                    "threads": args.threads,
                    "runs": runs,
                },
                fh,
                indent=1,
            )
        os.replace(tmp, args.json)
        print(f"runs written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
