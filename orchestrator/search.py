"""The searcher of a sweep: Optuna's, through Tune, with the study kept in Optuna's own storage."""

from __future__ import annotations

from ray.tune.search.optuna import OptunaSearch

from orchestrator.tracking import schema


class StudySearch(OptunaSearch):
    """OptunaSearch whose study tells a trial the scheduler stopped early (no final report) as PRUNED, so the study
    of record (and optuna-dashboard) shows complete / pruned / failed trials as they were, with the intermediate
    values Tune reported at each evaluation."""

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if result is not None and not error and not result.get(schema.FINAL):
            result = None  # Optuna then records the trial as pruned, at its last intermediate value
        super().on_trial_complete(trial_id, result, error)
