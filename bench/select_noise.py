"""Which select target lets a search tell settings apart? Random trials of a space, scored on several select targets
at once, and for each target how much of the trials' spread is their settings rather than their seeds' luck.

    python bench/select_noise.py      # thresholds.yaml, 16 random trials, its select target and an 18-camera one
    python bench/select_noise.py --select synthetic:shortcut/select "synthetic:shortcut/select?test_ids=180"
    python bench/select_noise.py --out runs/bench-select --report-only   # re-read a finished sweep

One sweep (`python -m orchestrator.sweep`: Optuna's random sampler, no early stopping, no verification, no start
points) trains --trials settings of the space on its paired seeds and evaluates every --select target at every
evaluation (the objective is then their mean; it steers nothing, the sampler being random). Printed per target:

* the settings' share of the spread of the trials' final mAP (`orchestrator.results.setting_signal`: each trial's
  final checkpoint of every seed, scored after the sweep), with the sd between settings and the sd of a trial's
  mean from its seeds' luck: what a winner rule and a sampler can know at the end;
* the sd of an evaluation-to-evaluation change in the adversarial phase (mean over the seeds, as logged): how much
  one evaluation moves when nothing but training has happened;
* how well each evaluation ranks the trials as their last one does (Spearman, on the mean of the last 3
  evaluations up to it, what `objective.average_last: 3` reads): what an ASHA rung there can know.

The sweep is resumable: rerun the command to continue it, or --report-only to read it. Each target's
evaluation costs time at every evaluation (an 18-camera, 180-identity target is 3x the images of the 6-camera one).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import subprocess
import sys
from dataclasses import replace

import yaml
from search_efficiency import SeedScores  # bench/ is the script's own folder

from orchestrator.results import TrialRow, setting_signal

DEFAULT_SELECT = ["synthetic:shortcut/select", "synthetic:shortcut/select?target_cameras=18&test_ids=180"]
WINDOW = 3


def write_space(base: dict, name: str, select: list[str], trials: int, seed: int, folder: str) -> str:
    raw = copy.deepcopy(base)
    raw["name"] = name
    raw["targets"]["select"] = select
    raw["search"] = {
        "sampler": "random",
        "num_samples": trials,
        "max_concurrent": base.get("search", {}).get("max_concurrent", 2),
        "seed": seed,
        "seeds": base.get("search", {}).get("seeds", 2),
    }
    raw["verify"] = {"seeds": 0}
    raw["scheduler"] = {"type": "none"}
    path = os.path.join(folder, f"{name}.yaml")
    with open(path, "w") as f:
        yaml.safe_dump(raw, f, sort_keys=False)
    return path


def windowed(history: dict[int, float], step: int, window: int = WINDOW) -> float:
    return statistics.mean(history[k] for k in range(max(1, step - window + 1), step + 1) if k in history)


def final_scores(rows: list[TrialRow], uris: list[str], seeds: int) -> dict[str, list[TrialRow]]:
    """Each target's rows, their per-seed values the final checkpoints' mAP on it (scored here, on the CPU)."""
    from orchestrator.plan import Target

    scores, out = SeedScores([Target(u, f"t{i}") for i, u in enumerate(uris)], seeds), {u: [] for u in uris}
    for row in rows:
        by_seed = scores.per_seed(row.checkpoint)
        for i, u in enumerate(uris):
            values = tuple(seed[f"t{i}"] for seed in by_seed)
            out[u].append(replace(row, per_seed=values, objective=statistics.mean(values)))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--space", default="search_spaces/thresholds.yaml")
    ap.add_argument("--select", nargs="+", default=DEFAULT_SELECT, help="select target URIs, all scored each time")
    ap.add_argument("--trials", type=int, default=16)
    ap.add_argument("--sampler-seed", type=int, default=7)
    ap.add_argument("--name", help="the sweep's name (default select-noise-s<sampler seed>)")
    ap.add_argument("--out", default="runs/bench-select")
    ap.add_argument("--data-root", default=os.environ.get("ADIN_DATA_ROOT", "runs/data"))
    ap.add_argument("--report-only", action="store_true", help="read the finished sweep in --out, run nothing")
    args = ap.parse_args()

    from mlflow.tracking import MlflowClient
    from scipy.stats import spearmanr

    from orchestrator.best import sweep_parents, trial_rows
    from orchestrator.space import load_space
    from orchestrator.tracking import schema as S

    load_space(args.space)  # a bad space file fails here, with its own message, before anything runs
    with open(args.space) as f:
        base = yaml.safe_load(f)
    name = args.name or f"select-noise-s{args.sampler_seed}"
    os.makedirs(args.out, exist_ok=True)
    db = os.path.abspath(os.path.join(args.out, "mlflow.db"))
    uri = f"sqlite:///{db}"

    def parent_of():
        parents = sweep_parents(MlflowClient(uri), name) if os.path.exists(db) else []
        return parents[0] if parents else None

    parent = parent_of()
    if not args.report_only and (parent is None or parent.data.tags.get(S.SWEEP_STATE) != "complete"):
        space_path = write_space(base, name, args.select, args.trials, args.sampler_seed, args.out)
        cmd = [sys.executable, "-m", "orchestrator.sweep", "--space", space_path, "--quiet"]
        cmd += ["--resume", name] if parent is not None else ["--name", name]
        cmd += ["--storage", os.path.join(args.out, "sweeps"), "--tracking-uri", uri, "--data-root", args.data_root]
        print(" ".join(cmd[1:]), flush=True)
        rc = subprocess.call(cmd)
        if rc != 0:
            raise SystemExit(f"the sweep exited {rc}; rerun this command to continue it")
        parent = parent_of()
    if parent is None:
        raise SystemExit(f"no sweep {name} in {args.out}; run without --report-only first")

    client = MlflowClient(uri)
    rows, runs = trial_rows(client, parent)
    rows = [r for r in rows if r.outcome == "finished" and r.checkpoint]
    if len(rows) < 3:
        raise SystemExit(f"sweep {name} in {args.out} has {len(rows)} finished trial(s); at least 3 are needed")
    uris = json.loads(parent.data.tags[S.SELECT])
    names = json.loads(parent.data.tags.get(S.TARGET_NAMES, "{}"))
    seeds = max(len(r.per_seed) for r in rows) or 1
    finals = final_scores(rows, uris, seeds)
    print(f"{len(rows)} finished random trials of {args.space}, {seeds} seeds each; select targets scored together")
    for target in uris:
        shown = names.get(target, target)
        histories = [
            {m.step: m.value for m in client.get_metric_history(runs[r.trial].info.run_id, f"select/{shown}/mAP")}
            for r in rows
        ]
        last = max(max(h) for h in histories)
        signal = setting_signal(finals[target])
        changes = [h[k] - h[k - 1] for h in histories for k in range(WINDOW + 1, last + 1) if k in h and k - 1 in h]
        ranks = []
        for step in range(WINDOW, last):
            early = [windowed(h, step) for h in histories]
            rho = spearmanr(early, [windowed(h, last) for h in histories])[0]
            ranks.append(f"eval {step} {rho:+.2f}")
        print(f"\n{shown} ({target})")
        print(f"  final mAP, every seed: {signal.line() if signal else 'too few trials or seeds'}")
        print(f"  sd of one evaluation's change (evaluations {WINDOW}-{last}): {statistics.stdev(changes):.4f}")
        print(f"  rank agreement with the last {WINDOW} evaluations' mean: {', '.join(ranks)}")


if __name__ == "__main__":
    main()
