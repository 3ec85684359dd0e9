"""Does the search find good settings sooner than chance? TPE+ASHA against random search and TPE without ASHA, on an
equal budget of training epochs, over several sweep seeds.

    python bench/search_efficiency.py                                   # thresholds.yaml as shipped, sweep seeds 0 1 2
    python bench/search_efficiency.py --samples 4 --epochs 8 --seeds 1  # a quicker, cruder look
    python bench/search_efficiency.py --methods random tpe+asha        # the headline's two arms only
    python bench/search_efficiency.py --out runs/bench-search --report-only   # re-read finished sweeps

Every (method, sweep seed) is a real sweep (`python -m orchestrator.sweep`, its verification off) in one bench
folder (--out: sweeps, MLflow, Optuna). The methods:

* `random`: Optuna's RandomSampler, every trial trains its whole budget;
* `tpe`: TPE, every trial trains its whole budget;
* `tpe+asha`: TPE with the space's ASHA, given --asha-factor times as many trials (ASHA stops about half of them at
  its rung, so 1.5 times as many fill random's budget on thresholds.yaml, whose rung comes at a third of a trial's
  epochs after the shared pretraining; trials that end past the budget are not counted).

Both TPE arms draw the same random start: the one the space gives a search of --samples trials (4 of 8), so they
differ only in the scheduler. (Left to its default, tpe+asha's 12 trials would start with 6 random ones: with the
same sampler seed, random search's first 6 trials, leaving TPE less to steer within the budget.)

All trials of all methods train the space's same paired seeds (search.seeds), so the methods differ only in which
settings they try and when they stop them. The space's start points are left out (each method would try them
first, and the winner rule would measure them, not the search), so the winner rule is the plain best objective.
Epochs are what was trained: the shared pretraining once per seed (orchestrator.pretraining, counted first), then
each trial's epochs from its last evaluation (a stopped trial counts the epochs it trained) less the pretraining it
started from, in the order the trials ended; with 2 trials in flight this ignores the unfinished one, the same way
for every method. The budget is what `random` trained in all; a method's curve is cut there.

Printed per sweep seed: how well each evaluation ranks the full-budget trials as their last one does, on the metric
the search reads (the space's objective, averaged over its last evaluations where the space says so: an evaluation
whose window overlaps the last one's shares values with it); what a rung there can know; "all equal" where every trial
was still the same model; how much of the spread between random search's trials is their settings, not their seeds'
luck (`orchestrator.results.setting_signal`: where it is small, random's final best is mostly its luckiest trial, and
reaching it sooner is chance); how much better than random's trials the trials TPE chose in tpe+asha scored at
ASHA's rung, in sd of random's (the steer bench/reach_power.py models: what the headline can tell apart); then the
best objective so far (select-target mAP, what the search sees) against epochs
spent, and the report-target mAP of that best-so-far pick (its checkpoint, all seeds, scored after the sweep; the
search never sees the report targets). The headline figure: the epochs `tpe+asha` needs to reach `random`'s final best
objective, as a fraction of `random`'s epochs, median over the sweep seeds (target <= 0.5; "never" when it does not
get there within the budget), each seed's figure saying whether the trial that got there is one random search tried
too (the random start both share: how soon it ends is the trials' order, not the search's choice) or one TPE
chose. Each sweep takes
minutes (thresholds.yaml as shipped: about 13 on 2 cores for 8 trials), so the default run is hours; the sweeps are
resumable: a finished one is read, not rerun.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import os
import statistics
import subprocess
import sys
from dataclasses import dataclass

import yaml

from orchestrator.results import TrialRow, pick_winner, setting_signal
from orchestrator.space import Objective

METHODS = {"random": ("random", "none"), "tpe": ("tpe", "none"), "tpe+asha": ("tpe", "asha")}


@dataclass
class TrialEnd:
    row: TrialRow | None  # the trial as orchestrator.best reads it: objective, outcome, checkpoint (None: pretraining)
    ended_ms: int
    epochs: float  # seed-epochs it trained (a stopped trial: up to its last evaluation)


def sweep_name(method: str, sweep_seed: int) -> str:
    return f"search-eff-{method.replace('+', '-')}-s{sweep_seed}"


def write_space(
    base: dict, method: str, sweep_seed: int, samples: int, folder: str, random_start: int | None = None
) -> str:
    """The method's space file; `random_start` (model-based samplers only) fixes how many of its trials are drawn
    at random, so arms given different trial counts start alike."""
    sampler, _ = METHODS[method]
    raw = copy.deepcopy(base)
    raw["name"] = sweep_name(method, sweep_seed)
    raw.setdefault("search", {}).update({"sampler": sampler, "seed": sweep_seed, "num_samples": samples})
    if sampler == "random":
        raw["search"].pop("startup_trials", None)
    elif random_start is not None:
        raw["search"]["startup_trials"] = random_start
    raw["verify"] = {"seeds": 0}
    raw["search"].pop("start_from", None)  # the search itself is measured, from no known point
    path = os.path.join(folder, f"{raw['name']}.yaml")
    with open(path, "w") as f:
        yaml.safe_dump(raw, f, sort_keys=False)
    return path


def run_sweep(space_path: str, name: str, scheduler: str, args: argparse.Namespace, *, resume: bool) -> int:
    cmd = [
        sys.executable,
        "-m",
        "orchestrator.sweep",
        "--space",
        space_path,
        *(["--resume", name] if resume else ["--name", name]),
        "--quiet",
        "--scheduler",
        scheduler,
        "--storage",
        os.path.join(args.out, "sweeps"),
        "--tracking-uri",
        args.tracking_uri,
        "--data-root",
        args.data_root,
    ]
    if args.epochs:
        cmd += ["--epochs", str(args.epochs)]
    if args.seeds:
        cmd += ["--seeds", str(args.seeds)]
    print(f"  {name}: {' '.join(cmd[1:])}", flush=True)
    return subprocess.call(cmd)


def trial_ends(client, parent, epochs_per_eval: float, seeds: int, total_epochs: float) -> list[TrialEnd]:
    """A sweep's trials in the order they ended, with the seed-epochs each trained (less the shared pretraining it
    started from), after the shared pretraining itself (a row-less first entry)."""
    from orchestrator.best import trial_rows
    from orchestrator.tracking import schema as S

    rows, runs = trial_rows(client, parent)
    ends = []
    for row in rows:
        run = runs[row.trial]
        evals = run.data.metrics.get(S.EVALUATION, 0.0)
        trained = total_epochs if row.outcome == "finished" else min(total_epochs, evals * epochs_per_eval)
        shared = run.data.metrics.get("pretraining/shared_epochs", 0.0)
        ends.append(TrialEnd(row, run.info.end_time or 0, trained * seeds - shared))
    pretrained = parent.data.metrics.get("pretraining/seed_epochs_trained", 0.0)
    return [TrialEnd(None, 0, pretrained)] * bool(pretrained) + sorted(ends, key=lambda t: t.ended_ms)


def curve(ends: list[TrialEnd], budget: float, objective: Objective) -> list[tuple[float, TrialRow]]:
    """After each trial that ended within the budget: (seed-epochs spent, the sweep's own winner rule applied to
    the trials ended so far), once there is a winner."""
    spent, points = 0.0, []
    for i, end in enumerate(ends):
        spent += end.epochs
        if spent > budget + 1e-9:
            break
        best = pick_winner([e.row for e in ends[: i + 1] if e.row is not None], objective)
        if best is not None:
            points.append((spent, best))
    return points


def epochs_to_reach(points: list[tuple[float, TrialRow]], target: float, objective: Objective) -> float | None:
    for spent, best in points:
        if not objective.better(target, best.objective):
            return spent
    return None


def histories(client, parent, metric: str) -> list[tuple[dict, dict[int, float]]]:
    """Each trial of `parent` as (its parameters, {evaluation: `metric`})."""
    from orchestrator.best import trial_rows

    rows, runs = trial_rows(client, parent)
    return [
        (row.params, {m.step: m.value for m in client.get_metric_history(runs[row.trial].info.run_id, metric)})
        for row in rows
    ]


def rank_agreement(trials: list[tuple[dict, dict[int, float]]], last: int) -> dict[int, float | None]:
    """How well each evaluation's objective ranks the trials as their last one does (Spearman's rho over the
    distinct `trials` (histories()) that trained their whole budget): what an ASHA rung at that evaluation can know.
    None: every trial scored the same there (a rung would rank identical models)."""
    curves, seen = [], set()
    for params, history in trials:
        key = tuple(sorted(params.items()))  # random's and tpe's shared random start: counted once
        if last in history and key not in seen:
            seen.add(key)
            curves.append(history)
    return agreement(curves, last)


def steer(random: list[tuple[dict, float]], searched: list[tuple[dict, float]], sign: float) -> tuple[float, int]:
    """How much better than random search's trials the trials a search chose itself scored, in standard deviations
    of random's (`sign` -1 where lower is better), and how many it chose: the `steer` bench/reach_power.py models.
    Given each trial's (parameters, value) at ASHA's rung, which every trial reaches, so stopped trials count too;
    its draws shared with random search (the same random start) are left out."""
    shared = [p for p, _ in random]
    own = [v for p, v in searched if p not in shared]
    values = [v for _, v in random]
    if len(own) < 2 or len(values) < 2 or statistics.stdev(values) == 0:
        return float("nan"), len(own)
    return sign * (statistics.mean(own) - statistics.mean(values)) / statistics.stdev(values), len(own)


def agreement(curves: list[dict[int, float]], last: int) -> dict[int, float | None]:
    """Spearman's rho between each evaluation's values and the `last` one's, over curves {evaluation: value}."""
    from scipy.stats import spearmanr

    out = {}
    for step in range(1, last):
        pairs = [(c[step], c[last]) for c in curves if step in c]
        if len(pairs) < 3:
            continue
        first = [x for x, _ in pairs]
        out[step] = None if max(first) == min(first) else float(spearmanr(first, [y for _, y in pairs])[0])
    return out


class SeedScores:
    """Each seed's mAP on `targets` of a trial checkpoint, {target name: mAP} a seed (scored on the CPU, once a
    checkpoint); the targets are opened once, at the first model's image size."""

    def __init__(self, targets: list, seeds: int) -> None:
        self.targets, self.seeds, self.opened, self.cache = targets, seeds, None, {}

    def per_seed(self, checkpoint: str) -> list[dict[str, float]]:
        from adin_core.train import model_from_state
        from orchestrator.checkpoints import load_state
        from orchestrator.targets import open_target, score_targets

        if checkpoint not in self.cache:
            values = []
            for k in range(self.seeds):
                model, config = model_from_state(load_state(checkpoint, k))
                if self.opened is None:
                    self.opened = [open_target(t, (config.image_height, config.image_width)) for t in self.targets]
                values.append({n: s["mAP"] for n, s in score_targets(model, self.opened, config).items()})
            self.cache[checkpoint] = values
        return self.cache[checkpoint]


class ReportScores(SeedScores):
    """A pick's report-target mAP, the mean over its seeds' models of the mean over the sweep's report targets."""

    def __init__(self, parent, seeds: int) -> None:
        from orchestrator.plan import Target
        from orchestrator.tracking import schema as S

        names = json.loads(parent.data.tags.get(S.TARGET_NAMES, "{}"))
        super().__init__([Target(u, names.get(u, u)) for u in json.loads(parent.data.tags.get(S.REPORT, "[]"))], seeds)

    def __call__(self, checkpoint: str) -> float:
        return statistics.mean(statistics.mean(seed.values()) for seed in self.per_seed(checkpoint))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--space", default="search_spaces/thresholds.yaml")
    ap.add_argument("--sweep-seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--samples", type=int, help="trials of random and tpe (default: the space's num_samples)")
    ap.add_argument(
        "--asha-factor", type=float, default=1.5, help="tpe+asha gets this many times --samples trials (see above)"
    )
    ap.add_argument("--epochs", type=float, help="epochs of a trial (default: the space's)")
    ap.add_argument("--seeds", type=int, help="training seeds per trial (default: the space's search.seeds)")
    ap.add_argument(
        "--methods",
        nargs="+",
        choices=list(METHODS),
        default=list(METHODS),
        help="which arms to run (the headline needs random and tpe+asha; tpe adds a comparison and rank agreement)",
    )
    ap.add_argument("--out", default="runs/bench-search")
    ap.add_argument("--data-root", default=os.environ.get("ADIN_DATA_ROOT", "runs/data"))
    ap.add_argument("--report-only", action="store_true", help="read the finished sweeps in --out, run nothing")
    args = ap.parse_args()
    args.methods = [m for m in METHODS if m in args.methods]  # random first: its epochs are the others' budget

    from mlflow.tracking import MlflowClient

    from orchestrator.best import sweep_parents
    from orchestrator.space import load_space
    from orchestrator.tracking import schema as S

    space = load_space(args.space)
    with open(args.space) as f:
        base = yaml.safe_load(f)
    samples = args.samples or space.search.num_samples
    epochs = args.epochs or space.training.epochs
    seeds = args.seeds or space.search.seeds
    budget = samples * epochs * seeds  # at most; each sweep seed's is what random trained in all (see the docstring)
    random_start = dataclasses.replace(space.search, sampler="tpe", num_samples=samples).random_start
    os.makedirs(args.out, exist_ok=True)
    db = os.path.abspath(os.path.join(args.out, "mlflow.db"))
    args.tracking_uri = f"sqlite:///{db}"

    def parent_of(name: str):
        if not os.path.exists(db):  # nothing has run yet (and the sweep, not this script, creates the store)
            return None
        parents = sweep_parents(MlflowClient(args.tracking_uri), name)
        return parents[0] if parents else None

    print(
        f"space {args.space}: {samples} trials x {epochs:g} epochs x {seeds} seeds = budget {budget:g} seed-epochs; "
        f"tpe+asha gets {round(samples * args.asha_factor)} trials; both TPE arms start with {random_start} random; "
        f"sweep seeds {args.sweep_seeds}",
        flush=True,
    )
    spaces = os.path.join(args.out, "spaces")
    os.makedirs(spaces, exist_ok=True)
    for sweep_seed in [] if args.report_only else args.sweep_seeds:
        for method in args.methods:
            name = sweep_name(method, sweep_seed)
            parent = parent_of(name)
            if parent is not None and parent.data.tags.get(S.SWEEP_STATE) == "complete":
                continue
            n = round(samples * args.asha_factor) if method == "tpe+asha" else samples
            rc = run_sweep(
                write_space(base, method, sweep_seed, n, spaces, random_start),
                name,
                METHODS[method][1],
                args,
                resume=parent is not None,
            )
            if rc not in (0, 1):
                raise SystemExit(f"sweep {name} exited {rc}; rerun this command to continue it and the others")

    ratios, lines, how = [], [], []
    client = MlflowClient(args.tracking_uri) if os.path.exists(db) else None  # None: no sweep, so no parents
    for sweep_seed in args.sweep_seeds:
        curves, random_params = {}, []
        parents = {m: p for m in METHODS if (p := parent_of(sweep_name(m, sweep_seed))) is not None}
        trials = {m: histories(client, p, space.objective.key) for m, p in parents.items()}
        for method in args.methods:
            parent = parents.get(method)
            if parent is None:
                continue
            report = ReportScores(parent, seeds)
            ends = trial_ends(client, parent, space.training.eval_every_epochs, seeds, epochs)
            if method == "random":
                budget = sum(e.epochs for e in ends)
                random_params = [e.row.params for e in ends if e.row is not None]
                signal = setting_signal([e.row for e in ends if e.row is not None])
                if signal is not None:
                    lines.append(f"  seed {sweep_seed}  random's trials: {signal.line()}")
            curves[method] = curve(ends, budget, space.objective)
            for spent, best in curves[method]:
                lines.append(
                    f"  seed {sweep_seed}  {method:9s} {spent:7.0f} seed-epochs  best objective "
                    f"{best.objective:.4f} (trial {best.trial}, report mAP {report(best.checkpoint):.4f})"
                )
        full = [t for m in ("random", "tpe") for t in trials.get(m, [])]
        if full:
            rho = rank_agreement(full, space.scheduler.max_t)
            lines.append(
                f"  seed {sweep_seed}  rank agreement with the last evaluation (Spearman, random's and tpe's "
                "trials), by evaluation: "
                + ", ".join(
                    f"{k * space.training.eval_every_epochs:g} ep {'all equal' if v is None else f'{v:+.2f}'}"
                    for k, v in rho.items()
                )
            )
        if curves.get("random") and "tpe+asha" in curves:
            reach = epochs_to_reach(curves["tpe+asha"], curves["random"][-1][1].objective, space.objective)
            ratios.append(float("inf") if reach is None else reach / curves["random"][-1][0])
            if reach is not None:  # the same sampler seed draws the same random start: random search tried it too
                row = next(best for spent, best in curves["tpe+asha"] if spent == reach)
                how.append(" (random search's own trial)" if row.params in random_params else " (a trial TPE chose)")
            else:
                how.append("")
            rung = space.scheduler.grace_period if space.scheduler.type == "asha" else space.scheduler.max_t
            value, own = steer(
                *([(p, h[rung]) for p, h in trials[m] if rung in h] for m in ("random", "tpe+asha")),
                1.0 if space.objective.mode == "max" else -1.0,
            )
            lines.append(
                f"  seed {sweep_seed}  the {own} trials TPE chose in tpe+asha, at ASHA's rung (epoch "
                f"{rung * space.training.eval_every_epochs:g}): {value:+.2f} sd against random's trials "
                "(bench/reach_power.py's steer)"
            )
    print("\n".join(lines))
    if ratios:

        def share(r: float) -> str:
            return "never (within the budget)" if r == float("inf") else f"{r:.2f} of its epochs"

        med = statistics.median(ratios)
        print(
            "epochs tpe+asha needed to reach random search's final best, per sweep seed: "
            + "; ".join(share(r) + h for r, h in zip(ratios, how))
            + f". Median: {share(med)} (target <= 0.5: {'met' if med <= 0.5 else 'NOT met'})"
        )


if __name__ == "__main__":
    main()
