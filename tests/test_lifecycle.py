"""A sweep's life cycle through the real command line: Ctrl-C and SIGTERM end it with the right exit code, the runs
closed and the resume command printed; --resume finishes it from the trials' checkpoints; a sweep in which no
trial finishes exits 1; another Ray instance on the host does not disturb it; a trial no node can hold is refused."""

from __future__ import annotations

import glob
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import pytest

from tests.helpers import another_ray, wait_for_port

pytestmark = pytest.mark.slow
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMOKE = os.path.join(REPO, "search_spaces", "smoke.yaml")


def _args(root, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "orchestrator.sweep",
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


def _env(**extra) -> dict[str, str]:
    return dict(os.environ, RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", PYTHONUNBUFFERED="1", **extra)


def _start_sweep(root, *extra: str, **popen) -> subprocess.Popen:
    """The smoke sweep as a user's shell starts it: its output merged, in its own session unless `popen` says
    otherwise (process_group=0: in the shell's group, as a job is)."""
    popen = popen or {"start_new_session": True}
    return subprocess.Popen(
        _args(root, *extra), cwd=REPO, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **popen
    )


def _runs(root):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{root}/mlflow.db")
    exp = client.get_experiment_by_name("smoke")
    runs = client.search_runs([exp.experiment_id], max_results=100)
    return (
        [r for r in runs if r.data.tags.get("adin.role") == "sweep"],
        [r for r in runs if r.data.tags.get("adin.role") == "trial"],
        client,
    )


def _wait_for_a_running_trial(root, n: int, proc: subprocess.Popen, timeout: float = 600) -> None:
    """Until a trial that is still running has logged `n` evaluations to MLflow. Tune's own result.json reaches
    the sweep's storage only when it is synced (at a trial's end, on these short trials), so it cannot tell a
    trial in mid-run from one that has finished."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{root}/mlflow.db")
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert proc.poll() is None, f"the sweep ended early: {proc.communicate()[0][-3000:]}"
        exp = client.get_experiment_by_name("smoke") if os.path.exists(root / "mlflow.db") else None
        if exp is not None:
            running = client.search_runs(
                [exp.experiment_id], "tags.`adin.role` = 'trial' and attributes.status = 'RUNNING'"
            )
            if any(r.data.metrics.get("evaluation", 0) >= n for r in running):
                return
        time.sleep(0.3)
    pytest.fail(f"no running trial had logged {n} evaluations within {timeout} s")


def test_ctrl_c_then_sigterm_to_the_resumed_sweeps_group_each_stop_it_and_resume_finishes(tmp_path):
    # 20 evaluations a trial, Ctrl-C once a running trial has logged its second: the graceful stop (2-8 s, at
    # 0.5 s an evaluation on the smoke space) cannot let that trial finish, as it once did with 10 (then no trial
    # was left to resume from a checkpoint)
    proc = _start_sweep(
        tmp_path,
        "--name",
        "life",
        "--num-samples",
        "2",
        "--max-concurrent",
        "1",
        "--epochs",
        "20",
        "--scheduler",
        "none",
    )
    try:
        _wait_for_a_running_trial(tmp_path, 2, proc)
        t0 = time.perf_counter()
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in the terminal sends: the whole foreground group
        out, _ = proc.communicate(timeout=120)
        stop_s = time.perf_counter() - t0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130, out[-4000:]
    assert "--resume life" in out and "Traceback" not in out, out[-4000:]
    (parent,), children, client = _runs(tmp_path)
    assert parent.info.status == "KILLED" and parent.data.tags["adin.state"] == "partial"
    assert children and all(
        c.info.status == "KILLED" and c.data.tags["adin.outcome"] == "killed"
        for c in children
        if c.data.tags["adin.outcome"] != "finished"
    )
    interrupted = [
        c.data.tags["adin.trial_id"]
        for c in children
        if c.data.tags["adin.outcome"] == "killed" and c.data.metrics.get("evaluation", 0) >= 1
    ]
    assert interrupted, [(c.data.tags["adin.outcome"], c.data.metrics.get("evaluation")) for c in children]
    board = {
        line.split()[0]: line.split()[1]
        for line in out.splitlines()
        if line[:8] in {c.data.tags["adin.trial_id"] for c in children}
    }
    assert board[interrupted[0]] == "killed", out[-3000:]  # the leaderboard says what MLflow says, not "pruned"
    # the resumed sweep replays --epochs 20 --num-samples 2 (stored with the sweep); it is stopped again, by SIGTERM
    # to its whole process group (what `timeout`, a container stop or a scheduler send), the sweep leading its
    # group as a shell job does. A resumed sweep once took such a stop for success (exit 0, "winner", the cut trial
    # "pruned" and its run left RUNNING); SIGTERM to the group once killed Ray under the driver (exit 1 after 62 s).
    resumed = _start_sweep(tmp_path, "--resume", "life", process_group=0)
    try:
        _wait_for_a_running_trial(tmp_path, 5, resumed)
        t2 = time.perf_counter()
        os.killpg(resumed.pid, signal.SIGTERM)
        out, _ = resumed.communicate(timeout=120)
        term_s = time.perf_counter() - t2
    finally:
        if resumed.poll() is None:
            os.killpg(resumed.pid, signal.SIGKILL)
    assert resumed.returncode == 143, out[-4000:]
    assert "--resume life" in out and "Traceback" not in out and "winner" not in out, out[-4000:]
    (parent,), children, client = _runs(tmp_path)
    assert parent.info.status == "KILLED" and parent.data.tags["adin.state"] == "partial"
    assert not [c for c in children if c.info.status == "RUNNING"]
    cut = [c for c in children if c.data.tags["adin.outcome"] == "killed"]
    assert cut and all(c.info.status == "KILLED" for c in cut)
    board = {
        line.split()[0]: line.split()[1]
        for line in out.splitlines()
        if line[:8] in {c.data.tags["adin.trial_id"] for c in children}
    }
    assert all(board[c.data.tags["adin.trial_id"]] == "killed" for c in cut), out[-3000:]
    # and the sweep finishes from there
    t1 = time.perf_counter()
    resumed = subprocess.run(
        _args(tmp_path, "--resume", "life"), cwd=REPO, env=_env(), capture_output=True, text=True, timeout=900
    )
    assert resumed.returncode == 0, resumed.stdout[-4000:] + resumed.stderr[-3000:]
    (parent,), children, client = _runs(tmp_path)
    assert parent.info.status == "FINISHED" and parent.data.tags["adin.state"] == "complete"
    assert len(children) == 2 and all(c.info.status == "FINISHED" for c in children)
    assert all(c.data.params["epochs"] == "20.0" for c in children)
    first = next(c for c in children if c.data.tags["adin.trial_id"] == interrupted[0])  # stopped mid-run
    assert first.data.metrics["faults/resumed_from_step"] > 0  # it went on from its checkpoint, not from 0
    assert first.data.tags["adin.checkpoint"].startswith(str(tmp_path / "sweeps" / "life" / "train" / "trial-"))
    for child in children:  # every evaluation once: those Tune had not taken at the stops were resent on resume
        history = [m.step for m in client.get_metric_history(child.info.run_id, "transfer_mAP")]
        assert history == list(range(1, 21)), (child.data.tags["adin.trial_id"], history)
    print(
        f"\nCtrl-C: exit 130 {stop_s:.1f} s after the signal; resumed, then SIGTERM to its process group: exit 143 "
        f"{term_s:.1f} s after it; resumed from step {first.data.metrics['faults/resumed_from_step']:.0f}; the last "
        f"resume finished in {time.perf_counter() - t1:.0f} s"
    )


@pytest.mark.rehearsal
def test_a_second_ray_on_the_host_does_not_disturb_the_sweep_and_sigterm_exits_143(tmp_path):
    """Another Ray instance (as a notebook's would be) is up: trials still start one after the other (the first
    trial's resources are released), and `ray job stop`'s SIGTERM ends the sweep with 143."""
    ray_tmp = tempfile.mkdtemp(prefix="rayo", dir="/tmp")
    proc = None
    try:
        with another_ray(_env(), temp_dir=ray_tmp) as (_, _, dash):
            wait_for_port(dash, timeout=90)
            proc = _start_sweep(
                tmp_path, "--name", "beside", "--num-samples", "3", "--max-concurrent", "1", "--scheduler", "none"
            )
            exp_dir = str(tmp_path / "sweeps" / "beside")
            deadline = time.time() + 600
            trials = os.path.join(exp_dir, "run_trial_*", "result.json")
            while time.time() < deadline and len(glob.glob(trials)) < 2:
                assert proc.poll() is None, proc.communicate()[0][-3000:]
                time.sleep(0.5)
            assert len(glob.glob(trials)) >= 2, "the second trial never ran"
            proc.send_signal(signal.SIGTERM)  # the driver only, as `ray job stop` does
            out, _ = proc.communicate(timeout=120)
    finally:
        if proc is not None and proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert proc.returncode == 143, out[-4000:]
    assert "--resume beside" in out and "multiple active Ray" not in out
    (parent,), children, _ = _runs(tmp_path)
    assert parent.info.status == "KILLED" and len(children) >= 2


@pytest.mark.rehearsal
def test_a_sweep_in_which_no_trial_finishes_exits_1(tmp_path):
    """A source whose part was damaged after sharding: every trial fails reading it; the sweep says so, exits 1
    and offers no export (README command 1's `&&` then stops)."""
    from adin_core.data.datasets import resolve_dataset

    source = resolve_dataset("synthetic:tiny/source", str(tmp_path / "data"))
    part = sorted(glob.glob(os.path.join(source, "train", "*.parquet")))[0]
    with open(part, "r+b") as fh:
        fh.seek(100)
        fh.write(b"damaged")
    proc = subprocess.run(
        _args(tmp_path, "--num-samples", "1"), cwd=REPO, env=_env(), capture_output=True, text=True, timeout=900
    )
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "no trial finished (1 failed" in proc.stderr and "orchestrator.best" not in proc.stdout
    (parent,), (child,), _ = _runs(tmp_path)
    assert parent.info.status == "FAILED" and child.data.tags["adin.outcome"] == "failed"


def test_a_trial_no_node_can_hold_is_refused_at_start(tmp_path):
    t0 = time.perf_counter()
    proc = subprocess.run(
        _args(tmp_path, "--gpus-per-worker", "1"), cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "1 GPUs per worker, but the largest node has 0 (no GPU here)" in proc.stderr
    assert time.perf_counter() - t0 < 60
