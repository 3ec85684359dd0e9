"""The searcher of a sweep: Optuna's, through Tune, with the study kept in Optuna's own storage."""

from __future__ import annotations

import warnings

from ray.tune.search.optuna import OptunaSearch

from orchestrator.tracking import schema


class StudySearch(OptunaSearch):
    """OptunaSearch whose study of record (what optuna-dashboard shows) holds the trials as they were.

    - Intermediate values are stepped by the evaluation index (`schema.evaluation_of`), not Tune's
      training_iteration, which starts again at 1 when a trial resumes (Optuna ignores a repeated step).
    - The evaluations a resumed trial resends (schema.replayed) are recorded where the study lacks them.
    - A trial that diverged (its weights went non-finite; its last report has no objective) is FAILED, with the
      reason as the user attribute `diverged`.
    - A trial the scheduler stopped early (its last report is not `final`) is PRUNED, at its last value: Tune hands
      that last result to `on_trial_complete` only (never to `on_trial_result`), so it is recorded here first.
    """

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if trial_id in self._completed_trials or trial_id not in self._ot_trials:
            return
        for report in (*schema.replayed(result), result):
            self._report(trial_id, report)

    def _report(self, trial_id: str, result: dict) -> None:
        if self.metric not in result:
            return
        trial, step = self._ot_trials[trial_id], schema.evaluation_of(result)
        with warnings.catch_warnings():  # a step the study holds is kept, as Optuna does, without its warning
            warnings.filterwarnings("ignore", message="The reported value is ignored")
            trial.report(result[self.metric], step)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if result is not None and result.get(schema.DIVERGED):  # no objective: a failed trial, with the reason
            if trial_id in self._ot_trials and trial_id not in self._completed_trials:
                self._ot_trials[trial_id].set_user_attr("diverged", str(result.get(schema.DIVERGED_WHY, "")))
            return super().on_trial_complete(trial_id, None, error=True)
        if result is not None and not error and not result.get(schema.FINAL):
            if trial_id not in self._completed_trials and trial_id in self._ot_trials:
                self._report(trial_id, result)
            result = None  # Optuna then records the trial as pruned
        super().on_trial_complete(trial_id, result, error)
