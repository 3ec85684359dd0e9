"""Versioned Parquet shards of a ReID dataset on any pyarrow filesystem (local folder or S3-API bucket).

    <root>/<dataset>/<version>/<split>/part-NNNNN-<run id>.parquet
    <root>/<dataset>/<version>/manifest.json      (written last)

Columns: `image` (the original encoded bytes), `pid`, `camid`, `timeperiod` (nullable), `frame` (nullable),
`split`, `source_path`. The manifest holds the schema version, counts, identities and cameras per split, the
nuisance priors of the training split per label kind, and each file's sha256. A dataset without a manifest does
not exist: an interrupted run leaves none, and readers refuse it. Every image is decoded once while sharding,
so a corrupt file is reported by name before it can reach a training run.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import io
import json
import os
import uuid
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Callable, Iterable

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from adin_core.data.layouts import ImageRecord
from adin_core.data.memory import EncodedImages, EvalTarget, ReIDArrays, TrainingData, decode_image, hold_out_indices
from adin_core.data.storage import Location, StorageUnavailable, resolve
from adin_core.nuisance import LABEL_KINDS, NuisanceError, NuisanceLabeler

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
MANIFEST_KEYS = ("dataset", "version", "format", "splits", "priors")
SCHEMA = pa.schema(
    [
        ("image", pa.binary()),
        ("pid", pa.int64()),
        ("camid", pa.int64()),
        ("timeperiod", pa.int64()),
        ("frame", pa.int64()),
        ("split", pa.string()),
        ("source_path", pa.string()),
    ]
)


class ShardError(RuntimeError):
    """A shard set that is missing, incomplete, corrupt or would be overwritten; the message names the file."""


# ------------------------------------------------------------------------------------------------------------
# writing
# ------------------------------------------------------------------------------------------------------------
def hold_out_val(records: list[ImageRecord], seed: int = 0) -> list[ImageRecord]:
    """For layouts without a validation list: one training image per identity (with >= 2 images) becomes `val`."""
    if any(r.split == "val" for r in records):
        return records
    train = [i for i, r in enumerate(records) if r.split == "train"]
    chosen = {train[j] for j in hold_out_indices(np.array([records[i].pid for i in train]), seed)}
    return [r.with_split("val") if i in chosen else r for i, r in enumerate(records)]


def nuisance_priors(records: Iterable[ImageRecord]) -> dict[str, dict[str, Any]]:
    """CaNE's p_k per label kind, from the training split; kinds the data cannot provide are left out."""
    records = list(records)
    train = [r for r in records if r.split == "train"]
    if not train:  # a test-only dataset (a direct-transfer target): nothing to calibrate with
        return {}
    camids = np.array([r.camid for r in train])
    periods = np.array([-1 if r.timeperiod is None else r.timeperiod for r in train])
    seen = [r for r in records if r.split in ("train", "val")]  # the classes, as TrainingData forms them
    has_time = all(r.timeperiod is not None for r in seen)
    labeler = NuisanceLabeler.from_arrays(np.array([r.camid for r in seen]), np.zeros(1) if has_time else None)
    out = {}
    for kind in LABEL_KINDS:
        try:
            prior = labeler.prior(kind, camids, periods)
        except NuisanceError:
            continue
        out[kind] = {"num_classes": len(prior), "prior": [float(p) for p in prior]}
    return out


def _split_summary(records: list[ImageRecord]) -> dict[str, Any]:
    return {
        "images": len(records),
        "identities": len({r.pid for r in records}),
        "pids": sorted({r.pid for r in records}),
        "cameras": sorted({r.camid for r in records}),
    }


def _read_and_check(rec: ImageRecord) -> bytes:
    if rec.data is not None:
        blob = rec.data
    else:
        try:
            with open(rec.path, "rb") as fh:
                blob = fh.read()
        except OSError as exc:
            raise ShardError(f"cannot read image {rec.path}: {exc}") from None
    decode_image(blob, None, rec.path)  # raises ImageDecodeError naming the file
    return blob


def check_destination(dest: str, dataset: str, version: str, *, overwrite: bool) -> Location:
    """The version folder to write, refusing (before any work) to replace a complete version unasked."""
    for name, value in (("dataset", dataset), ("version", version)):
        if not value or "/" in value or value.startswith("."):
            raise ShardError(f"{name} {value!r} must be a plain name (no '/')")
    base = resolve(dest)
    if isinstance(base.fs, pafs.LocalFileSystem) and os.path.isfile(base.path):
        raise ShardError(f"--dest {dest} is a file; give a folder (or s3://bucket/prefix) to write datasets under")
    root = base.join(dataset, version)
    manifest_loc = root.join(MANIFEST)
    if manifest_loc.exists() and not overwrite:
        raise ShardError(
            f"{manifest_loc.uri} already exists: dataset {dataset} version {version} is complete; "
            "pass --overwrite to replace it, or choose another --version"
        )
    return root


def write_shards(
    records: list[ImageRecord],
    dest: str,
    dataset: str,
    version: str,
    *,
    fmt: str,
    overwrite: bool = False,
    rows_per_file: int = 2000,
    source: str = "",
    progress: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Write records as Parquet shards plus manifest under <dest>/<dataset>/<version>; returns the manifest.

    Commit protocol: part files carry this run's id, so they never replace files a manifest lists; the manifest
    is written last and is the commit. Only after it are files deleted: those the replaced manifest listed, and
    unlisted parts older than `ORPHAN_AGE_S` (an interrupted run's; a younger one may be another writer's, still
    working). Without `overwrite`, a version another run completed meanwhile is not replaced: this run's parts
    are removed and ShardError says so. A failure at any point leaves the stored version as it was.
    """
    if not records:
        raise ShardError("no records to shard")
    root = check_destination(dest, dataset, version, overwrite=overwrite)
    manifest_loc = root.join(MANIFEST)
    run_id = uuid.uuid4().hex[:8]
    records = hold_out_val(records)
    by_split: dict[str, list[ImageRecord]] = defaultdict(list)
    for r in records:
        by_split[r.split].append(r)
    files: dict[str, list[dict[str, Any]]] = defaultdict(list)
    try:
        _write_parts(root, by_split, run_id, source, files, rows_per_file, progress)
    except BaseException:
        _delete_run_parts(root, run_id)
        raise
    manifest = {
        "schema_version": SCHEMA_VERSION,
        "dataset": dataset,
        "version": version,
        "format": fmt,
        "created_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "source": source,
        "validation": "list_val" if fmt == "msmt17" else "one held-out training image per identity (seed 0)",
        "splits": {s: {**_split_summary(rs), "files": files[s]} for s, rs in sorted(by_split.items())},
        "has_time": all(r.timeperiod is not None for r in by_split.get("train", [])),
        "priors": nuisance_priors(records),
    }
    replaced = _replaced_files(manifest_loc) if overwrite else set()
    data = json.dumps(manifest, indent=1).encode()
    if overwrite:
        manifest_loc.write_bytes_atomic(data)
    elif not manifest_loc.write_bytes_if_absent(data):
        _delete_run_parts(root, run_id)
        raise ShardError(
            f"{manifest_loc.uri} was completed by another run while this one was writing; it is kept "
            "as that run wrote it (pass --overwrite to replace it)"
        )
    _delete_stale(root, replaced, set(listed_files(manifest)))
    return manifest


ORPHAN_AGE_S = 3600.0


def _write_parts(
    root: Location,
    by_split: dict[str, list[ImageRecord]],
    run_id: str,
    source: str,
    files: dict[str, list[dict[str, Any]]],
    rows_per_file: int,
    progress: Callable[[int], None] | None,
) -> None:
    for split in sorted(by_split):
        recs = by_split[split]
        for part, start in enumerate(range(0, len(recs), rows_per_file)):
            chunk = recs[start : start + rows_per_file]
            blobs = []
            for r in chunk:
                blobs.append(_read_and_check(r))
                if progress:
                    progress(1)
            table = pa.table(
                {
                    "image": pa.array(blobs, pa.binary()),
                    "pid": pa.array([r.pid for r in chunk], pa.int64()),
                    "camid": pa.array([r.camid for r in chunk], pa.int64()),
                    "timeperiod": pa.array([r.timeperiod for r in chunk], pa.int64()),
                    "frame": pa.array([r.frame for r in chunk], pa.int64()),
                    "split": pa.array([split] * len(chunk), pa.string()),
                    "source_path": pa.array([os.path.relpath(r.path, source) if source else r.path for r in chunk]),
                },
                schema=SCHEMA,
            )
            buf = io.BytesIO()
            pq.write_table(table, buf, row_group_size=256, compression="none")  # JPEG bytes do not compress
            data = buf.getvalue()
            rel = f"{split}/part-{part:05d}-{run_id}.parquet"
            root.join(rel).write_bytes_atomic(data)
            files[split].append(
                {"path": rel, "rows": len(chunk), "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
            )


def listed_files(manifest: dict[str, Any]) -> dict[str, str]:
    """path -> sha256 of every part a manifest lists."""
    return {f["path"]: f["sha256"] for s in manifest["splits"].values() for f in s["files"]}


def _replaced_files(manifest_loc: Location) -> set[str]:
    """The parts the manifest about to be replaced lists (none when there is none, or it is unreadable)."""
    try:
        return set(listed_files(json.loads(manifest_loc.read_bytes())))
    except (FileNotFoundError, ValueError, KeyError, TypeError):
        return set()


def _part_files(root: Location) -> list[pafs.FileInfo]:
    selector = pafs.FileSelector(root.path, recursive=True, allow_not_found=True)
    return [i for i in root.fs.get_file_info(selector) if i.type == pafs.FileType.File and i.base_name != MANIFEST]


def _delete_run_parts(root: Location, run_id: str) -> None:
    """A failed or losing write takes back its own parts, and on a local disk the folders it left empty."""
    for info in _part_files(root):
        if info.base_name.endswith(f"-{run_id}.parquet"):
            root.fs.delete_file(info.path)
    if isinstance(root.fs, pafs.LocalFileSystem) and os.path.isdir(root.path):
        for folder, _, _ in sorted(os.walk(root.path), key=lambda w: -len(w[0])):  # deepest first
            if not os.listdir(folder):
                os.rmdir(folder)
        parent = os.path.dirname(root.path)  # <root>/<dataset>: this run may have made it too
        if os.path.isdir(parent) and not os.listdir(parent):
            os.rmdir(parent)


def _delete_stale(root: Location, replaced: set[str], keep: set[str]) -> None:
    """Delete the replaced version's parts and old orphans; never a part another writer may still commit."""
    now = _dt.datetime.now(_dt.timezone.utc)
    for info in _part_files(root):
        rel = info.path[len(root.path.rstrip("/")) + 1 :]
        if rel in keep:
            continue
        mtime = info.mtime
        old = mtime is not None and (now - mtime.astimezone(_dt.timezone.utc)).total_seconds() > ORPHAN_AGE_S
        if rel in replaced or old:
            root.fs.delete_file(info.path)


# ------------------------------------------------------------------------------------------------------------
# reading
# ------------------------------------------------------------------------------------------------------------
@dataclass
class ShardSet:
    """One complete, verified dataset version."""

    location: Location
    manifest: dict[str, Any]

    @classmethod
    def open(cls, uri: str) -> "ShardSet":
        """`uri` names a version folder (<root>/<dataset>/<version>)."""
        loc = resolve(uri)
        mloc = loc.join(MANIFEST)
        try:
            raw = mloc.read_bytes()
        except FileNotFoundError:
            hint = " (the folder exists: an interrupted shard run?)" if loc.exists() else ""
            raise ShardError(f"no {MANIFEST} at {mloc.uri}: not a complete dataset{hint}") from None
        except OSError as exc:
            raise StorageUnavailable(f"cannot read {mloc.uri}: {exc}") from None
        try:
            manifest = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ShardError(f"{mloc.uri} is not valid JSON: {exc}") from None
        if not isinstance(manifest, dict):
            raise ShardError(f"{mloc.uri} is not a manifest (a JSON object), it holds a {type(manifest).__name__}")
        if manifest.get("schema_version") != SCHEMA_VERSION:
            raise ShardError(
                f"{mloc.uri}: schema_version {manifest.get('schema_version')!r} is not "
                f"{SCHEMA_VERSION}; re-shard with this version of the code"
            )
        missing = [k for k in MANIFEST_KEYS if k not in manifest]
        if missing or not isinstance(manifest["splits"], dict):
            raise ShardError(
                f"{mloc.uri}: not a complete manifest (missing {missing or ['splits as a mapping']}); "
                "re-shard the dataset"
            )
        return cls(loc, manifest)

    @property
    def name(self) -> str:
        return f"{self.manifest['dataset']}/{self.manifest['version']}"

    @property
    def splits(self) -> list[str]:
        return sorted(self.manifest["splits"])

    def table(self, split: str, columns: list[str] | None = None) -> pa.Table:
        """A split's rows, each file checked against its sha256 in the manifest before use."""
        if split not in self.manifest["splits"]:
            raise ShardError(f"{self.location.uri} has no split {split!r}; it has {self.splits}")
        tables = []
        for f in self.manifest["splits"][split]["files"]:
            loc = self.location.join(f["path"])
            try:
                data = loc.read_bytes()
            except FileNotFoundError:
                raise ShardError(f"{loc.uri} is listed in the manifest but missing") from None
            digest = hashlib.sha256(data).hexdigest()
            if digest != f["sha256"]:
                raise ShardError(
                    f"{loc.uri}: sha256 {digest[:16]}... differs from the manifest's "
                    f"{f['sha256'][:16]}...: the shard is corrupt or was changed"
                )
            tables.append(pq.read_table(pa.BufferReader(data), columns=columns))
        return pa.concat_tables(tables)

    def arrays(self, split: str, image_size: tuple[int, int]) -> ReIDArrays:
        """A split with its images kept encoded, decoded on demand at `image_size` (H, W)."""
        t = self.table(split)
        periods = t.column("timeperiod").fill_null(-1).to_numpy()
        images = EncodedImages(
            t.column("image").to_pylist(), image_size, [f"{self.name}:{p}" for p in t.column("source_path").to_pylist()]
        )
        return ReIDArrays(images, t.column("pid").to_numpy(), t.column("camid").to_numpy(), periods)

    def training_data(self, nuisance: str, image_size: tuple[int, int]) -> TrainingData:
        return TrainingData(self.arrays("train", image_size), self.arrays("val", image_size), nuisance, name=self.name)

    def eval_target(self, image_size: tuple[int, int], split: str | None = None, name: str | None = None) -> EvalTarget:
        """The test split as a direct-transfer target: query + gallery, or (VehicleID) one test list, which the
        VehicleID protocol splits itself. `split` picks the list (default: test800... the smallest present).
        `name` keys its metrics (default: the dataset's name, plus the list for VehicleID)."""
        name = name or self.manifest["dataset"]
        if "query" in self.manifest["splits"] and split in (None, "query"):
            return EvalTarget(name, self.arrays("query", image_size), self.arrays("gallery", image_size))
        lists = sorted((s for s in self.splits if s.startswith("test")), key=lambda s: int(s[4:]))
        chosen = split or (lists[0] if lists else None)
        if chosen is None or chosen not in self.manifest["splits"]:
            raise ShardError(f"{self.location.uri} has no test split {split!r}; it has {self.splits}")
        return EvalTarget(f"{name}.{chosen}", self.arrays(chosen, image_size), None)

    def file_hashes(self) -> dict[str, str]:
        return listed_files(self.manifest)


__all__ = ["ShardSet", "ShardError", "write_shards", "hold_out_val", "nuisance_priors", "SCHEMA", "MANIFEST"]
