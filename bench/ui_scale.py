"""Does the MLflow UI keep up with a large sweep? The runs table, through the sweep's saved view and plain, timed in
headless Chromium with 100 to 1,000 child runs.

    python bench/ui_scale.py                                   # the latest sweep in runs/mlflow.db, 100 and 1,000 runs
    python bench/ui_scale.py --tracking-uri sqlite:///X.db --sweep NAME --runs 100 500 1000

A finished sweep's SQLite database (README command 1 makes one) is copied for each size, and its trial runs are
replicated under the same parent until it has that many: each copy a real MLflow run with its template's
parameters, tags (its trial id made unique), every metric's whole history and its status, written with MLflow's
client as a sweep's tracking writes them. Then `mlflow server` (one worker, as the docs run it) serves the copy, and
the page is timed from navigation until the objective's column and the best trial's name are on screen (ui_check's
test: inside the window, not hidden, not cut short; the plain table nests the trials under the sweep's run,
collapsed, so there the sweep's name), each page loaded twice: the first load pays the server's and the
browser's cold start. Needs chromium and chromedriver, like scripts/ui_check.py.

Target: the runs table rendered in <= 5 s with 1,000 child runs.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "scripts")]

import ui_check  # noqa: E402
from mlflow.entities import Metric, Param  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402

from orchestrator.best import sweep_parents  # noqa: E402
from orchestrator.tracking import schema as S  # noqa: E402
from orchestrator.tracking.store import DEFAULT_TRACKING_URI, ui_url  # noqa: E402


def replicate(uri: str, sweep: str | None, runs: int) -> tuple[str, str, str, str]:
    """Grow the sweep in `uri` to `runs` trial runs. Returns the experiment id, the sweep's name, its metric, and the
    trial id at the top of the saved view (the best trial's: its copies tie with it)."""
    client = MlflowClient(uri)
    parent = sweep_parents(client, sweep)[0]
    exp, name = parent.info.experiment_id, parent.data.tags[S.SWEEP]
    metric = parent.data.tags.get(S.OBJECTIVE_METRIC, S.OBJECTIVE)
    children = client.search_runs([exp], f"tags.`{S.PARENT}` = '{parent.info.run_id}'")
    templates = []
    for c in children:
        history = [m for key in c.data.metrics for m in client.get_metric_history(c.info.run_id, key)]
        templates.append((c, history))
    for i in range(runs - len(children)):
        c, history = templates[i % len(templates)]
        tags = {**c.data.tags, S.TRIAL: f"{c.data.tags.get(S.TRIAL, 'trial')}-{i}"}
        tags.pop("mlflow.runName", None)
        run = client.create_run(exp, start_time=c.info.start_time, tags=tags, run_name=f"{c.info.run_name}-{i}")
        rid = run.info.run_id
        params = [Param(k, v) for k, v in c.data.params.items()]
        metrics = [Metric(m.key, m.value, m.timestamp, m.step) for m in history]
        for s in range(0, max(len(params), len(metrics)), 1000):  # MLflow's batch limits
            client.log_batch(rid, metrics=metrics[s : s + 1000], params=params[s : s + 100] if s == 0 else [])
        for s in range(100, len(params), 100):
            client.log_batch(rid, params=params[s : s + 100])
        client.set_terminated(rid, c.info.status, end_time=c.info.end_time)
    best = max(children, key=lambda c: c.data.metrics.get(metric, float("-inf")))
    return exp, name, metric, best.data.tags[S.TRIAL]


def time_page(browser: "ui_check.Browser", url: str, texts: list[str], timeout: float = 120.0) -> float:
    browser.open("about:blank")
    start = time.perf_counter()
    browser.open(url)
    while time.perf_counter() - start < timeout:
        if browser.script("return localStorage.getItem('mlflow.assistant.panelOpen_v1')") == "true":
            browser.script(ui_check.CLOSE_ASSISTANT_JS)
        seen = browser.script(ui_check.VISIBLE_JS, texts)
        if all(seen.get(t) for t in texts):
            return time.perf_counter() - start
        time.sleep(0.05)
    return float("inf")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tracking-uri", default=os.environ.get("MLFLOW_TRACKING_URI", DEFAULT_TRACKING_URI))
    ap.add_argument("--sweep", help="the sweep to grow (default: the latest)")
    ap.add_argument("--runs", type=int, nargs="+", default=[100, 1000])
    args = ap.parse_args()
    if not args.tracking_uri.startswith("sqlite:///"):
        ap.error("--tracking-uri must be an SQLite database (it is copied for each size)")
    source = args.tracking_uri[len("sqlite:///") :]
    if not os.path.isfile(source):
        ap.error(f"--tracking-uri: no database at {source} (run README command 1 first)")
    if not (ui_check.chromium() and ui_check.chromedriver()):
        sys.exit("error: needs chromium and chromedriver (apt-get install chromium chromium-driver)")
    print(f"runs table on screen in a {ui_check.WINDOW[0]}x{ui_check.WINDOW[1]} window, seconds (first / second load)")
    print(f"{'trial runs':>10}  {'written in':>10}  {'saved view':>15}  {'plain table':>15}")
    for n in args.runs:
        with tempfile.TemporaryDirectory() as tmp:
            db = os.path.join(tmp, "mlflow.db")
            shutil.copy(source, db)
            uri = f"sqlite:///{db}"
            start = time.perf_counter()
            exp, name, metric, best = replicate(uri, args.sweep, n)
            written = time.perf_counter() - start
            server, base = ui_check.start_mlflow(uri)
            browser = None
            try:
                browser = ui_check.Browser(*ui_check.WINDOW)
                view = [time_page(browser, ui_url(base, exp, name), [metric, best]) for _ in range(2)]
                # without the saved view MLflow nests the trials under the sweep's run, collapsed: the sweep shows
                plain = [time_page(browser, ui_url(base, exp), [name[:16]]) for _ in range(2)]
            finally:
                if browser is not None:
                    browser.close()
                ui_check.stop(server)
        cells = [f"{a:6.1f} / {b:5.1f}" for a, b in (view, plain)]
        print(f"{n:>10}  {written:>9.0f}s  {cells[0]:>15}  {cells[1]:>15}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
