"""What `bench/search_efficiency.py`'s headline can tell apart: how often TPE+ASHA "reaches random search's final best
within half of random's epochs" for a search no better than chance, and for searches whose own draws are better.

    python bench/reach_power.py                                        # thresholds.yaml as shipped
    python bench/reach_power.py --space search_spaces/adin.yaml --samples 8 --rho 0.6

A model, not a training run: every trial's objective is one draw of a standard normal (its setting and its seeds'
luck together), the same draw for the first `random_start` trials of both arms (the same sampler seed draws the same
random start), then tpe+asha's own draws shifted by `steer` standard deviations (0: the search knows nothing). ASHA
reads each trial at its rung with Spearman-like agreement `rho` with the end and keeps the top 1/reduction_factor of
the rung values seen so far (asynchronous ASHA); a kept trial trains its whole budget. Epochs are counted as the
bench counts them: the shared pretraining once, then each trial's epochs after it, in order. With 2 trials in flight
the bench's order differs a little; the model ignores that.

Printed: per sweep seed, the chance the headline is met (within half the budget), and the chance that the median over
--sweep-seeds seeds is, for each steer. Where a chance-level search and a much better one meet it about equally
often, the headline at that budget measures where random search's luckiest draw fell, not the search.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Budget:
    samples: int  # random search's trials
    random_start: int  # draws both arms share
    pretrain: float  # seed-epochs of the shared pretraining (counted once)
    full: float  # seed-epochs of a trial that trains its whole budget (after pretraining)
    stopped: float  # seed-epochs of a trial ASHA stops at its rung
    reduction_factor: float

    @property
    def random_epochs(self) -> float:
        return self.pretrain + self.samples * self.full


def reached(rng: np.random.Generator, b: Budget, rho: float, steer: float, share: float = 0.5) -> bool:
    """One sweep seed: does tpe+asha's best fully trained trial reach random's best within `share` of its epochs?"""
    extra = math.ceil(b.random_epochs / b.stopped)  # more than tpe+asha can ever train within the budget
    shared = rng.standard_normal(b.random_start)
    best = max(shared.max(initial=-np.inf), rng.standard_normal(b.samples - b.random_start).max(initial=-np.inf))
    own = np.concatenate([shared, rng.standard_normal(extra) + steer])
    rung = rho * own + math.sqrt(1 - rho * rho) * rng.standard_normal(len(own))
    spent, seen = b.pretrain, []
    for value, at_rung in zip(own, rung):
        seen.append(at_rung)
        keep = at_rung >= np.quantile(seen, 1 - 1 / b.reduction_factor)
        spent += b.full if keep else b.stopped
        if spent > share * b.random_epochs + 1e-9:
            return False
        if keep and value >= best:
            return True
    return False


def chance(b: Budget, rho: float, steer: float, draws: int, seed: int = 0) -> float:
    rng = np.random.default_rng(seed)
    return float(np.mean([reached(rng, b, rho, steer) for _ in range(draws)]))


def median_met(p: float, sweep_seeds: int) -> float:
    """The chance that at least half of `sweep_seeds` independent seeds (the median, for an odd count) meet it."""
    need = sweep_seeds // 2 + 1
    return sum(math.comb(sweep_seeds, k) * p**k * (1 - p) ** (sweep_seeds - k) for k in range(need, sweep_seeds + 1))


def budget_of(space, samples: int | None) -> Budget:
    from orchestrator.pretraining import pretraining_epochs

    if space.scheduler.type != "asha":
        raise SystemExit(f"{space.path}: scheduler.type {space.scheduler.type}: the headline measures TPE with ASHA")

    n = samples or space.search.num_samples
    seeds, epochs = space.search.seeds, space.training.epochs
    pre = pretraining_epochs(space.some_config()) if space.shares_pretraining else 0.0
    rung = space.scheduler.grace_period * space.training.eval_every_epochs
    return Budget(
        samples=n,
        random_start=dataclasses.replace(space.search, sampler="tpe", num_samples=n).random_start,
        pretrain=seeds * pre,
        full=seeds * (epochs - pre),
        stopped=seeds * (rung - pre),
        reduction_factor=space.scheduler.reduction_factor,
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--space", default="search_spaces/thresholds.yaml")
    ap.add_argument("--samples", type=int, help="random search's trials (default: the space's num_samples)")
    ap.add_argument(
        "--rho", type=float, default=0.5, help="agreement of ASHA's rung with the end (the bench prints it)"
    )
    ap.add_argument("--steers", type=float, nargs="+", default=[0.0, 0.5, 1.0, 2.0])
    ap.add_argument("--sweep-seeds", type=int, default=3)
    ap.add_argument("--draws", type=int, default=20000)
    args = ap.parse_args()

    from orchestrator.space import load_space

    b = budget_of(load_space(args.space), args.samples)
    print(
        f"{args.space}: random {b.samples} trials ({b.random_epochs:g} seed-epochs), {b.random_start} of them shared; "
        f"a trial {b.full:g} seed-epochs, {b.stopped:g} when ASHA stops it (reduction factor "
        f"{b.reduction_factor:g}), pretraining {b.pretrain:g}; rung agreement {args.rho:g}"
    )
    for steer in args.steers:
        p = chance(b, args.rho, steer, args.draws)
        print(
            f"  tpe's own draws {steer:+.1f} sd: met in {p:.2f} of sweep seeds; the median of "
            f"{args.sweep_seeds} meets it {median_met(p, args.sweep_seeds):.2f} of the time"
        )


if __name__ == "__main__":
    main()
