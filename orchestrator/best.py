"""`python -m orchestrator.best --export DIR [--sweep NAME] [--register MODEL_NAME]`: take a sweep's winner.

Finds the sweep (its MLflow parent run; without --sweep, the latest sweep that has a finished trial), picks the
winner with the rule the sweep used (`orchestrator.results.choose_winner`: the best start point that finished,
unless another finished trial leads it by more than search.promote_se standard errors; the space's
metric and mode), fetches its checkpoint from local or S3 storage, and writes into DIR (which must not exist):

    model.pt       the weights (a plain state dict: torch.load(..., weights_only=True))
    config.json    the full TrainConfig and the model's class counts
    model_card.md  metrics per target (select and report), the nuisance probe, data versions, how to load it
    model_card.json  the same, machine-readable

With --register the export is logged to the sweep's MLflow run under its own folder and registered as a new
version of MODEL_NAME with the alias `champion`. Nothing here unpickles arbitrary objects.
Exit codes: 0 exported; 2 nothing to export or bad input (the message says which).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import sys
import tempfile
from dataclasses import dataclass
from typing import Any

import torch
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from adin_core.config import TrainConfig
from adin_core.data.shards import ShardError
from adin_core.data.storage import StorageError
from adin_core.models import ADINModel
from adin_core.train import model_from_state
from orchestrator.checkpoints import CheckpointError, load_state
from orchestrator.results import TrialRow, per_seed_values, pick_winner
from orchestrator.space import Objective
from orchestrator.targets import score_uris
from orchestrator.tracking import DEFAULT_TRACKING_URI, TrackingError, absolute_tracking_uri, check_tracking_uri, redact
from orchestrator.tracking import schema as S

MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,255}$")


class ExportError(RuntimeError):
    """No winner can be exported; the message says why."""


@dataclass
class Winner:
    sweep: str
    parent_run_id: str
    run_id: str
    trial_id: str
    metric: str
    objective: float
    checkpoint_uri: str
    params: dict[str, str]
    metrics: dict[str, float]
    parent_tags: dict[str, str]

    @property
    def partial(self) -> bool:
        return self.parent_tags.get(S.SWEEP_STATE) != "complete"


def sweep_parents(client, sweep: str | None = None) -> list:
    """The sweeps' parent runs (only the named sweep's, when named), newest first."""
    query = f"tags.`{S.ROLE}` = '{S.ROLE_SWEEP}'" + (f" and tags.`{S.SWEEP}` = '{sweep}'" if sweep else "")
    return sorted(
        (r for exp in client.search_experiments() for r in client.search_runs([exp.experiment_id], query)),
        key=lambda r: r.info.start_time,
        reverse=True,
    )


def sweep_objective(parent) -> Objective:
    """The objective a sweep was run with, from its parent run's tags."""
    return Objective(
        parent.data.tags.get(S.OBJECTIVE_METRIC, S.OBJECTIVE), parent.data.tags.get(S.OBJECTIVE_MODE, "max")
    )


def trial_rows(client, parent) -> tuple[list[TrialRow], dict[str, Any]]:
    """A sweep's trials as rows, and their MLflow runs by trial id."""
    metric = sweep_objective(parent).metric
    children = client.search_runs(
        [parent.info.experiment_id], f"tags.`{S.PARENT}` = '{parent.info.run_id}'", max_results=10000
    )
    rows, runs = [], {}
    for c in children:
        tid = c.data.tags.get(S.TRIAL, c.info.run_id)
        outcome = c.data.tags.get(S.OUTCOME, "finished" if c.data.metrics.get(S.FINAL) else "pruned")
        rows.append(
            TrialRow(
                tid,
                c.data.metrics.get(metric),
                outcome,
                params=dict(c.data.params),
                checkpoint=c.data.tags.get(S.CHECKPOINT),
                per_seed=per_seed_values(c.data.metrics, metric),
                start_point=c.data.tags.get(S.START_POINT, ""),
            )
        )
        runs[tid] = c
    return rows, runs


def find_winner(tracking_uri: str, sweep: str | None) -> Winner:
    """The named sweep's winner; without a name, the latest sweep that has one."""
    check_tracking_uri(tracking_uri, must_exist=True)
    client = MlflowClient(tracking_uri)
    parents = sweep_parents(client, sweep)
    if not parents:
        raise ExportError(
            f"no sweep named {sweep!r} in {tracking_uri}" if sweep else f"no sweep found in {tracking_uri}"
        )
    skipped = []
    for parent in parents:
        rows, runs = trial_rows(client, parent)
        objective = sweep_objective(parent)
        best = pick_winner(rows, objective, float(parent.data.tags.get(S.PROMOTE_SE, "0")))
        name = parent.data.tags[S.SWEEP]
        if best is None:
            skipped.append(f"{name} ({len(rows)} trial runs, none finished)")
            if sweep:
                break
            continue
        run = runs[best.trial]
        if skipped:
            print(f"note: skipped newer sweeps without a finished trial: {', '.join(skipped)}", file=sys.stderr)
        return Winner(
            name,
            parent.info.run_id,
            run.info.run_id,
            best.trial,
            objective.metric,
            best.objective,
            best.checkpoint,
            dict(run.data.params),
            dict(run.data.metrics),
            dict(parent.data.tags),
        )
    raise ExportError(
        f"sweep {skipped[0]}: nothing to export"
        if sweep
        else f"no sweep in {tracking_uri} has a finished trial: {', '.join(skipped)}"
    )


def _data_ref(uri: str, version: str) -> str:
    """A data reference a card can show anyone: URIs as they are; a local path under the working folder relative
    to it; any other local path (a home or temporary folder, meaningless elsewhere) only as its dataset/version."""
    if "://" in uri:
        return uri
    rel = os.path.relpath(os.path.abspath(uri))
    return version if rel == ".." or rel.startswith(".." + os.sep) else rel


def model_card(
    winner: Winner,
    config: TrainConfig,
    select: dict,
    report: dict,
    data: dict,
    probe: dict[str, float],
    select_mean: dict | None = None,
    seeds: int = 1,
) -> tuple[dict, str]:
    """The card: what the exported weights score (they are the winning trial's model on its first seed, `select`
    and `report`), beside the trial's mean over its seeds on the select targets (`select_mean`, what chose it), the
    verification's verdict, the probe, the data versions and how to use it. A winner that scored below the
    identity-only baseline on most fresh seeds says so in the card's first line."""
    verification = json.loads(winner.parent_tags.get(S.VERIFICATION, "null"))
    card = {
        "sweep": winner.sweep,
        "trial_id": winner.trial_id,
        "mlflow_run_id": winner.run_id,
        "verification": verification,
        "weights": {"seed_index": 0, "of_seeds": seeds},
        "objective": {winner.metric: winner.objective},
        "select_targets": select,
        "report_targets": report,
        "select_targets_trial_mean": select_mean or {},
        "nuisance_probe": probe,
        "data_versions": {_data_ref(k, v): v for k, v in data.items()},
        "config": redact(config.to_dict()),
        "checkpoint": winner.checkpoint_uri,
        "sweep_state": winner.parent_tags.get(S.SWEEP_STATE, "unknown"),
    }
    lines = _card_head(winner, card, verification, seeds)
    lines += _score_table(select, report, select_mean, seeds)
    lines += ["", "## Verified against the baseline", ""] + _verification_lines(verification)
    lines += _probe_lines(probe)
    lines += ["", "## Data versions", ""] + [f"- {_data_ref(k, v)}: {v}" for k, v in data.items()]
    lines += CARD_USE + ["", "## Parameters", "", "```json", json.dumps(card["config"], indent=1), "```"]
    return card, "\n".join(lines) + "\n"


CARD_USE = [
    "",
    "## Use",
    "",
    "```python",
    "from orchestrator.best import load_export",
    "from adin_core.features import extract_features",
    "",
    "model, config = load_export('THIS_FOLDER')  # weights + config only; eval mode, on the CPU",
    "# images: uint8 array (N, H, W, 3); features: flip-summed, L2-normalised (the retrieval feature)",
    "feats = extract_features(model, images, image_size=(config.image_height, config.image_width))",
    "distances = 1 - feats @ feats.T  # cosine distance, as the evaluation ranks",
    "```",
    "",
    "`model(x)` on a normalised float batch (`model.normalise(uint8 NCHW)`) returns the same feature.",
]


def _card_head(winner: Winner, card: dict, verification: dict | None, seeds: int) -> list[str]:
    """The title and the warnings a reader must see first: lost to the baseline, chosen from a partial sweep."""
    lines = [f"# ADIN model: sweep `{winner.sweep}`, trial `{winner.trial_id}`", ""]
    if verification and verification.get("lost_to_baseline"):
        base = verification["winner_minus_baseline"]
        lines += [
            f"> **Warning: this winner scored below the identity-only baseline on {base['seeds'] - base['positive']}"
            f" of {base['seeds']} fresh seeds** (report-target mAP {base['mean']:+.3f}); the search found no "
            "setting that beats not using ADIN here.",
            "",
        ]
    if winner.partial:
        lines += [
            f"> **Partial sweep** (state: {card['sweep_state']}): chosen among the trials that finished before "
            "the sweep was stopped.",
            "",
        ]
    held = f"its first seed's model, of the {seeds} it trained" if seeds > 1 else "its model"
    lines += [
        f"Chosen by `{winner.metric}` on the select targets ({winner.objective:.4f}"
        + (f", the mean over its {seeds} seeds" if seeds > 1 else "")
        + "); the report targets were never used "
        f"to choose. These weights are {held}; the table scores them.",
        "",
    ]
    return lines


def _score_table(select: dict, report: dict, select_mean: dict | None, seeds: int) -> list[str]:
    lines = [
        "| target | role | rank-1 | rank-5 | rank-10 | mAP | mINP |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    rows = [("select", select), ("report", report)]
    if select_mean and seeds > 1:
        rows.insert(1, (f"select, trial mean of {seeds} seeds", select_mean))
    nan = float("nan")
    for role, scores in rows:
        for name, sc in scores.items():
            lines.append(
                f"| {name} | {role} | {sc.get('rank1', nan):.4f} | {sc.get('rank5', nan):.4f}"
                f" | {sc.get('rank10', nan):.4f} | {sc['mAP']:.4f} | {sc.get('mINP', nan):.4f} |"
            )
    return lines


def _verification_lines(verification: dict | None) -> list[str]:
    if verification and "summary" in verification:
        return [
            f"Retrained on {verification['seeds']} fresh seeds (never the search's) with the identity-only "
            "baseline (the winner's parameters, `adv_loss: none`) and the shipped default ADIN; mean mAP over "
            f"the report targets, paired differences with a {100 * verification.get('level', 0.95):.4g}% "
            "interval:",
            "",
        ] + [f"- {line}" for line in verification["summary"]]
    return [
        "Not verified"
        + (f": {verification['error']}" if verification else " (the sweep ran with verify.seeds: 0)")
        + "."
    ]


def _probe_lines(probe: dict[str, float]) -> list[str]:
    if not probe:
        return []
    lines = [
        "",
        "## Nuisance probe",
        "",
        "A linear classifier on the frozen retrieval features of the source's test split, fitted and scored "
        "on disjoint identities: how much of each nuisance the features still carry (chance = guessing the "
        "most frequent class).",
        "",
    ]
    for kind in sorted({k.split("/")[1].rsplit("_", 1)[0] for k in probe}):
        lines.append(
            f"- {kind}: accuracy {probe.get(f'probe/{kind}_acc', float('nan')):.3f} "
            f"(chance {probe.get(f'probe/{kind}_chance', float('nan')):.3f})"
        )
    return lines


def check_finite_weights(state: dict[str, Any], where: str) -> None:
    """A diverged model's weights hold NaN or infinity; it must never be exported (its features are NaN)."""
    bad = [k for k, v in state["model"].items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise ExportError(
            f"{where}: {len(bad)} of {len(state['model'])} weight tensors hold NaN or infinite values "
            f"(e.g. {bad[0]}): a diverged model is not exported"
        )


def sha256_file(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_model_files(folder: str, state: dict[str, Any]) -> str:
    """The exported model itself: `model.pt` (a plain state dict) and `config.json` (what rebuilds it, and the
    sha256 of model.pt, which `load_export` checks). Returns that sha256."""
    path = os.path.join(folder, "model.pt")
    torch.save(state["model"], path)
    digest = sha256_file(path)
    with open(os.path.join(folder, "config.json"), "w") as fh:
        json.dump(
            {"train_config": state["config"], "model_meta": state["model_meta"], "model_sha256": digest}, fh, indent=1
        )
    return digest


def check_export_dir(out_dir: str) -> str:
    """The folder to create: it must not exist, and its parent must be writable (checked before any work)."""
    out_dir = os.path.abspath(out_dir)
    if os.path.exists(out_dir):
        raise ExportError(f"--export {out_dir} already exists; choose a new folder (exports are never overwritten)")
    parent = os.path.dirname(out_dir)
    try:
        os.makedirs(parent, exist_ok=True)
    except OSError as exc:
        raise ExportError(f"--export {out_dir}: cannot create {parent}: {exc.strerror or exc}") from None
    try:  # what the export will do there (os.access says yes to root everywhere, /proc included)
        os.rmdir(tempfile.mkdtemp(prefix=".export-check-", dir=parent))
    except OSError as exc:
        raise ExportError(f"--export {out_dir}: cannot write in {parent}: {exc.strerror or exc}") from None
    return out_dir


def write_export(out_dir: str, state: dict[str, Any], card: dict, card_md: str) -> dict:
    """All files into a temporary sibling folder, then one rename: no half-written export under `out_dir`. Returns
    the card as written (with model.pt's sha256)."""
    out_dir = check_export_dir(out_dir)
    tmp = tempfile.mkdtemp(prefix=".export-", dir=os.path.dirname(out_dir))
    try:
        card = dict(card, model_sha256=write_model_files(tmp, state))
        card_md += f"\n`model.pt` sha256: `{card['model_sha256']}` (checked by `load_export`)\n"
        with open(os.path.join(tmp, "model_card.json"), "w") as fh:
            json.dump(card, fh, indent=1)
        with open(os.path.join(tmp, "model_card.md"), "w") as fh:
            fh.write(card_md)
        os.rename(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return card


def load_export(export_dir: str) -> tuple[ADINModel, TrainConfig]:
    """Rebuild an exported model from weights and config only (eval mode), after checking that model.pt is the
    file the export wrote (its sha256, recorded in config.json and the card)."""
    with open(os.path.join(export_dir, "config.json")) as fh:
        cfg = json.load(fh)
    path = os.path.join(export_dir, "model.pt")
    expected = cfg.get("model_sha256")
    if expected is not None and sha256_file(path) != expected:
        raise ExportError(
            f"{path} does not match the sha256 recorded in {export_dir}/config.json ({expected[:12]}…): "
            "the file is damaged or was replaced; export the model again"
        )
    state = {
        "config": cfg["train_config"],
        "model_meta": cfg["model_meta"],
        "model": torch.load(path, map_location="cpu", weights_only=True),
    }
    return model_from_state(state)


def winner_card(tracking_uri: str, sweep: str | None) -> tuple[Winner, dict[str, Any], dict, str]:
    """The winner of a sweep (or of the latest that has one), its training state and its model card: what the
    export writes, and what the sweep logs on its parent run."""
    winner = find_winner(tracking_uri, sweep)
    state = load_state(winner.checkpoint_uri)
    check_finite_weights(state, f"trial {winner.trial_id}'s checkpoint {winner.checkpoint_uri}")
    model, config = model_from_state(state)
    names = json.loads(winner.parent_tags.get(S.TARGET_NAMES, "{}"))
    select_uris = json.loads(winner.parent_tags.get(S.SELECT, "[]"))
    report_uris = json.loads(winner.parent_tags.get(S.REPORT, "[]"))
    mean: dict[str, dict[str, float]] = {}
    for k, v in winner.metrics.items():
        parts = k.split("/")
        if len(parts) == 3 and parts[0] == "select" and not parts[2].startswith("probe_"):
            mean.setdefault(parts[1], {})[parts[2]] = v
    select = score_uris(model, config, {u: names.get(u, u) for u in select_uris})  # these weights' own
    report = score_uris(model, config, {u: names.get(u, u) for u in report_uris})
    probe = {k: v for k, v in winner.metrics.items() if k.startswith("probe/")}
    data = json.loads(winner.parent_tags.get(S.DATA_VERSIONS, "{}"))
    seeds = int(winner.metrics.get("seeds", 1))
    card, md = model_card(winner, config, select, report, data, probe, select_mean=mean, seeds=seeds)
    return winner, state, card, md


def export_winner(
    out_dir: str, *, tracking_uri: str, sweep: str | None = None, register: str | None = None
) -> tuple[Winner, dict]:
    if register is not None and not MODEL_NAME.match(register):
        raise ExportError(f"--register {register!r}: a model name is letters, digits, '_', '.' and '-' (no '/')")
    check_export_dir(out_dir)
    tracking_uri = absolute_tracking_uri(tracking_uri)
    winner, state, card, md = winner_card(tracking_uri, sweep)
    card = write_export(out_dir, state, card, md)
    if register:
        with open(os.path.join(out_dir, "model_card.md")) as fh:
            register_export(out_dir, tracking_uri, winner, register, description=fh.read())
    return winner, card


def register_export(out_dir: str, tracking_uri: str, winner: Winner, name: str, description: str = "") -> None:
    """Log the export to the sweep's parent run, in a folder of its own, and register that folder as a new model
    version (alias `champion`): earlier versions keep their own files.

    The export holds weights, not an MLflow flavour (no pickled model), so the version is created from the
    artifact location directly rather than through mlflow.register_model, which wants a logged model.
    """
    client = MlflowClient(tracking_uri)
    folder = f"exports/{os.path.basename(os.path.abspath(out_dir))}"
    client.log_artifacts(winner.parent_run_id, out_dir, folder)
    source = client.get_run(winner.parent_run_id).info.artifact_uri.rstrip("/") + "/" + folder
    try:
        client.create_registered_model(name, tags={S.SWEEP: winner.sweep})
    except MlflowException as exc:
        if "already exists" not in str(exc).lower() and "RESOURCE_ALREADY_EXISTS" not in str(exc):
            raise
    mv = client.create_model_version(
        name,
        source=source,
        run_id=winner.parent_run_id,
        tags={S.TRIAL: winner.trial_id, "objective": f"{winner.objective:.6f}"},
        description=description or None,
    )  # the model card, as the version's page
    client.set_registered_model_alias(name, "champion", mv.version)
    print(f"registered {name} version {mv.version} (alias 'champion') from {source}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m orchestrator.best", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--export", required=True, metavar="DIR", help="folder to create (must not exist)")
    ap.add_argument("--sweep", help="sweep name (default: the latest sweep with a finished trial)")
    ap.add_argument("--register", metavar="MODEL_NAME", help="register in the MLflow model registry")
    ap.add_argument("--tracking-uri", default=os.environ.get("MLFLOW_TRACKING_URI", DEFAULT_TRACKING_URI))
    args = ap.parse_args(argv)
    try:
        winner, card = export_winner(
            args.export, tracking_uri=args.tracking_uri, sweep=args.sweep, register=args.register
        )
    except (ExportError, CheckpointError, StorageError, ShardError, TrackingError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; nothing was exported", file=sys.stderr)
        return 130
    partial = " (from a PARTIAL sweep)" if winner.partial else ""
    print(
        f"exported sweep {winner.sweep!r} trial {winner.trial_id} ({winner.metric} {winner.objective:.4f})"
        f"{partial} to {args.export}"
    )
    for role in ("select_targets", "report_targets"):
        for name, s in card[role].items():
            print(f"  {role.split('_')[0]:<6} {name:<28} mAP {s['mAP']:.4f}  rank-1 {s.get('rank1', 0):.4f}")
    for key, value in sorted(card["nuisance_probe"].items()):
        print(f"  {key:<35} {value:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
