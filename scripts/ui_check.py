"""What a user sees of a sweep in the MLflow UI, rendered by headless Chromium and checked.

    python scripts/ui_check.py                                   # the latest sweep in runs/mlflow.db
    python scripts/ui_check.py --tracking-uri sqlite:///X.db --sweep NAME --out runs/ui-check

It starts an MLflow server on a free loopback port over the tracking store (stopped by its process id at the end),
opens four pages as a user would and checks what must be on them:

* the experiment's runs table, through the sweep's saved view: the sweep's run and every trial's run by name,
  with the objective and the camera probe as columns;
* a trial's run: its metrics (the objective, the camera probe, the adversary's grip) on its overview, for the
  ADIN trial (one with an adversary, so with a grip) with most evaluations;
* that trial's objective over its evaluations, drawn as a chart (MLflow's metric page);
* the sweep's run: its artifacts (the space file, the winner's weights, the plots).

Screenshots go to --out (default runs/ui-check/, outside the repository's tracked files). Needs `chromium`
(Debian: apt-get install chromium). Exit 0 when every page shows what it must, 1 otherwise, 2 on bad input.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request

from orchestrator.net import free_port
from orchestrator.tracking import schema as S
from orchestrator.tracking.store import DEFAULT_TRACKING_URI, absolute_tracking_uri, ui_url


def chromium() -> str | None:
    return next((p for p in (shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome")) if p), None)


def render(browser: str, url: str, screenshot: str, budget_ms: int = 20000, height: int = 900) -> str:
    """The page's DOM after its scripts ran, and a screenshot of it (a tall window renders what a user would
    scroll to: charts are drawn only once on screen)."""
    base = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
            f"--virtual-time-budget={budget_ms}"]
    subprocess.run([*base, "--window-size=1700,900", f"--screenshot={screenshot}", url], capture_output=True,
                   timeout=180)
    return subprocess.run([*base, f"--window-size=1700,{height}", "--dump-dom", url], capture_output=True, text=True,
                          timeout=180).stdout


def metric_chart_url(base: str, experiment_id: str, run_id: str, metric: str) -> str:
    """MLflow's metric page for one run (what "Plot chart" on a metric opens): one chart, drawn on load. The run
    page's "Model metrics" tab draws its charts lazily, one history request each, and headless Chromium leaves them
    spinning, so it cannot show whether a user sees the curve."""
    key = urllib.parse.quote(json.dumps([metric]))
    return (f"{base}/#/metric?runs={json.dumps([run_id])}&metric={urllib.parse.quote(json.dumps(metric))}"
            f"&experiments={json.dumps([experiment_id])}&plot_metric_keys={key}&plot_layout={{}}&x_axis=step"
            "&y_axis_scale=linear&line_smoothness=1&show_point=false&deselected_curves=[]&last_linear_y_axis_range=[]")


def start_server(tracking_uri: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    exe = shutil.which("mlflow") or os.path.join(os.path.dirname(sys.executable), "mlflow")
    proc = subprocess.Popen([exe, "server", "--backend-store-uri", tracking_uri, "--host", "127.0.0.1", "--port",
                             str(port), "--workers", "1"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=dict(os.environ, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false"), start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(base + "/health", timeout=2) as r:
                if r.status == 200:
                    return proc, base
        except OSError:
            time.sleep(0.5)
    stop(proc)
    raise RuntimeError("the MLflow server did not answer within 120 s")


def stop(proc: subprocess.Popen) -> None:
    """The server this script started, by its process id (and its workers, which share its process group)."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=20)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


GRIP = "grip/adv_to_id"  # the adversary's gradient share, which every trial with an adversary must show


def adin(run) -> bool:
    """A trial with an adversary (its config's adv_loss is not `none`), so with a grip to show."""
    return run.data.params.get("adv_loss", "none") != "none"


def check(tracking_uri: str, sweep: str | None, out: str, log=print) -> list[str]:
    """Render the pages; return what is missing (empty: all there)."""
    from mlflow.tracking import MlflowClient

    from orchestrator.best import sweep_parents

    browser = chromium()
    if browser is None:
        raise RuntimeError("chromium is not installed (apt-get install chromium)")
    client = MlflowClient(tracking_uri)
    parents = sweep_parents(client, sweep)
    if not parents:
        raise RuntimeError(f"no sweep {'named ' + sweep + ' ' if sweep else ''}in {tracking_uri}")
    parent = parents[0]
    name, exp = parent.data.tags[S.SWEEP], parent.info.experiment_id
    children = client.search_runs([exp], f"tags.`{S.PARENT}` = '{parent.info.run_id}'")
    metric = parent.data.tags.get(S.OBJECTIVE_METRIC, S.OBJECTIVE)
    if not children:
        raise RuntimeError(f"sweep {name} has no trial runs in {tracking_uri}")
    # the trial a user would open for a curve: an ADIN one (a baseline trial, adv_loss none, has no adversary's
    # grip to show) with most evaluations (a trial ASHA stopped at its first has one point, which MLflow draws as
    # no line at all, so the chart check failed on whichever trial came first)
    shown = max(children, key=lambda c: (adin(c), len(client.get_metric_history(c.info.run_id, metric))))
    trial_metrics = [metric, "probe/camera_acc", *([GRIP] if adin(shown) else [])]
    os.makedirs(out, exist_ok=True)
    missing: list[str] = []
    proc, base = start_server(tracking_uri)
    try:
        pages = [
            ("runs table", ui_url(base, exp, name), "runs.png",
             [name, metric, "probe/camera_acc", *[c.data.tags[S.RUN_NAME] for c in children]]),
            ("a trial's metrics", f"{base}/#/experiments/{exp}/runs/{shown.info.run_id}"
             "?workflowType=machine_learning", "trial.png", trial_metrics),
            ("a trial's objective chart", metric_chart_url(base, exp, shown.info.run_id, metric), "charts.png",
             [metric, "scatterlayer"]),  # plotly's trace layer: the curve is drawn, not a spinner
            ("the sweep's artifacts", f"{base}/#/experiments/{exp}/runs/{parent.info.run_id}/artifacts"
             "?workflowType=machine_learning", "sweep.png", ["space", "winner", "plots"]),
        ]
        for what, url, shot, expected in pages:
            for budget_ms in (20000, 60000):  # a loaded machine draws the charts late: look again, longer
                dom = render(browser, url, os.path.join(out, shot), budget_ms=budget_ms, height=8000)
                lost = [e for e in expected if e not in dom]
                if not lost:
                    break
            log(f"{what}: {url}\n  {'all there' if not lost else 'MISSING ' + ', '.join(lost)}  "
                f"(screenshot {os.path.join(out, shot)})")
            missing += [f"{what}: {e}" for e in lost]
    finally:
        stop(proc)
    return missing


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tracking-uri", default=os.environ.get("MLFLOW_TRACKING_URI", DEFAULT_TRACKING_URI))
    ap.add_argument("--sweep", help="the sweep to look at (default: the latest)")
    ap.add_argument("--out", default=os.path.join("runs", "ui-check"))
    args = ap.parse_args(argv)
    try:
        missing = check(absolute_tracking_uri(args.tracking_uri), args.sweep, args.out)
    except RuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if missing:
        print(f"{len(missing)} thing(s) a user must see are missing", file=sys.stderr)
        return 1
    print("every page shows what it must")
    return 0


if __name__ == "__main__":
    sys.exit(main())
