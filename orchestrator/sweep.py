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
import json
import logging
import os
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Sequence

# Set before Ray is imported (below): what every process of the sweep, and every Ray process it starts, runs with.
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
# One-worker trials reuse their Tune actor for the next trial (search.build_tuner); Tune gives the ended trial's
# thread 2 s to finish first and otherwise loses the trial. A real trial may still be freeing its data or GPU memory.
os.environ.setdefault("TUNE_FUNCTION_THREAD_TIMEOUT_S", "30")

import optuna  # noqa: E402
import ray  # noqa: E402

from adin_core.evaluation import REPORT_MAP  # noqa: E402
from adin_core.repeats import seed_list  # noqa: E402
from adin_core.train import model_from_state  # noqa: E402
from orchestrator import pretraining, ray_session, report, search, verify  # noqa: E402
from orchestrator.best import write_model_files  # noqa: E402
from orchestrator.checkpoints import load_state  # noqa: E402
from orchestrator.plan import (  # noqa: E402
    DEFAULT_DATA_ROOT,
    DEFAULT_STORAGE,
    PLAN_ERRORS,
    PlanError,
    SweepPlan,
    make_plan,
    open_study_storage,
    write_sweep_file,
)
from orchestrator.progress import ProgressTable  # noqa: E402
from orchestrator.results import TrialRow, WinnerChoice, choose_winner, rows_from_results, save_plots, study_of  # noqa: E402
from orchestrator.retry import DEFAULT_BUDGET_S, Backoff  # noqa: E402
from orchestrator.signals import StopSignals  # noqa: E402
from orchestrator.targets import open_target, score_targets  # noqa: E402
from orchestrator.tracking import schema as S  # noqa: E402
from orchestrator.tracking.callback import MLflowTrialCallback  # noqa: E402
from orchestrator.tracking.parent import dataset_inputs, open_parent  # noqa: E402
from orchestrator.tracking.store import DEFAULT_TRACKING_URI, SweepRun, TrackingError, TrackingQueue  # noqa: E402

EXIT_OK, EXIT_NO_TRIAL, EXIT_INPUT, EXIT_TRACKING = 0, 1, 2, 3


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):
        """One line, like every other input error of the sweep (argparse prints its whole usage first)."""
        self.exit(EXIT_INPUT, f"error: {message} (python -m orchestrator.sweep --help)\n")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = _Parser(
        prog="python -m orchestrator.sweep", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--space", required=True, help="search-space YAML file")
    ap.add_argument("--name", help="sweep name (default: <space name>-<UTC time>-<random>)")
    ap.add_argument(
        "--resume",
        nargs="?",
        const="",
        default=None,
        metavar="NAME",
        help="continue an interrupted sweep (default: the latest of this space)",
    )
    ap.add_argument("--ray-address", default=os.environ.get("RAY_ADDRESS"))
    ap.add_argument("--storage", default=os.environ.get("ADIN_STORAGE", DEFAULT_STORAGE))
    ap.add_argument("--data-root", default=os.environ.get("ADIN_DATA_ROOT", DEFAULT_DATA_ROOT))
    ap.add_argument("--tracking-uri", default=os.environ.get("MLFLOW_TRACKING_URI", DEFAULT_TRACKING_URI))
    ap.add_argument(
        "--study-storage",
        default=os.environ.get("ADIN_STUDY_STORAGE"),
        metavar="URL",
        help="the Optuna study of record: an SQLAlchemy URL or a journal file (default: optuna.db beside "
        "an SQLite tracking database, else runs/optuna.db; ADIN_STUDY_STORAGE)",
    )
    _add_overrides(ap)
    ap.add_argument(
        "--retry-budget",
        type=_seconds("--retry-budget"),
        default=os.environ.get("ADIN_RETRY_BUDGET_S", DEFAULT_BUDGET_S),
        metavar="SECONDS",
        help="how long a storage or tracking outage is waited out (with backoff) "
        "before the trial or the write fails (default 300; ADIN_RETRY_BUDGET_S)",
    )
    ap.add_argument(
        "--wait-for-resources",
        action="store_true",
        help="the cluster autoscales: start even if it cannot hold a trial yet",
    )
    ap.add_argument("--quiet", action="store_true", help="no live trial table")
    return ap.parse_args(argv)


def _add_overrides(ap: argparse.ArgumentParser) -> None:
    """The flags that override the space file's own settings for this sweep (recorded with it, kept on --resume)."""
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
    ap.add_argument(
        "--verify-seeds", type=int, help="fresh seeds to verify the winner on (the space's verify.seeds; 0: off)"
    )
    ap.add_argument(
        "--scheduler",
        choices=["asha", "none"],
        help="early stopping: the space's ASHA settings (or defaults), or none (every trial runs out)",
    )


def _seconds(flag: str):
    """argparse type for a duration: a number; the message names the flag (argparse also runs it on a default
    read from the environment, so ADIN_RETRY_BUDGET_S=abc is named too)."""

    def parse(text: str) -> float:
        try:
            return float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{text!r} is not a number of seconds (from {flag} or ADIN_RETRY_BUDGET_S)"
            ) from None

    parse.__name__ = "seconds"
    return parse


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
        if warning := search.sampler_warning(plan.space.search):
            print(f"warning: {warning}", file=sys.stderr)
        return Sweep(plan, stops, t_start).run()
    except KeyboardInterrupt:
        print(f"\ninterrupted before the sweep started (exit {stops.exit_code}); nothing to resume", file=sys.stderr)
        return stops.exit_code
    finally:
        stops.restore()


@dataclass
class Stage:
    """What a stage of Ray runs (a pretraining stage, the trials, the verification) took and spared."""

    seconds: float = 0.0
    seeds_pretrained: int = 0
    epochs_pretrained: float = 0.0  # seed-epochs shared pretraining trained
    epochs_shared: float = 0.0  # seed-epochs trainings did not train: they started from shared pretraining

    def add(self, other: "Stage") -> "Stage":
        return Stage(
            self.seconds + other.seconds,
            self.seeds_pretrained + other.seeds_pretrained,
            self.epochs_pretrained + other.epochs_pretrained,
            self.epochs_shared + other.epochs_shared,
        )


@dataclass
class SearchOutcome:
    rows: list[TrialRow]
    choice: WinnerChoice
    pretraining: Stage
    trials: Stage
    tracking_waits: list[float] = field(default_factory=list)


class Sweep:
    """One run of a sweep, in stages: Ray started (and its resources checked), the sweep's MLflow run opened, the
    search (shared pretraining, then the trials), the winner summarised and verified, the report; the exit code
    tells what happened. Each stage returns what it did; nothing is kept between them but the plan and the stop
    signals. `trial` and `callbacks`: the search's trial function (None: orchestrator.trial.run_trial) and extra Tune
    callbacks, set only where a benchmark measures the sweep around a stand-in (bench/sweep_scale.py)."""

    def __init__(
        self,
        plan: SweepPlan,
        stops: StopSignals,
        t_start: float,
        trial: Callable[[dict[str, Any], SweepPlan], None] | None = None,
        callbacks: Sequence[Any] = (),
    ) -> None:
        self.plan, self.stops, self.t_start, self.t_checked = plan, stops, t_start, time.perf_counter()
        self.trial, self.extra_callbacks = trial, list(callbacks)

    def run(self) -> int:
        for name in ("ray.tune", "ray.train", "mlflow.store.db.utils"):  # their INFO lines would drown the table
            logging.getLogger(name).setLevel(logging.WARNING)
        if not self.plan.resume:
            write_sweep_file(self.plan)
        try:
            ray_info = ray_session.start(self.plan, ray_session.forwarded_env(self.plan))
            self.stops.install()
            ray_started = time.perf_counter()
            ray_session.check_resources(self.plan)
            return self._tracked(ray_info, ray_started)
        except PlanError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_INPUT
        finally:
            ray.shutdown()

    def _tracked(self, ray_info: dict[str, Any], ray_started: float) -> int:
        """The stages, between the sweep's MLflow run opened and closed with its state."""
        plan = self.plan
        queue = TrackingQueue(plan.tracking_uri, Backoff(budget_s=plan.retry_budget_s))
        folder = tempfile.mkdtemp(prefix="adin-sweep-")  # files the parent run logs, kept until its writes drain
        try:
            parent = open_parent(plan, queue, folder)
        except TrackingError as exc:
            shutil.rmtree(folder, ignore_errors=True)
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_TRACKING
        print(
            f"sweep {plan.sweep}: {plan.space.search.num_samples} trials of {plan.space.resources.workers} "
            f"worker(s); space {plan.space_file}; storage {plan.storage}; tracking {plan.tracking_uri}; "
            f"{ray_info['ray']}",
            flush=True,
        )
        status, code = "FAILED", EXIT_NO_TRIAL
        try:
            status, code = self._stages(parent, folder, ray_started)
        except KeyboardInterrupt:  # a second Ctrl-C: Tune's graceful stop was cut short
            self.stops.received = self.stops.received or signal.SIGINT
            status, code = "KILLED", self.stops.exit_code
            print(f"\nstopped at once (exit {code}); continue with: {plan.resume_command()}", file=sys.stderr)
        finally:
            code = self._close(parent, status, code)
            shutil.rmtree(folder, ignore_errors=True)
        return code

    def _close(self, parent: SweepRun, status: str, code: int) -> int:
        try:
            parent.set_tags({S.SWEEP_STATE: {"FINISHED": "complete", "KILLED": "partial"}.get(status, "failed")})
            parent.finish(status)
        except TrackingError as exc:
            print(
                f"\nerror: {exc}\nthe trials' results and checkpoints are kept in {self.plan.sweep_uri}; "
                f"`{self.plan.resume_command()}` sends the queued writes",
                file=sys.stderr,
            )
            return EXIT_TRACKING if code == EXIT_OK else code
        return code

    def _stages(self, parent: SweepRun, folder: str, ray_started: float) -> tuple[str, int]:
        plan = self.plan
        found = self._search(parent)
        if self.stops.received:
            report.interrupted(plan, found.rows, self.stops.exit_code)
            return "KILLED", self.stops.exit_code
        if found.choice.row is None:
            report.no_winner(plan, found.rows)
            return "FAILED", EXIT_NO_TRIAL
        report.winner(plan, found.choice)
        self._summarise_winner(parent, found.rows, found.choice.row, folder)
        signal = report.settings_against_noise(found.rows)
        if signal:
            parent.log_metrics(signal)
        t_verify = time.perf_counter()
        verification = self._verify(parent, found.choice.row) if plan.space.verify.seeds else Stage()
        if self.stops.received:
            print(
                f"\ninterrupted during the verification (exit {self.stops.exit_code}); the search is done. "
                f"Continue with:\n  {plan.resume_command()}",
                file=sys.stderr,
            )
            return "KILLED", self.stops.exit_code
        timings = self._timings(found, verification, ray_started, time.perf_counter() - t_verify)
        parent.log_metrics(timings.metrics(), step=int(time.time()))  # a resumed sweep adds a point
        print(f"\n{timings.line(plan.space.search.seeds)}")
        report.hints(plan, parent.experiment_id)
        report.publish_verdict(plan, parent, found.rows, found.choice.row, folder)
        return "FINISHED", EXIT_OK

    def _timings(
        self, found: SearchOutcome, verification: Stage, ray_started: float, verify_s: float
    ) -> report.Timings:
        shared = found.pretraining.add(found.trials).add(verification)
        end = time.perf_counter()
        return report.Timings(
            checks=self.t_checked - self.t_start,
            ray_start=ray_started - self.t_checked,
            pretraining=found.pretraining.seconds,
            trials=found.trials.seconds,
            verification=verify_s,
            wrap_up=end - ray_started - found.pretraining.seconds - found.trials.seconds - verify_s,
            total=end - self.t_start,
            seeds_pretrained=shared.seeds_pretrained,
            epochs_pretrained=shared.epochs_pretrained,
            epochs_shared=shared.epochs_shared,
            tracking_waits=found.tracking_waits,
        )

    # --- the search ----------------------------------------------------------------------------------------------
    def _search(self, parent: SweepRun) -> SearchOutcome:
        """Shared pretraining (when the space allows it), then the trials; the leaderboard and the winner rule."""
        plan, space = self.plan, self.plan.space
        pretrained = Stage()
        if space.shares_pretraining:
            config = space.some_config()
            pretrained = self._pretrain(
                [(config, seed_list(config, space.search.seeds))] * space.search.num_samples,
                evaluate=True,
                name="pretrain-search",
            )
        tracking = MLflowTrialCallback(
            parent.queue,
            parent.experiment_id,
            plan.sweep,
            trial_params=self._trial_params,
            run_name=self._run_name,
            checkpoint_uri=plan.layout.checkpoint_uri,
            inputs=dataset_inputs(plan, "trial"),
            metric=space.objective.key,
        )
        callbacks = [tracking, self.stops.watcher(plan.sweep), *self.extra_callbacks]
        if not plan.quiet:
            callbacks.append(
                ProgressTable(
                    plan.sweep,
                    space.objective.key,
                    [p.name for p in space.params],
                    waiting_reason=lambda: ray_session.waiting_reason(plan),
                )
            )
        t0 = time.perf_counter()
        if self.stops.received:
            raise KeyboardInterrupt
        results = search.build_tuner(plan, callbacks, self._study_attrs(parent), self.trial).fit()
        trials = Stage(
            time.perf_counter() - t0,
            epochs_shared=sum(float((r.metrics or {}).get("pretraining/shared_epochs", 0.0)) for r in results),
        )
        return self._outcome(results, tracking, pretrained, trials)

    def _outcome(self, results, tracking, pretrained: Stage, trials: Stage) -> SearchOutcome:
        plan = self.plan
        rows = rows_from_results(results, plan.space, plan.layout.checkpoint_uri)
        if self.stops.received:  # a trial the stop cut short has no final report either: it was killed, not pruned
            rows = [
                r if r.trial in tracking.ended or r.outcome == "failed" else replace(r, outcome="killed") for r in rows
            ]
            tracking.close_unfinished()
        report.leaderboard(plan, rows)
        report.faults(tracking.queue.faults_summary())
        choice = choose_winner(rows, plan.space.objective, plan.space.search.promote_se)
        return SearchOutcome(rows, choice, pretrained, trials, list(tracking.result_seconds))

    def _study_attrs(self, parent: SweepRun) -> dict[str, str]:
        plan = self.plan
        return {
            "sweep": plan.sweep,
            "mlflow_tracking_uri": plan.tracking_uri,
            "mlflow_experiment_id": parent.experiment_id,
            "mlflow_parent_run_id": parent.run_id,
            "objective": plan.space.objective.describe(),
        }

    def _pretrain(self, consumers: list, evaluate: bool, name: str) -> Stage:
        """The snapshots these trainings (config, seeds) can share (orchestrator.pretraining)."""
        jobs = pretraining.jobs_for(self.plan, consumers, evaluate)
        if not jobs:
            return Stage()
        print(
            f"shared pretraining: {len(jobs)} seed(s), each for {max(j.consumers for j in jobs)} trainings", flush=True
        )
        done = pretraining.run_stage(self.plan, jobs, name, [self.stops.watcher(self.plan.sweep)])
        if done.failed and not self.stops.received:
            print(
                f"warning: shared pretraining failed for {', '.join(done.failed)}; those trainings pretrain themselves",
                file=sys.stderr,
            )
        return Stage(done.seconds, done.made, done.seed_epochs)

    def _trial_params(self, tune_config: dict[str, Any]) -> dict[str, Any]:
        """A trial's whole TrainConfig, as MLflow parameters."""
        return self.plan.space.train_config(self.plan.space.sampled(tune_config)).to_dict()

    def _run_name(self, trial_id: str, tune_config: dict[str, Any]) -> str:
        sampled = self.plan.space.sampled(tune_config)
        shown = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in list(sampled.items())[:3])
        return f"{trial_id} {shown}".strip()

    # --- the winner ------------------------------------------------------------------------------------------------
    def _summarise_winner(self, parent: SweepRun, rows: list[TrialRow], winner: TrialRow, folder: str) -> None:
        """Score the winner on the report targets (only now, only the winner), log it, its model and the plots."""
        plan = self.plan
        state = load_state(winner.checkpoint)
        model, config = model_from_state(state)
        size = (config.image_height, config.image_width)
        scores = score_targets(model, [open_target(t, size) for t in plan.report], config)
        print(f"  {plan.space.objective.key} {winner.objective:.4f}")
        for name, s in scores.items():
            print(f"  report target {name}: mAP {s['mAP']:.4f}  rank-1 {s['rank1']:.4f}")
        parent.set_tags({S.BEST_TRIAL: winner.trial, S.BEST_CHECKPOINT: winner.checkpoint})
        parent.log_metrics(
            {
                plan.space.objective.key: winner.objective,
                **{f"report/{n}/{k}": v for n, s in scores.items() for k, v in s.items()},
            }
        )
        out = os.path.join(folder, "winner")
        os.makedirs(out, exist_ok=True)
        write_model_files(out, state)
        parent.log_artifact(os.path.join(out, "model.pt"), "winner")
        parent.log_artifact(os.path.join(out, "config.json"), "winner")
        for path in save_plots(self._study(rows), folder, metric=plan.space.objective.key):
            parent.log_artifact(path, "plots")

    def _study(self, rows: list[TrialRow]):
        """The study of record (real times, every intermediate value), or one made from the rows if unreadable."""
        try:
            return optuna.load_study(study_name=self.plan.sweep, storage=open_study_storage(self.plan.study_storage))
        except (KeyError, PlanError) as exc:
            print(f"  (plots from the trials' results: the study of record is unreadable: {exc})")
            return study_of(rows, self.plan.space)

    def _verify(self, parent: SweepRun, winner: TrialRow) -> Stage:
        """Retrain the arms on fresh seeds, in rounds (orchestrator.verify), and log the paired differences; what
        its pretraining stages trained and its trainings shared. A failed arm leaves the winner unverified."""
        plan = self.plan
        print(f"\nverifying the winner: {verify.plan_line(plan, winner.params)}", flush=True)
        callbacks: list = [self.stops.watcher(plan.sweep)]
        if not plan.quiet:
            callbacks.append(ProgressTable(f"{plan.sweep}-verify", REPORT_MAP, ["job"], every_s=30.0))
        stages: list[Stage] = []

        def pretrain(indices: list[int]) -> None:
            stages.append(
                self._pretrain(verify.consumers(plan, winner.params, indices), evaluate=False, name="pretrain-verify")
            )

        try:
            outcome = verify.run(
                plan, winner.params, callbacks, stopped=lambda: bool(self.stops.received), pretrain=pretrain, log=print
            )
        except verify.VerificationError as exc:
            print(f"\nwarning: {exc}; the winner stays unverified", file=sys.stderr)
            parent.set_tags({S.VERIFICATION: json.dumps({"error": str(exc)})})
            return Stage()
        total = Stage()
        for stage in stages:
            total = total.add(stage)
        if outcome is None:  # stopped
            return total
        print(f"verification on {outcome.seeds} fresh seeds, report-target mAP:")
        for line in outcome.lines():
            print(f"  {line}")
        parent.set_tags({S.VERIFICATION: verify.to_json(outcome)})
        parent.log_metrics(outcome.metrics())
        return total.add(Stage(epochs_shared=outcome.shared_epochs))


if __name__ == "__main__":
    sys.exit(main())
