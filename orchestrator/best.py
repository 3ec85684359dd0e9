"""`python -m orchestrator.best --export DIR [--sweep NAME] [--register MODEL_NAME]`: take a sweep's winner.

Finds the sweep (its MLflow parent run; the latest sweep when no name is given), picks the finished trial with
the best objective, fetches its checkpoint from local or S3 storage, and writes into DIR (which must not exist):

    model.pt       the weights (a plain state dict: torch.load(..., weights_only=True))
    config.json    the full TrainConfig and the model's class counts
    model_card.md  metrics per target (select and report), data versions, parameters
    model_card.json  the same, machine-readable

With --register the export is logged to the sweep's MLflow run and registered under MODEL_NAME with the alias
`champion`. Nothing here unpickles arbitrary objects.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from typing import Any

import torch

from adin_core.config import TrainConfig
from adin_core.data.shards import ShardError
from adin_core.data.storage import StorageError, resolve
from adin_core.models import ADINModel
from adin_core.train import model_from_state
from orchestrator.tracking import ROLE_TAG, SWEEP_TAG, TrackingError, check_tracking_uri, redact
from orchestrator.trial import OBJECTIVE, STATE_FILE, open_target, score_targets

DEFAULT_TRACKING = "sqlite:///runs/mlflow.db"


class ExportError(RuntimeError):
    """No winner can be exported; the message says why."""


@dataclass
class Winner:
    sweep: str
    parent_run_id: str
    run_id: str
    trial_id: str
    objective: float
    checkpoint_uri: str
    params: dict[str, str]
    metrics: dict[str, float]
    parent_tags: dict[str, str]


def load_state(checkpoint_uri: str) -> dict[str, Any]:
    """A trial checkpoint's training state, from a local folder or s3://."""
    loc = resolve(checkpoint_uri).join(STATE_FILE)
    try:
        data = loc.read_bytes()
    except FileNotFoundError:
        raise ExportError(f"checkpoint {loc.uri} does not exist (storage moved or pruned?)") from None
    except OSError as exc:
        raise StorageError(f"cannot read checkpoint {loc.uri}: {exc}") from None
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)


def score_uris(model: ADINModel, config: TrainConfig, uris: list[str]) -> dict[str, dict[str, float]]:
    """The winner's scores on shard-set URIs (the trials' own scoring, on the CPU)."""
    size = (config.image_height, config.image_width)
    return score_targets(model, [open_target(u, size) for u in uris], config)


def find_winner(tracking_uri: str, sweep: str | None, metric: str = OBJECTIVE, mode: str = "max") -> Winner:
    from mlflow.tracking import MlflowClient

    check_tracking_uri(tracking_uri)
    client = MlflowClient(tracking_uri)
    parents = [r for exp in client.search_experiments()
               for r in client.search_runs([exp.experiment_id], f"tags.`{ROLE_TAG}` = 'sweep'"
                                           + (f" and tags.`{SWEEP_TAG}` = '{sweep}'" if sweep else ""),
                                           order_by=["attributes.start_time DESC"])]
    if not parents:
        raise ExportError(f"no sweep named {sweep!r} in {tracking_uri}" if sweep else
                          f"no sweep found in {tracking_uri}")
    parent = max(parents, key=lambda r: r.info.start_time)
    name = parent.data.tags[SWEEP_TAG]
    children = client.search_runs([parent.info.experiment_id],
                                  f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'", max_results=10000)
    done = [c for c in children if c.info.status == "FINISHED" and metric in c.data.metrics
            and "checkpoint_uri" in c.data.tags]
    if not done:
        raise ExportError(f"sweep {name!r} has no finished trial with a checkpoint yet "
                          f"({len(children)} trial runs)")
    best = (max if mode == "max" else min)(done, key=lambda c: c.data.metrics[metric])
    return Winner(name, parent.info.run_id, best.info.run_id, best.data.tags.get("adin.trial_id", ""),
                  best.data.metrics[metric], best.data.tags["checkpoint_uri"], dict(best.data.params),
                  dict(best.data.metrics), dict(parent.data.tags))


def model_card(winner: Winner, config: TrainConfig, select: dict, report: dict, data: dict) -> tuple[dict, str]:
    card = {"sweep": winner.sweep, "trial_id": winner.trial_id, "mlflow_run_id": winner.run_id,
            "objective": {OBJECTIVE: winner.objective}, "select_targets": select, "report_targets": report,
            "data_versions": data, "config": redact(config.to_dict()), "checkpoint": winner.checkpoint_uri}
    lines = [f"# ADIN model: sweep `{winner.sweep}`, trial `{winner.trial_id}`", "",
             f"Chosen by mean direct-transfer mAP on the select targets ({winner.objective:.4f}); the report targets",
             "were never used to choose.", "", "| target | role | rank-1 | rank-5 | rank-10 | mAP | mINP |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for role, scores in (("select", select), ("report", report)):
        for name, s in scores.items():
            lines.append(f"| {name} | {role} | {s.get('rank1', float('nan')):.4f} | {s.get('rank5', float('nan')):.4f}"
                         f" | {s.get('rank10', float('nan')):.4f} | {s['mAP']:.4f} | {s['mINP']:.4f} |")
    lines += ["", "## Data versions", ""] + [f"- {k}: {v}" for k, v in data.items()]
    lines += ["", "## Parameters", "", "```json", json.dumps(card["config"], indent=1), "```", "",
              "Load: `ADINModel(TrainConfig.from_dict(config['train_config']), **config['model_meta'])` then "
              "`load_state_dict(torch.load('model.pt', weights_only=True))`."]
    return card, "\n".join(lines) + "\n"


def write_model_files(folder: str, state: dict[str, Any]) -> None:
    """The exported model itself: `model.pt` (a plain state dict) and `config.json` (what rebuilds it)."""
    torch.save(state["model"], os.path.join(folder, "model.pt"))
    with open(os.path.join(folder, "config.json"), "w") as fh:
        json.dump({"train_config": state["config"], "model_meta": state["model_meta"]}, fh, indent=1)


def write_export(out_dir: str, state: dict[str, Any], card: dict, card_md: str) -> None:
    """All files into a temporary sibling folder, then one rename: no half-written export under `out_dir`."""
    if os.path.exists(out_dir):
        raise ExportError(f"{out_dir} already exists; choose a new folder (exports are never overwritten)")
    parent = os.path.dirname(os.path.abspath(out_dir)) or "."
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".export-", dir=parent)
    try:
        write_model_files(tmp, state)
        with open(os.path.join(tmp, "model_card.json"), "w") as fh:
            json.dump(card, fh, indent=1)
        with open(os.path.join(tmp, "model_card.md"), "w") as fh:
            fh.write(card_md)
        os.rename(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def load_export(export_dir: str) -> tuple[ADINModel, TrainConfig]:
    """Rebuild an exported model from weights and config only."""
    with open(os.path.join(export_dir, "config.json")) as fh:
        cfg = json.load(fh)
    state = {"config": cfg["train_config"], "model_meta": cfg["model_meta"],
             "model": torch.load(os.path.join(export_dir, "model.pt"), map_location="cpu", weights_only=True)}
    return model_from_state(state)


def export_winner(out_dir: str, *, tracking_uri: str, sweep: str | None = None,
                  register: str | None = None) -> tuple[Winner, dict]:
    winner = find_winner(tracking_uri, sweep)
    if os.path.exists(out_dir):
        raise ExportError(f"{out_dir} already exists; choose a new folder (exports are never overwritten)")
    state = load_state(winner.checkpoint_uri)
    model, config = model_from_state(state)
    select_uris = json.loads(winner.parent_tags.get("adin.select", "[]"))
    report_uris = json.loads(winner.parent_tags.get("adin.report", "[]"))
    select = {k.split("/")[1]: {} for k in winner.metrics if k.startswith("select/")}
    for k, v in winner.metrics.items():
        if k.startswith("select/"):
            _, target, metric = k.split("/", 2)
            select[target][metric] = v
    if not select and select_uris:
        select = score_uris(model, config, select_uris)
    report = score_uris(model, config, report_uris)
    data = json.loads(winner.parent_tags.get("adin.data_versions", "{}"))
    card, md = model_card(winner, config, select, report, data)
    write_export(out_dir, state, card, md)
    if register:
        register_export(out_dir, tracking_uri, winner, register)
    return winner, card


def register_export(out_dir: str, tracking_uri: str, winner: Winner, name: str) -> None:
    """Log the export to the sweep's parent run and register that folder as a model version (alias `champion`).

    The export holds weights, not an MLflow flavour (no pickled model), so the version is created from the
    artifact location directly rather than through mlflow.register_model, which wants a logged model.
    """
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    client.log_artifacts(winner.parent_run_id, out_dir, "export")
    source = client.get_run(winner.parent_run_id).info.artifact_uri.rstrip("/") + "/export"
    try:
        client.create_registered_model(name, tags={"adin.sweep": winner.sweep})
    except MlflowException as exc:
        if "already exists" not in str(exc).lower() and "RESOURCE_ALREADY_EXISTS" not in str(exc):
            raise
    mv = client.create_model_version(name, source=source, run_id=winner.parent_run_id,
                                     tags={"adin.trial_id": winner.trial_id, "objective": f"{winner.objective:.6f}"})
    client.set_registered_model_alias(name, "champion", mv.version)
    print(f"registered {name} version {mv.version} (alias 'champion') from {source}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m orchestrator.best", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--export", required=True, metavar="DIR", help="folder to create (must not exist)")
    ap.add_argument("--sweep", help="sweep name (default: the latest sweep)")
    ap.add_argument("--register", metavar="MODEL_NAME", help="register in the MLflow model registry")
    ap.add_argument("--tracking-uri", default=os.environ.get("MLFLOW_TRACKING_URI", DEFAULT_TRACKING))
    args = ap.parse_args(argv)
    try:
        winner, card = export_winner(args.export, tracking_uri=args.tracking_uri, sweep=args.sweep,
                                     register=args.register)
    except (ExportError, StorageError, ShardError, TrackingError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"exported sweep {winner.sweep!r} trial {winner.trial_id} ({OBJECTIVE} {winner.objective:.4f}) "
          f"to {args.export}")
    for role in ("select_targets", "report_targets"):
        for name, s in card[role].items():
            print(f"  {role.split('_')[0]:<6} {name:<28} mAP {s['mAP']:.4f}  rank-1 {s.get('rank1', 0):.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
