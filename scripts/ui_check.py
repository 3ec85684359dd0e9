"""What a user sees of a sweep in the MLflow UI and in optuna-dashboard, in a real browser window, checked.

    python scripts/ui_check.py                                   # the latest sweep in runs/mlflow.db
    python scripts/ui_check.py --tracking-uri sqlite:///X.db --sweep NAME --out runs/ui-check

It starts an MLflow server and optuna-dashboard on free loopback ports over the sweep's stores, and a headless
Chromium driven by chromedriver (the W3C WebDriver protocol, plain HTTP: no browser package needed), in a 1400x900
window; each started process is stopped by its process id at the end. On each page it checks what must be on
screen: text whose box lies inside the window, not hidden and not cut short by an ellipsis (the DOM alone once
held an objective column that the screen showed as `tr…`):

* the runs table, through the sweep's saved view (the URL the sweep prints): the sweep's run, every trial's run by
  name, the objective and its standard error as columns;
* the sweep's run: its description with the verdict (the winner, winner - baseline) on the overview, and its
  artifacts (the model card, the winner's weights, the plots);
* a trial's run, the ADIN trial (one with an adversary, so with a grip) with most evaluations: its description
  (outcome, objective, camera probe, the adversary's grip), and its objective over its evaluations drawn as a chart
  (MLflow's metric page);
* the study in optuna-dashboard: the objective by its name (not "Objective 0").

A screenshot of each page goes to --out (default runs/ui-check/). Needs `chromium` and `chromedriver` (Debian:
apt-get install chromium chromium-driver) and optuna-dashboard (pip install -e ".[dashboard]"). Exit 0 when every
page shows what it must, 1 otherwise, 2 when it cannot run (what is missing is said).
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

from orchestrator.net import free_port
from orchestrator.tracking import schema as S
from orchestrator.tracking.store import DEFAULT_TRACKING_URI, absolute_tracking_uri, ui_url

WINDOW = (1400, 900)
GRIP = "grip/adv_to_id"  # the adversary's gradient share, which every trial with an adversary must show

# Which of `arguments[0]` (texts) the user sees: a text node holding it, in an element that is displayed, not
# transparent, with a box inside the window, and the text not cut off by an ellipsis (when its element's text is
# wider than its box, only the share of characters that fits counts as shown).
VISIBLE_JS = """
const want = arguments[0], vw = window.innerWidth, vh = window.innerHeight, out = {};
for (const t of want) {
  out[t] = false;
  const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  for (let n = walker.nextNode(); n && !out[t]; n = walker.nextNode()) {
    if (!n.nodeValue.includes(t)) continue;
    const el = n.parentElement, st = getComputedStyle(el);
    if (st.visibility === 'hidden' || st.display === 'none' || parseFloat(st.opacity) === 0) continue;
    if (el.scrollWidth > el.clientWidth + 2 && st.textOverflow === 'ellipsis') {
      // cut short by an ellipsis: only its first characters show (a long run name shows its trial id)
      const shown = Math.floor(n.nodeValue.length * el.clientWidth / el.scrollWidth) - 2;
      if (n.nodeValue.indexOf(t) + t.length > shown) continue;
    }
    const range = document.createRange();
    range.selectNodeContents(n);
    for (const r of range.getClientRects()) {
      if (r.width > 0 && r.height > 0 && r.left >= -1 && r.right <= vw + 1 && r.top >= 0 && r.bottom <= vh + 1) {
        out[t] = true;
        break;
      }
    }
  }
}
return out;
"""
# Whether a plotly chart has drawn a line (a path with points) inside the window.
CHART_JS = """
const vw = window.innerWidth, vh = window.innerHeight;
for (const p of document.querySelectorAll('.scatterlayer path')) {
  const r = p.getBoundingClientRect(), d = p.getAttribute('d') || '';
  if (d.length > 10 && r.width > 0 && r.top < vh && r.bottom > 0 && r.left < vw && r.right > 0) return true;
}
return false;
"""


def chromium() -> str | None:
    return next((p for p in (shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome")) if p), None)


def chromedriver() -> str | None:
    return shutil.which("chromedriver")


def _start(cmd: list[str], env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True, env=env)


def _wait_http(url: str, what: str, timeout: float = 120.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except urllib.error.HTTPError:
            return  # it answers
        except OSError:
            time.sleep(0.5)
    raise RuntimeError(f"{what} did not answer within {timeout:.0f} s")


def stop(proc: subprocess.Popen) -> None:
    """A process this script started, by its process id (and its own children: it leads its process group)."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=20)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


class Browser:
    """A headless Chromium window driven through chromedriver's WebDriver HTTP API."""

    def __init__(self, width: int, height: int) -> None:
        port = free_port()
        self.proc = _start([chromedriver(), f"--port={port}", "--allowed-ips=127.0.0.1"])
        self.base = f"http://127.0.0.1:{port}"
        try:
            _wait_http(f"{self.base}/status", "chromedriver", 60)
            args = [
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-quic",
                f"--window-size={width},{height}",
            ]
            caps = {
                "capabilities": {
                    "alwaysMatch": {"browserName": "chrome", "goog:chromeOptions": {"binary": chromium(), "args": args}}
                }
            }
            self.session = self._call("POST", "/session", caps)["sessionId"]
            self._call("POST", f"/session/{self.session}/window/rect", {"width": width, "height": height})
        except BaseException:
            stop(self.proc)
            raise

    def _call(self, method: str, path: str, body: dict | None = None):
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(
            self.base + path, data=data, method=method, headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(req, timeout=180) as resp:
            return json.loads(resp.read() or b"{}").get("value")

    def open(self, url: str) -> None:
        self._call("POST", f"/session/{self.session}/url", {"url": url})

    def script(self, js: str, *args):
        return self._call("POST", f"/session/{self.session}/execute/sync", {"script": js, "args": list(args)})

    def screenshot(self, path: str) -> None:
        with open(path, "wb") as fh:
            fh.write(base64.b64decode(self._call("GET", f"/session/{self.session}/screenshot")))

    def close(self) -> None:
        try:
            self._call("DELETE", f"/session/{self.session}")
        except OSError:
            pass
        stop(self.proc)


def adin(run) -> bool:
    """A trial with an adversary (its config's adv_loss is not `none`), so with a grip to show."""
    return run.data.params.get("adv_loss", "none") != "none"


def metric_chart_url(base: str, experiment_id: str, run_id: str, metric: str) -> str:
    """MLflow's metric page for one run (what "Plot chart" on a metric opens): one chart, drawn on load."""
    key = urllib.parse.quote(json.dumps([metric]))
    return (
        f"{base}/#/metric?runs={json.dumps([run_id])}&metric={urllib.parse.quote(json.dumps(metric))}"
        f"&experiments={json.dumps([experiment_id])}&plot_metric_keys={key}&plot_layout={{}}&x_axis=step"
        "&y_axis_scale=linear&line_smoothness=1&show_point=false&deselected_curves=[]&last_linear_y_axis_range=[]"
    )


# MLflow 3.17 opens its Assistant panel by itself on a browser's first visit (a quarter of a 1400 px window); a
# user closes it once and MLflow remembers. The check does the same, as the first thing on every page.
CLOSE_ASSISTANT_JS = """
for (const b of document.querySelectorAll('button[aria-label="Close"]')) {
  let el = b;
  for (let i = 0; i < 6 && el; i++, el = el.parentElement) {
    if (el.innerText && el.innerText.includes('MLflow Assistant')) { b.click(); return true; }
  }
}
return false;
"""


def look(
    browser: Browser, url: str, texts: list[str], shot: str, *, chart: bool = False, timeout: float = 60.0
) -> list[str]:
    """Open `url` and wait (up to `timeout`) until every text is on screen (and a chart drawn); what is not."""
    browser.open(url)
    deadline = time.time() + timeout
    while True:
        if browser.script("return localStorage.getItem('mlflow.assistant.panelOpen_v1')") == "true":
            browser.script(CLOSE_ASSISTANT_JS)
        seen = browser.script(VISIBLE_JS, texts)
        lost = [t for t in texts if not seen.get(t)]
        if chart and not browser.script(CHART_JS):
            lost.append("a drawn chart")
        if not lost or time.time() > deadline:
            break
        time.sleep(1.0)
    browser.screenshot(shot)
    return lost


def start_mlflow(tracking_uri: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    exe = shutil.which("mlflow") or os.path.join(os.path.dirname(sys.executable), "mlflow")
    proc = _start(
        [
            exe,
            "server",
            "--backend-store-uri",
            tracking_uri,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        env=dict(os.environ, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false"),
    )
    try:
        _wait_http(f"http://127.0.0.1:{port}/health", "the MLflow server")
    except RuntimeError:
        stop(proc)
        raise
    return proc, f"http://127.0.0.1:{port}"


def start_dashboard(study_storage: str) -> tuple[subprocess.Popen, str]:
    exe = shutil.which("optuna-dashboard") or os.path.join(os.path.dirname(sys.executable), "optuna-dashboard")
    if not os.path.exists(exe):
        raise RuntimeError('optuna-dashboard is not installed (pip install -e ".[dashboard]")')
    port = free_port()
    proc = _start([exe, study_storage, "--host", "127.0.0.1", "--port", str(port)])
    try:
        _wait_http(f"http://127.0.0.1:{port}/api/studies", "optuna-dashboard")
    except RuntimeError:
        stop(proc)
        raise
    return proc, f"http://127.0.0.1:{port}"


def check(tracking_uri: str, sweep: str | None, out: str, log=print, study_storage: str | None = None) -> list[str]:
    """Open the pages; return what a user would not see (empty: all there)."""
    import optuna
    from mlflow.tracking import MlflowClient

    from orchestrator.best import sweep_parents

    for what, found in (("chromium", chromium()), ("chromedriver", chromedriver())):
        if found is None:
            raise RuntimeError(f"{what} is not installed (apt-get install chromium chromium-driver)")
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
    # the trial a user would open for a curve: an ADIN one (a baseline trial has no grip) with most evaluations
    shown = max(children, key=lambda c: (adin(c), len(client.get_metric_history(c.info.run_id, metric))))
    study_storage = study_storage or json.loads(parent.data.tags.get(S.STUDY_STORAGE, "null")) or ""
    os.makedirs(out, exist_ok=True)
    missing: list[str] = []
    started: list[subprocess.Popen] = []
    browser = None
    try:
        proc, base = start_mlflow(tracking_uri)
        started.append(proc)
        pages = [
            (
                "the runs table (the sweep's saved view)",
                ui_url(base, exp, name),
                "runs.png",
                [
                    name[:16],
                    metric,
                    *([f"{metric}_se"] if any(f"{metric}_se" in c.data.metrics for c in children) else []),
                    *[c.data.tags[S.TRIAL] for c in children],
                ],
                False,
            ),
            (
                "the sweep's run: its verdict",
                f"{base}/#/experiments/{exp}/runs/{parent.info.run_id}?workflowType=machine_learning",
                "verdict.png",
                ["Winner:", "winner - baseline"],
                False,
            ),
            (
                "the sweep's artifacts",
                f"{base}/#/experiments/{exp}/runs/{parent.info.run_id}/artifacts?workflowType=machine_learning",
                "sweep.png",
                ["card", "winner", "plots"],
                False,
            ),
            (
                "a trial's run: its summary",
                f"{base}/#/experiments/{exp}/runs/{shown.info.run_id}?workflowType=machine_learning",
                "trial.png",
                [metric, "camera probe", *(["grip"] if adin(shown) else [])],
                False,
            ),
            (
                "a trial's objective chart",
                metric_chart_url(base, exp, shown.info.run_id, metric),
                "charts.png",
                [metric],
                True,
            ),
        ]
        if study_storage:
            dproc, dbase = start_dashboard(study_storage)
            started.append(dproc)
            study_id = optuna.load_study(study_name=name, storage=study_storage)._study_id
            pages.append(
                ("the study in optuna-dashboard", f"{dbase}/dashboard/studies/{study_id}", "study.png", [metric], False)
            )
        browser = Browser(*WINDOW)
        for what, url, shot, expected, chart in pages:
            lost = look(browser, url, expected, os.path.join(out, shot), chart=chart)
            log(
                f"{what}: {url}\n  {'all there' if not lost else 'NOT ON SCREEN: ' + ', '.join(lost)}  "
                f"(screenshot {os.path.join(out, shot)})"
            )
            missing += [f"{what}: {e}" for e in lost]
    finally:
        if browser is not None:
            browser.close()
        for proc in started:
            stop(proc)
    return missing


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tracking-uri", default=os.environ.get("MLFLOW_TRACKING_URI", DEFAULT_TRACKING_URI))
    ap.add_argument("--sweep", help="the sweep to look at (default: the latest)")
    ap.add_argument("--out", default=os.path.join("runs", "ui-check"))
    ap.add_argument(
        "--study-storage", help="the Optuna study's storage, when the sweep's run holds it without its password"
    )
    args = ap.parse_args(argv)
    try:
        missing = check(
            absolute_tracking_uri(args.tracking_uri), args.sweep, args.out, study_storage=args.study_storage
        )
    except RuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if missing:
        print(f"{len(missing)} thing(s) a user must see are not on screen", file=sys.stderr)
        return 1
    print(f"every page shows what it must, in a {WINDOW[0]}x{WINDOW[1]} window")
    return 0


if __name__ == "__main__":
    sys.exit(main())
