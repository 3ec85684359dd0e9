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
number of trials, with the settings it was started with.

Exit codes: 0 the sweep finished and has a winner; 1 no trial finished; 2 bad input (nothing was started);
3 the tracking server stayed unreachable; 130 interrupted (Ctrl-C), 143 stopped (SIGTERM, `ray job stop`).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import replace
from typing import Any

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # single-machine mode: a local Ray on 127.0.0.1 only
os.environ.setdefault("AWS_EC2_METADATA_DISABLED", "true")
os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
# Starting a trial's workers on a busy 2-core machine can take longer than Train's default 60 s.
os.environ.setdefault("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", "300")
# MLflow's own client retries for minutes per call; the sweep queues and retries tracking writes itself
# (orchestrator.tracking), so each call should fail fast instead.
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")
os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")  # no TensorBoard/CSV loggers (JSON is added back)
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # Tune's own tables and boxes: the sweep prints its own
# A diverged trial's last report has no objective (orchestrator.trial.RaySink.diverged), which Tune's strict check
# would turn into an error; the metric names themselves are checked against the space before Ray starts.
os.environ.setdefault("TUNE_DISABLE_STRICT_METRIC_CHECKING", "1")

from adin_core.evaluation import REPORT_MAP  # noqa: E402
from orchestrator.plan import (DEFAULT_DATA_ROOT, DEFAULT_STORAGE, PLAN_ERRORS, PlanError, SweepPlan,  # noqa: E402
                               make_plan, write_sweep_file)
from orchestrator.retry import DEFAULT_BUDGET_S  # noqa: E402
from orchestrator.tracking import schema  # noqa: E402
from orchestrator.tracking.store import DEFAULT_TRACKING_URI, without_password  # noqa: E402

FORWARDED_ENV = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                 "AWS_SESSION_TOKEN", "AWS_DEFAULT_REGION", "AWS_EC2_METADATA_DISABLED",
                 "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S")
EXIT_OK, EXIT_NO_TRIAL, EXIT_INPUT, EXIT_TRACKING = 0, 1, 2, 3
EXIT_SIGNAL = {signal.SIGINT: 130, signal.SIGTERM: 143}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):
        """One line, like every other input error of the sweep (argparse prints its whole usage first)."""
        self.exit(EXIT_INPUT, f"error: {message} (python -m orchestrator.sweep --help)\n")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = _Parser(prog="python -m orchestrator.sweep", description=__doc__,
                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--space", required=True, help="search-space YAML file")
    ap.add_argument("--name", help="sweep name (default: <space name>-<UTC time>-<random>)")
    ap.add_argument("--resume", nargs="?", const="", default=None, metavar="NAME",
                    help="continue an interrupted sweep (default: the latest of this space)")
    ap.add_argument("--ray-address", default=os.environ.get("RAY_ADDRESS"))
    ap.add_argument("--storage", default=os.environ.get("ADIN_STORAGE", DEFAULT_STORAGE))
    ap.add_argument("--data-root", default=os.environ.get("ADIN_DATA_ROOT", DEFAULT_DATA_ROOT))
    ap.add_argument("--tracking-uri", default=os.environ.get("MLFLOW_TRACKING_URI", DEFAULT_TRACKING_URI))
    ap.add_argument("--study-storage", default=os.environ.get("ADIN_STUDY_STORAGE"), metavar="URL",
                    help="the Optuna study of record: an SQLAlchemy URL or a journal file (default: optuna.db beside "
                    "an SQLite tracking database, else runs/optuna.db; ADIN_STUDY_STORAGE)")
    ap.add_argument("--source")
    ap.add_argument("--select", help="comma-separated shard URIs")
    ap.add_argument("--report", help="comma-separated shard URIs")
    ap.add_argument("--workers", type=int)
    ap.add_argument("--cpus-per-worker", type=float)
    ap.add_argument("--gpus-per-worker", type=float)
    ap.add_argument("--num-samples", type=int)
    ap.add_argument("--max-concurrent", type=int)
    ap.add_argument("--epochs", type=float)
    ap.add_argument("--seeds", type=int, help="training seeds per trial (the space's search.seeds)")
    ap.add_argument("--verify-seeds", type=int, help="fresh seeds to verify the winner on (the space's verify.seeds; "
                    "0: off)")
    ap.add_argument("--scheduler", choices=["asha", "none"],
                    help="early stopping: the space's ASHA settings (or defaults), or none (every trial runs out)")
    ap.add_argument("--retry-budget", type=_seconds("--retry-budget"),
                    default=os.environ.get("ADIN_RETRY_BUDGET_S", DEFAULT_BUDGET_S), metavar="SECONDS", help="how long a storage or tracking outage is waited out (with backoff) "
                    "before the trial or the write fails (default 300; ADIN_RETRY_BUDGET_S)")
    ap.add_argument("--wait-for-resources", action="store_true",
                    help="the cluster autoscales: start even if it cannot hold a trial yet")
    ap.add_argument("--quiet", action="store_true", help="no live trial table")
    return ap.parse_args(argv)


def _seconds(flag: str):
    """argparse type for a duration: a number; the message names the flag (argparse also runs it on a default
    read from the environment, so ADIN_RETRY_BUDGET_S=abc is named too)."""
    def parse(text: str) -> float:
        try:
            return float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds (from {flag} or "
                                             "ADIN_RETRY_BUDGET_S)") from None
    parse.__name__ = "seconds"
    return parse


# ------------------------------------------------------------------------------------------------------------
class StopSignals:
    """Which signal stopped the sweep. Tune stops gracefully on SIGINT (saving its state); SIGTERM (`ray job
    stop`) is turned into that, and both are recorded, since Tune itself returns as if nothing happened."""

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous = {s: signal.getsignal(s) for s in EXIT_SIGNAL}
        self.install()

    def install(self) -> None:
        """Put our handlers in place; again after `ray.init`, whose driver set-up replaces the SIGTERM handler
        with one that exits at once (no graceful stop, no closed runs, exit code not 143)."""
        signal.signal(signal.SIGINT, self._before_tune)
        signal.signal(signal.SIGTERM, self._on_term)

    def _before_tune(self, signum, frame) -> None:
        self.received = self.received or signum
        raise KeyboardInterrupt

    def _on_term(self, signum, frame) -> None:
        self.received = self.received or signum
        os.kill(os.getpid(), signal.SIGINT)  # Tune's own graceful stop

    def watch_tune(self) -> None:
        """Called once Tune has put its SIGINT handler in place: wrap it, to learn of a Ctrl-C it handles."""
        tune_handler = signal.getsignal(signal.SIGINT)
        if getattr(tune_handler, "_adin_wrapped", False) or not callable(tune_handler):
            return

        def wrapped(signum, frame):
            self.received = self.received or signum
            tune_handler(signum, frame)
        wrapped._adin_wrapped = True  # type: ignore[attr-defined]
        signal.signal(signal.SIGINT, wrapped)

    def restore(self) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)


def _signal_watcher(stops: StopSignals, sweep: str):
    """A Tune callback that wraps Tune's SIGINT handler once Tune has installed it. It is a LiveCallback: Tune
    pickles its callbacks with the sweep, and a resumed sweep must watch with this run's `stops`, not with the
    unpickled copy of the first run's (which once made a Ctrl-C during a resumed sweep look like success)."""
    from orchestrator.tracking.callback import LiveCallback

    class WatchSignals(LiveCallback):
        def setup(self, **info) -> None:
            stops.watch_tune()
    return WatchSignals().register(f"signals:{sweep}")


def build_tuner(plan: SweepPlan, callbacks: list, study_attrs: dict[str, str] | None = None):
    import optuna
    from ray import tune
    from ray.tune.logger import JsonLoggerCallback
    from ray.tune.schedulers import FIFOScheduler
    from ray.tune.search import ConcurrencyLimiter

    from orchestrator.plan import open_study_storage
    from orchestrator.search import StartPointASHA, StudySearch

    from orchestrator.trial import TRIAL_DRIVER_RESOURCES, run_trial

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # no "study created in memory"
    space = plan.space
    trainable = tune.with_resources(tune.with_parameters(run_trial, plan=plan), TRIAL_DRIVER_RESOURCES)
    storage_path, storage_fs, name = plan.layout.search_experiment()
    if plan.resume:
        return tune.Tuner.restore(plan.layout.experiment_path(storage_path, storage_fs, name), trainable=trainable,
                                  resume_unfinished=True, resume_errored=True, storage_filesystem=storage_fs)
    searcher = StudySearch(space=space.define_by_run(), metric=space.objective.metric, mode=space.objective.mode,
                           sampler=space.search.make_sampler(), study_name=plan.sweep,
                           storage=open_study_storage(plan.study_storage), start_points=space.search.start_from,
                           study_attrs=study_attrs, tracking_key=f"tracking:{plan.sweep}")
    searcher = ConcurrencyLimiter(searcher, max_concurrent=space.search.max_concurrent)
    s = space.scheduler
    scheduler = (StartPointASHA(time_attr=schema.EVALUATION, max_t=s.max_t, grace_period=s.grace_period,
                                reduction_factor=s.reduction_factor) if s.type == "asha" else FIFOScheduler())
    return tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(search_alg=searcher, scheduler=scheduler, num_samples=space.search.num_samples,
                                    metric=space.objective.metric, mode=space.objective.mode),
        run_config=tune.RunConfig(name=name, storage_path=storage_path, storage_filesystem=storage_fs,
                                  callbacks=[JsonLoggerCallback(), *callbacks], verbose=0,
                                  failure_config=tune.FailureConfig(max_failures=1)),
    )


def _forwarded_env(plan: SweepPlan) -> dict[str, str]:
    """What the workers need from this environment, through Ray's runtime env. A local Ray's processes inherit this
    environment, so nothing is passed then. Joining a cluster, endpoints and settings are passed, except those a
    job's own runtime env sets (Ray refuses conflicting keys); credentials only from a client outside the cluster
    (--ray-address), with a note, since Ray writes runtime envs into its logs on the nodes. Inside a job they come
    from the job's runtime env or the nodes' own credentials."""
    from orchestrator.ray_session import CREDENTIAL_ENV

    if not plan.ray_address:
        return {}
    job_env = json.loads(os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR") or "{}").get("runtime_env", {}) or {}
    in_job = "RAY_JOB_CONFIG_JSON_ENV_VAR" in os.environ
    out = {k: os.environ[k] for k in FORWARDED_ENV if k in os.environ and k not in job_env.get("env_vars", {})
           and not (in_job and k in CREDENTIAL_ENV)}
    if any(k in out for k in CREDENTIAL_ENV):
        print("note: the AWS credentials of this shell go to the cluster's workers in Ray's runtime env, which Ray "
              "writes to its logs on the nodes (runtime_env_agent.log); to keep them out, give the nodes their own "
              "(an instance role, IRSA or their environment) and unset them here", file=sys.stderr)
    return out


# ------------------------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    try:
        args = parse_args(argv)
    except SystemExit as exc:  # --help (0) or a malformed command line (2, one line printed)
        return int(exc.code or 0)
    t_start = time.perf_counter()
    stops = StopSignals()
    try:
        try:
            plan = make_plan(args)  # everything that can be wrong with the input is found here, before Ray
        except PLAN_ERRORS as exc:
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_INPUT
        return Sweep(plan, stops, t_start).run()
    except KeyboardInterrupt:
        code = EXIT_SIGNAL.get(stops.received or signal.SIGINT, 130)
        print(f"\ninterrupted before the sweep started (exit {code}); nothing to resume", file=sys.stderr)
        return code
    finally:
        stops.restore()


class Sweep:
    """One run of a sweep: start Ray and tracking, run Tune, report; the exit code tells what happened."""

    def __init__(self, plan: SweepPlan, stops: StopSignals, t_start: float) -> None:
        self.plan, self.stops, self.t = plan, stops, {"start": t_start, "checked": time.perf_counter()}
        # shared pretraining: its stages' time, the seed-epochs they trained, what trainings started from it
        self.shared = {"trained_epochs": 0.0, "seeds": 0, "used_epochs": 0.0}
        self._tmp = ""  # files the parent run logs (kept until its writes have drained)

    def run(self) -> int:
        import ray

        from orchestrator import ray_session

        plan = self.plan
        # Tune's INFO lines would drown the live table; MLflow's announce the creation of its tables
        for name in ("ray.tune", "ray.train", "mlflow.store.db.utils"):
            logging.getLogger(name).setLevel(logging.WARNING)
        if not plan.resume:
            write_sweep_file(plan)
        try:
            ray_info = ray_session.start(plan, _forwarded_env(plan))
            self.stops.install()
            self.t["ray"] = time.perf_counter()
            ray_session.check_resources(plan)
            return self._track_and_tune(ray_info)
        except PlanError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_INPUT
        finally:
            ray.shutdown()

    def _track_and_tune(self, ray_info: dict[str, Any]) -> int:
        from orchestrator import ray_session
        from orchestrator.progress import ProgressTable
        from orchestrator.retry import Backoff
        from orchestrator.tracking import TrackingError, TrackingQueue
        from orchestrator.tracking.callback import MLflowTrialCallback

        plan = self.plan
        queue = TrackingQueue(plan.tracking_uri, Backoff(budget_s=plan.retry_budget_s))
        try:
            parent = self._open_parent(queue, ray_info)
        except TrackingError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_TRACKING
        tracking = MLflowTrialCallback(queue, parent.experiment_id, plan.sweep, trial_params=self._trial_params,
                                       run_name=self._run_name, checkpoint_uri=self._checkpoint_uri,
                                       inputs=self._inputs("trial"), metric=plan.space.objective.metric)
        callbacks: list = [tracking, _signal_watcher(self.stops, plan.sweep)]
        table = None
        if not plan.quiet:
            table = ProgressTable(plan.sweep, plan.space.objective.metric, [p.name for p in plan.space.params],
                                  waiting_reason=lambda: ray_session.waiting_reason(plan))
            callbacks.append(table)
        print(f"sweep {plan.sweep}: {plan.space.search.num_samples} trials of {plan.space.resources.workers} "
              f"worker(s); space {plan.space_file}; storage {plan.storage}; tracking {plan.tracking_uri}; "
              f"{ray_info['ray']}", flush=True)
        status, code = "FAILED", EXIT_NO_TRIAL
        try:
            self._pretrain_search_seeds(parent)
            self.t["pretrained"] = time.perf_counter()
            if self.stops.received:
                raise KeyboardInterrupt
            study_attrs = {"sweep": plan.sweep, "mlflow_tracking_uri": plan.tracking_uri,
                           "mlflow_experiment_id": parent.experiment_id, "mlflow_parent_run_id": parent.run_id,
                           "objective": f"{plan.space.objective.metric} ({plan.space.objective.mode})"}
            results = build_tuner(plan, callbacks, study_attrs).fit()
            self.t["fit"] = time.perf_counter()
            status, code = self._report(results, parent, tracking)
        except KeyboardInterrupt:  # a second Ctrl-C: Tune's graceful stop was cut short
            self.stops.received = self.stops.received or signal.SIGINT
            status, code = "KILLED", EXIT_SIGNAL.get(self.stops.received, 130)
            print(f"\nstopped at once (exit {code}); continue with: {plan.resume_command()}", file=sys.stderr)
        finally:
            from orchestrator.tracking import schema as S

            try:
                parent.set_tags({S.SWEEP_STATE: {"FINISHED": "complete", "KILLED": "partial"}.get(status, "failed")})
                parent.finish(status)
            except TrackingError as exc:
                print(f"\nerror: {exc}\nthe trials' results and checkpoints are kept in {plan.sweep_uri}; "
                      f"`{plan.resume_command()}` sends the queued writes", file=sys.stderr)
                code = EXIT_TRACKING if code == EXIT_OK else code
            shutil.rmtree(self._tmp, ignore_errors=True)
        return code

    # --- shared pretraining ------------------------------------------------------------------------------------
    def _pretrain(self, consumers: list, evaluate: bool, name: str) -> None:
        """Make the snapshots these trainings (config, seeds) can share (orchestrator.pretraining), and count."""
        from orchestrator import pretraining

        jobs = pretraining.jobs_for(self.plan, consumers, evaluate)
        if not jobs:
            return
        print(f"shared pretraining: {len(jobs)} seed(s), each for {max(j.consumers for j in jobs)} trainings", flush=True)
        stage = pretraining.run_stage(self.plan, jobs, name, [_signal_watcher(self.stops, self.plan.sweep)])
        self.shared["trained_epochs"] += stage.seed_epochs
        self.shared["seeds"] += stage.made
        if stage.failed and not self.stops.received:
            print(f"warning: shared pretraining failed for {', '.join(stage.failed)}; those trainings pretrain "
                  "themselves", file=sys.stderr)

    def _pretrain_search_seeds(self, parent) -> None:
        from adin_core.repeats import seed_list

        space = self.plan.space
        if not space.shares_pretraining:
            return
        config = space.some_config()
        seeds = seed_list(config, space.search.seeds)
        self._pretrain([(config, seeds)] * space.search.num_samples, evaluate=True, name="pretrain-search")

    # --- tracking ----------------------------------------------------------------------------------------------
    def _open_parent(self, queue, ray_info: dict[str, Any]):
        from orchestrator.tracking import SweepRun, code_version, experiment_id
        from orchestrator.tracking import schema as S

        plan = self.plan
        parent = SweepRun(queue, experiment_id(plan.tracking_uri, plan.space.name, queue.backoff), plan.sweep)
        parent.open()
        parent.save_view(plan.space.objective.metric, plan.space.objective.mode, [p.name for p in plan.space.params])
        targets = {t.uri: t.name for t in plan.select + plan.report}
        parent.set_tags({
            S.SPACE_FILE: plan.space_file, S.CODE_VERSION: code_version(), S.SOURCE: plan.source,
            S.SELECT: json.dumps([t.uri for t in plan.select]), S.REPORT: json.dumps([t.uri for t in plan.report]),
            S.TARGET_NAMES: json.dumps(targets), S.STORAGE: plan.storage, S.OVERRIDES: json.dumps(plan.overrides),
            S.OBJECTIVE_METRIC: plan.space.objective.metric, S.OBJECTIVE_MODE: plan.space.objective.mode,
            S.PROMOTE_SE: str(plan.space.search.promote_se),
            S.STUDY_STORAGE: json.dumps(without_password(plan.study_storage)),
            S.DATA_VERSIONS: json.dumps({u: f"{d['dataset']}/{d['version']}" for u, d in plan.data_versions.items()}),
            S.SWEEP_STATE: "running"})
        space = plan.space
        parent.log_params({"space": space.name, "sampler": space.search.sampler,
                           "sampler.random_start": space.search.random_start,
                           "num_samples": space.search.num_samples, "scheduler": space.scheduler.type,
                           "workers": space.resources.workers, "epochs": space.training.epochs,
                           **{f"fixed.{k}": v for k, v in space.fixed.items()}})
        parent.queue.submit(*self._inputs(parent.key))
        self._tmp = tempfile.mkdtemp(prefix="adin-sweep-")
        with open(os.path.join(self._tmp, "data_versions.json"), "w") as fh:
            json.dump(plan.data_versions, fh, indent=1)
        parent.log_artifact(plan.space_file, "space")
        parent.log_artifact(os.path.join(self._tmp, "data_versions.json"), "space")
        return parent

    def _inputs(self, key: str) -> tuple:
        """The sweep's datasets as MLflow inputs (name, manifest digest, URI, role): the runs table's Dataset column."""
        from orchestrator.tracking.store import LogInput

        plan, out = self.plan, []
        for uri, d in plan.data_versions.items():
            context = "training" if uri == plan.source else ("select" if uri in {t.uri for t in plan.select}
                                                             else "report")
            digest = hashlib.sha256(json.dumps(sorted(d["files"].items())).encode()).hexdigest()[:16]
            out.append(LogInput(key, f"{d['dataset']}/{d['version']}", digest, uri, context))
        return tuple(out)

    def _trial_params(self, tune_config: dict[str, Any]) -> dict[str, Any]:
        """A trial's whole TrainConfig, as MLflow parameters."""
        return self.plan.space.train_config(self.plan.space.sampled(tune_config)).to_dict()

    def _run_name(self, trial_id: str, tune_config: dict[str, Any]) -> str:
        sampled = self.plan.space.sampled(tune_config)
        shown = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in list(sampled.items())[:3])
        return f"{trial_id} {shown}".strip()

    def _checkpoint_uri(self, path: str) -> str:
        return self.plan.layout.checkpoint_uri(path)

    # --- the outcome -------------------------------------------------------------------------------------------
    def _report(self, results, parent, tracking) -> tuple[str, int]:
        from orchestrator.progress import format_table
        from orchestrator.results import choose_winner, rank, rows_from_results

        plan = self.plan
        rows = rows_from_results(results, plan.space, self._checkpoint_uri)
        if self.stops.received:  # a trial the stop cut short has no final report either: it was killed, not pruned
            rows = [r if r.trial in tracking.ended or r.outcome == "failed" else replace(r, outcome="killed")
                    for r in rows]
        names = [p.name for p in plan.space.params]
        metric = plan.space.objective.metric
        print(f"\nleaderboard ({metric}, {plan.space.objective.mode}"
              + (f"; mean over {plan.space.search.seeds} seeds +/- standard error)" if plan.space.search.seeds > 1
                 else ")"))
        print(format_table(["trial", "outcome", "evals", metric, "probe camera", *names, "start"],
                           [[r.trial, r.outcome, r.evals, _objective_cell(r), "-" if r.probe is None else
                             f"{r.probe:.3f}", *[r.params.get(n, "") for n in names], r.start_point or "-"]
                            for r in rank(rows, plan.space.objective)]))
        for r in rows:
            if r.note:
                print(f"  {r.trial} {r.outcome}: {r.note}")
        faults = tracking.queue.faults_summary()
        print_faults(faults)
        if self.stops.received:
            tracking.close_unfinished()
            code = EXIT_SIGNAL.get(self.stops.received, 130)
            done = sum(r.outcome in ("finished", "pruned", "diverged") for r in rows)
            print(f"\ninterrupted (exit {code}) with {done} of {plan.space.search.num_samples} trials done; the sweep "
                  f"is marked partial. Continue with:\n  {plan.resume_command()}", file=sys.stderr)
            return "KILLED", code
        choice = choose_winner(rows, plan.space.objective, plan.space.search.promote_se)
        winner = choice.row
        if winner is None:
            failed = sum(r.outcome == "failed" for r in rows)
            diverged = sum(r.outcome == "diverged" for r in rows)
            print(f"\nerror: no trial finished ({failed} failed, {diverged} diverged, "
                  f"{len(rows) - failed - diverged} stopped early); nothing to export. The trials' errors are in "
                  f"{plan.sweep_uri}/*/error.txt", file=sys.stderr)
            return "FAILED", EXIT_NO_TRIAL
        print(f"\nwinner: trial {winner.trial}, {choice.why(plan.space.search.promote_se)}")
        self._summarise_winner(parent, rows, winner)
        self.t["verified"] = self.t["winner"] = time.perf_counter()
        if plan.space.verify.seeds:
            outcome = self._verify(parent, winner)
            if outcome is not None:
                return outcome
        self.t["end"] = time.perf_counter()
        t, shared = self.t, self.shared
        shared["used_epochs"] += sum(float((r.metrics or {}).get("pretraining/shared_epochs", 0.0)) for r in results)
        timing = {"timing/checks_s": t["checked"] - t["start"], "timing/ray_start_s": t["ray"] - t["checked"],
                  "timing/pretraining_s": t["pretrained"] - t["ray"],  # the search's; the verification's is in its own
                  "timing/trials_s": t["fit"] - t["pretrained"], "timing/verification_s": t["verified"] - t["winner"],
                  "timing/wrap_up_s": t["end"] - t["fit"] - (t["verified"] - t["winner"]),
                  "timing/total_s": t["end"] - t["start"],
                  "pretraining/seed_epochs_trained": shared["trained_epochs"],
                  "pretraining/seed_epochs_saved": shared["used_epochs"] - shared["trained_epochs"]}
        waits = sorted(tracking.result_seconds)  # what each result held Tune's loop in the MLflow callback
        if waits:
            timing.update({"timing/tracking_result_ms_median": 1000 * waits[len(waits) // 2],
                           "timing/tracking_result_ms_max": 1000 * waits[-1]})
        parent.log_metrics(timing, step=int(time.time()))  # a resumed sweep adds a point, it does not overwrite
        k = plan.space.search.seeds
        sharing = (f"shared pretraining {timing['timing/pretraining_s']:.1f} s ({shared['seeds']} seed(s) pretrained "
                   f"once in all, {shared['trained_epochs']:g} seed-epochs; the trainings that started from them did "
                   f"not retrain {timing['pretraining/seed_epochs_saved']:g} seed-epochs), "
                   if shared["used_epochs"] else "")
        print(f"\ntimes: input checks {timing['timing/checks_s']:.1f} s, Ray start {timing['timing/ray_start_s']:.1f} s, "
              f"{sharing}trials {timing['timing/trials_s']:.1f} s (repeats: {100 * (k - 1) / k:.0f}% of it, {k} seeds a "
              f"trial), verification {timing['timing/verification_s']:.1f} s "
              f"({100 * timing['timing/verification_s'] / max(timing['timing/total_s'], 1e-9):.0f}% of the sweep), "
              f"wrap-up {timing['timing/wrap_up_s']:.1f} s, total {timing['timing/total_s']:.0f} s"
              + (f"; MLflow tracking held Tune's loop {timing['timing/tracking_result_ms_median']:.1f} ms a result "
                 f"(median of {len(waits)}, max {timing['timing/tracking_result_ms_max']:.1f} ms)" if waits else ""))
        from orchestrator.tracking import ui_url

        uri = plan.tracking_uri
        if uri.startswith(("http://", "https://")):
            print(f"\nthe sweep in MLflow:  {ui_url(uri, parent.experiment_id, plan.sweep)}")
        else:
            print(f"\nthe sweep in MLflow:  mlflow ui --backend-store-uri {uri} --workers 1   then open\n"
                  f"                      {ui_url('http://127.0.0.1:5000', parent.experiment_id, plan.sweep)}")
        print(f"the study in Optuna:  optuna-dashboard {plan.study_storage}")
        print(f"export the winner:    python -m orchestrator.best --export runs/winner-{plan.sweep} --sweep {plan.sweep}"
              + ("" if uri == _default_tracking() else f" --tracking-uri {uri}"))
        self._publish_verdict(parent, tracking.queue, rows, winner)
        return "FINISHED", EXIT_OK

    def _publish_verdict(self, parent, queue, rows, winner) -> None:
        """The verdict where people look: the parent run's description (MLflow's note: the winner, the verification,
        the leaderboard's top rows) and the winner's model card on the parent run (`card/model_card.md`); a winner
        below the baseline on most fresh seeds is the last line the sweep prints."""
        from orchestrator.best import ExportError, winner_card
        from orchestrator.results import rank
        from orchestrator.tracking import schema as S

        plan = self.plan
        if not queue.drain():
            return  # the tracking server is away: the queued writes reach it later, the card with the export
        try:
            _, _, card, md = winner_card(plan.tracking_uri, plan.sweep)
        except (ExportError, OSError) as exc:
            print(f"warning: no model card on the sweep's run ({exc})", file=sys.stderr)
            return
        path = os.path.join(self._tmp, "model_card.md")
        with open(path, "w") as fh:
            fh.write(md)
        parent.log_artifact(path, "card")
        metric = plan.space.objective.metric
        names = [p.name for p in plan.space.params]
        board = ["| trial | outcome | " + metric + " | " + " | ".join(names) + " | start |",
                 "|" + " --- |" * (4 + len(names))]
        for r in rank(rows, plan.space.objective)[:8]:
            obj = "-" if r.objective is None else f"{r.objective:.4f}" + (f" ± {r.spread:.4f}" if r.spread else "")
            board.append(f"| {r.trial} | {r.outcome} | {obj} | "
                         + " | ".join(str(r.params.get(n, "")) for n in names) + f" | {r.start_point or '-'} |")
        verification = card.get("verification") or {}
        verdict = verification.get("summary") or ["not verified"]
        note = [f"**Winner: trial `{winner.trial}`** ({metric} {winner.objective:.4f}); exported with "
                f"`python -m orchestrator.best --export DIR --sweep {plan.sweep}`", "",
                "**Verification** (report-target mAP, fresh seeds):", "", *[f"- {line}" for line in verdict], "",
                f"**Leaderboard** ({metric}, best first):", "", *board, "",
                "The winner's model card: artifact `card/model_card.md`."]
        parent.set_tags({S.NOTE: "\n".join(note)})
        if verification.get("lost_to_baseline"):
            base = verification["winner_minus_baseline"]
            print(f"\nWARNING: the winner scored below the identity-only baseline on {base['seeds'] - base['positive']} "
                  f"of {base['seeds']} fresh seeds ({base['mean']:+.3f} mAP): the search found no setting that beats "
                  "not using ADIN here", file=sys.stderr)

    def _verify(self, parent, winner) -> tuple[str, int] | None:
        """Retrain the arms on fresh seeds, in rounds (orchestrator.verify); log the paired differences. Returns an
        outcome when it was interrupted (the search's result stays, unverified)."""
        from orchestrator import verify
        from orchestrator.progress import ProgressTable
        from orchestrator.tracking import schema as S

        plan, settings = self.plan, self.plan.space.verify
        arms = ", ".join(verify.ARM_NAMES[a] for a in verify.trained_arms(plan, winner.params))
        more = (f", then {settings.step} more at a time up to {settings.max_seeds} until winner - baseline is "
                f"distinguishable ({100 * settings.level:.4g}% intervals: {settings.looks} looks)"
                if settings.max_seeds > settings.seeds else "")
        print(f"\nverifying the winner: {arms} on {settings.seeds} fresh seeds{more}; scored on the report targets",
              flush=True)
        callbacks: list = [_signal_watcher(self.stops, plan.sweep)]
        if not plan.quiet:
            callbacks.append(ProgressTable(f"{plan.sweep}-verify", REPORT_MAP, ["job"], every_s=30.0))
        seeds = verify.verification_seeds(plan, winner.params)

        def pretrain(indices: list[int]) -> None:
            consumers = [(verify.arm_config(plan, arm, winner.params), [seeds[k] for k in indices])
                         for arm in verify.trained_arms(plan, winner.params)]
            self._pretrain(consumers, evaluate=False, name="pretrain-verify")

        try:
            outcome = verify.run(plan, winner.params, callbacks, stopped=lambda: bool(self.stops.received),
                                 pretrain=pretrain, log=print)
        except verify.VerificationError as exc:
            self.t["verified"] = time.perf_counter()
            print(f"\nwarning: {exc}; the winner stays unverified", file=sys.stderr)
            parent.set_tags({S.VERIFICATION: json.dumps({"error": str(exc)})})
            return None
        self.t["verified"] = time.perf_counter()
        if outcome is None:
            code = EXIT_SIGNAL.get(self.stops.received, 130)
            print(f"\ninterrupted during the verification (exit {code}); the search is done. Continue with:\n"
                  f"  {plan.resume_command()}", file=sys.stderr)
            return "KILLED", code
        self.shared["used_epochs"] += outcome.shared_epochs
        print(f"verification on {outcome.seeds} fresh seeds, report-target mAP:")
        for line in outcome.lines():
            print(f"  {line}")
        parent.set_tags({S.VERIFICATION: verify.to_json(outcome)})
        parent.log_metrics(outcome.metrics())
        return None

    def _summarise_winner(self, parent, rows, winner) -> None:
        """Score the winner on the report targets (only now, only the winner), log it, its model and the plots."""
        from adin_core.train import model_from_state
        from orchestrator.best import write_model_files
        from orchestrator.checkpoints import load_state
        from orchestrator.results import save_plots
        from orchestrator.tracking import schema as S
        from orchestrator.targets import open_target, score_targets

        plan = self.plan
        state = load_state(winner.checkpoint)
        model, config = model_from_state(state)
        size = (config.image_height, config.image_width)
        scores = score_targets(model, [open_target(t, size) for t in plan.report], config)
        print(f"  {plan.space.objective.metric} {winner.objective:.4f}")
        for name, s in scores.items():
            print(f"  report target {name}: mAP {s['mAP']:.4f}  rank-1 {s['rank1']:.4f}")
        parent.set_tags({S.BEST_TRIAL: winner.trial, S.BEST_CHECKPOINT: winner.checkpoint})
        parent.log_metrics({plan.space.objective.metric: winner.objective,
                            **{f"report/{n}/{k}": v for n, s in scores.items() for k, v in s.items()}})
        out = os.path.join(self._tmp, "winner")
        os.makedirs(out, exist_ok=True)
        write_model_files(out, state)
        parent.log_artifact(os.path.join(out, "model.pt"), "winner")
        parent.log_artifact(os.path.join(out, "config.json"), "winner")
        for path in save_plots(self._study(rows), self._tmp, metric=plan.space.objective.metric):
            parent.log_artifact(path, "plots")

    def _study(self, rows):
        """The study of record (real times, every intermediate value), or one made from the rows if unreadable."""
        import optuna

        from orchestrator.plan import open_study_storage
        from orchestrator.results import study_of

        try:
            return optuna.load_study(study_name=self.plan.sweep, storage=open_study_storage(self.plan.study_storage))
        except (KeyError, PlanError) as exc:
            print(f"  (plots from the trials' results: the study of record is unreadable: {exc})")
            return study_of(rows, self.plan.space)


def _objective_cell(row) -> str:
    if row.objective is None:
        return "-"
    return f"{row.objective:.4f}" + (f" +/- {row.spread:.4f}" if row.spread is not None else "")


def _default_tracking() -> str:
    from orchestrator.tracking import absolute_tracking_uri

    return absolute_tracking_uri(DEFAULT_TRACKING_URI)


def print_faults(summary: dict[str, Any]) -> None:
    """What went wrong and was survived (also on the parent run as the tag `adin.faults`)."""
    if not summary["tracking_outages"] and not summary["trials"]:
        return
    print("\nfaults survived")
    for o in summary["tracking_outages"]:
        print(f"  MLflow unreachable from {o['since']} for {o['seconds']:.0f} s ({o['attempts']} retries)")
    for tid, f in sorted(summary["trials"].items()):
        print(f"  trial {tid}: " + ", ".join(f"{k.removeprefix('faults/')} {v:g}" for k, v in sorted(f.items())))


if __name__ == "__main__":
    sys.exit(main())
