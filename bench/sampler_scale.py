"""How long does the searcher take to suggest a trial as the study grows? Optuna's samplers alone, built exactly as a
sweep builds them (orchestrator.search.make_sampler, the space's define-by-run), on the shipped spaces.

    python bench/sampler_scale.py                                     # tpe, gp, cmaes; 100 500 1000 2000 trials
    python bench/sampler_scale.py --samplers tpe --sizes 100 1000 --storage memory

For each (space, sampler) the study is filled with completed trials drawn at random (the objective a smooth
function of the normalised parameters plus seeded noise, so a model-based sampler has something to fit), added
with `study.add_trial`, which costs no sampling; at each size the next --asks suggestions are timed (ask through
the space's define-by-run, then tell), with `max_concurrent - 1` trials left running, as a sweep's driver has them
while it asks. The random sampler is timed alongside as the floor: what the storage and define-by-run cost alone.

--storage sqlite (default) keeps the study in an SQLite file, as a sweep's study of record is (PostgreSQL on a
cluster); memory isolates the sampler. Printed: milliseconds per suggestion, median and max of the timed asks, per
size; the target is <= 100 ms at 1,000 completed trials for the shipped default sampler (tpe).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import statistics
import sys
import tempfile
import time

import numpy as np
import optuna
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from orchestrator.search import make_sampler  # noqa: E402
from orchestrator.space import Param, SearchSpace, load_space  # noqa: E402


def _distribution(p: Param):
    if p.type == "categorical":
        return CategoricalDistribution(list(p.choices))
    if p.type == "int":
        return IntDistribution(int(p.low), int(p.high), log=p.log, step=int(p.step or 1))
    return FloatDistribution(p.low, p.high, log=p.log, step=p.step)


def _random_params(space: SearchSpace, rng: np.random.Generator) -> dict:
    """A point drawn as RandomSampler would, `when:` conditions respected."""
    values: dict = {}
    for p in space.params:
        if not p.active(values):
            continue
        if p.type == "categorical":
            values[p.name] = p.choices[rng.integers(len(p.choices))]
            continue
        lo, hi = (math.log(p.low), math.log(p.high)) if p.log else (p.low, p.high)
        x = rng.uniform(lo, hi)
        x = math.exp(x) if p.log else x
        if p.step:
            x = p.low + round((x - p.low) / p.step) * p.step
        values[p.name] = int(round(x)) if p.type == "int" else min(max(x, p.low), p.high)
    return values


def _objective(space: SearchSpace, values: dict, rng: np.random.Generator) -> float:
    """Best near the middle of each range, a bonus for the first choice of each categorical, seeded noise."""
    score = 0.0
    for p in space.params:
        if p.name not in values:
            continue
        if p.type == "categorical":
            score += 0.1 if values[p.name] == p.choices[0] else 0.0
            continue
        lo, hi, x = (
            (math.log(p.low), math.log(p.high), math.log(values[p.name])) if p.log else (p.low, p.high, values[p.name])
        )
        score -= ((x - lo) / (hi - lo or 1) - 0.5) ** 2
    return score + 0.02 * float(rng.normal())


def _study(storage: str, sampler: optuna.samplers.BaseSampler) -> optuna.Study:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.create_study(storage=storage, sampler=sampler, direction="maximize", study_name="scale")


def measure(space: SearchSpace, sampler_name: str, sizes: list[int], asks: int, storage: str) -> list[tuple[int, list]]:
    settings = dataclasses.replace(space.search, sampler=sampler_name, startup_trials=None)
    study = _study(storage, make_sampler(settings))
    rng = np.random.default_rng(0)
    dists = {p.name: _distribution(p) for p in space.params}
    define = space.define_by_run()
    running = [study.ask() for _ in range(max(0, space.search.max_concurrent - 1))]
    for trial in running:
        define(trial)
    out = []
    for size in sizes:
        done = sum(t.state == optuna.trial.TrialState.COMPLETE for t in study.get_trials(deepcopy=False))
        for _ in range(size - done):
            values = _random_params(space, rng)
            study.add_trial(
                optuna.trial.create_trial(
                    params=values,
                    distributions={k: dists[k] for k in values},
                    value=_objective(space, values, rng),
                )
            )
        times = []
        for _ in range(asks):
            start = time.perf_counter()
            trial = study.ask()
            define(trial)
            times.append(time.perf_counter() - start)
            study.tell(trial, _objective(space, trial.params, rng))
        out.append((size, times))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--spaces", nargs="+", default=["search_spaces/thresholds.yaml", "search_spaces/adin.yaml"])
    ap.add_argument("--samplers", nargs="+", default=["random", "tpe", "gp", "cmaes"])
    ap.add_argument("--sizes", type=int, nargs="+", default=[100, 500, 1000, 2000])
    ap.add_argument("--asks", type=int, default=5, help="suggestions timed at each size")
    ap.add_argument("--storage", choices=["sqlite", "memory"], default="sqlite")
    args = ap.parse_args()
    if sorted(args.sizes) != args.sizes or args.sizes[0] < 1:
        ap.error("--sizes must be positive and increasing")
    import torch  # GPSampler's backend: its thread count is part of the figure

    print(
        f"ms per suggestion (median / max of {args.asks}), study storage {args.storage}, "
        f"torch threads {torch.get_num_threads()}, {os.cpu_count()} CPUs"
    )
    print(f"{'space':<12} {'sampler':<8} " + " ".join(f"{n:>15}" for n in args.sizes))
    for path in args.spaces:
        space = load_space(path)
        for name in args.samplers:
            with tempfile.TemporaryDirectory() as tmp:
                storage = f"sqlite:///{tmp}/study.db" if args.storage == "sqlite" else None
                start = time.perf_counter()
                rows = measure(space, name, args.sizes, args.asks, storage)
                cells = [f"{1e3 * statistics.median(t):7.1f} / {1e3 * max(t):6.1f}" for _, t in rows]
                print(f"{space.name:<12} {name:<8} " + " ".join(f"{c:>15}" for c in cells), flush=True)
                print(f"{'':<21} ({time.perf_counter() - start:.0f} s for this row)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
