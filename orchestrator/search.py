"""The search of a sweep, as Tune runs it: Optuna's sampler (`make_sampler`) through `StudySearch`, with the study
kept in Optuna's own storage and the space's start points tried first; ASHA, which never stops a start point early;
and the Tuner that runs the trials (`build_tuner`), restored from the sweep's storage on --resume."""

from __future__ import annotations

import threading
import warnings
from collections import deque
from typing import Any, Callable, Mapping, Sequence

import optuna
from ray import tune
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, TrialScheduler
from ray.tune.search import ConcurrencyLimiter
from ray.tune.search.optuna import OptunaSearch

from orchestrator.plan import SweepPlan, open_study_storage
from orchestrator.ray_session import trains_in_process, trial_resources, tune_run_config
from orchestrator.space import SearchSettings
from orchestrator.tracking import schema
from orchestrator.tracking.callback import live_callback
from orchestrator.trial import run_trial


class StudyWrites:
    """The study's writes made for each result (a trial's intermediate values, its MLflow run link), applied in
    order by one thread, so that Tune's loop never waits on the study's storage for them: Optuna's `trial.report`
    is a storage transaction per call, and it was the driver's p99 per result (147 of 149 ms on SQLite, 576 ms on
    PostgreSQL, bench/sweep_scale.py). Only optuna-dashboard reads these (ASHA is Tune's, on Tune's own results).

    A trial's completion (Optuna's `tell`) stays on Tune's loop and waits for the queue first (`flush`), so the
    trial's values are in the study before it is told; a write that failed is raised there, ending the sweep as it
    did when the write was made inline (the sampler reads no intermediate values, so suggestions need not wait).
    Writes still queued are part of the searcher's saved state (Tune pickles the searcher), so a resumed sweep
    applies them."""

    def __init__(self) -> None:
        self._pending: deque[tuple[optuna.Trial, str, Any, Any]] = deque()
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def report(self, trial: optuna.Trial, value: float, step: int) -> None:
        self._submit((trial, "report", value, step))

    def set_user_attr(self, trial: optuna.Trial, key: str, value: Any) -> None:
        self._submit((trial, "attr", key, value))

    def _submit(self, op: tuple[optuna.Trial, str, Any, Any]) -> None:
        with self._cond:
            self._pending.append(op)
            self._cond.notify_all()
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._work, daemon=True, name="study-writer")
                self._thread.start()

    def flush(self) -> None:
        """Wait until every queued write is applied; raise the first that failed."""
        with self._cond:
            while self._pending:
                self._cond.wait(0.5)
            error, self._error = self._error, None
        if error is not None:
            raise error

    def __len__(self) -> int:
        with self._cond:
            return len(self._pending)

    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._pending:
                    self._cond.wait()
                trial, kind, a, b = self._pending[0]
            try:
                if kind == "report":
                    with warnings.catch_warnings():  # a step the study holds is kept, as Optuna does, unwarned
                        warnings.filterwarnings("ignore", message="The reported value is ignored")
                        trial.report(a, b)
                else:
                    trial.set_user_attr(a, b)
            except Exception as exc:  # raised by the next flush, on Tune's loop
                with self._cond:
                    self._error = self._error or exc
            with self._cond:
                self._pending.popleft()
                self._cond.notify_all()

    def __getstate__(self) -> dict[str, Any]:
        with self._cond:
            return {"pending": list(self._pending)}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__()
        for op in state.get("pending", []):
            self._submit(op)


class StudySearch(OptunaSearch):
    """OptunaSearch whose study of record (what optuna-dashboard shows) holds the trials as they were.

    - Intermediate values are stepped by the evaluation index (`schema.evaluation_of`), not Tune's
      training_iteration, which starts again at 1 when a trial resumes (Optuna ignores a repeated step).
    - The evaluations a resumed trial resends (schema.replayed) are recorded where the study lacks them.
    - A trial that diverged (its weights went non-finite; its last report has no objective) is FAILED, with the
      reason as the user attribute `diverged`.
    - A trial the scheduler stopped early (its last report is not `final`) is PRUNED, at its last value: Tune hands
      that last result to `on_trial_complete` only (never to `on_trial_result`), so it is recorded here first.
    - The space's start points (search.start_from) are the study's first trials (Optuna's enqueue_trial); each
      carries its name in its Tune config (schema.START_POINT_KEY) and as the Optuna user attribute `start_point`,
      so the winner rule knows its incumbent and the scheduler never stops one early.
    - The writes made for each result go through `StudyWrites` (a thread), never inline on Tune's loop.
    """

    def __init__(
        self,
        *args: Any,
        start_points: Sequence[tuple[str, Mapping[str, Any]]] = (),
        study_attrs: Mapping[str, str] | None = None,
        tracking_key: str = "",
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, points_to_evaluate=[dict(p) for _, p in start_points] or None, **kwargs)
        self._start_points = [(name, dict(point)) for name, point in start_points]
        self._handed = 0  # start points given out so far (Optuna hands enqueued trials out first, in order)
        self._tracking_key = tracking_key  # the sweep's MLflow callback (a LiveCallback key): each trial's run id
        self._writes = StudyWrites()
        self._linked: set[str] = set()  # trials whose MLflow run id is written (or queued)
        if self._ot_study is not None:  # what optuna-dashboard shows: the metric's name, where the runs are
            with warnings.catch_warnings():  # experimental since Optuna 3.2, and the only way to name it
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                self._ot_study.set_metric_names([self.metric])
            for key, value in (study_attrs or {}).items():
                self._ot_study.set_user_attr(key, value)

    def _link(self, trial_id: str) -> None:
        """The Optuna trial's user attributes name its Tune trial and its MLflow run (once the run exists)."""
        trial = self._ot_trials.get(trial_id)
        if trial is None or trial_id in self._completed_trials or trial_id in self._linked:
            return
        queue = getattr(live_callback(self._tracking_key), "queue", None)
        run_id = queue.run_ids.get(trial_id) if queue is not None else None
        if run_id:
            self._writes.set_user_attr(trial, "mlflow_run_id", run_id)
            self._linked.add(trial_id)

    def suggest(self, trial_id: str) -> dict | None:
        new = trial_id not in self._ot_trials
        params = super().suggest(trial_id)
        if new and params is not None:
            self._ot_trials[trial_id].set_user_attr("tune_trial_id", trial_id)
        if new and params is not None and self._handed < len(self._start_points):
            name, point = self._start_points[self._handed]
            self._handed += 1
            if all(params.get(k) == v for k, v in point.items()):
                self._ot_trials[trial_id].set_user_attr("start_point", name)
                params = {**params, schema.START_POINT_KEY: name}
        return params

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if trial_id in self._completed_trials or trial_id not in self._ot_trials:
            return
        self._link(trial_id)
        for report in (*schema.replayed(result), result):
            self._report(trial_id, report)

    def _report(self, trial_id: str, result: dict) -> None:
        if self.metric not in result:
            return
        self._writes.report(self._ot_trials[trial_id], result[self.metric], schema.evaluation_of(result))

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        self._link(trial_id)
        if result is not None and result.get(schema.DIVERGED):  # no objective: a failed trial, with the reason
            if trial_id in self._ot_trials and trial_id not in self._completed_trials:
                self._ot_trials[trial_id].set_user_attr("diverged", str(result.get(schema.DIVERGED_WHY, "")))
            result, error = None, True
        elif result is not None and not error and not result.get(schema.FINAL):
            if trial_id not in self._completed_trials and trial_id in self._ot_trials:
                for report in (*schema.replayed(result), result):  # stopped at its first report: with what it resent
                    self._report(trial_id, report)
            result = None  # Optuna then records the trial as pruned
        self._writes.flush()  # every branch: the trial's queued values go in before it is told
        super().on_trial_complete(trial_id, result, error)

    def __setstate__(self, state: dict[str, Any]) -> None:  # a searcher saved before StudyWrites existed
        self.__dict__.update(state)
        self.__dict__.setdefault("_writes", StudyWrites())
        self.__dict__.setdefault("_linked", set())


class StartPointASHA(ASHAScheduler):
    """ASHA that records a start point's results at its rungs (they set the cutoffs others are held to) but never
    stops one: the winner rule compares every finished trial with the best start point, which must therefore train
    its whole budget."""

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        decision = super().on_trial_result(tune_controller, trial, result)
        if (trial.config or {}).get(schema.START_POINT_KEY):
            return TrialScheduler.CONTINUE
        return decision


# Optuna's GP refits on every completed trial, so its suggestion time grows with the study: on 2 cores (with the
# study in SQLite, bench/sampler_scale.py, docs/benchmarks.md) 0.2-0.5 s at 100 completed trials, 1.6-2.4 s at 1,000,
# 5-7 s at 2,000, where TPE takes 24-44, 51-155 and 46-224 ms. A suggestion holds Tune's loop, so past this many
# trials GP is named in a warning, with TPE as the alternative.
GP_SLOW_AFTER = 500


def sampler_warning(settings: SearchSettings) -> str | None:
    """One line for a sampler whose suggestions will slow the sweep at its size; None when it will not."""
    if settings.sampler == "gp" and settings.num_samples > GP_SLOW_AFTER:
        return (
            f"search.sampler gp with num_samples {settings.num_samples}: each suggestion refits on every finished "
            f"trial, about 1.6 s at 1,000 and 5 s at 2,000 on 2 cores, holding Tune's loop; "
            f"sampler tpe takes under 0.25 s there (bench/sampler_scale.py)"
        )
    return None


def make_sampler(settings: SearchSettings) -> optuna.samplers.BaseSampler:
    """The space's sampler, its random start as `SearchSettings.random_start` says."""
    if settings.sampler == "random":
        return optuna.samplers.RandomSampler(seed=settings.seed)
    if settings.sampler == "tpe":
        # constant liar: a trial still running counts as a poor one, so parallel workers do not all sample the
        # same promising point (Optuna's advice for TPE with concurrent trials)
        return optuna.samplers.TPESampler(
            seed=settings.seed, n_startup_trials=startup_finished(settings), constant_liar=settings.max_concurrent > 1
        )
    cls = {"cmaes": optuna.samplers.CmaEsSampler, "gp": optuna.samplers.GPSampler}[settings.sampler]
    return cls(seed=settings.seed, n_startup_trials=startup_finished(settings))


def startup_finished(settings: SearchSettings) -> int:
    """Optuna's `n_startup_trials` for the space's random start. Optuna counts *finished* trials, and Tune asks for
    the next trial as soon as one of the `max_concurrent` in flight ends, so from then on each draw sees
    `max_concurrent - 1` trials still running: passed through unchanged, a random start of 4 with 2 in flight drew 5
    at random (of a main job's 8, the model chose only 3). The first `max_concurrent` draws see nothing finished and
    are random whatever this is."""
    return max(1, settings.random_start - (settings.max_concurrent - 1)) if settings.random_start else 0


def make_scheduler(plan: SweepPlan) -> TrialScheduler:
    s = plan.space.scheduler
    if s.type != "asha":
        return FIFOScheduler()
    return StartPointASHA(
        time_attr=schema.EVALUATION, max_t=s.max_t, grace_period=s.grace_period, reduction_factor=s.reduction_factor
    )


def build_tuner(
    plan: SweepPlan,
    callbacks: list,
    study_attrs: dict[str, str] | None = None,
    trial: Callable[[dict[str, Any], SweepPlan], None] | None = None,
) -> tune.Tuner:
    """The search's Tuner: a trial per sampled config (`trial(tune_config, plan)`; None: orchestrator.trial.run_trial;
    bench/sweep_scale.py gives a stand-in that measures this whole path at scale without training), restored on
    --resume."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # no "study created in memory"
    space = plan.space
    trainable = tune.with_resources(tune.with_parameters(trial or run_trial, plan=plan), trial_resources(plan))
    path, fs, name = plan.layout.search_experiment()
    if plan.resume:
        return tune.Tuner.restore(
            plan.layout.experiment_path(path, fs, name),
            trainable=trainable,
            resume_unfinished=True,
            resume_errored=True,
            storage_filesystem=fs,
        )
    searcher = StudySearch(
        space=space.define_by_run(),
        metric=space.objective.key,
        mode=space.objective.mode,
        sampler=make_sampler(space.search),
        study_name=plan.sweep,
        storage=open_study_storage(plan.study_storage),
        start_points=space.search.start_from,
        study_attrs=study_attrs,
        tracking_key=f"tracking:{plan.sweep}",
    )
    return tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            search_alg=ConcurrencyLimiter(searcher, max_concurrent=space.search.max_concurrent),
            scheduler=make_scheduler(plan),
            num_samples=space.search.num_samples,
            metric=space.objective.key,
            mode=space.objective.mode,
            reuse_actors=trains_in_process(plan),
        ),
        run_config=tune_run_config(plan, name, path, fs, callbacks),
    )
