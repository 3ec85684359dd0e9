"""Where a training loop (a trial's, a pretraining stage's) runs, and the one interface it reports through.

A loop is `loop(loop_config, ctx)`; `run_loop` picks where it runs:

- several workers: Ray Train's workers (a `TorchTrainer`: the gloo/NCCL process group, Train's worker restarts),
  with `TrainWorker` over `ray.train`'s API; the reports reach Tune through Train's `TuneReportCallback`;
- one worker: the Tune trial's own process, with `TuneProcess` over `ray.tune`'s API. A TorchTrainer of one worker
  starts five more Ray processes a trial (Train's controller, its placement-group cleaner and synchronisation
  actor, the worker, the queue that carries its reports to Tune), most of them importing torch; on 2 cores that
  put a trial's first report 43 s after its suggestion (median, bench/sweep_scale.py) and Ray Train's bare floor
  at 10 s, for a loop that needs none of it. Ray Train's own local mode (`num_workers=0`) runs a loop in process
  but does not report to Tune, and `ray.train.report` refuses to run inside a Tune trial: hence this interface.
  Such trials also reuse their Tune actor for the next trial (`reuse_actors`), so a process start and torch's
  import are paid once per concurrent slot, not per trial.

Both keep a trial's files the same way (its last `checkpoints_to_keep` checkpoints: Train's run keeps them under
Train, `TuneProcess` itself in process): every checkpoint is copied into storage by the caller's `copy` (through
a fail-fast filesystem, retried with backoff and recorded) and found again through what Tune reports (its path,
logged to MLflow), never by layout. Under Train a trial's checkpoints and `progress.json` sit in its Train run
(`<sweep>/train/trial-<id>/`), in process in Tune's trial folder (`<sweep>/<trial folder>/`).
"""

from __future__ import annotations

import collections
import functools
import posixpath
import warnings
from typing import Any, Callable

import pyarrow.fs as pafs
import ray.train
import ray.train.torch
import ray.tune
import torch
from ray.tune.integration.ray_train import CHECKPOINT_PATH_KEY, TuneReportCallback

from orchestrator.plan import SweepPlan
from orchestrator.ray_session import torch_trainer, trains_in_process

# copy(run filesystem, local checkpoint folder, destination path on it): the caller's upload, retried as it likes
Copy = Callable[[pafs.FileSystem, str, str], None]


class LoopContext:
    """What a loop asks of where it runs."""

    rank: int = 0
    world: int = 1

    def device(self) -> torch.device:
        raise NotImplementedError

    def run_folder(self) -> tuple[pafs.FileSystem, str]:
        """The filesystem and folder of this run's checkpoints (a restarted run finds its own there)."""
        raise NotImplementedError

    def checkpoint(self) -> Any | None:
        """The checkpoint a restarted run resumes from; None on a first start."""
        raise NotImplementedError

    def report(self, metrics: dict[str, Any], directory: str | None = None, copy: Copy | None = None) -> None:
        """Report `metrics` (every rank must), with the checkpoint in local `directory` (rank 0), put into storage
        by `copy` (None: Ray's own copy)."""
        raise NotImplementedError


class TrainWorker(LoopContext):
    """A Ray Train worker of a TorchTrainer."""

    def __init__(self) -> None:
        ctx = ray.train.get_context()
        self.rank, self.world = ctx.get_world_rank(), ctx.get_world_size()
        self._storage = ctx.get_storage()

    def device(self) -> torch.device:
        return ray.train.torch.get_device()

    def run_folder(self) -> tuple[pafs.FileSystem, str]:
        return self._storage.storage_filesystem, self._storage.experiment_fs_path

    def checkpoint(self) -> Any | None:
        return ray.train.get_checkpoint()

    def report(self, metrics: dict[str, Any], directory: str | None = None, copy: Copy | None = None) -> None:
        if directory is None:
            ray.train.report(metrics)
            return
        storage = self._storage

        def upload(checkpoint: ray.train.Checkpoint, dir_name: str) -> ray.train.Checkpoint:
            dest = storage.build_checkpoint_path_from_name(dir_name)
            copy(storage.storage_filesystem, checkpoint.path, dest)
            return ray.train.Checkpoint(filesystem=storage.storage_filesystem, path=dest)

        checkpoint = ray.train.Checkpoint.from_directory(directory)
        ray.train.report(metrics, checkpoint=checkpoint, checkpoint_upload_fn=upload if copy else None)


class TuneProcess(LoopContext):
    """The Tune trial's own process (a one-worker loop): rank 0 of 1, on the GPU Ray gave the trial if any.

    It keeps the trial's last `keep` checkpoints itself, deleting the older ones at each report. Left to Tune
    (`CheckpointConfig(num_to_keep)`), Tune saves and uploads its whole experiment state, waiting for the last
    upload, every num_to_keep checkpoints of any trial, so that the state never names a deleted checkpoint; that
    state grows with the trials (~40 KB each), so on object storage the sweep's driver spent most of its time
    uploading it (bench/sweep_scale.py on the local cluster, 80 trials: a trial's report waited for the driver
    0.2 s at the start and 1.5 s at the end, median; 0.02 s throughout without). The price: a driver that dies
    without saving its state (a stop saves it) may resume a trial from a checkpoint deleted since;
    `checkpoint()` then says so and the trial starts again.
    """

    def __init__(self, use_gpu: bool, keep: int | None = None) -> None:
        self._use_gpu = use_gpu
        self._storage = ray.tune.get_context().get_storage()
        self._keep = keep or 0  # 0: keep all
        self._kept: collections.deque[str] = collections.deque()  # this trial's checkpoints, oldest first

    def device(self) -> torch.device:
        # Ray sets CUDA_VISIBLE_DEVICES to the trial's GPU, so it is device 0 here
        return torch.device("cuda", 0) if self._use_gpu and torch.cuda.is_available() else torch.device("cpu")

    def run_folder(self) -> tuple[pafs.FileSystem, str]:
        return self._storage.storage_filesystem, self._storage.trial_fs_path

    def checkpoint(self) -> Any | None:
        checkpoint = ray.tune.get_checkpoint()
        if checkpoint is None or checkpoint.path in self._kept:
            return checkpoint
        if checkpoint.filesystem.get_file_info(checkpoint.path).type == pafs.FileType.NotFound:
            warnings.warn(
                f"trial {ray.tune.get_context().get_trial_id()}: its recorded checkpoint {checkpoint.path} is gone "
                "(deleted after the sweep's state was last saved); the trial starts again from the beginning",
                stacklevel=2,
            )
            return None
        # the checkpoints written before it by the attempt that died are this trial's too, named as report() names
        name = posixpath.basename(checkpoint.path)
        if (
            self._keep
            and posixpath.dirname(checkpoint.path) == self._storage.trial_fs_path
            and name.startswith("checkpoint_")
        ):
            index = int(name.rsplit("_", 1)[1])
            older = range(max(0, index - self._keep + 1), index)
            self._kept.extend(posixpath.join(self._storage.trial_fs_path, f"checkpoint_{i:06d}") for i in older)
        self._kept.append(checkpoint.path)
        return checkpoint

    def report(self, metrics: dict[str, Any], directory: str | None = None, copy: Copy | None = None) -> None:
        if directory is None:
            ray.tune.report(metrics)
            return
        # Tune's report copies a checkpoint itself (StorageContext.persist_current_checkpoint, into the trial
        # folder's next checkpoint_NNNNNN, with no retry of ours). With a `copy`, the checkpoint is copied there
        # first, and Tune's copy, for this one call, hands back that copy. Either way the report carries the path
        # (`checkpoint_path`, as Train's TuneReportCallback adds it): the sweep finds a trial's checkpoint by it.
        storage = self._storage
        name = f"checkpoint_{storage.current_checkpoint_index + 1:06d}"
        dest = posixpath.join(storage.trial_fs_path, name)
        metrics[CHECKPOINT_PATH_KEY] = dest
        checkpoint = ray.tune.Checkpoint.from_directory(directory)
        if copy is None:
            ray.tune.report(metrics, checkpoint=checkpoint)
        else:
            copy(storage.storage_filesystem, directory, dest)
            self._kept.append(dest)
            # before the report: a trial that Tune stops at it (ASHA, its last evaluation) never returns from it;
            # the checkpoint Tune records until then stays
            if self._keep:
                self._retire(max(self._keep, 2))
            persisted = ray.tune.Checkpoint(filesystem=storage.storage_filesystem, path=dest)
            storage.persist_current_checkpoint = lambda _checkpoint: persisted
            try:
                ray.tune.report(metrics, checkpoint=checkpoint)
            finally:
                del storage.persist_current_checkpoint
        if storage.checkpoint_dir_name != name:  # Ray named it otherwise: the checkpoint Tune records is elsewhere
            raise RuntimeError(f"Tune recorded checkpoint {storage.checkpoint_dir_name}, expected {name}")
        if copy is None:
            self._kept.append(dest)
        self._retire(self._keep)

    def _retire(self, keep: int) -> None:
        """Delete this trial's checkpoints but the last `keep` (0: keep all); best effort: a checkpoint left
        behind costs storage, not the trial."""
        while keep and len(self._kept) > keep:
            path = self._kept.popleft()
            try:
                self._storage.storage_filesystem.delete_dir(path)
            except FileNotFoundError:
                pass
            except OSError as exc:
                warnings.warn(f"could not delete the superseded checkpoint {path}: {exc}; it stays", stacklevel=2)


def _in_train_worker(loop: Callable[[dict[str, Any], LoopContext], None], loop_config: dict[str, Any]) -> None:
    loop(loop_config, TrainWorker())


def run_loop(
    plan: SweepPlan,
    loop: Callable[[dict[str, Any], LoopContext], None],
    loop_config: dict[str, Any],
    name: str,
    checkpoints_to_keep: int | None = None,
) -> None:
    """Run `loop` for the current Tune trial: in this process for one worker, else in a TorchTrainer named `name`
    (a restarted trial finds its own Train run by it) under the sweep's train-runs folder."""
    if trains_in_process(plan):
        loop(loop_config, TuneProcess(use_gpu=plan.space.resources.gpus_per_worker > 0, keep=checkpoints_to_keep))
        return
    torch_trainer(
        plan,
        functools.partial(_in_train_worker, loop),
        loop_config,
        name,
        [TuneReportCallback()],
        checkpoints_to_keep=checkpoints_to_keep,
    ).fit()


__all__ = ["LoopContext", "TrainWorker", "TuneProcess", "run_loop"]
