"""Every MLflow tag, parameter and metric name the sweep writes and `orchestrator.best` reads: one place to look.

A sweep is one MLflow experiment per search space (`name:` in the space file); each sweep is a parent run, each
trial a child run (MLflow's `mlflow.parentRunId` tag nests them in the UI).
"""

from __future__ import annotations

import json

from adin_core.evaluation import EVALUATION, OBJECTIVE

# --- tags on every run -------------------------------------------------------------------------------------------
ROLE = "adin.role"  # "sweep" (parent) or "trial" (child)
ROLE_SWEEP, ROLE_TRIAL = "sweep", "trial"
SWEEP = "adin.sweep"  # the sweep's name, on the parent and on every child
PARENT = "mlflow.parentRunId"
NOTE = "mlflow.note.content"  # a run's description, at the top of its page in the UI
RUN_NAME = "mlflow.runName"

# --- tags on a trial's run ---------------------------------------------------------------------------------------
TRIAL = "adin.trial_id"  # Tune's trial id
CHECKPOINT = "adin.checkpoint"  # URI of the trial's latest checkpoint (local path or s3://)
PHASE = "adin.phase"  # the schedule's phase at the latest evaluation
OUTCOME = "adin.outcome"  # finished | pruned (stopped early by the scheduler) | diverged | failed | killed
OUTCOMES = ("finished", "pruned", "diverged", "failed", "killed")
DIVERGED_REASON = "adin.diverged"  # why a diverged trial stopped (which seed, the step, its losses)
START_POINT = "adin.start_point"  # the name of the known point a trial tried (search.start_from): `defaults`, ...

# --- tags on a sweep's run ---------------------------------------------------------------------------------------
SPACE_FILE = "adin.space_file"
CODE_VERSION = "adin.code_version"
SOURCE = "adin.source"  # shard-set URI of the training data
SELECT = "adin.select"  # JSON list of the select targets' URIs
REPORT = "adin.report"  # JSON list of the report targets' URIs
TARGET_NAMES = "adin.target_names"  # JSON {URI: name}: the <target> in select/<target>/<metric>
STORAGE = "adin.storage"
DATA_VERSIONS = "adin.data_versions"  # JSON {URI: "<dataset>/<version>"}
OVERRIDES = "adin.overrides"  # JSON of the command-line overrides, replayed by --resume
FAULTS = "adin.faults"  # JSON: tracking outages survived, each trial's faults/* metrics
SWEEP_STATE = "adin.state"  # running | complete | partial (interrupted; --resume continues it) | failed
VERIFICATION = "adin.verification"  # JSON: the winner retrained against the baseline and the paper's default
BEST_TRIAL = "adin.best_trial"
BEST_CHECKPOINT = "adin.best_checkpoint"
OBJECTIVE_METRIC = "adin.objective"  # the space's objective metric name, and its mode
OBJECTIVE_MODE = "adin.objective_mode"
STUDY_STORAGE = "adin.study_storage"  # JSON string: where the Optuna study of record lives (no password)
PROMOTE_SE = "adin.promote_se"  # the winner rule's margin (search.promote_se), for orchestrator.best

# --- on the experiment ------------------------------------------------------------------------------------------
VIEW_TAG_PREFIX = "mlflow.sharedViewState."  # MLflow's saved views of the runs table (the UI's "Views" menu)


def view_id(sweep: str) -> str:
    """The id of a sweep's saved view (the viewStateShareKey of its URL)."""
    return f"adin-{sweep}"


# --- in a trial's Tune config -------------------------------------------------------------------------------------
START_POINT_KEY = "start_point"  # beside the sampled parameters: which start point the trial is (StudySearch)

# --- metrics -----------------------------------------------------------------------------------------------------
FINAL = "final"  # 1 on a trial's last report when it trained its whole budget
DIVERGED = "diverged"  # 1 on the last report of a trial whose weights went non-finite (it has no objective)
DIVERGED_STEP = "diverged_step"
DIVERGED_WHY = "diverged_reason"  # a string in the Tune result; the run's DIVERGED_REASON tag
WORLD_SIZE = "world_size"
# EVALUATION (imported above, from adin_core.evaluation): a report's evaluation index, from the training step; the
# step of MLflow's metric history, the scheduler's time axis and the study's intermediate step. Tune's own
# training_iteration starts again from 1 when a trial resumes from a checkpoint, so it is none of those.
REPLAY = "adin.replay"  # JSON list: the reports before a checkpoint, resent when a trial resumes from it (see replayed)
REPORT_PREFIX = "report/"  # report/<target>/<metric>: the winner's report targets, on the parent
TIMING_PREFIX = "timing/"  # the sweep's phases, seconds, on the parent


def evaluation_of(result: dict) -> int:
    """The evaluation index of a Tune result (training_iteration only for results that predate the metric)."""
    return int(result.get(EVALUATION, result.get("training_iteration", 0)))


def replayed(result: dict) -> list[dict]:
    """The earlier reports a resumed trial resent with its first result, oldest first.

    Train hands reports to Tune through a queue; those Tune had not taken when the sweep stopped die with the
    trial's actor, while Train kept their checkpoints. A trial restored from a checkpoint therefore first resends
    that checkpoint's report with every report before it, and the consumers (tracking, the study) take the
    evaluations they have not seen."""
    text = result.get(REPLAY)
    return json.loads(text) if isinstance(text, str) and text else []


__all__ = [name for name in dir() if name.isupper()] + [
    "EVALUATION",
    "OBJECTIVE",
    "evaluation_of",
    "replayed",
    "view_id",
]
