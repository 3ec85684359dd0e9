"""The study of record: what optuna-dashboard shows must be the trials as they ran, stepped by the evaluation
index (a resumed trial's Tune iteration starts again at 1), with a trial the scheduler stopped marked pruned."""

from __future__ import annotations

from collections import deque

import optuna
import pytest

from orchestrator.search import StudySearch
from orchestrator.tracking import schema as S


def _space(trial: optuna.Trial) -> None:
    trial.suggest_float("beta", 0.01, 1.0, log=True)


def _search(storage: optuna.storages.BaseStorage | None = None) -> StudySearch:
    return StudySearch(
        space=_space,
        metric="transfer_mAP",
        mode="max",
        study_name="s",
        storage=storage or optuna.storages.InMemoryStorage(),
        sampler=optuna.samplers.RandomSampler(seed=0),
    )


def _result(value: float, evaluation: int, iteration: int, final: bool = False) -> dict:
    return {"transfer_mAP": value, S.EVALUATION: evaluation, "training_iteration": iteration, S.FINAL: float(final)}


def test_intermediate_values_follow_the_evaluation_index_across_a_resume():
    search = _search()
    assert search.suggest("t1") is not None
    search.on_trial_result("t1", _result(0.10, 1, 1))
    search.on_trial_result("t1", _result(0.12, 2, 2))
    search.on_trial_result("t1", _result(0.15, 3, 1))  # resumed from a checkpoint: Tune counts from 1 again
    search.on_trial_complete("t1", _result(0.18, 4, 2, final=True))
    (trial,) = search._ot_study.trials
    assert trial.state == optuna.trial.TrialState.COMPLETE and trial.value == pytest.approx(0.18)
    assert trial.intermediate_values == pytest.approx({1: 0.10, 2: 0.12, 3: 0.15})


def test_a_trial_stopped_at_its_first_evaluation_is_pruned_with_that_value():
    search = _search()
    search.suggest("t1")
    search.on_trial_complete("t1", _result(0.07, 1, 1))  # Tune hands the stopping result to on_trial_complete only
    (trial,) = search._ot_study.trials
    assert trial.state == optuna.trial.TrialState.PRUNED and trial.intermediate_values == pytest.approx({1: 0.07})


def test_a_failed_trial_is_failed_not_pruned():
    search = _search()
    search.suggest("t1")
    search.on_trial_result("t1", _result(0.07, 1, 1))
    search.on_trial_complete("t1", None, error=True)
    (trial,) = search._ot_study.trials
    assert trial.state == optuna.trial.TrialState.FAIL


def test_evaluations_a_resumed_trial_resends_are_recorded_once_without_warnings():
    import json
    import warnings

    search = _search()
    search.suggest("t1")
    search.on_trial_result("t1", _result(0.10, 1, 1))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        # evaluation 2 never reached Tune; the trial resumes from its checkpoint and resends it with 1
        search.on_trial_result("t1", dict(_result(0.12, 2, 1), **{S.REPLAY: json.dumps([_result(0.99, 1, 1)])}))
    assert not [w for w in caught if "already reported" in str(w.message)]
    search.on_trial_complete("t1", _result(0.18, 3, 2, final=True))
    (trial,) = search._ot_study.trials
    assert trial.intermediate_values == pytest.approx({1: 0.10, 2: 0.12})  # the study's own value of 1 is kept


def test_start_points_are_the_first_trials_and_carry_their_names():
    def space(trial: optuna.Trial) -> None:
        trial.suggest_float("beta", 0.01, 1.0, log=True)

    search = StudySearch(
        space=space,
        metric="transfer_mAP",
        mode="max",
        study_name="s",
        storage=optuna.storages.InMemoryStorage(),
        sampler=optuna.samplers.RandomSampler(seed=0),
        start_points=[("defaults", {"beta": 0.1}), ("start1", {"beta": 0.5})],
    )
    first, second, third = search.suggest("t1"), search.suggest("t2"), search.suggest("t3")
    assert first == {"beta": 0.1, S.START_POINT_KEY: "defaults"}
    assert second == {"beta": 0.5, S.START_POINT_KEY: "start1"}
    assert S.START_POINT_KEY not in third
    assert [t.user_attrs.get("start_point") for t in search._ot_study.trials] == ["defaults", "start1", None]


def test_asha_records_a_start_points_results_but_never_stops_it():
    from types import SimpleNamespace

    from ray.tune.schedulers import TrialScheduler

    from orchestrator.search import StartPointASHA

    asha = StartPointASHA(time_attr=S.EVALUATION, max_t=8, grace_period=2, reduction_factor=2, metric="m", mode="max")
    trials = [
        SimpleNamespace(trial_id=f"t{i}", config={S.START_POINT_KEY: "defaults"} if i == 0 else {}) for i in range(3)
    ]
    for t in trials:
        asha.on_trial_add(None, t)
    assert asha.on_trial_result(None, trials[1], {S.EVALUATION: 2, "m": 0.9}) == TrialScheduler.CONTINUE
    assert asha.on_trial_result(None, trials[2], {S.EVALUATION: 2, "m": 0.8}) == TrialScheduler.STOP
    assert asha.on_trial_result(None, trials[0], {S.EVALUATION: 2, "m": 0.1}) == TrialScheduler.CONTINUE  # protected


def test_a_trial_stopped_at_its_first_report_keeps_the_evaluations_it_resent_with_it():
    """A trial that started from shared pretraining sends the evaluations made inside it with its first report;
    when ASHA stops it right there, that report reaches only on_trial_complete."""
    import json

    search = _search()
    search.suggest("t1")
    search.on_trial_complete("t1", dict(_result(0.20, 2, 1), **{S.REPLAY: json.dumps([_result(0.12, 1, 1)])}))
    (trial,) = search._ot_study.trials
    assert trial.state == optuna.trial.TrialState.PRUNED
    assert trial.intermediate_values == pytest.approx({1: 0.12, 2: 0.20})


def test_the_study_names_its_metric_and_links_each_trial_to_tune_and_mlflow():
    """optuna-dashboard labelled the objective "Objective 0", and its trials carried no Tune or MLflow id."""
    from types import SimpleNamespace

    from orchestrator.tracking.callback import LiveCallback

    def space(trial: optuna.Trial) -> None:
        trial.suggest_float("beta", 0.01, 1.0, log=True)

    tracking = LiveCallback().register("tracking:linked")
    tracking.queue = SimpleNamespace(run_ids={})
    search = StudySearch(
        space=space,
        metric="transfer_mAP",
        mode="max",
        study_name="linked",
        storage=optuna.storages.InMemoryStorage(),
        sampler=optuna.samplers.RandomSampler(seed=0),
        study_attrs={"sweep": "linked", "mlflow_experiment_id": "7"},
        tracking_key="tracking:linked",
    )
    assert search._ot_study.metric_names == ["transfer_mAP"]
    assert search._ot_study.user_attrs == {"sweep": "linked", "mlflow_experiment_id": "7"}
    search.suggest("t1")
    search.on_trial_result("t1", _result(0.1, 1, 1))  # the run does not exist yet
    tracking.queue.run_ids["t1"] = "run-abc"
    search.on_trial_result("t1", _result(0.2, 2, 2))
    search.on_trial_complete("t1", _result(0.3, 3, 3, final=True))
    (trial,) = search._ot_study.trials
    assert trial.user_attrs == {"tune_trial_id": "t1", "mlflow_run_id": "run-abc"}


@pytest.mark.parametrize("sampler", ["tpe", "random", "cmaes", "gp"])
@pytest.mark.parametrize("path", ["search_spaces/thresholds.yaml", "search_spaces/adin.yaml"])
def test_every_sampler_the_schema_allows_suggests_on_the_shipped_spaces(sampler, path):
    """Each sampler past its random start, so its own model suggests (cmaes once needed a package not installed)."""
    import dataclasses
    import warnings

    from orchestrator.search import make_sampler
    from orchestrator.space import SAMPLERS, load_space

    assert sampler in SAMPLERS
    space = load_space(path)
    settings = dataclasses.replace(space.search, sampler=sampler, seed=3, startup_trials=None)
    study = optuna.create_study(direction="maximize", sampler=make_sampler(settings))
    define = space.define_by_run()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # cmaes and gp fall back to random for parameters under `when:`
        for i in range(settings.random_start + 3):
            trial = study.ask()
            define(trial)
            space.train_config(trial.params).validate()
            study.tell(trial, float(i % 3))
    assert len(study.trials) == settings.random_start + 3


def test_a_gp_search_past_its_scale_is_warned_about_and_tpe_is_not():
    import dataclasses

    from orchestrator.search import GP_SLOW_AFTER, sampler_warning
    from orchestrator.space import load_space

    settings = load_space("search_spaces/thresholds.yaml").search
    big = dataclasses.replace(settings, sampler="gp", num_samples=GP_SLOW_AFTER + 1)
    assert "search.sampler gp with num_samples" in sampler_warning(big) and "tpe" in sampler_warning(big)
    assert sampler_warning(dataclasses.replace(big, num_samples=GP_SLOW_AFTER)) is None
    assert sampler_warning(dataclasses.replace(big, sampler="tpe", num_samples=5000)) is None


class _HeldStorage(optuna.storages.InMemoryStorage):
    """A study storage whose intermediate-value writes wait for `release` (a slow database), or fail."""

    def __init__(self, fail: bool = False) -> None:
        super().__init__()
        import threading

        self.release, self.fail, self.writes = threading.Event(), fail, 0

    def set_trial_intermediate_value(self, trial_id: int, step: int, intermediate_value: float) -> None:
        self.release.wait(10)
        if self.fail:
            raise RuntimeError("database is locked")
        self.writes += 1
        super().set_trial_intermediate_value(trial_id, step, intermediate_value)


def test_a_result_never_waits_on_the_study_storage_and_a_trial_is_told_after_its_values():
    """Tune's loop handed each result to trial.report inline: the study's write was the driver's p99 per result."""
    import threading
    import time

    storage = _HeldStorage()
    search = _search(storage)
    search.suggest("t1")
    started = time.perf_counter()
    for k in range(1, 4):
        search.on_trial_result("t1", _result(0.1 * k, k, k))
    assert time.perf_counter() - started < 1.0 and storage.writes == 0  # queued, the storage still held
    threading.Timer(0.3, storage.release.set).start()
    search.on_trial_complete("t1", _result(0.4, 4, 4, final=True))  # waits for the queue, then tells
    (trial,) = search._ot_study.trials
    assert storage.writes == 3 and trial.intermediate_values == pytest.approx({1: 0.1, 2: 0.2, 3: 0.3})
    assert trial.state == optuna.trial.TrialState.COMPLETE


def test_a_study_write_that_fails_is_raised_when_the_trial_completes():
    storage = _HeldStorage(fail=True)
    storage.release.set()
    search = _search(storage)
    search.suggest("t1")
    search.on_trial_result("t1", _result(0.1, 1, 1))
    with pytest.raises(RuntimeError, match="database is locked"):
        search.on_trial_complete("t1", _result(0.2, 2, 2, final=True))


def test_writes_still_queued_are_saved_with_the_searcher_and_applied_on_restore(tmp_path):
    """Tune saves the searcher (`save`, a pickle of its state) and restores it on --resume (`restore`)."""
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(tmp_path / "study.log")))
    search = _search(storage)
    search.suggest("t1")
    search._writes._thread = _never_started()  # nothing applied before the save: the writes are all pending
    search.on_trial_result("t1", _result(0.1, 1, 1))
    search.on_trial_result("t1", _result(0.2, 2, 2))
    assert len(search._writes) == 2
    search.save(str(tmp_path / "searcher.pkl"))
    restored = _search(storage)
    restored.restore(str(tmp_path / "searcher.pkl"))
    restored.on_trial_complete("t1", _result(0.3, 3, 3, final=True))
    (trial,) = optuna.load_study(study_name="s", storage=storage).trials
    assert trial.intermediate_values == pytest.approx({1: 0.1, 2: 0.2}) and trial.value == pytest.approx(0.3)


def _never_started():
    """A thread object that reports itself alive, so StudyWrites starts no writer of its own."""
    import threading

    class Alive(threading.Thread):
        def is_alive(self) -> bool:
            return True

    return Alive(target=lambda: None)


def test_a_diverged_trial_is_told_only_after_its_queued_values_are_written():
    """The diverged branch told the study before the queue drained: the writer's report then met a finished trial,
    and its error ended the sweep at the next trial's completion."""
    import threading

    storage = _HeldStorage()
    search = _search(storage)
    search.suggest("t1")
    search.on_trial_result("t1", _result(0.1, 1, 1))
    threading.Timer(0.3, storage.release.set).start()
    search.on_trial_complete("t1", {S.DIVERGED: 1.0, S.DIVERGED_WHY: "seed 0 diverged at step 9", S.FINAL: 0.0})
    search._writes.flush()  # nothing failed behind the tell
    (trial,) = search._ot_study.trials
    assert trial.state == optuna.trial.TrialState.FAIL and trial.intermediate_values == pytest.approx({1: 0.1})
    assert trial.user_attrs["diverged"] == "seed 0 diverged at step 9"


@pytest.mark.parametrize("in_flight,start", [(1, 4), (2, 4), (3, 5), (2, 1)])
def test_the_random_start_is_the_number_of_trials_drawn_at_random_whatever_is_in_flight(in_flight, start):
    """Tune asks for a trial as soon as one in flight ends; Optuna counts finished trials only, so passed through
    unchanged a random start of 4 with 2 in flight drew 5 at random. Replayed here: ask `in_flight`, then tell the
    oldest and ask the next, as Tune's ConcurrencyLimiter does, and record which draws were random."""
    import dataclasses

    from orchestrator.search import make_sampler
    from orchestrator.space import load_space

    space = load_space("search_spaces/thresholds.yaml")
    settings = dataclasses.replace(
        space.search, sampler="tpe", seed=1, num_samples=12, startup_trials=start, max_concurrent=in_flight
    )
    sampler = make_sampler(settings)
    drawn_at_random: set[int] = set()
    independent = sampler._random_sampler.sample_independent

    def record(study, trial, name, distribution):
        drawn_at_random.add(trial.number)
        return independent(study, trial, name, distribution)

    sampler._random_sampler.sample_independent = record
    study = optuna.create_study(direction="maximize", sampler=sampler)
    define, running = space.define_by_run(), deque()
    for _ in range(settings.num_samples):
        if len(running) == in_flight:
            done = running.popleft()
            study.tell(done, float(done.number % 3))
        trial = study.ask()
        define(trial)
        running.append(trial)
    assert drawn_at_random == set(range(max(start, in_flight)))
