"""One sweep trial: a Tune function running adin_core's loop, in its own process for one worker, else in a Ray
Train `TorchTrainer`'s workers (orchestrator.loop_context).

Every worker trains (gradients all-reduced by adin_core over the process group Ray Train sets up: gloo on CPU,
NCCL on GPU). adin_core's `EvaluationHook` decides when to evaluate and rank 0 scores (direct transfer to the
`select` targets, the source's own test split and the nuisance probe); this module only reports to Ray and
checkpoints: every rank reports, rank 0 with the metrics and a checkpoint. Report targets are never scored here.

A restarted trial (worker lost, sweep resumed) finds its own run (the Train run is named after the Tune trial)
and continues from the last checkpoint. Rank 0 also keeps `progress.json` beside the checkpoints (the step
reached, every few seconds), so a restart can say how many steps it redid; storage reads and checkpoint uploads
retry with backoff (orchestrator.retry). Both are reported as `faults/*` metrics.
"""

from __future__ import annotations

import functools
import json
import os
import tempfile
import time
from typing import Any, Callable

import pyarrow.fs as pafs
import ray.tune
import torch

from adin_core.config import TrainConfig
from adin_core.data.shards import ShardSet
from adin_core.data.storage import StorageUnavailable, s3_filesystem
from adin_core.evaluation import Evaluator
from adin_core.repeats import SeedGroup, seed_list
from adin_core.train import ADINTrainer, CheckReport, TrainingDiverged
from orchestrator import pretraining
from orchestrator.checkpoints import REPORTS_FILE, load_checkpoint, state_file
from orchestrator.loop_context import LoopContext, run_loop
from orchestrator.plan import SweepPlan
from orchestrator.retry import Backoff, RetryStats, call_with_backoff
from orchestrator.targets import open_target, source_target
from orchestrator.tracking import schema

PROGRESS_FILE = "progress.json"
PROGRESS_EVERY_S = 5.0  # how often rank 0 records its step: one small write, bounding what a restart cannot see
STORAGE_TRANSIENT = (OSError, StorageUnavailable)  # pyarrow raises OSError for S3 network and server errors
SHARED_PREFIX = "pretraining/"  # pretraining/shared_seeds, pretraining/shared_epochs: what a trial did not train


class TrialProgress:
    """The step rank 0 has reached, in `progress.json` next to the Train run's checkpoints.

    Written at checks, at most every PROGRESS_EVERY_S seconds, best effort (a failed write is skipped, never waited
    for). After a restart, the last recorded step minus the step of the checkpoint resumed from is the work the
    restart redid (a lower bound: steps after the last write are not seen).
    """

    def __init__(self, fs, path: str) -> None:
        self.fs, self.path = fs, path
        self.last_write = 0.0
        self.restarts = 0
        self.redone_steps = 0
        self.resumed_from_step = 0
        self.missed_writes = 0

    @classmethod
    def for_run(cls, ctx: LoopContext) -> "TrialProgress":
        fs, folder = ctx.run_folder()
        return cls(_fail_fast(fs), f"{folder}/{PROGRESS_FILE}")

    def read(self) -> dict[str, Any]:
        try:
            with self.fs.open_input_stream(self.path) as fh:
                return json.loads(fh.read())
        except FileNotFoundError:
            return {}

    def start(self, step: int, previous: dict[str, Any]) -> None:
        """Called once the checkpoint or the shared pretraining (if any) is loaded, at the step this attempt starts
        from; `previous` is what the last attempt recorded. A first attempt that starts from shared pretraining is no
        restart: only a restart records the step it resumed from."""
        if previous:
            redone = max(0, int(previous["step"]) - step)
            self.resumed_from_step = step
            self.restarts = int(previous.get("restarts", 0)) + 1
            self.redone_steps = int(previous.get("redone_steps", 0)) + redone
            print(
                f"[trial] restart {self.restarts}: resumed from step {step}; the last attempt had "
                f"reached step {previous['step']}, so {redone} steps are redone",
                flush=True,
            )
        self.write(step, force=True)

    def write(self, step: int, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self.last_write < PROGRESS_EVERY_S:
            return
        record = {"step": step, "restarts": self.restarts, "redone_steps": self.redone_steps, "time": time.time()}
        try:
            with self.fs.open_output_stream(self.path) as fh:
                fh.write(json.dumps(record).encode())
            self.last_write = now
        except OSError:
            self.missed_writes += 1

    def metrics(self) -> dict[str, float]:
        return {
            "faults/restarts": float(self.restarts),
            "faults/redone_steps": float(self.redone_steps),
            "faults/resumed_from_step": float(self.resumed_from_step),
        }


class RaySink:
    """What the seed group hands each evaluation to: every rank reports (Train needs all of them), rank 0 with the
    metrics and a checkpoint of every seed's state, copied into storage through `copy` (with backoff); the
    progress record and the storage retries ride along as `faults/*`.

    Each checkpoint also holds every report up to its own (REPORTS_FILE), so that a trial resumed from it can resend
    the reports Tune never took (`resend`; schema.replayed says why they can be lost)."""

    def __init__(self, ctx: LoopContext, progress: TrialProgress | None, stats: RetryStats, copy: Callable) -> None:
        self.ctx, self.rank, self.progress, self.stats, self.copy = ctx, ctx.rank, progress, stats, copy
        self.history: list[dict[str, Any]] = []  # rank 0: the reports so far, oldest first
        self.extra: dict[str, float] = {}  # on every report: the shared pretraining the trial started from
        self._unsent: list[dict[str, Any]] = []  # reports made before this run's first, sent with it

    def adopted(self, replayed: list[dict[str, Any]], extra: dict[str, float]) -> None:
        """The trial started from shared pretraining: the evaluations made inside it (aggregated over the seeds)
        are this trial's first reports, sent with its first own one as schema.REPLAY, and kept in every
        checkpoint's history like the others."""
        self.history = [dict(r, **extra) for r in replayed]
        self._unsent = list(self.history)
        self.extra = dict(extra)

    def on_check(self, trainer: ADINTrainer, report: CheckReport) -> None:
        if self.progress is not None:
            self.progress.write(report.step)

    def __call__(
        self, trainers: list[ADINTrainer], reports: list[CheckReport], metrics: dict[str, Any], final: bool
    ) -> None:
        directory = None
        with tempfile.TemporaryDirectory() as tmp:
            if self.rank == 0:
                if self.progress is not None:
                    metrics.update(self.progress.metrics())
                metrics.update(self.extra)
                for k, trainer in enumerate(trainers):
                    torch.save(trainer.state_dict(), os.path.join(tmp, state_file(k)))
                self.history.append(_plain(metrics))
                with open(os.path.join(tmp, REPORTS_FILE), "w") as fh:
                    json.dump(self.history, fh)
                directory = tmp
                if self._unsent:
                    metrics[schema.REPLAY] = json.dumps(self._unsent)
                    self._unsent = []

            def copy(fs: pafs.FileSystem, source: str, dest: str) -> None:
                self.copy(fs, source, dest)
                metrics.update(self.stats.metrics())  # this report carries the retries its own upload needed

            self.ctx.report(metrics, directory, copy)

    def diverged(self, exc: TrainingDiverged) -> None:
        """The trial's last report (every rank, no checkpoint): it stopped because a seed's weights went non-finite.
        It carries no objective, so no scheduler, searcher or winner rule can rank it; retrying would diverge again
        from the same checkpoint, so the trial ends here instead of failing."""
        metrics: dict[str, Any] = {}
        if self.rank == 0:
            metrics = {
                schema.DIVERGED: 1.0,
                schema.DIVERGED_STEP: float(exc.step),
                schema.DIVERGED_WHY: str(exc),
                schema.FINAL: 0.0,
            }
            print(f"[trial] {exc}; the trial stops here", flush=True)
        self.ctx.report(metrics)

    def resend(self, checkpoint, history: list[dict[str, Any]]) -> None:
        """After a restore from `checkpoint`: one report (every rank, no new checkpoint) with that checkpoint's
        metrics, the reports before it as schema.REPLAY, the checkpoint's path and this attempt's `faults/*`."""
        metrics: dict[str, Any] = {}
        if self.rank == 0:
            self.history = list(history)
            self.extra = {k: v for k, v in history[-1].items() if k.startswith(SHARED_PREFIX)}
            metrics = dict(history[-1], checkpoint_path=checkpoint.path, **{schema.REPLAY: json.dumps(history[:-1])})
            if self.progress is not None:
                metrics.update(self.progress.metrics())
        self.ctx.report(metrics)


def _plain(metrics: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float, str))}


def _fail_fast(run_fs):
    """The run's filesystem retries inside the SDK for the whole retry budget (for Ray's own writes); ours go
    through one that fails fast (S3: the endpoint is checked first), so an outage reaches our backoff, which
    records it, or is skipped where waiting is not worth it (progress records)."""
    return s3_filesystem() if isinstance(run_fs, pafs.S3FileSystem) else run_fs


def _copy_checkpoint(run_fs: pafs.FileSystem, source: str, dest: str) -> None:
    """Ray's checkpoint copy (persist_current_checkpoint) from a local folder, through a fail-fast filesystem."""
    fs = _fail_fast(run_fs)
    fs.create_dir(dest)
    pafs.copy_files(source, dest, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs)


def train_worker(loop_config: dict[str, Any], ctx: LoopContext) -> None:
    """Each worker's loop: the trial's config on each of its seeds, in turns (adin_core.repeats)."""
    plan: SweepPlan = loop_config["plan"]
    config: TrainConfig = loop_config["config"]
    seeds: list[int] = loop_config["seeds"]
    rank, world = ctx.rank, ctx.world
    size = (config.image_height, config.image_width)
    stats = RetryStats()
    storage_retry = _storage_retry(plan, stats)
    data = storage_retry(
        lambda: ShardSet.open(plan.source).training_data(config.nuisance, size),
        what=f"reading the training data {plan.source}",
    )
    evaluator = _evaluator(
        plan,
        data.steps_per_epoch(config.batch_size, world),
        size,
        rank,
        storage_retry,
        report=bool(loop_config.get("report")),
    )
    progress = TrialProgress.for_run(ctx) if rank == 0 else None
    sink = RaySink(ctx, progress, stats, checkpoint_copy(plan, stats))
    device = ctx.device()
    trainers = [
        ADINTrainer(config.replace(seed=seed), data, hooks=[sink], device=device, rank=rank, world_size=world)
        for seed in seeds
    ]
    objective = plan.space.objective
    group = SeedGroup(
        trainers, evaluator, sink, objective=objective.metric, average_last=objective.average_last, rank=rank
    )
    checkpoint = ctx.checkpoint()
    history: list[dict[str, Any]] = []
    if checkpoint is not None:
        history = _restore(checkpoint, trainers, group, storage_retry)
    else:
        _start_from_shared_pretraining(
            plan, config, seeds, trainers, group, sink, storage_retry, evaluate=not loop_config.get("report")
        )
    if progress is not None:
        progress.start(trainers[0].schedule.step, storage_retry(progress.read, what="reading the trial's progress"))
    if history:  # every rank read the same checkpoint, so every rank makes this report
        sink.resend(checkpoint, history)
    try:
        group.run()
    except TrainingDiverged as exc:  # raised on every rank at the same check (the weights are the same)
        sink.diverged(exc)


def checkpoint_copy(plan: SweepPlan, stats: RetryStats | None = None) -> Callable[[pafs.FileSystem, str, str], None]:
    """A trial's checkpoint copy into its run's storage (LoopContext.report's `copy`): fail-fast, retried through
    an outage for the plan's budget, its retries counted in `stats`."""
    storage_retry = _storage_retry(plan, stats)

    def copy(run_fs: pafs.FileSystem, source: str, dest: str) -> None:
        storage_retry(
            functools.partial(_copy_checkpoint, run_fs, source, dest),
            what=f"uploading checkpoint {dest.rsplit('/', 1)[-1]}",
        )

    return copy


def _storage_retry(plan: SweepPlan, stats: RetryStats | None = None) -> Callable[..., Any]:
    """call_with_backoff for the sweep storage: `f(fn, what=...)`, an outage waited out for the plan's budget."""
    return functools.partial(
        call_with_backoff,
        service="storage",
        retry_on=STORAGE_TRANSIENT,
        backoff=Backoff(budget_s=plan.retry_budget_s),
        stats=stats,
    )


def _restore(checkpoint, trainers: list[ADINTrainer], group: SeedGroup, storage_retry) -> list[dict[str, Any]]:
    """Every seed's state from the trial's checkpoint; returns the reports made before it, to be sent again."""
    states, history = storage_retry(lambda: load_checkpoint(checkpoint, len(trainers)), what="restoring the checkpoint")
    for trainer, state in zip(trainers, states):
        trainer.load_state_dict(state)
    group.restored(history)
    return history


def _evaluator(
    plan: SweepPlan, steps_per_epoch: int, size: tuple[int, int], rank: int, storage_retry, report: bool
) -> Evaluator:
    """Rank 0 evaluates: the select targets, and the source's own test split with the probe. A verification trial
    (`report`) is scored once, at the end, report targets included; its reports before that only checkpoint."""
    evaluator = Evaluator(every_steps=max(1, round(plan.space.training.eval_every_epochs * steps_per_epoch)))
    if rank != 0:
        return evaluator
    evaluator.select = [
        storage_retry(functools.partial(open_target, t, size), what=f"reading target {t.uri}") for t in plan.select
    ]
    evaluator.source = storage_retry(
        lambda: source_target(plan.source, size), what=f"reading {plan.source}'s test split"
    )
    if report:
        evaluator.report = [
            storage_retry(functools.partial(open_target, t, size), what=f"reading target {t.uri}") for t in plan.report
        ]
        evaluator.score_during = False
    return evaluator


def _start_from_shared_pretraining(
    plan: SweepPlan,
    config: TrainConfig,
    seeds: list[int],
    trainers: list[ADINTrainer],
    group: SeedGroup,
    sink: RaySink,
    storage_retry,
    evaluate: bool,
) -> None:
    """Every seed starts from its stored pretraining when all of them have one (orchestrator.pretraining); else
    the trial pretrains itself, as it always could."""
    locs = storage_retry(
        lambda: pretraining.available(plan, config, seeds, evaluate), what="looking for shared pretraining"
    )
    if not locs:
        return
    try:
        loaded = [storage_retry(functools.partial(pretraining.load, loc), what=f"reading {loc.uri}") for loc in locs]
        replayed = pretraining.replay([record for _, record in loaded], group.window.aggregated) if evaluate else []
    except pretraining.SnapshotError as exc:
        print(f"[trial] shared pretraining not used ({exc}); pretraining here", flush=True)
        return
    for trainer, (state, _) in zip(trainers, loaded):  # found by this config's own key: it serves all of them
        trainer.adopt_pretraining(state)
    group.restored(replayed)
    epochs = sum(record["epochs"] for _, record in loaded)
    sink.adopted(replayed, {f"{SHARED_PREFIX}shared_seeds": float(len(seeds)), f"{SHARED_PREFIX}shared_epochs": epochs})
    print(
        f"[trial] started from shared pretraining: {len(seeds)} seed(s), {epochs:g} seed-epochs not retrained",
        flush=True,
    )


def train_run_name(trial_id: str) -> str:
    return f"trial-{trial_id}"


def run_trial(tune_config: dict[str, Any], plan: SweepPlan) -> None:
    """The Tune function trainable, training the search's seeds. Its TrainConfig is built (and validated) here,
    once, from the plan's fixed values and the sampled ones."""
    config = plan.space.train_config(plan.space.sampled(tune_config))
    train_trial(plan, config, seed_list(config, plan.space.search.seeds), report=False)


def train_trial(plan: SweepPlan, config: TrainConfig, seeds: list[int], *, report: bool) -> None:
    """Train `config` on `seeds` for the current Tune trial (run_loop: in this process, or in its Ray Train run);
    `report`: a verification trial, scored on the report targets at its end only."""
    trial_id = ray.tune.get_context().get_trial_id()
    _storage_retry(plan)(plan.layout.train_runs, what=f"opening the sweep storage {plan.storage}")
    run_loop(
        plan,
        train_worker,
        {"config": config, "plan": plan, "seeds": seeds, "report": report},
        train_run_name(trial_id),
        checkpoints_to_keep=plan.space.training.checkpoints_to_keep,
    )
