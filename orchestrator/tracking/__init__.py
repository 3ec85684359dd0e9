"""MLflow tracking of a sweep: `schema` (every tag and metric name), `store` (the write queue with its outage policy,
the parent run) and `callback` (the Tune callback: imported on its own, since it needs Ray)."""

from orchestrator.tracking.store import (
    DEFAULT_TRACKING_URI,
    SweepRun,
    TrackingError,
    TrackingQueue,
    absolute_tracking_uri,
    check_tracking_uri,
    code_version,
    experiment_id,
    redact,
    ui_url,
)

__all__ = [
    "DEFAULT_TRACKING_URI",
    "SweepRun",
    "TrackingError",
    "TrackingQueue",
    "absolute_tracking_uri",
    "check_tracking_uri",
    "code_version",
    "experiment_id",
    "redact",
    "ui_url",
]
