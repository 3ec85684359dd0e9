"""One sweep trial: a Tune function that launches a Ray Train `TorchTrainer` running adin_core's loop.

Every worker trains (gradients all-reduced by adin_core over the process group Ray Train sets up: gloo on CPU,
NCCL on GPU). At each evaluation point rank 0 scores direct transfer to the `select` targets and every rank calls
`ray.train.report`, rank 0 with the metrics and a checkpoint; `TuneReportCallback` forwards them to Tune. The
objective (`transfer_mAP`) is the mean mAP over the select targets; report targets are never scored here.

The Train run is named after the Tune trial, under the sweep's storage: a restarted trial (worker lost, sweep
resumed) finds its own run and continues from the last checkpoint.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from adin_core.config import TrainConfig
from adin_core.data.shards import ShardSet
from adin_core.features import EvalTarget, evaluate_transfer
from adin_core.train import ADINTrainer, CheckReport

OBJECTIVE = "transfer_mAP"
STATE_FILE = "state.pt"
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

    def train_config(self, sampled: dict[str, Any]) -> TrainConfig:
        return TrainConfig.from_dict({**self.fixed, **sampled, "epochs": self.epochs})


def target_name(shards: ShardSet) -> str:
    return shards.manifest["dataset"]


def transfer_metrics(model, targets: list[EvalTarget], config: TrainConfig, device) -> dict[str, float]:
    """Per-target rank-1/5/10, mAP, mINP as `<prefix>/<target>/<metric>`, plus the mean mAP."""
    out: dict[str, float] = {}
    maps = []
    for t in targets:
        r = evaluate_transfer(model, t, image_size=(config.image_height, config.image_width), device=device,
                              amp=config.amp)
        for k, v in r.summary().items():
            out[f"select/{t.name}/{k}"] = float(v)
        maps.append(r.mAP)
    out[OBJECTIVE] = float(np.mean(maps))
    return out


class RayReportHook:
    """At evaluation points (every `eval_every_steps`, and at the end): evaluate on rank 0, report from all."""

    def __init__(self, targets: list[EvalTarget], eval_every_steps: int, rank: int) -> None:
        self.targets, self.every, self.rank = targets, max(1, eval_every_steps), rank
        self.next_eval: int | None = None

    def on_check(self, trainer: ADINTrainer, report: CheckReport) -> None:
        import ray.train

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
                metrics.update(transfer_metrics(trainer.model, self.targets, trainer.config, trainer.device))
                metrics["phase"] = report.next_phase
                metrics["phase_index"] = float(PHASES.index(report.next_phase))
                metrics["adversarial_rounds"] = float(trainer.schedule.rounds)
                metrics["final"] = float(final)
                metrics["world_size"] = float(trainer.world_size)
                torch.save(trainer.state_dict(), os.path.join(tmp, STATE_FILE))
                checkpoint = ray.train.Checkpoint.from_directory(tmp)
            ray.train.report(metrics, checkpoint=checkpoint)


def train_worker(loop_config: dict[str, Any]) -> None:
    """Ray Train's per-worker loop."""
    import ray.train
    import ray.train.torch

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    config = TrainConfig.from_dict(loop_config["train_config"])
    size = (config.image_height, config.image_width)
    data = ShardSet.open(loop_config["source"]).training_data(config.nuisance, size)
    targets = []
    if rank == 0:
        for uri in loop_config["select"]:
            shards = ShardSet.open(uri)
            t = shards.eval_target(size)
            targets.append(EvalTarget(target_name(shards), t.query, t.gallery))
    steps_per_epoch = data.steps_per_epoch(config.batch_size, world)
    hook = RayReportHook(targets, round(loop_config["eval_every_epochs"] * steps_per_epoch), rank)
    trainer = ADINTrainer(config, data, hooks=[hook], device=ray.train.torch.get_device(), rank=rank,
                          world_size=world)
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            trainer.load_state_dict(torch.load(os.path.join(d, STATE_FILE), weights_only=True))
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
    storage_path, storage_fs = train_storage(settings.storage, settings.sweep)
    use_gpu = settings.gpus_per_worker > 0
    resources = {"CPU": settings.cpus_per_worker}
    if use_gpu:
        resources["GPU"] = settings.gpus_per_worker
    trainer = TorchTrainer(
        train_worker,
        train_loop_config={"train_config": config.to_dict(), "source": settings.source,
                           "select": list(settings.select), "eval_every_epochs": settings.eval_every_epochs},
        scaling_config=ScalingConfig(num_workers=settings.workers, use_gpu=use_gpu, resources_per_worker=resources),
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        run_config=RunConfig(
            name=train_run_name(trial_id), storage_path=storage_path, storage_filesystem=storage_fs,
            callbacks=[TuneReportCallback()],
            checkpoint_config=CheckpointConfig(num_to_keep=settings.checkpoints_to_keep),
            failure_config=FailureConfig(max_failures=settings.max_failures)),
    )
    trainer.fit()
