"""One sweep trial: a Tune function that launches a Ray Train `TorchTrainer` running adin_core's loop.

Every worker trains (gradients all-reduced by adin_core over the process group Ray Train sets up: gloo on CPU,
NCCL on GPU). At each evaluation point rank 0 scores direct transfer to the `select` targets and every rank calls
`ray.train.report`, rank 0 with the metrics and a checkpoint; `TuneReportCallback` forwards them to Tune. The
objective (`transfer_mAP`) is the mean mAP over the select targets; report targets are never scored here.

The Train run is named after the Tune trial, under the sweep's storage: a restarted trial (worker lost, sweep
resumed) finds its own run and continues from the last checkpoint. Rank 0 also keeps `progress.json` there (the
step reached, every few seconds), so a restart can say how many steps it redid; storage reads and checkpoint
uploads retry with backoff (orchestrator.retry). Both are reported as `faults/*` metrics.
"""

from __future__ import annotations

import functools
import json
import os
import tempfile
import time
from dataclasses import dataclass
from typing import Any, Callable

import torch

from adin_core.config import TrainConfig
from adin_core.data.shards import ShardSet
from adin_core.data.storage import StorageUnavailable
from adin_core.data.memory import EvalTarget
from adin_core.evaluation import OBJECTIVE, Evaluator, score_target
from adin_core.train import ADINTrainer, CheckReport
from orchestrator.retry import DEFAULT_BUDGET_S, Backoff, RetryStats, call_with_backoff
from orchestrator.space import make_train_config

STATE_FILE = "state.pt"
PROGRESS_FILE = "progress.json"
PROGRESS_EVERY_S = 5.0  # how often rank 0 records its step: one small write, bounding what a restart cannot see
STORAGE_TRANSIENT = (OSError, StorageUnavailable)  # pyarrow raises OSError for S3 network and server errors
TRIAL_DRIVER_RESOURCES = {"cpu": 0.01}  # the trial's own process only waits on its TorchTrainer (DESIGN 3)
PHASES = ("pretrain_id", "pretrain_nuisance", "adversarial", "rescue", "refresh", "done")


@dataclass(frozen=True)
class TrialSettings:
    """Everything a trial needs besides its sampled parameters; the same for every trial of a sweep."""

    sweep: str
    storage: str  # sweep storage root URI (local path or s3://bucket/prefix)
    source: str
    select: tuple[str, ...]
    fixed: dict[str, Any]
    epochs: float
    eval_every_epochs: float
    workers: int
    cpus_per_worker: float
    gpus_per_worker: float
    checkpoints_to_keep: int
    max_failures: int = 2
    retry_budget_s: float = DEFAULT_BUDGET_S

    def train_config(self, sampled: dict[str, Any]) -> TrainConfig:
        return make_train_config(self.fixed, sampled, self.epochs)


def open_target(uri: str, image_size: tuple[int, int]) -> EvalTarget:
    """A shard set's test split as a direct-transfer target, named by its dataset (the key of its metrics)."""
    shards = ShardSet.open(uri)
    t = shards.eval_target(image_size)
    return EvalTarget(shards.manifest["dataset"], t.query, t.gallery)


def source_target(uri: str, image_size: tuple[int, int]) -> EvalTarget:
    """The training dataset's own test split: cross-camera retrieval on seen cameras, and the nuisance probe."""
    t = ShardSet.open(uri).eval_target(image_size)
    return EvalTarget("source", t.query, t.gallery)


def score_targets(model, targets: list[EvalTarget], config: TrainConfig,
                  device: torch.device | str = "cpu") -> dict[str, dict[str, float]]:
    """Rank-1/5/10, mAP and mINP per target: the one scoring of the trials, the winner and the export."""
    return {t.name: score_target(model, t, config, device)[0] for t in targets}


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
    def for_current_run(cls) -> "TrialProgress":
        import ray.train

        storage = ray.train.get_context().get_storage()
        return cls(_fail_fast(storage.storage_filesystem), f"{storage.experiment_fs_path}/{PROGRESS_FILE}")

    def read(self) -> dict[str, Any]:
        try:
            with self.fs.open_input_stream(self.path) as fh:
                return json.loads(fh.read())
        except FileNotFoundError:
            return {}

    def start(self, resumed_from_step: int, previous: dict[str, Any]) -> None:
        """Called once the checkpoint (if any) is loaded; `previous` is what the last attempt recorded."""
        self.resumed_from_step = resumed_from_step
        if previous:
            redone = max(0, int(previous["step"]) - resumed_from_step)
            self.restarts = int(previous.get("restarts", 0)) + 1
            self.redone_steps = int(previous.get("redone_steps", 0)) + redone
            print(f"[trial] restart {self.restarts}: resumed from step {resumed_from_step}; the last attempt had "
                  f"reached step {previous['step']}, so {redone} steps are redone", flush=True)
        self.write(resumed_from_step, force=True)

    def write(self, step: int, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self.last_write < PROGRESS_EVERY_S:
            return
        record = {"step": step, "restarts": self.restarts, "redone_steps": self.redone_steps,
                  "time": time.time()}
        try:
            with self.fs.open_output_stream(self.path) as fh:
                fh.write(json.dumps(record).encode())
            self.last_write = now
        except OSError:
            self.missed_writes += 1

    def metrics(self) -> dict[str, float]:
        return {"faults/restarts": float(self.restarts), "faults/redone_steps": float(self.redone_steps),
                "faults/resumed_from_step": float(self.resumed_from_step)}


class RayReportHook:
    """At evaluation points (every `eval_every_steps`, and at the end): evaluate on rank 0, report from all."""

    def __init__(self, evaluator: Evaluator, eval_every_steps: int, rank: int, progress: TrialProgress | None,
                 stats: RetryStats, upload: Callable) -> None:
        self.evaluator, self.every, self.rank = evaluator, max(1, eval_every_steps), rank
        self.progress, self.stats, self.upload = progress, stats, upload  # progress: rank 0 only
        self.next_eval: int | None = None

    def on_check(self, trainer: ADINTrainer, report: CheckReport) -> None:
        import ray.train

        if self.progress is not None:
            self.progress.write(report.step)
        if self.next_eval is None:  # first check of this process (fresh or resumed)
            self.next_eval = (report.step // self.every + 1) * self.every if report.step % self.every else report.step
        final = report.next_phase == "done"
        if report.step < self.next_eval and not final:
            return
        self.next_eval = (report.step // self.every + 1) * self.every
        metrics: dict[str, Any] = {}
        checkpoint = None
        with tempfile.TemporaryDirectory() as tmp:
            if self.rank == 0:
                metrics = {k: float(v) for k, v in report.metrics().items()}
                metrics.update(self.evaluator.evaluate(trainer.model, trainer.config, trainer.device))
                metrics["phase"] = report.next_phase
                metrics["phase_index"] = float(PHASES.index(report.next_phase))
                metrics["adversarial_rounds"] = float(trainer.schedule.rounds)
                metrics["final"] = float(final)
                metrics["world_size"] = float(trainer.world_size)
                if self.progress is not None:
                    metrics.update(self.progress.metrics())
                torch.save(trainer.state_dict(), os.path.join(tmp, STATE_FILE))
                checkpoint = ray.train.Checkpoint.from_directory(tmp)

            def upload(ckpt, dir_name: str):
                persisted = self.upload(ckpt, dir_name)
                metrics.update(self.stats.metrics())  # this report carries the retries its own upload needed
                return persisted

            ray.train.report(metrics, checkpoint=checkpoint, checkpoint_upload_fn=upload)


def _load_checkpoint(checkpoint) -> dict[str, Any]:
    with checkpoint.as_directory() as d:
        return torch.load(os.path.join(d, STATE_FILE), weights_only=True)


def _fail_fast(run_fs):
    """The run's filesystem retries inside the SDK for the whole retry budget (for Ray's own writes); ours go
    through one that fails fast (S3: the endpoint is checked first), so an outage reaches our backoff, which
    records it, or is skipped where waiting is not worth it (progress records)."""
    import pyarrow.fs as pafs

    from adin_core.data.storage import s3_filesystem

    return s3_filesystem() if isinstance(run_fs, pafs.S3FileSystem) else run_fs


def _persist(storage, checkpoint, dir_name: str):
    """Ray's checkpoint copy (persist_current_checkpoint), through a fail-fast filesystem."""
    import pyarrow.fs as pafs
    import ray.train

    run_fs = storage.storage_filesystem
    fs = _fail_fast(run_fs)
    dest = storage.build_checkpoint_path_from_name(dir_name)
    fs.create_dir(dest)
    pafs.copy_files(checkpoint.path, dest, source_filesystem=checkpoint.filesystem, destination_filesystem=fs)
    return ray.train.Checkpoint(filesystem=run_fs, path=dest)


def train_worker(loop_config: dict[str, Any]) -> None:
    """Ray Train's per-worker loop."""
    import ray.train
    import ray.train.torch

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    config = TrainConfig.from_dict(loop_config["train_config"])
    size = (config.image_height, config.image_width)
    stats = RetryStats()
    storage_retry = functools.partial(call_with_backoff, service="storage", retry_on=STORAGE_TRANSIENT,
                                      backoff=Backoff(budget_s=loop_config["retry_budget_s"]), stats=stats)
    source = loop_config["source"]
    data = storage_retry(lambda: ShardSet.open(source).training_data(config.nuisance, size),
                         what=f"reading the training data {source}")
    evaluator = Evaluator()
    if rank == 0:  # rank 0 evaluates: the select targets, and the source's own test split with the probe
        evaluator.select = [storage_retry(functools.partial(open_target, uri, size), what=f"reading target {uri}")
                            for uri in loop_config["select"]]
        evaluator.source = storage_retry(lambda: source_target(source, size), what=f"reading {source}'s test split")
    storage = ctx.get_storage()
    progress = TrialProgress.for_current_run() if rank == 0 else None

    def upload(checkpoint, dir_name: str):
        return storage_retry(functools.partial(_persist, storage, checkpoint, dir_name),
                             what=f"uploading checkpoint {dir_name}")

    steps_per_epoch = data.steps_per_epoch(config.batch_size, world)
    hook = RayReportHook(evaluator, round(loop_config["eval_every_epochs"] * steps_per_epoch), rank,
                         progress=progress, stats=stats, upload=upload)
    trainer = ADINTrainer(config, data, hooks=[hook], device=ray.train.torch.get_device(), rank=rank,
                          world_size=world)
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        trainer.load_state_dict(storage_retry(lambda: _load_checkpoint(checkpoint), what="restoring the checkpoint"))
    if progress is not None:
        progress.start(trainer.schedule.step, storage_retry(progress.read, what="reading the trial's progress"))
    if not trainer.schedule.done:
        trainer.run()


def train_run_name(trial_id: str) -> str:
    return f"trial-{trial_id}"


def run_trial(sampled: dict[str, Any], settings: TrialSettings) -> None:
    """The Tune function trainable: one TorchTrainer per trial."""
    import ray.tune
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    from orchestrator.storage import train_storage

    trial_id = ray.tune.get_context().get_trial_id()
    config = settings.train_config(sampled)
    storage_path, storage_fs = call_with_backoff(
        lambda: train_storage(settings.storage, settings.sweep, settings.retry_budget_s), service="storage",
        retry_on=STORAGE_TRANSIENT,
        what=f"opening the sweep storage {settings.storage}", backoff=Backoff(budget_s=settings.retry_budget_s))
    use_gpu = settings.gpus_per_worker > 0
    resources = {"CPU": settings.cpus_per_worker}
    if use_gpu:
        resources["GPU"] = settings.gpus_per_worker
    trainer = TorchTrainer(
        train_worker,
        train_loop_config={"train_config": config.to_dict(), "source": settings.source,
                           "select": list(settings.select), "eval_every_epochs": settings.eval_every_epochs,
                           "retry_budget_s": settings.retry_budget_s},
        scaling_config=ScalingConfig(num_workers=settings.workers, use_gpu=use_gpu, resources_per_worker=resources),
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        run_config=RunConfig(
            name=train_run_name(trial_id), storage_path=storage_path, storage_filesystem=storage_fs,
            callbacks=[TuneReportCallback()],
            checkpoint_config=CheckpointConfig(num_to_keep=settings.checkpoints_to_keep),
            failure_config=FailureConfig(max_failures=settings.max_failures)),
    )
    trainer.fit()
