"""Baseline figures of the synthetic benchmark's presets: what raw pixels, the identity-only baseline and ADIN
reach on the source's own cross-camera test split and on direct transfer to the `select` and `report` targets.

    python bench/synthetic_presets.py [--presets easy hard] [--seeds 0 1 2]

Methods run on paired seeds (same data, same initialisation), since seed-to-seed spread is as large as the
effects; each row is the mean over seeds with the per-seed differences to the baseline.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import numpy as np
import torch

from adin_core.data.synthetic import generate_benchmark
from adin_core.metrics import evaluate_features

METHODS = {
    "baseline (adv_loss=none)": ["adv_loss=none"],
    "ADIN cane beta=1": ["adv_loss=cane"],
    "ADIN cane beta=10": ["adv_loss=cane", "beta=10"],
    "ADIN ne beta=1": ["adv_loss=ne"],
    "ADIN rg beta=0.1": ["adv_loss=rg", "beta=0.1"],
}


def raw_pixel_map(preset: str, seed: int) -> dict[str, float]:
    bench = generate_benchmark(preset, seed=seed)
    out = {}
    for name, d in [("source", bench.source), *bench.targets.items()]:
        q = torch.tensor(d.query.images.reshape(len(d.query), -1), dtype=torch.float32)
        g = torch.tensor(d.gallery.images.reshape(len(d.gallery), -1), dtype=torch.float32)
        q, g = q - q.mean(1, keepdim=True), g - g.mean(1, keepdim=True)
        out[name] = evaluate_features(q, g, d.query.pids, d.gallery.pids, d.query.camids, d.gallery.camids).mAP
    return out


def run(preset: str, seed: int, sets: list[str]) -> dict[str, float]:
    cmd = [sys.executable, "-m", "adin_core", "--preset", preset, "--seed", str(seed), "--json"]
    for s in sets:
        cmd += ["--set", s]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    scores = json.loads(out.strip().splitlines()[-1])["scores"]
    return {k: v["mAP"] for k, v in scores.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--presets", nargs="+", default=["easy", "hard"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    args = ap.parse_args()
    for preset in args.presets:
        print(f"preset {preset!r}, seeds {args.seeds}: mAP on source (own cross-camera test) / select / report")
        raw = [raw_pixel_map(preset, s) for s in args.seeds]
        print(f"  {'raw pixels':<26}" + "".join(f"{np.mean([r[k] for r in raw]):8.3f}" for k in
                                               ("source", "select", "report")))
        base = None
        for name, sets in METHODS.items():
            res = [run(preset, s, sets) for s in args.seeds]
            means = [np.mean([r[k] for r in res]) for k in ("source", "select", "report")]
            line = f"  {name:<26}" + "".join(f"{m:8.3f}" for m in means)
            if base is None:
                base = res
            else:
                diffs = [[r[k] - b[k] for r, b in zip(res, base)] for k in ("source", "select", "report")]
                line += "   per-seed diff vs baseline: " + " / ".join(
                    ",".join(f"{d:+.3f}" for d in ds) for ds in diffs)
            print(line, flush=True)


if __name__ == "__main__":
    main()
