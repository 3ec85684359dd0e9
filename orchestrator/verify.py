"""Is the winner really better than not using ADIN at all? After the search, three arms are retrained on fresh seeds
(never the search's) and scored on the report targets (never used to choose):

* `winner`: the winning trial's parameters;
* `baseline`: the same parameters with `adv_loss: none` (identity only; everything else equal);
* `paper_default`: the space's fixed values with the paper's CaNE (`adin_core.config.PAPER_CANE`).

The arms share seeds, so the differences winner - baseline and winner - paper_default are paired: each is given
with a paired-t 95% interval and a sign count, printed, logged on the sweep's run and written into the model card,
e.g. "winner - baseline: +0.031 mAP [+0.012, +0.050], 5/5 seeds", or "... : not distinguishable".

Each (arm, seed) is its own Tune trial, not each arm, so a cluster with room for arms x seeds trials verifies in
the time of one training instead of `seeds` trainings in turn. On 2 cores it gains nothing: 1080 s for 3 x 3 on
the README's main job against about 1030 s expected from arm-sized trials (measured on a machine 1.75x slower
than the one that timed those at 589 s); an arm left alone there ran faster, so the "idle" slot was not idle.

A verification trial is scored once, at its end (`Evaluator.score_during`): only that score counts, and scoring
every 2 epochs was a third of a benchmark training. It still reports (and checkpoints) at the space's cadence, so
a lost worker resumes where it was. On the main job: 379 s -> 296 s, the same report mAP on every seed.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

from adin_core.config import PAPER_CANE, TrainConfig
from adin_core.evaluation import REPORT_MAP
from adin_core.stats import Paired
from orchestrator.plan import SweepPlan
from orchestrator.space import make_train_config

ARMS = ("winner", "baseline", "paper_default")
EXPERIMENT = "verify"  # <storage>/<sweep>/verify: the verification's own Tune experiment


def arm_config(plan: SweepPlan, arm: str, params: dict[str, Any]) -> TrainConfig:
    space = plan.space
    if arm == "winner":
        return space.train_config(params)
    if arm == "baseline":
        return space.train_config(params).replace(adv_loss="none")
    if arm == "paper_default":
        return make_train_config({**space.fixed, **PAPER_CANE}, {}, space.training.epochs)
    raise ValueError(f"unknown verification arm {arm!r}; choose one of {list(ARMS)}")


@dataclass(frozen=True)
class Verification:
    seeds: int
    per_seed: dict[str, list[float]]  # arm -> report_mAP on each fresh seed
    versus_baseline: Paired
    versus_paper_default: Paired

    def lines(self) -> list[str]:
        return [f"winner - baseline:      {self.versus_baseline.summary()}",
                f"winner - paper default: {self.versus_paper_default.summary()}"]

    def metrics(self) -> dict[str, float]:
        out = {f"verify/{arm}/{REPORT_MAP}": sum(v) / len(v) for arm, v in self.per_seed.items()}
        for name, p in (("winner_minus_baseline", self.versus_baseline),
                        ("winner_minus_paper_default", self.versus_paper_default)):
            out.update({f"verify/{name}": p.mean, f"verify/{name}_low": p.low, f"verify/{name}_high": p.high,
                        f"verify/{name}_positive": float(p.positive)})
        return out

    def record(self) -> dict[str, Any]:
        return {"seeds": self.seeds, "metric": REPORT_MAP, "per_seed": self.per_seed,
                "winner_minus_baseline": self.versus_baseline.as_dict(),
                "winner_minus_paper_default": self.versus_paper_default.as_dict(),
                "summary": self.lines()}


def build(plan: SweepPlan, winner_params: dict[str, Any], callbacks: list):
    """The verification's Tuner: one trial per (arm, fresh seed), restored if a resumed sweep had started it."""
    from ray import tune
    from ray.tune.logger import JsonLoggerCallback

    from orchestrator.storage import tune_storage
    from orchestrator.trial import TRIAL_DRIVER_RESOURCES, run_verification

    trainable = tune.with_resources(tune.with_parameters(run_verification, plan=plan), TRIAL_DRIVER_RESOURCES)
    path, fs = tune_storage(plan.sweep_uri, plan.retry_budget_s)
    exp = os.path.join(path, EXPERIMENT) if fs is None else f"{path}/{EXPERIMENT}"
    if tune.Tuner.can_restore(exp, storage_filesystem=fs):
        return tune.Tuner.restore(exp, trainable=trainable, resume_unfinished=True, resume_errored=True,
                                  storage_filesystem=fs)
    return tune.Tuner(
        trainable, param_space={"arm": tune.grid_search(list(ARMS)),
                                "seed_index": tune.grid_search(list(range(plan.space.verify.seeds))),
                                "params": dict(winner_params)},
        tune_config=tune.TuneConfig(max_concurrent_trials=plan.space.search.max_concurrent),
        run_config=tune.RunConfig(name=EXPERIMENT, storage_path=path, storage_filesystem=fs, verbose=0,
                                  callbacks=[JsonLoggerCallback(), *callbacks],
                                  failure_config=tune.FailureConfig(max_failures=1)))


def collect(results, seeds: int) -> Verification:
    """The arms' report mAP per fresh seed (one trial each), and the paired differences."""
    per_seed: dict[str, dict[int, float]] = {arm: {} for arm in ARMS}
    for r in results:
        m, config = r.metrics or {}, r.config or {}
        arm, k = config.get("arm"), config.get("seed_index")
        if r.error or arm not in ARMS or not m.get("final"):
            raise VerificationError(f"verification arm {arm!r}, seed {k}, did not finish"
                                    + (f": {str(r.error).splitlines()[0][:300]}" if r.error else ""))
        per_seed[arm][int(k)] = float(m[REPORT_MAP])
    missing = [f"{arm} seed {k}" for arm in ARMS for k in range(seeds) if k not in per_seed[arm]]
    if missing:
        raise VerificationError(f"verification has no result for {', '.join(missing)}")
    values = {arm: [per_seed[arm][k] for k in range(seeds)] for arm in ARMS}
    return Verification(seeds, values, Paired.of(values["winner"], values["baseline"]),
                        Paired.of(values["winner"], values["paper_default"]))


class VerificationError(RuntimeError):
    """An arm of the verification failed; the search's result stands, unverified."""


def to_json(v: Verification) -> str:
    return json.dumps(v.record())


__all__ = ["ARMS", "Verification", "VerificationError", "arm_config", "build", "collect"]
