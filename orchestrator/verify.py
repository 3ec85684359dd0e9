"""Is the winner really better than not using ADIN at all, and no worse than what we ship? After the search, the
arms are retrained on fresh seeds (never the search's) and scored on the report targets (never used to choose):

* `winner`: the winning trial's parameters;
* `baseline`: the same parameters with `adv_loss: none` (identity only; everything else equal);
* `default`: the shipped default ADIN, TrainConfig's defaults under the space's fixed values (when the winner is
  that very config it is not trained twice: winner - default is then exactly 0);
* `paper` (when `verify.arms` asks): the paper's CaNE (`adin_core.config.PAPER_CANE`).

The arms share seeds, so winner - baseline and winner - default are paired differences, given with a paired-t
interval and a sign count, printed, logged on the sweep's run and written into the model card.

Seeds are added in rounds (`verify.seeds`, then `verify.step` more at a time) until the winner - baseline interval
excludes 0 or `verify.max_seeds` have run. Reading a verdict after every round and stopping when it looks
distinguishable would make "distinguishable" too easy, so each look's interval is at 1 - 0.05 / looks (Bonferroni
over the planned looks): the verdict keeps a 5% error rate however many rounds it takes. The verdict also gives the
smallest gain its seeds could have shown (80% power at that level, at the measured seed-to-seed sd): "not
distinguishable" then says how small an effect could have hidden.

A round's trials spread the arms' seeds over the trial slots (`jobs`): on 2 slots an arm's seeds train in one trial, in
turns, saving Ray's start-up per trial; a cluster with a slot for every (arm, seed) verifies a round in the time of one
training. A verification trial is scored once, at its end (`Evaluator.score_during`); its reports before that only
checkpoint, so a lost worker resumes where it was. Shared pretraining (orchestrator.pretraining) serves the arms of a
seed that pretrain alike: the winner, its baseline and, in a thresholds space, the default.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Callable

from ray import tune

from adin_core.config import PAPER_CANE, TrainConfig
from adin_core.evaluation import REPORT_MAP
from adin_core.repeats import seed_list
from adin_core.stats import Paired, detectable_effect
from orchestrator.plan import SweepPlan
from orchestrator.ray_session import trains_in_process, trial_resources, tune_run_config
from orchestrator.space import VERIFY_ARMS, make_train_config
from orchestrator.trial import train_trial

VERIFY_SEED_OFFSET = 1000  # verification seeds: fresh, never the search's (config.seed + k, k < search.seeds)
EXPERIMENT = "verify"  # <storage>/<sweep>/verify-r<round>: each round's own Tune experiment
POWER = 0.8
ARM_NAMES = {"winner": "winner", "baseline": "baseline", "default": "shipped default", "paper": "paper's CaNE"}


def arm_config(plan: SweepPlan, arm: str, params: dict[str, Any]) -> TrainConfig:
    space = plan.space
    if arm == "winner":
        return space.train_config(params)
    if arm == "baseline":
        return space.train_config(params).replace(adv_loss="none")
    if arm == "default":
        return make_train_config(space.fixed, {}, space.training.epochs)
    if arm == "paper":
        return make_train_config({**space.fixed, **PAPER_CANE}, {}, space.training.epochs)
    raise ValueError(f"unknown verification arm {arm!r}; choose one of {list(VERIFY_ARMS)}")


def verification_seeds(plan: SweepPlan, params: dict[str, Any]) -> list[int]:
    """The fresh seeds, shared by every arm (the arms' configs share their `seed` field)."""
    return seed_list(arm_config(plan, "winner", params), plan.space.verify.max_seeds, offset=VERIFY_SEED_OFFSET)


def plan_line(plan: SweepPlan, params: dict[str, Any]) -> str:
    """What the verification will do, in one line."""
    settings = plan.space.verify
    arms = ", ".join(ARM_NAMES[a] for a in trained_arms(plan, params))
    more = (
        f", then {settings.step} more at a time up to {settings.max_seeds} until winner - baseline is "
        f"distinguishable ({100 * settings.level:.4g}% intervals: {settings.looks} looks)"
        if settings.max_seeds > settings.seeds
        else ""
    )
    return f"{arms} on {settings.seeds} fresh seeds{more}; scored on the report targets"


def consumers(plan: SweepPlan, params: dict[str, Any], indices: list[int]) -> list[tuple[TrainConfig, list[int]]]:
    """The trainings of a round, as (config, seeds): what its shared pretraining may serve."""
    seeds = verification_seeds(plan, params)
    return [(arm_config(plan, arm, params), [seeds[k] for k in indices]) for arm in trained_arms(plan, params)]


def trained_arms(plan: SweepPlan, params: dict[str, Any]) -> tuple[str, ...]:
    """The arms that need training: the default is not trained again when the winner is it."""
    arms = plan.space.verify.arms
    if "default" in arms and arm_config(plan, "default", params) == arm_config(plan, "winner", params):
        return tuple(a for a in arms if a != "default")
    return arms


@dataclass(frozen=True)
class Verification:
    seeds: int
    per_seed: dict[str, list[float]]  # arm -> report_mAP on each fresh seed
    versus: dict[str, Paired]  # other arm -> winner - it
    looks: int
    default_is_winner: bool = False
    rounds: list[int] = field(default_factory=list)  # seeds after each round
    shared_epochs: float = 0.0  # seed-epochs the arms did not train: they started from shared pretraining

    @property
    def versus_baseline(self) -> Paired:
        return self.versus["baseline"]

    @property
    def detectable(self) -> float:
        """The smallest winner - baseline gain these seeds would show 80% of the time at this look's level."""
        return detectable_effect(self.versus_baseline.sd, self.seeds, alpha=1 - self.versus_baseline.level, power=POWER)

    @property
    def lost_to_baseline(self) -> bool:
        p = self.versus_baseline
        return p.mean < 0 and p.positive * 2 < len(p.diffs)

    def lines(self) -> list[str]:
        width = max(len(ARM_NAMES[a]) for a in self.versus) + len("winner - ")
        out = []
        for arm, paired in self.versus.items():
            label = f"winner - {ARM_NAMES[arm]}:".ljust(width + 1)
            if arm == "default" and self.default_is_winner:
                out.append(f"{label} +0.000 mAP: the winner is the shipped default")
            else:
                out.append(f"{label} {paired.summary()}")
        looks = f" over {len(self.rounds)} of up to {self.looks} looks" if self.looks > 1 else ""
        out.append(
            f"{self.seeds} fresh seeds{looks}: a gain over the baseline of {self.detectable:.3f} mAP or more "
            f"would have shown {POWER:.0%} of the time (seed-to-seed sd {self.versus_baseline.sd:.3f})"
        )
        if self.lost_to_baseline:
            out.insert(
                0,
                f"WARNING: the winner scored below the identity-only baseline on "
                f"{len(self.per_seed['winner']) - self.versus_baseline.positive} of {self.seeds} fresh seeds",
            )
        return out

    def metrics(self) -> dict[str, float]:
        out = {f"verify/{arm}/{REPORT_MAP}": sum(v) / len(v) for arm, v in self.per_seed.items()}
        for arm, p in self.versus.items():
            name = f"winner_minus_{arm}"
            out.update(
                {
                    f"verify/{name}": p.mean,
                    f"verify/{name}_low": p.low,
                    f"verify/{name}_high": p.high,
                    f"verify/{name}_positive": float(p.positive),
                }
            )
        out.update(
            {
                "verify/seeds": float(self.seeds),
                "verify/looks": float(len(self.rounds)),
                "verify/detectable_mAP": self.detectable,
            }
        )
        return out

    def record(self) -> dict[str, Any]:
        return {
            "seeds": self.seeds,
            "metric": REPORT_MAP,
            "per_seed": self.per_seed,
            "rounds": self.rounds,
            "planned_looks": self.looks,
            "level": self.versus_baseline.level,
            "detectable": self.detectable,
            "default_is_winner": self.default_is_winner,
            "lost_to_baseline": self.lost_to_baseline,
            **{f"winner_minus_{arm}": p.as_dict() for arm, p in self.versus.items()},
            "summary": self.lines(),
        }


def jobs(arms: tuple[str, ...], seed_indices: list[int], slots: int) -> list[str]:
    """A round's trials, `arm:i,j,...` each: the arms' seeds spread over the trial slots (search.max_concurrent).
    Each trial pays Ray's start-up (a trial actor, Train's controller and workers: about 20 s on 2 cores, as long
    as 8 epochs of the benchmark), so with few slots an arm's seeds train in one trial, in turns (as a search
    trial's seeds do); with a slot for every (arm, seed), each is its own trial, and a round takes one training."""
    per_arm = max(1, min(len(seed_indices), slots // max(1, len(arms))))
    groups = [seed_indices[g::per_arm] for g in range(per_arm)]
    return [f"{arm}:{','.join(map(str, sorted(group)))}" for arm in arms for group in groups if group]


def parse_job(job: str) -> tuple[str, list[int]]:
    arm, _, seeds = job.partition(":")
    return arm, [int(k) for k in seeds.split(",")]


def build_round(
    plan: SweepPlan, winner_params: dict[str, Any], round_index: int, seed_indices: list[int], callbacks: list
):
    """One round's Tuner: its trials (`jobs`), restored if a resumed sweep had started it."""
    trainable = tune.with_resources(tune.with_parameters(run_verification, plan=plan), trial_resources(plan))
    path, fs, name = plan.layout.sweep_experiment(f"{EXPERIMENT}-r{round_index}")
    exp = plan.layout.experiment_path(path, fs, name)
    if tune.Tuner.can_restore(exp, storage_filesystem=fs):
        return tune.Tuner.restore(
            exp, trainable=trainable, resume_unfinished=True, resume_errored=True, storage_filesystem=fs
        )
    return tune.Tuner(
        trainable,
        param_space={
            "job": tune.grid_search(
                jobs(trained_arms(plan, winner_params), seed_indices, plan.space.search.max_concurrent)
            ),
            "params": dict(winner_params),
        },
        tune_config=tune.TuneConfig(
            max_concurrent_trials=plan.space.search.max_concurrent, reuse_actors=trains_in_process(plan)
        ),
        run_config=tune_run_config(plan, name, path, fs, callbacks),
    )


def run_verification(tune_config: dict[str, Any], plan: SweepPlan) -> None:
    """A verification trial: one arm on some of the fresh seeds (`jobs`), in turns, scored on the report targets
    at the end."""
    arm, indices = parse_job(tune_config["job"])
    config = arm_config(plan, arm, tune_config["params"])
    seeds = verification_seeds(plan, tune_config["params"])
    train_trial(plan, config, [seeds[k] for k in indices], report=True)


def collect(results, per_seed: dict[str, dict[int, float]]) -> float:
    """A round's report mAP per (arm, seed index), into `per_seed` (a trial of several seeds reports each one's as
    `seed<j>/report_mAP`); returns the seed-epochs its trials started from shared pretraining."""
    shared = 0.0
    for r in results:
        m, config = r.metrics or {}, r.config or {}
        arm, seeds = parse_job(str(config.get("job", ":0")))
        if r.error or arm not in VERIFY_ARMS or not m.get("final"):
            why = str(r.error).splitlines()[0][:300] if r.error else m.get("diverged_reason", "stopped early")
            raise VerificationError(
                f"verification arm {arm!r}, seed {', '.join(map(str, seeds))}, did not finish: {why}"
            )
        for j, k in enumerate(seeds):
            per_seed.setdefault(arm, {})[k] = float(m[REPORT_MAP] if len(seeds) == 1 else m[f"seed{j}/{REPORT_MAP}"])
        shared += float(m.get("pretraining/shared_epochs", 0.0))
    return shared


def verdict(
    plan: SweepPlan,
    winner_params: dict[str, Any],
    per_seed: dict[str, dict[int, float]],
    rounds: list[int],
    shared_epochs: float = 0.0,
) -> Verification:
    """The paired differences over the seeds run so far, at this look's level."""
    settings = plan.space.verify
    n = rounds[-1]
    default_is_winner = "default" in settings.arms and "default" not in trained_arms(plan, winner_params)
    missing = [
        f"{arm} seed {k}"
        for arm in trained_arms(plan, winner_params)
        for k in range(n)
        if k not in per_seed.get(arm, {})
    ]
    if missing:
        raise VerificationError(f"verification has no result for {', '.join(missing)}")
    values = {arm: [per_seed[arm][k] for k in range(n)] for arm in trained_arms(plan, winner_params)}
    if default_is_winner:
        values["default"] = list(values["winner"])
    versus = {
        arm: Paired.of(values["winner"], values[arm], level=settings.level) for arm in settings.arms if arm != "winner"
    }
    return Verification(n, values, versus, settings.looks, default_is_winner, list(rounds), shared_epochs)


def run(
    plan: SweepPlan,
    winner_params: dict[str, Any],
    callbacks: list,
    *,
    stopped: Callable[[], bool],
    pretrain: Callable[[list[int]], None],
    log=print,
) -> Verification | None:
    """The rounds: each trains its new seeds' arms (their shared pretraining first), then reads the verdict; None
    when a stop signal ended a round (the search's result stands, unverified)."""
    settings = plan.space.verify
    per_seed: dict[str, dict[int, float]] = {}
    rounds: list[int] = []
    done, shared = 0, 0.0
    while done < settings.max_seeds:
        new = list(range(done, min(settings.max_seeds, done + (settings.seeds if not rounds else settings.step))))
        pretrain(new)
        if stopped():
            return None
        results = build_round(plan, winner_params, len(rounds), new, callbacks).fit()
        if stopped():
            return None
        shared += collect(results, per_seed)
        done = new[-1] + 1
        rounds.append(done)
        outcome = verdict(plan, winner_params, per_seed, rounds, shared)
        if outcome.versus_baseline.distinguishable or done >= settings.max_seeds:
            return outcome
        log(
            f"  after {done} seeds: winner - baseline {outcome.versus_baseline.summary()}; "
            f"{min(settings.step, settings.max_seeds - done)} more seeds"
        )
    return verdict(plan, winner_params, per_seed, rounds, shared)


class VerificationError(RuntimeError):
    """An arm of the verification failed; the search's result stands, unverified."""


def to_json(v: Verification) -> str:
    return json.dumps(v.record())


__all__ = [
    "EXPERIMENT",
    "VERIFY_SEED_OFFSET",
    "Verification",
    "VerificationError",
    "arm_config",
    "build_round",
    "collect",
    "jobs",
    "parse_job",
    "run",
    "trained_arms",
    "verdict",
    "verification_seeds",
]
