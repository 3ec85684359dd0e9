"""Where a sweep keeps everything, in one object: the `SweepLayout`, resolved once from the plan and handed to
every worker with it (as Ray's `StorageContext` is the one source of truth for a run's paths).

    <storage>/<sweep>/sweep.json                    the first run's space file, its digest and overrides (--resume)
    <storage>/<sweep>/                              Tune's experiment of the search (its state, the searcher's)
    <storage>/<sweep>/run_trial_<id>_.../           each trial's Tune folder; a one-worker trial's checkpoints
    <storage>/<sweep>/train/trial-<id>/             a trial's Ray Train run and its checkpoints (several workers)
    <storage>/<sweep>/pretrained/<key>/seed-<s>/    shared pretraining (orchestrator.pretraining)
    <storage>/<sweep>/pretrain-<stage>-<time>/      the Tune experiments of the pretraining stages
    <storage>/<sweep>/verify-r<round>/              the verification's rounds

`<storage>` is a local folder or `s3://bucket/prefix`. Two filesystems serve it: `fs`, which fails fast (the
project's own reads and writes retry with backoff and record it: orchestrator.retry), and `patient_fs`, whose SDK
retries span the retry budget, for Ray's own writes of its state, which do not retry.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass

import pyarrow.fs as pafs

from adin_core.data.storage import Location, StorageError, resolve

SWEEP_FILE = "sweep.json"
TRAIN = "train"
PRETRAINED = "pretrained"

__all__ = ["PRETRAINED", "SWEEP_FILE", "StorageError", "SweepLayout", "location"]


@functools.lru_cache(maxsize=32)
def location(uri: str) -> Location:
    """A storage URI resolved once per process (an S3 resolve checks the endpoint and the bucket: requests)."""
    return resolve(uri)


@functools.lru_cache(maxsize=32)
def _patient(uri: str, retry_budget_s: float) -> Location:
    return resolve(uri, retry_budget_s)


@dataclass(frozen=True)
class SweepLayout:
    storage: str  # the storage root, absolute (a folder or s3://bucket/prefix)
    sweep: str
    retry_budget_s: float = 300.0

    @property
    def uri(self) -> str:
        return f"{self.storage.rstrip('/')}/{self.sweep}"

    @property
    def root(self) -> Location:
        return location(self.storage)

    @property
    def folder(self) -> Location:
        return self.root.join(self.sweep)

    @property
    def sweep_file(self) -> Location:
        return self.folder.join(SWEEP_FILE)

    def pretrained(self, key: str, seed: int) -> Location:
        return self.folder.join(PRETRAINED, key, f"seed-{seed}")

    def _ray(self, *parts: str) -> tuple[str, pafs.FileSystem | None]:
        """(storage_path, storage_filesystem) as Ray's RunConfigs take them: a local path and None, or a bucket path
        and the patient S3 filesystem."""
        loc = _patient(self.storage, self.retry_budget_s).join(*parts)
        if isinstance(loc.fs, pafs.LocalFileSystem):
            os.makedirs(loc.path, exist_ok=True)
            return loc.path, None
        return loc.path, loc.fs

    def search_experiment(self) -> tuple[str, pafs.FileSystem | None, str]:
        """(storage_path, storage_filesystem, name) of the search's Tune experiment: named after the sweep."""
        path, fs = self._ray()
        return path, fs, self.sweep

    def sweep_experiment(self, name: str) -> tuple[str, pafs.FileSystem | None, str]:
        """(storage_path, storage_filesystem, name) of one of the sweep's own Tune experiments (a verification
        round, a pretraining stage), inside the sweep's folder."""
        path, fs = self._ray(self.sweep)
        return path, fs, name

    def experiment_path(self, path: str, fs: pafs.FileSystem | None, name: str) -> str:
        """The path Tune's `can_restore` and `Tuner.restore` take for an experiment."""
        return os.path.join(path, name) if fs is None else f"{path}/{name}"

    def train_runs(self) -> tuple[str, pafs.FileSystem | None]:
        """(storage_path, storage_filesystem) of the trials' and the pretraining's Ray Train runs."""
        return self._ray(self.sweep, TRAIN)

    def checkpoint_uri(self, path: str) -> str:
        """A Train checkpoint's path, as Ray reports it (bucket/key on S3, absolute on disk), as a full URI."""
        return "s3://" + path if self.storage.startswith("s3://") and not path.startswith("s3://") else path
