"""`python -m orchestrator.sweep --space search_spaces/X.yaml`: search ADIN's hyper-parameters with Ray Tune + Optuna.

Embedded defaults, no flags needed: a local Ray on 127.0.0.1, sweep storage in ./runs/sweeps, MLflow in
./runs/mlflow.db (SQLite), datasets in ./runs/data (the synthetic benchmark is generated and sharded there on
first use). Under `ray job submit` it joins that cluster (RAY_ADDRESS). Flags or environment choose others:

    --ray-address / RAY_ADDRESS     --storage / ADIN_STORAGE (a folder or s3://bucket/prefix)
    --tracking-uri / MLFLOW_TRACKING_URI     --data-root / ADIN_DATA_ROOT

Real data: override the dataset URIs and resources, e.g.
    --source s3://bucket/reid/msmt17/v1 --select s3://bucket/reid/market1501/v1 --report s3://bucket/reid/dukemtmc/v1
    --workers 4 --gpus-per-worker 1 --cpus-per-worker 8

`--resume [NAME]` continues an interrupted sweep (the latest of this space by default) to exactly the requested
number of trials; the searcher (with its Optuna study) is restored from the sweep's storage.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import secrets
import signal
import sys
import tempfile
import time
from typing import Any

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # keep a local cluster on loopback (DESIGN 3)
os.environ.setdefault("AWS_EC2_METADATA_DISABLED", "true")
os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
# Starting a trial's workers on a busy 2-core machine can take longer than Train's default 60 s.
os.environ.setdefault("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", "300")
# MLflow's own client retries for minutes per call; the sweep queues and retries tracking writes itself
# (orchestrator.tracking), so each call should fail fast instead of stalling Tune's loop.
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")

from adin_core.data.layouts import LayoutError  # noqa: E402
from adin_core.data.shards import ShardError, ShardSet  # noqa: E402
from adin_core.data.storage import StorageError  # noqa: E402
from orchestrator.space import SearchSpace, SpaceError, load_space  # noqa: E402
from orchestrator.tracking import TrackingError, check_tracking_uri  # noqa: E402
from orchestrator.progress import format_table  # noqa: E402

DEFAULT_STORAGE = "runs/sweeps"
DEFAULT_DATA_ROOT = "runs/data"
DEFAULT_TRACKING = "sqlite:///runs/mlflow.db"
FORWARDED_ENV = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                 "AWS_SESSION_TOKEN", "AWS_DEFAULT_REGION", "AWS_EC2_METADATA_DISABLED",
                 "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m orchestrator.sweep", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--space", required=True, help="search-space YAML file")
    ap.add_argument("--name", help="sweep name (default: <space name>-<UTC time>)")
    ap.add_argument("--resume", nargs="?", const="", default=None, metavar="NAME",
                    help="continue an interrupted sweep (default: the latest of this space)")
    ap.add_argument("--ray-address", default=os.environ.get("RAY_ADDRESS"))
    ap.add_argument("--storage", default=os.environ.get("ADIN_STORAGE", DEFAULT_STORAGE))
    ap.add_argument("--data-root", default=os.environ.get("ADIN_DATA_ROOT", DEFAULT_DATA_ROOT))
    ap.add_argument("--tracking-uri", default=os.environ.get("MLFLOW_TRACKING_URI", DEFAULT_TRACKING))
    ap.add_argument("--source")
    ap.add_argument("--select", help="comma-separated shard URIs")
    ap.add_argument("--report", help="comma-separated shard URIs")
    ap.add_argument("--workers", type=int)
    ap.add_argument("--cpus-per-worker", type=float)
    ap.add_argument("--gpus-per-worker", type=float)
    ap.add_argument("--num-samples", type=int)
    ap.add_argument("--max-concurrent", type=int)
    ap.add_argument("--epochs", type=float)
    ap.add_argument("--scheduler", choices=["asha", "none"],
                    help="early stopping: the space's ASHA settings (or defaults), or none (every trial runs out)")
    ap.add_argument("--retry-budget", type=float, default=float(os.environ.get("ADIN_RETRY_BUDGET_S", "300")),
                    metavar="SECONDS", help="how long a storage or tracking outage is waited out (with backoff) "
                    "before the trial or the write fails (default 300; ADIN_RETRY_BUDGET_S)")
    ap.add_argument("--quiet", action="store_true", help="no live trial table")
    return ap.parse_args(argv)


def apply_overrides(space: SearchSpace, args: argparse.Namespace) -> SearchSpace:
    split = lambda v: v.split(",") if v else None  # noqa: E731
    scheduler = None
    if args.scheduler and args.scheduler != space.scheduler["type"]:
        scheduler = {"type": args.scheduler}
    return space.with_overrides(**{
        "scheduler": scheduler,
        "source": args.source, "targets.select": split(args.select), "targets.report": split(args.report),
        "resources.workers": args.workers, "resources.cpus_per_worker": args.cpus_per_worker,
        "resources.gpus_per_worker": args.gpus_per_worker, "search.num_samples": args.num_samples,
        "search.max_concurrent": args.max_concurrent, "training.epochs": args.epochs})


# ------------------------------------------------------------------------------------------------------------
# ------------------------------------------------------------------------------------------------------------
def check_nuisance_labels(space: SearchSpace, source: ShardSet) -> None:
    """Every `nuisance` value the space can produce must be a label kind the source provides; read from the
    manifest, so no data is read before the sweep starts."""
    searched = next((p for p in space.params if p.name == "nuisance"), None)
    values = list(searched.choices) if searched else [space.train_config({}).nuisance]
    available = set(source.manifest["priors"])
    for value in values:
        missing = [k for k in value.split("+") if k not in available]
        if missing:
            raise SpaceError(f"{space.path}: nuisance {value!r} needs label kind(s) {missing}, which source "
                             f"{source.name} does not provide (it has {sorted(available) or 'none'})")


def latest_sweep(storage: str, space_name: str) -> str:
    from adin_core.data.storage import resolve
    import pyarrow.fs as pafs

    root = resolve(storage)
    infos = root.fs.get_file_info(pafs.FileSelector(root.path, allow_not_found=True))
    names = sorted(i.base_name for i in infos if i.type == pafs.FileType.Directory
                   and i.base_name.startswith(space_name + "-"))
    if not names:
        raise SpaceError(f"--resume: no sweep of space {space_name!r} under {root.uri}")
    return names[-1]


def build_tuner(space: SearchSpace, settings, sweep: str, storage: str, callbacks: list, resume: bool):
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.optuna import OptunaSearch

    from orchestrator.storage import tune_storage
    from orchestrator.trial import TRIAL_DRIVER_RESOURCES, run_trial

    trainable = tune.with_resources(tune.with_parameters(run_trial, settings=settings), TRIAL_DRIVER_RESOURCES)
    storage_path, storage_fs = tune_storage(storage, settings.retry_budget_s)
    if resume:
        path = (os.path.join(storage_path, sweep) if storage_fs is None else f"{storage_path}/{sweep}")
        if not tune.Tuner.can_restore(path, storage_filesystem=storage_fs):
            raise SpaceError(f"--resume: no restorable sweep state at {path}")
        return tune.Tuner.restore(path, trainable=trainable, resume_unfinished=True, resume_errored=True,
                                  storage_filesystem=storage_fs)
    searcher = OptunaSearch(space=space.define_by_run(), metric=space.metric, mode=space.mode,
                            sampler=space.make_sampler(), study_name=sweep)
    searcher = ConcurrencyLimiter(searcher, max_concurrent=space.max_concurrent)
    if space.scheduler["type"] == "asha":
        scheduler = ASHAScheduler(time_attr="training_iteration", max_t=space.scheduler["max_t"],
                                  grace_period=space.scheduler["grace_period"],
                                  reduction_factor=space.scheduler["reduction_factor"])
    else:
        scheduler = FIFOScheduler()
    return tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(search_alg=searcher, scheduler=scheduler, num_samples=space.num_samples,
                                    metric=space.metric, mode=space.mode),
        run_config=tune.RunConfig(name=sweep, storage_path=storage_path, storage_filesystem=storage_fs,
                                  callbacks=callbacks, verbose=0,
                                  failure_config=tune.FailureConfig(max_failures=1)),
    )


def leaderboard(results, space: SearchSpace) -> list[dict[str, Any]]:
    rows = []
    for r in results:
        m = r.metrics or {}
        rows.append({"trial": m.get("trial_id", r.path.rsplit("_", 1)[-1] if r.path else "?"),
                     "objective": m.get(space.metric), "evals": m.get("training_iteration", 0),
                     "status": "ERROR" if r.error else ("STOPPED" if not m.get("final") else "DONE"),
                     "config": {k: v for k, v in (r.config or {}).items() if not k.startswith("_")},
                     "checkpoint": m.get("checkpoint_path")})
    rows.sort(key=lambda x: (x["objective"] is None, -(x["objective"] or 0) if space.mode == "max"
                             else (x["objective"] or 0)))
    return rows


def study_from_results(space: SearchSpace, rows: list[dict[str, Any]]):
    """An Optuna study of the finished trials, for the plots (the searcher's own study lives in Tune's state)."""
    import optuna

    dists = {}
    for p in space.params:
        if p.type == "float":
            dists[p.name] = optuna.distributions.FloatDistribution(p.low, p.high, log=p.log, step=p.step)
        elif p.type == "int":
            dists[p.name] = optuna.distributions.IntDistribution(int(p.low), int(p.high), log=p.log,
                                                                 step=int(p.step or 1))
        else:
            dists[p.name] = optuna.distributions.CategoricalDistribution(list(p.choices))
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize" if space.mode == "max" else "minimize")
    for row in rows:
        if row["objective"] is None:
            continue
        params = {k: v for k, v in row["config"].items() if k in dists}
        study.add_trial(optuna.trial.create_trial(params=params, distributions={k: dists[k] for k in params},
                                                  value=row["objective"]))
    return study


def save_plots(study, out_dir: str) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna.visualization.matplotlib as vis

    import warnings

    import optuna

    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    warnings.filterwarnings("ignore", message="Some regimes for parameter", category=UserWarning)
    paths = []
    for name, fn in (("optimization_history", vis.plot_optimization_history),
                     ("param_importances", vis.plot_param_importances),
                     ("parallel_coordinate", vis.plot_parallel_coordinate)):
        try:
            fn(study)
        except (ValueError, RuntimeError, ZeroDivisionError) as exc:  # e.g. too few trials for importances
            print(f"  (no {name} plot: {exc})")
            continue
        path = os.path.join(out_dir, f"{name}.png")
        plt.gcf().set_size_inches(9, 5)
        plt.tight_layout()
        plt.savefig(path, dpi=90)
        plt.close("all")
        paths.append(path)
    return paths


# ------------------------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    t_start = time.perf_counter()
    # everything that can be wrong with the input is found here, before any Ray work
    try:
        if args.retry_budget < 0:
            raise SpaceError(f"--retry-budget must be >= 0 seconds, got {args.retry_budget:g}")
        space = apply_overrides(load_space(args.space), args)
        from orchestrator.storage import tune_storage

        tune_storage(args.storage)  # an s3:// root: credentials, endpoint and bucket checked now
        check_tracking_uri(args.tracking_uri)
        if args.resume is not None:
            sweep = args.resume or latest_sweep(args.storage, space.name)
        else:
            # the random part keeps two sweeps started in the same second (same storage) apart
            sweep = args.name or (f"{space.name}-{_dt.datetime.now(_dt.timezone.utc):%Y%m%d-%H%M%S}-"
                                  f"{secrets.token_hex(2)}")
            from orchestrator.storage import sweep_location

            if sweep_location(args.storage, sweep).exists():
                raise SpaceError(f"--name: sweep {sweep!r} already exists under {args.storage}; use --resume "
                                 f"{sweep} to continue it, or another name")
        from adin_core.data.datasets import resolve_dataset

        source = resolve_dataset(space.source, args.data_root)
        select = [resolve_dataset(u, args.data_root) for u in space.select]
        report = [resolve_dataset(u, args.data_root) for u in space.report]
        manifests = {u: ShardSet.open(u) for u in [source, *select, *report]}
        check_nuisance_labels(space, manifests[source])
    except (SpaceError, StorageError, TrackingError, ShardError, LayoutError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    t_checked = time.perf_counter()

    import ray

    from orchestrator.progress import ProgressTable
    from orchestrator.retry import Backoff
    from orchestrator.tracking import MLflowTrialCallback, SweepTracker, code_version
    from orchestrator.trial import TrialSettings

    # endpoints and credentials reach the workers through the runtime env; inside `ray job submit`, the ones the
    # job's own runtime env already sets must not be restated (Ray refuses conflicting keys)
    job_env = json.loads(os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR") or "{}").get("runtime_env", {}) or {}
    env = {k: os.environ[k] for k in FORWARDED_ENV if k in os.environ and k not in job_env.get("env_vars", {})}
    if args.ray_address:
        ray.init(address=args.ray_address, runtime_env={"env_vars": env} if env else None, log_to_driver=False)
    else:
        # The dashboard serves the State API, which Ray Train V2 uses to clean up a trial's placement group;
        # without it a finished trial's resources can stay held and the next trial's workers never start.
        ray.init(num_cpus=os.cpu_count(), include_dashboard=True, dashboard_host="127.0.0.1",
                 _node_ip_address="127.0.0.1", runtime_env={"env_vars": env} if env else None,
                 log_to_driver=False)
    t_ray = time.perf_counter()
    previous_term = signal.getsignal(signal.SIGTERM)
    signal.signal(signal.SIGTERM, lambda *_: os.kill(os.getpid(), signal.SIGINT))  # `ray job stop`: stop as Ctrl-C
    backoff = Backoff(budget_s=args.retry_budget)
    tracker = SweepTracker(args.tracking_uri, space.name, sweep, backoff=backoff)
    data_versions = {u: {"dataset": s.manifest["dataset"], "version": s.manifest["version"]}
                     for u, s in manifests.items()}
    tracker.set_tags({"adin.space_file": args.space, "adin.code_version": code_version(),
                      "adin.select": json.dumps(select), "adin.report": json.dumps(report),
                      "adin.source": source, "adin.storage": args.storage,
                      "adin.data_versions": json.dumps({u: f"{d['dataset']}/{d['version']}"
                                                        for u, d in data_versions.items()})})
    tracker.log_params({"space": space.name, "sampler": space.sampler, "num_samples": space.num_samples,
                        "scheduler": space.scheduler["type"], "workers": space.workers,
                        "epochs": space.epochs, **{f"fixed.{k}": v for k, v in space.fixed.items()}})
    tracker.log_artifact(args.space, "space")
    with tempfile.TemporaryDirectory() as tmp:
        with open(os.path.join(tmp, "data_versions.json"), "w") as fh:
            json.dump({u: {**d, "manifest_files_sha256": sorted(manifests[u].file_hashes().items())}
                       for u, d in data_versions.items()}, fh, indent=1)
        tracker.log_artifact(os.path.join(tmp, "data_versions.json"), "space")

    settings = TrialSettings(sweep=sweep, storage=args.storage, source=source, select=tuple(select),
                             fixed=dict(space.fixed), epochs=space.epochs, eval_every_epochs=space.eval_every_epochs,
                             workers=space.workers, cpus_per_worker=space.cpus_per_worker,
                             gpus_per_worker=space.gpus_per_worker, checkpoints_to_keep=space.checkpoints_to_keep,
                             retry_budget_s=args.retry_budget)
    fixed_params = {**space.fixed, "epochs": space.epochs}
    trial_tracking = MLflowTrialCallback(args.tracking_uri, tracker.experiment_id, tracker.parent_id, sweep,
                                         fixed_params, storage_root=args.storage, backoff=backoff)
    callbacks: list = [trial_tracking]
    if not args.quiet:
        callbacks.append(ProgressTable([p.name for p in space.params]))
    print(f"sweep {sweep}: {space.num_samples} trials of {space.workers} worker(s), space {args.space}, "
          f"storage {args.storage}, tracking {args.tracking_uri}", flush=True)
    status = "FAILED"
    try:
        tuner = build_tuner(space, settings, sweep, args.storage, callbacks, args.resume is not None)
        results = tuner.fit()
        t_fit = time.perf_counter()
        rows = leaderboard(results, space)
        print("\nleaderboard (objective: mean direct-transfer mAP on the select targets)")
        print(format_table({r["trial"]: {"status": r["status"], "iter": r["evals"], "obj": r["objective"],
                                         "config": r["config"]} for r in rows}, [p.name for p in space.params]))
        print_faults(trial_tracking.faults_summary())
        summarise_winner(tracker, space, rows, report, args.storage)
        status = "FINISHED"
        t_end = time.perf_counter()
        timing = {"timing/checks_s": t_checked - t_start, "timing/ray_start_s": t_ray - t_checked,
                  "timing/trials_s": t_fit - t_ray, "timing/wrap_up_s": t_end - t_fit,
                  "timing/total_s": t_end - t_start}
        tracker.log_metrics(timing)
        print(f"\ntimes: input checks {timing['timing/checks_s']:.1f} s, Ray start {timing['timing/ray_start_s']:.1f} s,"
              f" trials {timing['timing/trials_s']:.1f} s, wrap-up {timing['timing/wrap_up_s']:.1f} s")
        ui = (f"open {args.tracking_uri} in a browser" if args.tracking_uri.startswith(("http://", "https://"))
              else f"mlflow ui --backend-store-uri {args.tracking_uri}")
        print(f"\nopen the MLflow UI:   {ui}")
        print(f"export the winner:    python -m orchestrator.best --export runs/export-{sweep} --sweep {sweep}"
              + ("" if args.tracking_uri == DEFAULT_TRACKING else f" --tracking-uri {args.tracking_uri}"))
        return 0
    except KeyboardInterrupt:
        status = "KILLED"
        print(f"\ninterrupted; continue with: python -m orchestrator.sweep --space {args.space} --resume {sweep}",
              file=sys.stderr)
        return 130
    except TrackingError as exc:
        print(f"\nerror: {exc}\nthe trials' results and checkpoints are kept in {args.storage}/{sweep}",
              file=sys.stderr)
        return 3
    finally:
        try:
            tracker.finish(status)
        except TrackingError as exc:
            print(f"warning: the sweep's parent run was not closed: {exc}", file=sys.stderr)
        signal.signal(signal.SIGTERM, previous_term)
        ray.shutdown()


def print_faults(summary: dict[str, Any]) -> None:
    """What went wrong and was survived (also on the parent run as the tag `adin.faults`)."""
    if not summary["tracking_outages"] and not summary["trials"]:
        return
    print("\nfaults survived")
    for o in summary["tracking_outages"]:
        print(f"  MLflow unreachable from {o['since']} for {o['seconds']:.0f} s ({o['attempts']} retries)")
    for tid, f in sorted(summary["trials"].items()):
        print(f"  trial {tid}: " + ", ".join(f"{k.removeprefix('faults/')} {v:g}" for k, v in sorted(f.items())))


def summarise_winner(tracker, space: SearchSpace, rows: list[dict[str, Any]], report: list[str],
                     storage: str) -> None:
    """Score the winner on the report targets (only now, only the winner), log it, its model and the plots."""
    from orchestrator.best import load_state, score_uris, write_model_files
    from orchestrator.storage import checkpoint_uri
    from adin_core.train import model_from_state

    best = next((r for r in rows if r["objective"] is not None and r["checkpoint"]), None)
    if best is None:
        print("no trial reported an objective; nothing to export")
        return
    uri = checkpoint_uri(best["checkpoint"], storage)
    state = load_state(uri)
    model, config = model_from_state(state)
    scores = score_uris(model, config, report)
    print(f"\nwinner: trial {best['trial']}  {space.metric} {best['objective']:.4f}")
    for name, s in scores.items():
        print(f"  report target {name}: mAP {s['mAP']:.4f}  rank-1 {s['rank1']:.4f}")
    tracker.set_tags({"adin.best_trial": best["trial"], "adin.best_checkpoint": uri})
    tracker.log_metrics({f"best/{space.metric}": best["objective"],
                         **{f"best/report/{n}/{k}": v for n, s in scores.items() for k, v in s.items()}})
    with tempfile.TemporaryDirectory() as tmp:
        write_model_files(tmp, state)
        tracker.log_artifact(os.path.join(tmp, "model.pt"), "winner")
        tracker.log_artifact(os.path.join(tmp, "config.json"), "winner")
        for path in save_plots(study_from_results(space, rows), tmp):
            tracker.log_artifact(path, "plots")


if __name__ == "__main__":
    sys.exit(main())
