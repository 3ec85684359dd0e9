"""Where a sweep keeps its state: Tune's experiment folder and each trial's Train run, on a local folder or S3.

    <root>/<sweep>/                 Tune experiment state, searcher state (with the Optuna study)
    <root>/<sweep>/train/trial-<id>/ the trial's Ray Train run and its checkpoints
"""

from __future__ import annotations

import functools
import os

import pyarrow.fs as pafs

from adin_core.data.storage import Location, StorageError, resolve

__all__ = ["StorageError", "checkpoint_uri", "location", "tune_storage", "train_storage"]


@functools.lru_cache(maxsize=32)
def location(uri: str, retry_budget_s: float | None = None) -> Location:
    """A storage URI resolved once per process: each S3 resolve checks the endpoint and the bucket (requests), and
    the driver names its storage in several places."""
    return resolve(uri, retry_budget_s)


def _fs_and_path(loc: Location) -> tuple[str, pafs.FileSystem | None]:
    if isinstance(loc.fs, pafs.LocalFileSystem):
        return loc.path, None
    return loc.path, loc.fs


def tune_storage(root: str, retry_budget_s: float | None = None) -> tuple[str, pafs.FileSystem | None]:
    """(storage_path, storage_filesystem) for tune.RunConfig; the experiment name is the sweep name.

    Ray writes its own state (experiment state, Train's checkpoint-manager snapshot) through this filesystem
    and does not retry, so for S3 the filesystem itself retries for about `retry_budget_s`.
    """
    loc = location(root, retry_budget_s)
    if isinstance(loc.fs, pafs.LocalFileSystem):
        os.makedirs(loc.path, exist_ok=True)
    return _fs_and_path(loc)


def train_storage(root: str, sweep: str, retry_budget_s: float | None = None) -> tuple[str, pafs.FileSystem | None]:
    """(storage_path, storage_filesystem) for the trials' ray.train.RunConfig (retrying like tune_storage's)."""
    return _fs_and_path(location(root, retry_budget_s).join(sweep, "train"))


def checkpoint_uri(path: str, storage_root: str) -> str:
    """A Train checkpoint's path (as Ray reports it: bucket/key for S3, absolute for local) as a full URI."""
    return "s3://" + path if storage_root.startswith("s3://") and not path.startswith("s3://") else path
