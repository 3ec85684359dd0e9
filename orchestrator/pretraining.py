"""Shared pretraining: each training seed's pretraining trained once, and every trial and verification arm it serves
started from it.

Until pretraining ends, configs that differ only in `adin_core.config.DECISION_FIELDS` (the thresholds, the
adversarial loss, its weight and calibration) train the very same thing: the same f_E, f_I and f_N, the same
optimiser state, RNG streams and data position. A thresholds sweep's trials and its verification arms are such
configs, so each of them used to retrain the same pretraining on each of its seeds: about a third of all the
seed-epochs of the main job. Here a stage of runs (one per seed, like trials, with the trials' workers, through
orchestrator.loop_context) trains it once (`ADINTrainer.pretrain`: up to the last pretraining check, before the
decision it takes), and stores it under the sweep:

    <storage>/<sweep>/pretrained/<key>/seed-<seed>/state.pt        the trainer's state, the check pending
    <storage>/<sweep>/pretrained/<key>/seed-<seed>/snapshot.json   its sha256, what it serves, the reports of the
                                                                   evaluations inside pretraining (written last)

A trial finds the snapshots of its seeds by their key and starts from them (`ADINTrainer.adopt_pretraining`),
exactly as if it had trained them itself (tests/test_train.py holds it to the bit); it resends the evaluations made
inside pretraining as its own first reports, so its MLflow history, the study and ASHA see what they would have
seen. The key holds everything that determines the snapshot: every training field but the decision ones (the
seed included), the source's data version, the workers, the evaluation plan whose reports it carries and the
snapshot format; so a different `fixed` value, dataset version or worker count never reuses one. A resumed or
retried trial goes on from its own checkpoint; a snapshot missing or damaged only means that trial trains its
pretraining itself.
"""

from __future__ import annotations

import hashlib
import io
import json
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from ray import tune

from adin_core.config import TrainConfig
from adin_core.data.shards import ShardSet
from adin_core.evaluation import EvaluationHook, Evaluator
from adin_core.train import ADINTrainer, pretraining_key
from orchestrator.loop_context import LoopContext, run_loop
from orchestrator.plan import SweepPlan
from orchestrator.ray_session import trains_in_process, trial_resources, tune_run_config
from orchestrator.targets import open_target, source_target

STATE, SNAPSHOT = "state.pt", "snapshot.json"
FORMAT = 1


class SnapshotError(RuntimeError):
    """A stored snapshot cannot be used (damaged, or made for something else); the trial pretrains itself."""


@dataclass(frozen=True)
class Job:
    """One snapshot to make: the config to pretrain (an adversarial one of the key) on one seed."""

    key: str
    seed: int
    config: dict[str, Any]
    evaluate: bool  # score at the trials' cadence during pretraining (search trials resend those reports)
    consumers: int = 0  # trainings that will start from it


@dataclass
class StageResult:
    made: int = 0  # snapshots trained by this stage
    failed: list[str] = field(default_factory=list)  # jobs whose snapshot is missing after it
    seconds: float = 0.0
    seed_epochs: float = 0.0  # what the stage trained


def pretraining_epochs(config: TrainConfig) -> float:
    return config.pretrain_id_epochs + config.pretrain_nuisance_epochs


def snapshot_key(plan: SweepPlan, config: TrainConfig, evaluate: bool) -> str:
    """What determines the snapshot of `config`'s seed for this sweep (see the module docstring)."""
    spec = {
        "format": FORMAT,
        "pretraining": pretraining_key(config.replace(seed=0)),  # the seed: the folder's
        "source": plan.source,
        "data": plan.data_versions.get(plan.source, {}).get("files"),
        "workers": plan.space.resources.workers,
        "evaluate": evaluate
        and {
            "select": [(t.uri, t.name, plan.data_versions.get(t.uri, {}).get("files")) for t in plan.select],
            "every_epochs": plan.space.training.eval_every_epochs,
        },
    }
    return hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()[:20]


def snapshot_location(plan: SweepPlan, key: str, seed: int):
    return plan.layout.pretrained(key, seed)


def available(plan: SweepPlan, config: TrainConfig, seeds: list[int], evaluate: bool) -> list:
    """The snapshot folders of `config` on each of `seeds`, or [] unless all of them are complete."""
    key = snapshot_key(plan, config, evaluate)
    locs = [snapshot_location(plan, key, seed) for seed in seeds]
    return locs if all(loc.join(SNAPSHOT).exists() for loc in locs) else []


def save(loc, state: dict[str, Any], record: dict[str, Any]) -> None:
    """state.pt, then snapshot.json with its sha256: a snapshot exists only once complete."""
    buf = io.BytesIO()
    torch.save(state, buf)
    data = buf.getvalue()
    loc.join(STATE).write_bytes_atomic(data)
    record = dict(record, sha256=hashlib.sha256(data).hexdigest(), format=FORMAT)
    loc.join(SNAPSHOT).write_bytes_atomic(json.dumps(record, indent=1).encode())


def load(loc) -> tuple[dict[str, Any], dict[str, Any]]:
    """A snapshot's state and record, its state checked against the recorded sha256."""
    try:
        record = json.loads(loc.join(SNAPSHOT).read_bytes())
        data = loc.join(STATE).read_bytes()
    except (FileNotFoundError, ValueError) as exc:
        raise SnapshotError(f"{loc.uri}: {exc}") from None
    if hashlib.sha256(data).hexdigest() != record.get("sha256"):
        raise SnapshotError(f"{loc.uri}/{STATE} does not match the sha256 in its {SNAPSHOT}: damaged")
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True), record


def replay(
    records: list[dict[str, Any]], aggregated: Callable[[list[dict[str, Any]]], dict[str, Any]]
) -> list[dict[str, Any]]:
    """The evaluations made inside pretraining, aggregated over a trial's seeds as its own reports would be
    (`aggregated`: the trial's `ObjectiveWindow.aggregated`)."""
    counts = {len(r["reports"]) for r in records}
    if len(counts) != 1:
        raise SnapshotError(f"the seeds' snapshots hold different numbers of evaluations ({sorted(counts)})")
    out = []
    for i in range(counts.pop()):
        metrics = aggregated([r["reports"][i] for r in records])
        metrics["final"] = 0.0
        out.append(metrics)
    return out


def jobs_for(plan: SweepPlan, consumers: list[tuple[TrainConfig, list[int]]], evaluate: bool) -> list[Job]:
    """The snapshots worth making for these trainings (config, seeds): one per key and seed that at least two
    trainings start from, and that is not stored already. The config pretrained is an adversarial one of the key
    (an identity-only baseline has no pretrain_nuisance phase, but adopts the same snapshot)."""
    wanted: dict[tuple[str, int], list[TrainConfig]] = {}
    for config, seeds in consumers:
        for seed in seeds:
            wanted.setdefault((snapshot_key(plan, config, evaluate), seed), []).append(config.replace(seed=seed))
    jobs = []
    for (key, seed), configs in sorted(wanted.items()):
        producer = next((c for c in configs if c.adversarial), None)
        if len(configs) < 2 or producer is None:
            continue
        if snapshot_location(plan, key, seed).join(SNAPSHOT).exists():
            continue
        jobs.append(Job(key, seed, producer.to_dict(), evaluate, len(configs)))
    return jobs


# ------------------------------------------------------------------------------------------------------------
# the stage: Ray Train runs under Tune, like trials
# ------------------------------------------------------------------------------------------------------------
def run_stage(plan: SweepPlan, jobs: list[Job], name: str, callbacks: list) -> StageResult:
    """Train the jobs' snapshots in as many Ray Train runs as the sweep runs trials at once, each pretraining its
    share of the seeds in turn (a run pays Ray's start-up once); a failed one is reported, not fatal (its consumers
    pretrain themselves)."""
    result = StageResult()
    if not jobs:
        return result
    t0 = time.perf_counter()
    trainable = tune.with_resources(tune.with_parameters(run_pretraining, plan=plan), trial_resources(plan))
    path, fs, name = plan.layout.sweep_experiment(f"{name}-{int(time.time())}")
    slots = max(1, min(len(jobs), plan.space.search.max_concurrent))
    groups = [[job.__dict__ for job in jobs[g::slots]] for g in range(slots)]
    tuner = tune.Tuner(
        trainable,
        param_space={"jobs": tune.grid_search(groups)},
        tune_config=tune.TuneConfig(
            max_concurrent_trials=plan.space.search.max_concurrent, reuse_actors=trains_in_process(plan)
        ),
        run_config=tune_run_config(plan, name, path, fs, callbacks),
    )
    tuner.fit()
    result.seconds = time.perf_counter() - t0
    for job in jobs:
        if snapshot_location(plan, job.key, job.seed).join(SNAPSHOT).exists():
            result.made += 1
            result.seed_epochs += pretraining_epochs(TrainConfig.from_dict(job.config))
        else:
            result.failed.append(f"seed {job.seed}")
    return result


def run_pretraining(tune_config: dict[str, Any], plan: SweepPlan) -> None:
    """The Tune function of a group of jobs, pretraining each in turn on the trials' workers (run_loop)."""
    jobs = [Job(**job) for job in tune_config["jobs"]]
    name = f"pretrain-{jobs[0].key}-seed{'-'.join(str(j.seed) for j in jobs)}"
    run_loop(plan, pretrain_worker, {"plan": plan, "jobs": jobs}, name)


def pretrain_worker(loop_config: dict[str, Any], ctx: LoopContext) -> None:
    """Every worker pretrains (gradients all-reduced); rank 0 evaluates at the trials' cadence (when the snapshot
    serves search trials) and writes the snapshot. A job whose snapshot exists already (a retried run) is skipped."""
    plan: SweepPlan = loop_config["plan"]
    rank, world = ctx.rank, ctx.world
    data, evaluator = {}, None
    for job in loop_config["jobs"]:
        if snapshot_location(plan, job.key, job.seed).join(SNAPSHOT).exists():
            continue
        config = TrainConfig.from_dict(job.config)
        size = (config.image_height, config.image_width)
        key = (config.nuisance, size)
        if key not in data:
            data[key] = ShardSet.open(plan.source).training_data(config.nuisance, size)
        if job.evaluate and evaluator is None:
            evaluator = Evaluator(
                every_steps=max(
                    1,
                    round(plan.space.training.eval_every_epochs * data[key].steps_per_epoch(config.batch_size, world)),
                )
            )
            if rank == 0:
                evaluator.select = [open_target(t, size) for t in plan.select]
                evaluator.source = source_target(plan.source, size)
        _pretrain_one(plan, job, config, data[key], evaluator if job.evaluate else None, ctx)
    ctx.report({"pretrained": float(len(loop_config["jobs"]))} if rank == 0 else {})  # Tune's record of it


def _pretrain_one(plan: SweepPlan, job: Job, config: TrainConfig, data, evaluator, ctx: LoopContext) -> None:
    rank, world = ctx.rank, ctx.world
    trainer = ADINTrainer(config, data, device=ctx.device(), rank=rank, world_size=world)
    reports: list[dict[str, Any]] = []
    if evaluator is not None:

        def keep(_trainer, _report, metrics: dict[str, Any], _final: bool) -> None:
            if rank == 0:
                reports.append({k: v for k, v in metrics.items() if isinstance(v, (int, float, str))})

        trainer.hooks.append(EvaluationHook(evaluator, keep, rank=rank))
    t0 = time.perf_counter()
    state = trainer.pretrain()
    if rank == 0:
        record = {
            "key": job.key,
            "seed": job.seed,
            "pretraining_key": state["pretraining_key"],
            "step": state["schedule"]["step"],
            "epochs": pretraining_epochs(config),
            "world_size": world,
            "seconds": round(time.perf_counter() - t0, 2),
            "reports": reports,
            "serves": job.consumers,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        save(snapshot_location(plan, job.key, job.seed), state, record)
        print(
            f"[pretraining] seed {job.seed}: {record['epochs']:g} epochs in {record['seconds']:.0f} s, stored for "
            f"{job.consumers} trainings",
            flush=True,
        )


__all__ = [
    "Job",
    "SnapshotError",
    "StageResult",
    "available",
    "jobs_for",
    "load",
    "pretraining_epochs",
    "replay",
    "run_stage",
    "save",
    "snapshot_key",
]
