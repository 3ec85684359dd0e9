"""The searcher of a sweep: Optuna's, through Tune, with the study kept in Optuna's own storage."""

from __future__ import annotations

from ray.tune.search.optuna import OptunaSearch

from orchestrator.tracking import schema


class StudySearch(OptunaSearch):
    """OptunaSearch whose study of record (what optuna-dashboard shows) holds the trials as they were.

    - Intermediate values are stepped by the evaluation index (`schema.evaluation_of`), not Tune's
      training_iteration, which starts again at 1 when a trial resumes (Optuna ignores a repeated step).
    - A trial the scheduler stopped early (its last report is not `final`) is PRUNED, at its last value: Tune hands
      that last result to `on_trial_complete` only (never to `on_trial_result`), so it is recorded here first.
    """

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if trial_id in self._completed_trials or self.metric not in result:
            return
        self._ot_trials[trial_id].report(result[self.metric], schema.evaluation_of(result))

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if result is not None and not error and not result.get(schema.FINAL):
            if trial_id not in self._completed_trials and self.metric in result and trial_id in self._ot_trials:
                self._ot_trials[trial_id].report(result[self.metric], schema.evaluation_of(result))
            result = None  # Optuna then records the trial as pruned
        super().on_trial_complete(trial_id, result, error)
