"""Everything a sweep needs, resolved and checked before Ray starts: the `SweepPlan`.

The search space (with the command line's overrides), the sweep's name, one storage location, the tracking URI
and every dataset URI, all absolute, so that a trial (running in Ray's own working folder), a resumed sweep and a
Ray job on another machine's working folder all mean the same places. Trials receive the plan and nothing else.

What can be wrong with the input is found here, each with one line naming the flag, file or key and what is
allowed: `PlanError` (a SpaceError). A resumed sweep replays the overrides its first run was given (stored with
the sweep as `sweep.json`) and refuses different ones, so `--resume` cannot silently change the experiment.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import secrets
from dataclasses import dataclass, field
from typing import Any, Mapping

import optuna
import pyarrow.fs as pafs
from optuna.storages.journal import JournalFileBackend

from adin_core.data.datasets import is_synthetic, resolve_dataset
from adin_core.data.layouts import LayoutError
from adin_core.data.shards import ShardError, ShardSet
from adin_core.data.storage import StorageError
from adin_core.nuisance import heads_for
from orchestrator.layout import SWEEP_FILE, SweepLayout, location
from orchestrator.net import ray_address_problem
from orchestrator.space import NAME, SearchSpace, SpaceError, load_space
from orchestrator.tracking.store import DEFAULT_TRACKING_URI, TrackingError, absolute_tracking_uri, check_tracking_uri

DEFAULT_STORAGE = "runs/sweeps"  # the embedded defaults: everything of the main job under ./runs
DEFAULT_DATA_ROOT = "runs/data"
# command-line flags that change the experiment (replayed by --resume): flag -> (space key, parse)
EXPERIMENT_FLAGS: dict[str, str] = {
    "--source": "source",
    "--select": "targets.select",
    "--report": "targets.report",
    "--workers": "resources.workers",
    "--cpus-per-worker": "resources.cpus_per_worker",
    "--gpus-per-worker": "resources.gpus_per_worker",
    "--num-samples": "search.num_samples",
    "--max-concurrent": "search.max_concurrent",
    "--epochs": "training.epochs",
    "--scheduler": "scheduler",
    "--seeds": "search.seeds",
    "--verify-seeds": "verify.seeds",
}


class PlanError(SpaceError):
    """The input cannot make a sweep; the message names the flag, file or key."""


@dataclass(frozen=True)
class Target:
    uri: str  # a shard set, absolute
    name: str  # the <target> of select/<target>/<metric>: its dataset's name, with the version if two share it


@dataclass(frozen=True)
class SweepPlan:
    space: SearchSpace
    sweep: str
    resume: bool
    storage: str  # the sweep storage root, absolute (a folder or s3://bucket/prefix)
    data_root: str
    tracking_uri: str
    study_storage: str  # where the Optuna study of record lives (an SQLAlchemy URL or a journal file)
    source: str  # shard-set URIs, absolute
    select: tuple[Target, ...]
    report: tuple[Target, ...]
    data_versions: Mapping[str, Mapping[str, Any]]  # URI -> dataset, version, manifest file hashes
    overrides: Mapping[str, Any]  # the experiment flags in force (given now, or replayed on --resume)
    retry_budget_s: float
    ray_address: str | None = None
    quiet: bool = False
    wait_for_resources: bool = False
    space_file: str = ""
    places: Mapping[str, str] = field(default_factory=dict)  # the stores given other than by default: flag -> value

    @property
    def layout(self) -> SweepLayout:
        """Where everything of the sweep lives (orchestrator.layout)."""
        return SweepLayout(self.storage, self.sweep, self.retry_budget_s)

    @property
    def sweep_uri(self) -> str:
        return self.layout.uri

    def resume_command(self) -> str:
        """The command that continues this sweep: its space and name, and every store it was not given by default
        (storage, data root, tracking and study storage, the Ray address), so it finds the same places; the
        experiment flags are replayed from sweep.json."""
        return " ".join(
            [
                f"python -m orchestrator.sweep --space {self.space_file} --resume {self.sweep}",
                *[f"{flag} {value}" for flag, value in self.places.items()],
            ]
        )


def absolute(uri: str) -> str:
    """Local paths become absolute; URIs with a scheme (s3://, synthetic:) are kept."""
    if "://" in uri or is_synthetic(uri):
        return uri
    return os.path.abspath(os.path.expanduser(uri[len("file://") :] if uri.startswith("file://") else uri))


def _writable_folder(uri: str, flag: str) -> str:
    """An absolute local folder that exists (made now) and can be written, or an s3:// root that answers."""
    uri = absolute(uri)
    if uri.startswith("s3://"):
        location(uri)  # credentials, endpoint, bucket: StorageError names the setting
        return uri
    if os.path.exists(uri) and not os.path.isdir(uri):
        raise PlanError(f"{flag} {uri} is a file; give a folder")
    try:
        os.makedirs(uri, exist_ok=True)
    except OSError as exc:
        raise PlanError(f"{flag} {uri} cannot be created: {exc.strerror or exc}") from None
    if not os.access(uri, os.W_OK):
        raise PlanError(f"{flag} {uri} is not writable")
    return uri


def default_study_storage(tracking_uri: str) -> str:
    """Beside an SQLite tracking database (runs/optuna.db by default), else ./runs/optuna.db."""
    if tracking_uri.startswith("sqlite:///"):
        return "sqlite:///" + os.path.join(os.path.dirname(tracking_uri[len("sqlite:///") :]), "optuna.db")
    return "sqlite:///" + os.path.abspath(os.path.join("runs", "optuna.db"))


def open_study_storage(url: str):
    """An Optuna storage: an SQLAlchemy URL (sqlite:///, postgresql://, mysql://) or a journal file (a path ending
    in .log or .journal); opened (tables created) now, so a wrong URL fails before any work."""
    try:
        if "://" not in url:
            if not url.endswith((".log", ".journal")):
                raise PlanError(
                    f"--study-storage {url!r}: give an SQLAlchemy URL (sqlite:///FILE, postgresql://...) or a "
                    "journal file path ending in .log or .journal"
                )
            path = os.path.abspath(url)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            _check_journal(url, path)
            storage = optuna.storages.JournalStorage(JournalFileBackend(path))
            storage.get_all_studies()  # reads the journal now: a damaged file fails here, not inside the sweep
            return storage
        if url.startswith("sqlite:///"):
            os.makedirs(os.path.dirname(os.path.abspath(url[len("sqlite:///") :])) or ".", exist_ok=True)
        return optuna.storages.RDBStorage(url, engine_kwargs={"pool_pre_ping": True})
    except PlanError:
        raise
    except Exception as exc:  # SQLAlchemy, driver and file errors alike: the user's URL does not open
        hint = (
            "; name the installed driver: postgresql+psycopg2://..."
            if isinstance(exc, ModuleNotFoundError) and url.startswith("postgresql://")
            else ""
        )
        raise PlanError(
            f"--study-storage {url}: cannot open it ({type(exc).__name__}: {str(exc)[:200]}){hint}"
        ) from None


def _check_journal(url: str, path: str) -> None:
    """An existing journal file must be one: whole lines of JSON. Optuna skips a line it cannot parse as one still
    being written, and then fails deep inside the sweep when the study it just created is not found."""
    if not os.path.isfile(path) or os.path.getsize(path) == 0:
        return
    with open(path, "rb") as fh:
        data = fh.read()
    lines = data.split(b"\n")
    for number, line in enumerate(lines, 1):
        try:
            ok = not line or isinstance(json.loads(line), dict)
        except ValueError:
            ok = False
        if not ok or (number == len(lines) and line):
            raise PlanError(
                f"--study-storage {url}: line {number} of {path} is not an Optuna journal entry; give "
                "another journal file (or move this one away)"
            )


def _overrides(args: Any) -> dict[str, Any]:
    """The experiment flags given on this command line, as flag -> value."""
    out = {}
    for flag in EXPERIMENT_FLAGS:
        value = getattr(args, flag[2:].replace("-", "_"))
        if value is not None:
            out[flag] = value
    return out


def _space_changes(space: SearchSpace, overrides: Mapping[str, Any]) -> dict[str, tuple[str, Any]]:
    changes: dict[str, tuple[str, Any]] = {}
    for flag, value in overrides.items():
        key = EXPERIMENT_FLAGS[flag]
        if flag in ("--select", "--report"):
            value = [v.strip() for v in str(value).split(",") if v.strip()]
        if flag == "--scheduler":
            if value == space.scheduler.type:
                continue
            value = {"type": value}
        changes[key] = (flag, value)
    return changes


def check_sweep_name(flag: str, name: str) -> str:
    """A sweep's name is a folder under the storage and part of URIs: ASCII letters, digits, '-' and '_' only, so
    it can never reach outside the storage (`--resume ../../x`)."""
    if not NAME.match(name):
        raise PlanError(f"{flag} {name!r}: a sweep name uses ASCII letters, digits, '-' and '_' only")
    return name


def space_digest(path: str) -> str:
    """sha256 of the space file as it is now: a resumed sweep must search the space it started with."""
    with open(path, "rb") as fh:
        return hashlib.sha256(fh.read()).hexdigest()


def new_sweep_name(space: SearchSpace, name: str | None) -> str:
    if name is not None:
        return check_sweep_name("--name", name)
    # the random part keeps two sweeps started in the same second (same storage) apart
    return f"{space.name}-{_dt.datetime.now(_dt.timezone.utc):%Y%m%d-%H%M%S}-{secrets.token_hex(2)}"


def latest_sweep(storage: str, space_name: str) -> str:
    root = location(storage)
    infos = root.fs.get_file_info(pafs.FileSelector(root.path, allow_not_found=True))
    names = sorted(
        i.base_name
        for i in infos
        if i.type == pafs.FileType.Directory
        and i.base_name.startswith(space_name + "-")
        and root.join(i.base_name, SWEEP_FILE).exists()
    )
    if not names:
        raise PlanError(f"--resume: no sweep of space {space_name!r} under {root.uri}")
    return names[-1]


def read_sweep_file(storage: str, sweep: str) -> dict[str, Any]:
    loc = SweepLayout(storage, sweep).sweep_file
    try:
        return json.loads(loc.read_bytes())
    except FileNotFoundError:
        raise PlanError(f"--resume {sweep}: no sweep of that name under {storage} (no {loc.uri})") from None
    except ValueError as exc:
        raise PlanError(f"--resume {sweep}: {loc.uri} is not valid JSON: {exc}") from None


def write_sweep_file(plan: SweepPlan) -> None:
    """Written once, before Ray starts: what --resume replays."""
    record = {
        "sweep": plan.sweep,
        "space_file": plan.space_file,
        "space": plan.space.name,
        "space_sha256": space_digest(plan.space_file),
        "overrides": dict(plan.overrides),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    plan.layout.sweep_file.write_bytes_atomic(json.dumps(record, indent=1).encode())


def _targets(uris: tuple[str, ...], shards: dict[str, ShardSet], taken: set[str]) -> tuple[Target, ...]:
    out = []
    for uri in uris:
        m = shards[uri].manifest
        name = m["dataset"] if m["dataset"] not in taken else f"{m['dataset']}.{m['version']}"
        if name in taken:
            raise PlanError(f"targets: {uri} is listed twice")
        taken.add(name)
        out.append(Target(uri, name))
    return tuple(out)


def check_nuisance_labels(space: SearchSpace, source: ShardSet) -> None:
    """Every `nuisance` value the space can produce must be a label kind the source provides; read from the
    manifest, so no data is read before the sweep starts."""
    searched = next((p for p in space.params if p.name == "nuisance"), None)
    values = list(searched.choices) if searched else [space.train_config({}).nuisance]
    available = set(source.manifest["priors"])
    for value in values:
        missing = [k for k in heads_for(value) if k not in available]
        if missing:
            raise PlanError(
                f"{space.path}: nuisance {value!r} needs label kind(s) {missing}, which source "
                f"{source.name} does not provide (it has {sorted(available) or 'none'})"
            )


def make_plan(args: Any) -> SweepPlan:
    """Validate the command line, the space file, the stores and the datasets; raise PlanError (or StorageError,
    TrackingError, ShardError, LayoutError) with one line saying what is wrong. Nothing here starts Ray."""
    if args.retry_budget < 0:
        raise PlanError(f"--retry-budget must be >= 0 seconds, got {args.retry_budget:g}")
    space = load_space(args.space)
    if args.ray_address:
        problem = ray_address_problem(args.ray_address)
        if problem:
            raise PlanError(f"--ray-address {args.ray_address}: {problem}")
    storage = _writable_folder(args.storage, "--storage")
    data_root = _writable_folder(args.data_root, "--data-root")
    tracking_uri = absolute_tracking_uri(args.tracking_uri)
    check_tracking_uri(tracking_uri)
    study_storage = _study_storage(args.study_storage, tracking_uri)
    given = _overrides(args)
    if args.resume is not None:
        sweep, overrides = _resumed_sweep(args, space, storage, given)
    else:
        sweep, overrides = _new_sweep(args.name, space, storage), given
    space = space.with_overrides(_space_changes(space, overrides)) if overrides else space
    source, select, report, versions = _datasets(args.space, space, data_root)
    places = {
        "--storage": (storage, os.path.abspath(DEFAULT_STORAGE)),
        "--data-root": (data_root, os.path.abspath(DEFAULT_DATA_ROOT)),
        "--tracking-uri": (tracking_uri, absolute_tracking_uri(DEFAULT_TRACKING_URI)),
        "--study-storage": (study_storage, default_study_storage(tracking_uri)),
        "--ray-address": (args.ray_address, os.environ.get("RAY_ADDRESS")),
    }  # a job's own: not restated
    return SweepPlan(
        space=space,
        sweep=sweep,
        resume=args.resume is not None,
        storage=storage,
        data_root=data_root,
        tracking_uri=tracking_uri,
        study_storage=study_storage,
        source=source,
        select=select,
        report=report,
        data_versions=versions,
        overrides=overrides,
        retry_budget_s=args.retry_budget,
        ray_address=args.ray_address,
        quiet=args.quiet,
        wait_for_resources=getattr(args, "wait_for_resources", False),
        space_file=args.space,
        places={flag: value for flag, (value, default) in places.items() if value and value != default},
    )


def _new_sweep(name: str | None, space: SearchSpace, storage: str) -> str:
    sweep = new_sweep_name(space, name)
    if location(storage).join(sweep).exists():
        raise PlanError(
            f"--name: sweep {sweep!r} already exists under {storage}; use --resume {sweep} to continue it, "
            "or another name"
        )
    return sweep


def _study_storage(given: str | None, tracking_uri: str) -> str:
    """The Optuna study's store, opened once here so an unreachable one fails before Ray starts."""
    study_storage = given or default_study_storage(tracking_uri)
    if "://" not in study_storage:
        study_storage = os.path.abspath(study_storage)
    elif study_storage.startswith("sqlite:///"):
        study_storage = absolute_tracking_uri(study_storage)  # the same rule: an absolute SQLite path
    open_study_storage(study_storage)
    return study_storage


def _resumed_sweep(args: Any, space: SearchSpace, storage: str, given: Mapping[str, Any]) -> tuple[str, dict]:
    """`--resume`: the sweep to continue and its first run's overrides, refused where the space file changed, a
    flag contradicts the first run, or Tune left nothing to restore."""
    if args.name:
        raise PlanError("--name and --resume: give the name to --resume")
    sweep = check_sweep_name("--resume", args.resume) if args.resume else latest_sweep(storage, space.name)
    stored = read_sweep_file(storage, sweep)
    if stored.get("space") != space.name:
        raise PlanError(
            f"--resume {sweep}: that sweep searched space {stored.get('space')!r}, not {space.name!r} ({args.space})"
        )
    if stored.get("space_sha256", space_digest(args.space)) != space_digest(args.space):
        raise PlanError(
            f"--resume {sweep}: {args.space} has changed since the sweep started (its sha256 differs "
            "from the one stored in sweep.json); restore the file, or start a new sweep"
        )
    replay = stored.get("overrides", {})
    conflicts = [
        f"{flag} {given[flag]!r} (the sweep ran with {replay.get(flag, 'the file')!r})"
        for flag in given
        if replay.get(flag) != given[flag]
    ]
    if conflicts:
        raise PlanError(
            f"--resume {sweep}: a resumed sweep keeps its first run's settings; drop " + ", ".join(conflicts)
        )
    from ray.tune import Tuner  # deferred on purpose: the workers and `orchestrator.best` import the plan without Ray

    layout = SweepLayout(storage, sweep, args.retry_budget)
    path, fs, name = layout.search_experiment()
    exp = layout.experiment_path(path, fs, name)
    if not Tuner.can_restore(exp, storage_filesystem=fs):
        raise PlanError(f"--resume {sweep}: no restorable sweep state at {exp} (did it start any trial?)")
    return sweep, dict(replay)


def _datasets(
    space_file: str, space: SearchSpace, data_root: str
) -> tuple[str, tuple[Target, ...], tuple[Target, ...], dict[str, dict]]:
    """Resolve and open every dataset the space names: the source, the select and report targets, and the
    versions (manifest and file hashes) a sweep records."""
    uris = [space.targets.source, *space.targets.select, *space.targets.report]
    resolved = {u: absolute(resolve_dataset(absolute(u), data_root)) for u in uris}
    shards = {resolved[u]: ShardSet.open(resolved[u]) for u in uris}
    source = resolved[space.targets.source]
    if source in [resolved[u] for u in space.targets.select + space.targets.report]:
        raise PlanError(
            f"targets: {space.targets.source} resolves to the source itself; direct transfer is scored "
            "on other datasets"
        )
    check_nuisance_labels(space, shards[source])
    taken: set[str] = set()
    select = _targets(tuple(resolved[u] for u in space.targets.select), shards, taken)
    report = _targets(tuple(resolved[u] for u in space.targets.report), shards, taken)
    metric = space.objective.metric
    if metric.startswith("select/") and metric.split("/")[1] not in {t.name for t in select}:
        raise PlanError(
            f"{space_file}: objective.metric {metric!r} names no select target; they are "
            f"{sorted(t.name for t in select)}"
        )
    versions = {
        u: {
            "dataset": s.manifest["dataset"],
            "version": s.manifest["version"],
            "files": dict(sorted(s.file_hashes().items())),
        }
        for u, s in shards.items()
    }
    return source, select, report, versions


PLAN_ERRORS = (SpaceError, StorageError, TrackingError, ShardError, LayoutError)

__all__ = ["PLAN_ERRORS", "PlanError", "SweepPlan", "Target", "make_plan", "open_study_storage", "write_sweep_file"]
