"""The sweep's own MLflow run, as a sweep opens it: found again by its name on --resume, with what the sweep is (the
space file, code and data versions, the stores, the objective and the winner rule), its datasets as MLflow inputs
(the runs table's Dataset column), the space file and the data versions as artifacts, and the saved view of the
runs table the sweep prints a link to."""

from __future__ import annotations

import hashlib
import json
import os
from typing import TYPE_CHECKING, Any

from orchestrator.tracking import schema as S
from orchestrator.tracking.store import LogInput, SweepRun, TrackingQueue, code_version, experiment_id, without_password

if TYPE_CHECKING:  # the plan is read, never imported: the plan itself checks tracking URIs with tracking.store
    from orchestrator.plan import SweepPlan


def dataset_inputs(plan: SweepPlan, key: str) -> tuple[LogInput, ...]:
    """The sweep's datasets as MLflow inputs (name, manifest digest, URI, role) of the run `key`."""
    select = {t.uri for t in plan.select}
    out = []
    for uri, d in plan.data_versions.items():
        context = "training" if uri == plan.source else ("select" if uri in select else "report")
        digest = hashlib.sha256(json.dumps(sorted(d["files"].items())).encode()).hexdigest()[:16]
        out.append(LogInput(key, f"{d['dataset']}/{d['version']}", digest, uri, context))
    return tuple(out)


def _tags(plan: SweepPlan) -> dict[str, Any]:
    space = plan.space
    return {
        S.SPACE_FILE: plan.space_file,
        S.CODE_VERSION: code_version(),
        S.SOURCE: plan.source,
        S.SELECT: json.dumps([t.uri for t in plan.select]),
        S.REPORT: json.dumps([t.uri for t in plan.report]),
        S.TARGET_NAMES: json.dumps({t.uri: t.name for t in plan.select + plan.report}),
        S.STORAGE: plan.storage,
        S.OVERRIDES: json.dumps(plan.overrides),
        S.OBJECTIVE_METRIC: space.objective.key,
        S.OBJECTIVE_MODE: space.objective.mode,
        S.PROMOTE_SE: str(space.search.promote_se),
        S.STUDY_STORAGE: json.dumps(without_password(plan.study_storage)),
        S.DATA_VERSIONS: json.dumps({u: f"{d['dataset']}/{d['version']}" for u, d in plan.data_versions.items()}),
        S.SWEEP_STATE: "running",
    }


def open_parent(plan: SweepPlan, queue: TrackingQueue, folder: str) -> SweepRun:
    """Open (or find again) the sweep's run and write what it is; `folder` holds the files it logs until the
    queue has sent them. Raises TrackingError when the tracking server stays away for a retry budget."""
    space = plan.space
    parent = SweepRun(queue, experiment_id(plan.tracking_uri, space.name, queue.backoff), plan.sweep)
    parent.open()
    parent.save_view(space.objective.key, space.objective.mode, [p.name for p in space.params])
    parent.set_tags(_tags(plan))
    parent.log_params(
        {
            "space": space.name,
            "sampler": space.search.sampler,
            "sampler.random_start": space.search.random_start,
            "num_samples": space.search.num_samples,
            "scheduler": space.scheduler.type,
            "workers": space.resources.workers,
            "epochs": space.training.epochs,
            **{f"fixed.{k}": v for k, v in space.fixed.items()},
        }
    )
    queue.submit(*dataset_inputs(plan, parent.key))
    versions = os.path.join(folder, "data_versions.json")
    with open(versions, "w") as fh:
        json.dump(plan.data_versions, fh, indent=1)
    parent.log_artifact(plan.space_file, "space")
    parent.log_artifact(versions, "space")
    return parent


__all__ = ["dataset_inputs", "open_parent"]
