"""End-to-end sweeps through the real command lines, each with its own local Ray on 127.0.0.1."""

from __future__ import annotations

import glob
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.helpers import another_ray, free_port

pytestmark = pytest.mark.slow
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMOKE = os.path.join(REPO, "search_spaces", "smoke.yaml")


def _env(**extra) -> dict[str, str]:
    env = dict(os.environ, RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", PYTHONUNBUFFERED="1")
    env.update(extra)
    return env


def run_cli(module: str, *args: str, env=None, timeout=900) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=REPO,
        env=env or _env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def sweep_args(root, *extra: str) -> list[str]:
    return [
        "--space",
        SMOKE,
        "--storage",
        str(root / "sweeps"),
        "--data-root",
        str(root / "data"),
        "--tracking-uri",
        f"sqlite:///{root}/mlflow.db",
        "--quiet",
        *extra,
    ]


def mlflow_runs(tracking_uri: str, experiment: str = "smoke"):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    parents = [r for r in runs if r.data.tags.get("adin.role") == "sweep"]
    children = [r for r in runs if r.data.tags.get("adin.role") == "trial"]
    return client, parents, children


@pytest.fixture(scope="module")
def users_ray():
    """A Ray a user started on this host with `ray start --head` (its own temp root, shared with the sweeps that
    run beside it, as the default /tmp/ray would be): a bare ray.init() there joins it. Stopped by its process id."""
    import shutil
    import tempfile

    temp_root = tempfile.mkdtemp(prefix="ru", dir="/tmp")  # short: Ray's socket paths are length-limited
    try:
        with another_ray(_env(RAY_TMPDIR=temp_root)) as (other, port, _):
            deadline = time.time() + 120
            while not glob.glob(os.path.join(temp_root, "ray", "ray_current_cluster")):
                assert other.poll() is None and time.time() < deadline, "the user's Ray did not start"
                time.sleep(0.5)
            yield temp_root, f"127.0.0.1:{port}"
    finally:
        shutil.rmtree(temp_root, ignore_errors=True)


@pytest.fixture(scope="module")
def local_sweep(tmp_path_factory, users_ray):
    """The smoke sweep, beside a user's own Ray (a sweep once joined it and died: "When connecting to an existing
    cluster, num_cpus and num_gpus must not be provided")."""
    root = tmp_path_factory.mktemp("sweep")
    temp_root, address = users_ray
    t0 = time.perf_counter()
    proc = run_cli(
        "orchestrator.sweep",
        *sweep_args(root, "--name", "smoke-local", "--verify-seeds", "2"),
        env=_env(RAY_TMPDIR=temp_root),
    )
    seconds = time.perf_counter() - t0
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "a local Ray of its own" in proc.stdout and address in proc.stdout, proc.stdout[:2000]
    return root, proc, seconds


def test_smoke_sweep_runs_trials_of_two_workers_and_asha_stops_some(local_sweep):
    root, proc, seconds = local_sweep
    assert "leaderboard" in proc.stdout and "winner: trial" in proc.stdout
    assert "mlflow ui --backend-store-uri" in proc.stdout and "orchestrator.best --export" in proc.stdout
    client, parents, children = mlflow_runs(f"sqlite:///{root}/mlflow.db")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert len(children) == 4 and len({c.data.tags["adin.trial_id"] for c in children}) == 4
    evals = []
    for c in children:
        assert c.data.tags["mlflow.parentRunId"] == parents[0].info.run_id
        assert c.data.metrics["world_size"] == 2.0
        assert {"beta", "adv_loss", "lr_heads", "backbone", "epochs"} <= set(c.data.params)
        history = client.get_metric_history(c.info.run_id, "transfer_mAP")
        evals.append(len(history))
        assert "select/synthetic-tiny-select/rank1" in c.data.metrics and "id_acc" in c.data.metrics
        assert {"probe/camera_acc", "probe/camera_chance", "source/mAP"} <= set(c.data.metrics)
        assert c.data.tags["adin.checkpoint"].startswith(str(root / "sweeps" / "smoke-local" / "train"))
        assert c.data.tags["adin.outcome"] in ("finished", "pruned")
        assert {"lr_backbone", "seed", "image_height", "calibration"} <= set(c.data.params)  # the full TrainConfig
    assert max(evals) == 4 and min(evals) < 4, f"ASHA stopped no trial: evaluations per trial {evals}"
    # pretraining (1.5 epochs) trained once and shared: every trial started from it, and its evaluation inside
    # pretraining is each trial's first, the same for all (the very same models)
    assert "shared pretraining: 1 seed(s), each for 4 trainings" in proc.stdout
    firsts = {client.get_metric_history(c.info.run_id, "transfer_mAP")[0].value for c in children}
    assert len(firsts) == 1 and all(c.data.metrics["pretraining/shared_epochs"] == 1.5 for c in children)
    assert "the trainings that started from them did not retrain" in proc.stdout
    starts = [c for c in children if c.data.tags.get("adin.start_point") == "defaults"]
    assert len(starts) == 1 and starts[0].data.tags["adin.outcome"] == "finished"  # never stopped early
    assert starts[0].data.params["beta"] == "0.1" and starts[0].data.params["adv_loss"] == "kl"
    # the study of record, in Optuna's storage beside the MLflow database: what optuna-dashboard opens
    import optuna

    study = optuna.load_study(study_name="smoke-local", storage=f"sqlite:///{root}/optuna.db")
    states = sorted(t.state.name for t in study.trials)
    assert len(study.trials) == len(children) == 4 and "COMPLETE" in states and "PRUNED" in states, states
    assert all(t.intermediate_values and "beta" in t.params for t in study.trials)
    outcome = {c.data.tags["adin.trial_id"]: c.data.tags["adin.outcome"] for c in children}
    assert sorted(outcome.values()).count("pruned") == states.count("PRUNED")
    print(f"\nsmoke sweep wall time {seconds:.1f} s; {proc.stdout[proc.stdout.find('times:') :].splitlines()[0]}")


def test_parent_run_holds_space_data_versions_winner_and_plots(local_sweep):
    root, _, _ = local_sweep
    client, (parent,), children = mlflow_runs(f"sqlite:///{root}/mlflow.db")
    tags, metrics = parent.data.tags, parent.data.metrics
    assert tags["adin.best_trial"] and "adin.code_version" in tags
    assert "synthetic-tiny-source/g2-" in tags["adin.data_versions"] and tags["adin.state"] == "complete"
    verification = json.loads(tags["adin.verification"])  # the winner against the baseline on fresh seeds
    assert verification["seeds"] == 2 and set(verification["per_seed"]) >= {"winner", "baseline", "default"}
    assert verification["summary"][0].startswith("winner - baseline:")
    assert {"verify/winner_minus_baseline", "verify/winner_minus_baseline_low"} <= set(metrics)
    assert any(k.startswith("report/synthetic-tiny-report/") for k in metrics) and "transfer_mAP_avg2" in metrics
    assert tags["adin.objective"] == "transfer_mAP_avg2"  # smoke.yaml ranks the mean of the last 2 evaluations
    assert metrics["timing/tracking_result_ms_max"] >= metrics["timing/tracking_result_ms_median"] > 0  # measured
    artifacts = {a.path for d in ("space", "winner", "plots") for a in client.list_artifacts(parent.info.run_id, d)}
    assert {
        "space/smoke.yaml",
        "space/data_versions.json",
        "winner/model.pt",
        "winner/config.json",
        "plots/optimization_history.png",
        "plots/search.html",
    } <= artifacts
    # the history is drawn in trial order from the study of record, not in leaderboard order
    import optuna
    import optuna.visualization as vis

    study = optuna.load_study(study_name="smoke-local", storage=f"sqlite:///{root}/optuna.db")
    xs = list(vis.plot_optimization_history(study).data[0].x)  # the objective's points: x is the trial number
    assert xs and xs == sorted(xs) and len(xs) == len(set(xs)), xs
    assert not any("secret" in k.lower() for k in parent.data.params)
    inputs = client.get_run(parent.info.run_id).inputs.dataset_inputs  # the runs table's Dataset column
    assert sorted(i.dataset.name.split("/")[0] for i in inputs) == [
        "synthetic-tiny-report",
        "synthetic-tiny-select",
        "synthetic-tiny-source",
    ]
    for child in children:  # every trial's row shows its datasets too
        names = [i.dataset.name.split("/")[0] for i in client.get_run(child.info.run_id).inputs.dataset_inputs]
        assert sorted(names) == ["synthetic-tiny-report", "synthetic-tiny-select", "synthetic-tiny-source"], names
    exp = client.get_experiment(parent.info.experiment_id)
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"  # opens on the runs table


def test_export_reload_and_score(local_sweep, tmp_path):
    root, _, _ = local_sweep
    uri = f"sqlite:///{root}/mlflow.db"
    out = tmp_path / "winner"
    proc = run_cli(
        "orchestrator.best",
        "--export",
        str(out),
        "--sweep",
        "smoke-local",
        "--tracking-uri",
        uri,
        "--register",
        "adin-smoke",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(os.listdir(out)) == ["config.json", "model.pt", "model_card.json", "model_card.md"]
    card = json.load(open(out / "model_card.json"))
    assert set(card["report_targets"]) == {"synthetic-tiny-report"}
    # reload from weights + config only and score the select target: the card's figure comes back
    from adin_core.data.datasets import resolve_dataset
    from adin_core.data.shards import ShardSet
    from adin_core.evaluation import score_target
    from orchestrator.best import load_export

    model, config = load_export(str(out))
    target = ShardSet.open(resolve_dataset("synthetic:tiny/select", str(root / "data"))).eval_target(
        (config.image_height, config.image_width)
    )
    scored, _ = score_target(model, target, config)
    assert scored["mAP"] == pytest.approx(card["select_targets"]["synthetic-tiny-select"]["mAP"], abs=1e-6)
    assert set(card["nuisance_probe"]) >= {"probe/camera_acc", "probe/camera_chance"}
    md = open(out / "model_card.md").read()
    assert "load_export" in md and "extract_features" in md and str(root) not in md  # no absolute data paths
    assert "## Verified against the baseline" in md and "- winner - baseline:" in md
    # registered with an alias; and an export never overwrites
    from mlflow.tracking import MlflowClient

    mv = MlflowClient(uri).get_model_version_by_alias("adin-smoke", "champion")
    assert int(mv.version) == 1
    again = run_cli("orchestrator.best", "--export", str(out), "--tracking-uri", uri)
    assert again.returncode == 2 and "already exists" in again.stderr


def test_export_errors(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    proc = run_cli("orchestrator.best", "--export", str(tmp_path / "x"), "--sweep", "nope", "--tracking-uri", uri)
    assert proc.returncode == 2 and "no tracking database at" in proc.stderr
    from orchestrator.retry import Backoff
    from orchestrator.tracking import SweepRun, TrackingQueue, experiment_id

    queue = TrackingQueue(uri, Backoff(budget_s=5))  # a sweep whose trials never finished
    SweepRun(queue, experiment_id(uri, "smoke", queue.backoff), "smoke-empty").open()
    assert queue.drain(timeout=30)
    proc = run_cli("orchestrator.best", "--export", str(tmp_path / "x"), "--sweep", "nope", "--tracking-uri", uri)
    assert proc.returncode == 2 and "no sweep named 'nope'" in proc.stderr
    proc = run_cli(
        "orchestrator.best", "--export", str(tmp_path / "x"), "--sweep", "smoke-empty", "--tracking-uri", uri
    )
    assert proc.returncode == 2 and "(0 trial runs, none finished): nothing to export" in proc.stderr
    port = free_port()
    proc = run_cli("orchestrator.best", "--export", str(tmp_path / "x"), "--tracking-uri", f"http://127.0.0.1:{port}")
    assert proc.returncode == 2 and "unreachable" in proc.stderr


def test_a_diverged_trial_is_reported_as_such_and_never_crowned(tmp_path):
    """beta 1e30 blows every trial's weights up: the trial stops at the check that sees it (no retries), the
    leaderboard and MLflow say why, the study records it FAILED, and the sweep exits 1 with nothing to export
    (smoke.yaml with beta up to 1e300 once crowned a NaN model at transfer_mAP 2.07 and exported it)."""
    import yaml

    raw = yaml.safe_load(open(SMOKE))
    raw["parameters"] = {"lr_heads": {"type": "float", "low": 0.01, "high": 0.3, "log": True}}
    raw["search"].pop("start_from")
    raw["fixed"].update(beta=1e30, adv_loss="kl")
    raw["resources"]["workers"] = 1
    space = tmp_path / "diverge.yaml"
    space.write_text(yaml.safe_dump(raw))
    args = ["--space", str(space), *sweep_args(tmp_path, "--name", "smoke-nan", "--num-samples", "1")[2:]]
    t0 = time.perf_counter()
    proc = run_cli("orchestrator.sweep", *args)
    seconds = time.perf_counter() - t0
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "no trial finished (0 failed, 1 diverged" in proc.stderr and "orchestrator.best" not in proc.stdout
    assert " diverged: seed 0 diverged at step " in proc.stdout and "Traceback" not in proc.stderr
    client, (parent,), (child,) = mlflow_runs(f"sqlite:///{tmp_path}/mlflow.db")
    assert child.info.status == "FAILED" and child.data.tags["adin.outcome"] == "diverged"
    assert "seed 0 diverged at step" in child.data.tags["adin.diverged"]
    assert parent.info.status == "FAILED" and "adin.best_trial" not in parent.data.tags
    import optuna

    (trial,) = optuna.load_study(study_name="smoke-nan", storage=f"sqlite:///{tmp_path}/optuna.db").trials
    assert trial.state.name == "FAIL" and "diverged at step" in trial.user_attrs["diverged"]
    assert len(glob.glob(str(tmp_path / "sweeps" / "smoke-nan" / "run_trial_*"))) == 1  # one attempt, no retry
    print(f"\ndiverged trial: exit 1 after {seconds:.0f} s; {child.data.tags['adin.diverged']}")


@pytest.mark.rehearsal
def test_resume_after_killing_the_driver(tmp_path):
    """One-worker trials (they train in their Tune trial's own process; test_lifecycle resumes Train's)."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    args = sweep_args(
        tmp_path, "--name", "smoke-resume", "--max-concurrent", "1", "--num-samples", "2", "--workers", "1"
    )
    driver = subprocess.Popen(
        [sys.executable, "-m", "orchestrator.sweep", *args],
        cwd=REPO,
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    exp_dir = tmp_path / "sweeps" / "smoke-resume"
    try:
        deadline = time.time() + 600
        while time.time() < deadline:  # wait until one trial finished and a second one started
            done = [
                p
                for p in glob.glob(str(exp_dir / "run_trial_*" / "result.json"))
                if any(json.loads(line).get("final") for line in open(p))
            ]
            started = glob.glob(str(exp_dir / "run_trial_*"))
            if done and len(started) >= 2:
                break
            assert driver.poll() is None, "the sweep ended before it could be killed"
            time.sleep(1)
        else:
            pytest.fail("no trial finished in time")
    finally:
        os.killpg(driver.pid, signal.SIGKILL)  # the driver (and the local Ray it started) dies at once
        driver.wait()
    proc = run_cli("orchestrator.sweep", *sweep_args(tmp_path, "--resume", "smoke-resume"))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    trial_dirs = glob.glob(str(exp_dir / "run_trial_*"))
    assert len(trial_dirs) == 2  # exactly the requested number of trials
    _, parents, children = mlflow_runs(uri)
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    ids = [c.data.tags["adin.trial_id"] for c in children]
    assert len(ids) == 2 and len(set(ids)) == 2  # no duplicate child run for the restarted trial
    # the study of record continued across the resume: it knows every trial, once, as MLflow does
    import optuna

    study = optuna.load_study(study_name="smoke-resume", storage=f"sqlite:///{tmp_path}/optuna.db")
    assert len(study.trials) == 2 == len(children)
    assert sum(t.state.name in ("COMPLETE", "PRUNED") for t in study.trials) == 2


def test_the_mlflow_ui_and_optuna_dashboard_show_the_sweep(local_sweep, tmp_path):
    """What a user must see, on screen in a 1400x900 headless Chromium window (scripts/ui_check.py): the sweep's
    saved view of the runs table with the objective and its standard error as columns and every trial by name, the
    verdict on the sweep's run, its artifacts, a trial's metrics and objective chart, the study with its metric's
    name in optuna-dashboard. scripts/test.sh installs Chromium and chromedriver where apt is available."""
    import shutil

    missing_tools = [
        t
        for t in ("chromium", "chromedriver", "optuna-dashboard")
        if not shutil.which(t) and not os.path.exists(os.path.join(os.path.dirname(sys.executable), t))
    ]
    if missing_tools:
        pytest.skip(
            f"{', '.join(missing_tools)} not installed here (apt-get install chromium chromium-driver; pip "
            "install -e '.[dashboard]'): the UI check did not run"
        )
    sys.path.insert(0, os.path.join(REPO, "scripts"))
    import ui_check

    root, _, _ = local_sweep
    lines: list[str] = []
    missing = ui_check.check(f"sqlite:///{root}/mlflow.db", "smoke-local", str(tmp_path), log=lines.append)
    assert not missing, "\n".join(lines)
    assert {"runs.png", "verdict.png", "trial.png", "sweep.png", "charts.png", "study.png"} <= set(os.listdir(tmp_path))
    print("\n" + "\n".join(lines))
