"""What does the orchestration cost per trial at the sizes users sweep? The real sweep, with the training replaced by a
stand-in, run through the whole stack: the plan, Ray Tune with StudySearch on its study storage and the space's
ASHA, the MLflow parent run, queue and callback, each trial's loop where a real one runs (one worker: in the Tune
trial's own process; --workers 2: a Ray Train TorchTrainer; orchestrator.loop_context) writing a checkpoint at
every report into the sweep's storage (a folder or the S3 API), Tune's restore files.

    python bench/sweep_scale.py                                  # 200 trials x 20 evaluations of 2 s, SQLite
    python bench/sweep_scale.py --postgres                       # MLflow and the study on PostgreSQL (127.0.0.1)
    python bench/sweep_scale.py --trials 20 --evals 5 --eval-s 1 # a quick look
    python bench/sweep_scale.py --workers 2 --concurrent 4       # trials in Ray Train (2 workers each)
    python bench/sweep_scale.py --train-floor 5                  # Ray Train's own cost per trial, no sweep
    source runs/cluster/env.sh && ray job submit --runtime-env-json "$(cat runs/cluster/runtime_env.json)" -- \\
        python bench/sweep_scale.py -- --storage s3://adin-sweeps/bench --tracking-uri "$MLFLOW_TRACKING_URI"
                                                                 # the local two-node cluster (cluster/local/up.sh)

Arguments after `--` go to the sweep as they would on `python -m orchestrator.sweep` (its --storage,
--tracking-uri, --study-storage, --ray-address); the space is written by the bench: thresholds.yaml's parameters
and lr_backbone (so no pretraining is shared: the stand-in has none), the shipped default as its start point, TPE,
ASHA on the evaluation index, 2 paired seeds a trial, no verification.

The stand-in (`standin_trial`, `standin_worker`) is a trial function the sweep runs in place of
orchestrator.trial.run_trial (`Sweep(trial=...)`): it builds and validates the trial's TrainConfig as a real trial
does, runs its loop as a real trial does (orchestrator.loop_context.run_loop, the sweep's own settings), and the loop
sleeps --eval-s per evaluation and then reports what a real trial reports (the objective on each paired seed, its
mean and standard error, the losses, probe and phase: ~30 metrics) with a checkpoint as large as a real one. The
objective is a smooth function of the sampled parameters, rising with the evaluation index, plus seeded noise, so
TPE and ASHA have something to work on. Nothing of Ray, Optuna or MLflow is replaced; the bench only times them
(wrapping TuneController._on_training_result, StudySearch.suggest and TrackingQueue._apply).

Printed, against the theoretical minimum (evaluations run x --eval-s / concurrent trials):
- the overhead share: (the search's wall time - the minimum) / the minimum (target <= 30% at 2 s an evaluation);
- trial start latency: Tune starts the trial -> its first report arrives, less the first --eval-s (median <= 3 s);
  and end latency: its last report arrives -> Tune records it complete (the Train run shut down);
- driver time per result (Tune's whole handling: searcher, scheduler, the MLflow callback, checkpoint
  bookkeeping), median and p99 (target p99 <= 20 ms);
- the sampler's time per suggestion as the study grows;
- MLflow rows (metrics, params, tags) written per second of the search, and the writer's busy share;
- the driver's RSS after 50, 100, ... trials ended and its peak (flat from 100 to 200 trials).
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import io
import json
import math
import os
import resource
import secrets
import statistics
import sys
import tempfile
import time
from typing import Any

import numpy as np
import torch
import yaml

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from orchestrator import sweep as sweep_module  # noqa: E402  (first: it sets Ray's environment)

# isort: split

import ray.train  # noqa: E402
import ray.tune  # noqa: E402
from ray.tune.execution.tune_controller import TuneController  # noqa: E402

from adin_core.data.shards import ShardSet  # noqa: E402
from adin_core.train import ADINTrainer  # noqa: E402
from orchestrator import ray_session  # noqa: E402
from orchestrator.checkpoints import state_file  # noqa: E402
from orchestrator.loop_context import LoopContext, run_loop  # noqa: E402
from orchestrator.plan import PLAN_ERRORS, SweepPlan, make_plan  # noqa: E402
from orchestrator.ray_session import torch_trainer  # noqa: E402
from orchestrator.search import StudySearch  # noqa: E402
from orchestrator.signals import StopSignals  # noqa: E402
from orchestrator.space import Param  # noqa: E402
from orchestrator.tracking import schema  # noqa: E402
from orchestrator.tracking.callback import MLflowTrialCallback  # noqa: E402
from orchestrator.tracking.store import LogMetrics, LogParams, OpenRun, SetTags, TrackingQueue  # noqa: E402
from orchestrator.trial import checkpoint_copy, train_run_name  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SEEDS = 2
OPTIMUM = 0.3  # where each normalised parameter is best
SEED_OFFSETS = (0.012, -0.009, 0.004, -0.006)  # each paired seed's own level (common random numbers)


# --- the stand-in trial ------------------------------------------------------------------------------------------
def _unit(p: Param, value: Any) -> float:
    """A sampled value on [0, 1] of its range (log ranges in log space); a categorical by its index."""
    if p.type == "categorical":
        return p.choices.index(value) / max(1, len(p.choices) - 1)
    lo, hi, v = float(p.low), float(p.high), float(value)
    if p.log:
        lo, hi, v = math.log(lo), math.log(hi), math.log(v)
    return (v - lo) / (hi - lo) if hi > lo else 0.0


def quality(plan: SweepPlan, sampled: dict[str, Any]) -> float:
    """The objective a setting reaches at its last evaluation: best at OPTIMUM on every normalised parameter."""
    units = [_unit(p, sampled[p.name]) for p in plan.space.params if p.name in sampled]
    return 0.55 - 0.6 * float(np.mean([(u - OPTIMUM) ** 2 for u in units])) if units else 0.5


def _noise(key: str, *parts: int) -> float:
    digest = hashlib.sha256(f"{key}/{'/'.join(map(str, parts))}".encode()).digest()
    return float(np.random.default_rng(int.from_bytes(digest[:8], "little")).normal())


def curve(q: float, key: str, evaluation: int, evals: int) -> dict[str, float]:
    """One evaluation's report of a trial reaching `q`: what adin_core.repeats.aggregate gives for two seeds."""
    rise = 1.0 - 0.6 * math.exp(-4.0 * evaluation / evals)
    seeds = [q * rise + SEED_OFFSETS[k] + 0.02 * _noise(key, k, evaluation) for k in range(SEEDS)]
    mean, sd = float(np.mean(seeds)), float(np.std(seeds, ddof=1))
    out = {"transfer_mAP": mean, "transfer_mAP_sd": sd, "transfer_mAP_se": sd / math.sqrt(SEEDS), "seeds": SEEDS}
    for k, v in enumerate(seeds):
        probe, source = 0.9 - 0.3 * rise + 0.01 * k, 0.2 + 0.6 * rise
        out.update({f"seed{k}/transfer_mAP": v, f"seed{k}/probe/camera_acc": probe, f"seed{k}/source/mAP": source})
        out.update({f"seed{k}/id_acc": 0.5 + 0.4 * rise, f"seed{k}/report_mAP": v - 0.05})
    out.update({"source/mAP": 0.2 + 0.6 * rise, "source/rank1": 0.3 + 0.6 * rise, "probe/camera_acc": 0.9 - 0.3 * rise})
    out.update({"id_acc": 0.5 + 0.4 * rise, "loss/identity": 3.0 * (1 - rise) + 0.5, "loss/adversarial": 0.3 * rise})
    out.update({"loss/nuisance_ce": 1.1, "grip/adv_to_id": 0.2, "grip/cosine": -0.05, "lr": 3e-4, "epoch": evaluation})
    out.update({"phase/nuisance_steps": 10.0 * evaluation, "phase/identity_steps": 30.0 * evaluation})
    return out


def standin_worker(loop: dict[str, Any], ctx: LoopContext) -> None:
    """The loop in place of adin_core's: sleep an evaluation's time, report it with a checkpoint (rank 0) copied
    into storage as a real trial copies its own; a restarted run continues after its checkpoint's evaluation, as a
    real trial does. Each report also carries how long the previous evaluation's parts took (`bench/part/*`)."""
    rank = ctx.rank
    started = time.time()
    evals, eval_s = int(loop["evals"]), float(loop["eval_s"])
    first = 1
    checkpoint = ctx.checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder, open(os.path.join(folder, "state.json")) as fh:
            first = int(json.load(fh)["evaluation"]) + 1
    state = loop["state"]
    copy = checkpoint_copy(loop["plan"])
    parts: dict[str, float] = {}

    def timed_copy(fs, source: str, dest: str) -> None:
        t0 = time.perf_counter()
        copy(fs, source, dest)
        parts["copy"] = time.perf_counter() - t0

    for evaluation in range(first, evals + 1):
        t0 = time.perf_counter()
        time.sleep(eval_s)
        parts["sleep"] = time.perf_counter() - t0
        metrics: dict[str, Any] = {}
        with tempfile.TemporaryDirectory() as tmp:
            saved = None
            if rank == 0:
                metrics = curve(loop["quality"], loop["key"], evaluation, evals)
                metrics.update({schema.EVALUATION: evaluation, schema.FINAL: float(evaluation == evals)})
                metrics.update({"phase": "adversarial", "bench/loop_started": started})
                # this evaluation's sleep, the previous one's copy, report and hand-off
                metrics.update({f"bench/part/{k}": v for k, v in parts.items()})
                t1 = time.perf_counter()
                with open(os.path.join(tmp, "state.json"), "w") as fh:
                    json.dump({"evaluation": evaluation}, fh)
                for k in range(SEEDS):  # what a real trial's checkpoint holds: each seed's trainer state
                    with open(os.path.join(tmp, state_file(k)), "wb") as fh:
                        fh.write(state)
                metrics["bench/part/write"] = time.perf_counter() - t1
                saved = tmp
            t2 = time.perf_counter()
            ctx.report(metrics, saved, copy=timed_copy if saved else None)
            parts["report"] = time.perf_counter() - t2  # the copy, then Tune's hand-off: until the driver asks again
            parts["handoff"] = parts["report"] - parts.get("copy", 0.0)


def trainer_state(plan: SweepPlan) -> bytes:
    """An untrained trainer's state for a config of the space, saved as a trial saves one: every stand-in
    checkpoint holds it per seed, so checkpoints have a real trial's size and the sweep's wrap-up (the winner scored
    on the report targets, its model exported and logged) runs as it does after real trials."""
    config = plan.space.some_config()
    data = ShardSet.open(plan.source).training_data(config.nuisance, (config.image_height, config.image_width))
    buffer = io.BytesIO()
    torch.save(ADINTrainer(config, data).state_dict(), buffer)
    return buffer.getvalue()


def make_standin(eval_s: float, state: bytes):
    """The trial function for Sweep(trial=...): a real trial's config handling and TorchTrainer, the stand-in loop."""

    def standin_trial(tune_config: dict[str, Any], plan: SweepPlan) -> None:
        sampled = plan.space.sampled(tune_config)
        plan.space.train_config(sampled)  # built and validated as run_trial does
        trial_id = ray.tune.get_context().get_trial_id()
        loop = {
            "plan": plan,
            "evals": plan.space.scheduler.max_t,
            "eval_s": eval_s,
            "state": state,
            "quality": quality(plan, sampled),
            "key": json.dumps(sampled, sort_keys=True, default=str),
        }
        keep = plan.space.training.checkpoints_to_keep
        run_loop(plan, standin_worker, loop, train_run_name(trial_id), checkpoints_to_keep=keep)

    return standin_trial


def floor_loop(config: dict[str, Any]) -> None:
    """Ray Train's floor: a loop that only notes when it ran and reports once."""
    with open(config["path"], "w") as fh:
        fh.write(str(time.time()))
    ray.train.report({"done": 1.0})


def train_floor(plan: SweepPlan, runs: int) -> None:
    """`runs` TorchTrainers of one worker (the sweep's own settings) on the sweep's Ray, one after another, each
    a loop that does nothing: what any trial pays before its first step and after its last report."""
    ray_session.start(plan, {})
    starts, totals = [], []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for k in range(runs):
                path = os.path.join(tmp, f"loop-{k}")
                t0 = time.time()
                torch_trainer(plan, floor_loop, {"path": path}, f"floor-{k}-{secrets.token_hex(3)}", []).fit()
                totals.append(time.time() - t0)
                with open(path) as fh:
                    starts.append(float(fh.read()) - t0)
    finally:
        ray.shutdown()
    print(f"Ray Train's floor, {runs} TorchTrainer runs of 1 worker one after another, a loop that only reports:")
    print(f"  fit() -> the loop runs: {_spread(starts)}")
    print(f"  fit() -> fit() returns: {_spread(totals)}")


# --- what the bench records --------------------------------------------------------------------------------------
class Timings:
    """Durations collected by wrapping the driver's own methods (instrumentation only: each wrapper calls through)."""

    def __init__(self) -> None:
        self.result_s: list[float] = []  # TuneController._on_training_result, per result
        self.searcher_s: list[float] = []  # of which StudySearch.on_trial_result (the study's write)
        self.tracking_s: list[float] = []  # of which MLflowTrialCallback.on_trial_result (queued, not written)
        self.state_save_s: list[float] = []  # TuneController.checkpoint: the experiment state saved (and uploaded)
        self.suggest: list[tuple[int, float]] = []  # (trials completed in the study, seconds) per suggestion
        self.suggested: dict[str, float] = {}  # trial id -> when its config was handed to Tune, which then starts it
        self.rows = {"metrics": 0, "params": 0, "tags": 0}
        self.writer_s = 0.0

    def install(self) -> None:
        self._wrap(TuneController, "_on_training_result", self.result_s.append)
        self._wrap(StudySearch, "on_trial_result", self.searcher_s.append)
        self._wrap(MLflowTrialCallback, "on_trial_result", self.tracking_s.append)
        self._wrap(TuneController, "checkpoint", lambda s: s > 1e-3 and self.state_save_s.append(s))  # not skipped
        original_suggest = StudySearch.suggest

        @functools.wraps(original_suggest)
        def suggest(searcher, trial_id):
            t0 = time.perf_counter()
            out = original_suggest(searcher, trial_id)
            if out is not None:
                self.suggest.append((len(searcher._completed_trials), time.perf_counter() - t0))
                self.suggested.setdefault(trial_id, time.time())
            return out

        StudySearch.suggest = suggest
        original_apply = TrackingQueue._apply

        @functools.wraps(original_apply)
        def apply(queue, op):
            t0 = time.perf_counter()
            original_apply(queue, op)
            self.writer_s += time.perf_counter() - t0
            if isinstance(op, LogMetrics):
                self.rows["metrics"] += len(op.metrics)
            elif isinstance(op, (LogParams, OpenRun)):
                self.rows["params"] += len(op.params)
                self.rows["tags"] += len(getattr(op, "tags", ()))
            elif isinstance(op, SetTags):
                self.rows["tags"] += len(op.tags)

        TrackingQueue._apply = apply

    @staticmethod
    def _wrap(cls, name: str, record) -> None:
        original = getattr(cls, name)

        @functools.wraps(original)
        def timed(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                record(time.perf_counter() - t0)

        setattr(cls, name, timed)


class TrialClock(ray.tune.Callback):
    """Per trial: when Tune started it, when its first and last reports arrived, when it ended; the driver's RSS
    at every 50th trial ended."""

    def __init__(self) -> None:
        self.started: dict[str, float] = {}  # Tune's trial actor is up (on_trial_start)
        self.first: dict[str, float] = {}
        self.last: dict[str, float] = {}
        self.loop_started: dict[str, float] = {}
        self.evals: dict[str, int] = {}
        self.ended: dict[str, float] = {}
        self.rss_mb: dict[int, float] = {}
        self.parts: dict[str, list[float]] = {}  # an evaluation's parts inside the trial (standin_worker)
        self.parts_at: dict[str, list[float]] = {}  # when each arrived
        self.fit_started = self.fit_ended = 0.0
        self.cpu_started: dict[int, tuple[str, float]] = {}
        self.cpu_ended: dict[int, tuple[str, float]] = {}

    def setup(self, **info) -> None:
        self.fit_started = time.perf_counter()  # a duration: the VM's wall clock can step during a long run
        self.cpu_started = cpu_seconds()

    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        self.started.setdefault(trial.trial_id, time.time())

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        now, tid = time.time(), trial.trial_id
        self.first.setdefault(tid, now)
        self.last[tid] = now
        self.loop_started.setdefault(tid, float(result.get("bench/loop_started", now)))
        self.evals[tid] = max(self.evals.get(tid, 0), int(result.get(schema.EVALUATION, 0)))
        for key, value in result.items():
            if key.startswith("bench/part/"):
                self.parts.setdefault(key.rsplit("/", 1)[1], []).append(float(value))
                self.parts_at.setdefault(key.rsplit("/", 1)[1], []).append(now)

    def _end(self, trial) -> None:
        self.ended.setdefault(trial.trial_id, time.time())
        if len(self.ended) % 50 == 0:
            self.rss_mb[len(self.ended)] = rss_mb()

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        self._end(trial)

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self._end(trial)

    def on_experiment_end(self, trials, **info) -> None:
        self.fit_ended = time.perf_counter()
        self.cpu_ended = cpu_seconds()


def cpu_seconds() -> dict[int, tuple[str, float]]:
    """Every process's CPU seconds so far (user + system, Linux /proc), with a short name of what it runs."""
    tick, out = os.sysconf("SC_CLK_TCK"), {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                argv = fh.read().decode(errors="replace").split("\0")
        except OSError:  # ended meanwhile
            continue
        out[int(pid)] = (_process_name(argv), (int(fields[11]) + int(fields[12])) / tick)
    return out


def _process_name(argv: list[str]) -> str:
    """What a process is, for the CPU table: Ray's workers name themselves (ray::ImplicitFunc, ray::IDLE...), a
    Python service by its module or script, anything else by its program."""
    head = argv[0] if argv else ""
    if head.startswith("ray::"):
        return head.split()[0]
    words = [a for a in argv if a and not a.startswith("-")]
    for word in words[1:4] if "python" in os.path.basename(head) else []:
        return os.path.basename(word)[:40]
    return os.path.basename(head.split()[0] if head else "?")[:40]


def cpu_table(before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]], wall: float) -> list[str]:
    """CPU seconds each kind of process used between two snapshots (processes that ended meanwhile are missed)."""
    used: dict[str, float] = {}
    for pid, (name, seconds) in after.items():
        used[name] = used.get(name, 0.0) + seconds - (before[pid][1] if pid in before else 0.0)
    total = sum(used.values())
    rows = sorted(used.items(), key=lambda kv: -kv[1])
    return [f"    {name:40s} {sec:7.0f} CPU-s  {sec / wall:5.2f} cores" for name, sec in rows[:10] if sec >= 1] + [
        f"    {'all':40s} {total:7.0f} CPU-s  {total / wall:5.2f} cores of {os.cpu_count()}"
    ]


def rss_mb() -> float:
    """This process's resident set now (Linux)."""
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


# --- the run -----------------------------------------------------------------------------------------------------
def write_space(args: argparse.Namespace, folder: str) -> str:
    """thresholds.yaml's parameters and lr_backbone, the shipped default first, TPE, ASHA on the evaluation index."""
    with open(os.path.join(ROOT, "search_spaces", "thresholds.yaml")) as fh:
        shipped = yaml.safe_load(fh)
    parameters = dict(shipped["parameters"])
    parameters["lr_backbone"] = {"type": "float", "low": 0.005, "high": 0.05, "log": True}
    epochs = float(shipped["training"]["epochs"])
    share = (2.0 / args.concurrent - 0.02) / args.workers  # a Ray Train trial's own process holds 0.01 CPU
    cpus = round(share, 3) if args.cpus_per_trial is None else args.cpus_per_trial
    space = {
        "name": "sweep-scale",
        "objective": {"metric": "transfer_mAP", "mode": "max"},
        "source": shipped["source"],
        "targets": shipped["targets"],
        "search": {
            "sampler": "tpe",
            "num_samples": args.trials,
            "max_concurrent": args.concurrent,
            "seed": 0,
            "seeds": SEEDS,
            "start_from": ["defaults"],
        },
        "scheduler": {"type": "asha", "grace_period": max(1, args.evals // 4), "reduction_factor": 3},
        "resources": {"workers": args.workers, "cpus_per_worker": cpus, "gpus_per_worker": 0},
        # the shipped budget in epochs (the start point's pretraining must fit in it), cut into --evals evaluations
        "training": {"epochs": epochs, "eval_every_epochs": epochs / args.evals, "checkpoints_to_keep": 2},
        "verify": {"seeds": 0},
        "parameters": parameters,
        "fixed": shipped.get("fixed", {}),
    }
    path = os.path.join(folder, "sweep-scale.yaml")
    with open(path, "w") as fh:
        yaml.safe_dump(space, fh, sort_keys=False)
    return path


class Postgres:
    """Two databases of the bench's own in the PostgreSQL on 127.0.0.1:5432 (MLflow's, Optuna's), dropped after."""

    def __init__(self) -> None:
        import psycopg2  # only with --postgres

        self.psycopg2 = psycopg2
        self.name = f"adin_bench_{secrets.token_hex(4)}"
        self.databases = [f"{self.name}_mlflow", f"{self.name}_optuna"]

    def _run(self, sql: str) -> None:
        conn = self.psycopg2.connect(host="127.0.0.1", port=5432, user="postgres", dbname="postgres", connect_timeout=3)
        conn.autocommit = True
        try:
            conn.cursor().execute(sql)
        finally:
            conn.close()

    def __enter__(self) -> dict[str, str]:
        for db in self.databases:
            self._run(f'CREATE DATABASE "{db}"')
        url = "postgresql+psycopg2://postgres@127.0.0.1:5432/"
        return {"--tracking-uri": url + self.databases[0], "--study-storage": url + self.databases[1]}

    def __exit__(self, *exc) -> None:
        for db in self.databases:
            self._run(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')


def _pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def _spread(values: list[float], unit: str = "s", scale: float = 1.0, digits: int = 2) -> str:
    v = [scale * x for x in values]
    return f"median {statistics.median(v):.{digits}f} {unit}, p90 {_pct(v, 90):.{digits}f} {unit}, " + (
        f"p99 {_pct(v, 99):.{digits}f} {unit}, max {max(v):.{digits}f} {unit}"
    )


def _by_quarter(values: list[float], at: list[float]) -> str:
    """Medians of `values` in each quarter of the time span of `at`: does a cost grow as the sweep goes on?"""
    lo, hi = min(at), max(at)
    quarters: list[list[float]] = [[], [], [], []]
    for v, t in zip(values, at):
        quarters[min(3, int(4 * (t - lo) / max(hi - lo, 1e-9)))].append(v)
    return " / ".join(f"{statistics.median(q):.2f} s" if q else "-" for q in quarters)


def report(args: argparse.Namespace, clock: TrialClock, timings: Timings, wall_total: float) -> None:
    trials = sorted(clock.ended)
    evaluations = sum(clock.evals.get(t, 0) for t in trials)
    minimum = evaluations * args.eval_s / args.concurrent
    search_s = clock.fit_ended - clock.fit_started
    ends = [clock.ended[t] - clock.last[t] for t in trials if t in clock.last]

    def since_added(times: dict[str, float], less: float = 0.0) -> list[float]:
        added = timings.suggested
        return [times[t] - added[t] - less for t in trials if t in times and t in added]

    print(
        f"\n== sweep_scale: {len(trials)} trials, {evaluations} evaluations of {args.eval_s:g} s, "
        f"{args.concurrent} concurrent, {args.evals} evaluations a full trial =="
    )
    print(
        f"search wall {search_s:.0f} s; theoretical minimum {minimum:.0f} s; overhead "
        f"{(search_s - minimum) / minimum:+.1%} of the minimum (target <= 30%); whole bench {wall_total:.0f} s"
    )
    first = since_added(clock.first, args.eval_s)
    print(f"trial start latency (its config suggested -> its first report, less one evaluation): {_spread(first)}")
    print("  (target: median <= 3 s); of which, from its suggestion:")
    print(f"    its Tune actor is up (on_trial_start): {_spread(since_added(clock.started))}")
    print(f"    the loop runs (trial process or Train worker): {_spread(since_added(clock.loop_started))}")
    print(f"trial end latency (last report -> Tune records it complete): {_spread(ends)}")
    print("an evaluation inside the trial:")
    for part, what in (
        ("sleep", "the stand-in's sleep"),
        ("write", "the checkpoint written to a local folder"),
        ("copy", "its copy into the sweep's storage (the trial's fail-fast copy)"),
        ("handoff", "Tune's report after the copy: until the driver takes the result and asks for the next"),
    ):
        if clock.parts.get(part):
            print(f"  {what}: {_spread(clock.parts[part])}")
            print(f"    median by quarter of the search: {_by_quarter(clock.parts[part], clock.parts_at[part])}")
    print(f"CPU by process during the search ({search_s:.0f} s; this host's processes only):")
    print("\n".join(cpu_table(clock.cpu_started, clock.cpu_ended, search_s)))
    print(f"driver time per result, {len(timings.result_s)} results: {_spread(timings.result_s, 'ms', 1000, 1)}")
    print(f"  of which the searcher (the study's write): {_spread(timings.searcher_s, 'ms', 1000, 1)}")
    print(f"  of which the MLflow callback: {_spread(timings.tracking_s, 'ms', 1000, 1)}  (target p99 <= 20 ms)")
    if timings.state_save_s:
        saves = timings.state_save_s
        print(
            f"  outside results, Tune saving its experiment state: {len(saves)} saves, {sum(saves):.0f} s in all; "
            f"{_spread(saves)}"
        )
    by_size: dict[int, list[float]] = {}
    for done, seconds in timings.suggest:
        by_size.setdefault(done // 50 * 50, []).append(seconds)
    for k, v in sorted(by_size.items()):
        print(f"sampler per suggestion, {k}-{k + 49} trials completed: {_spread(v, 'ms', 1000, 0)}")
    rows, busy = sum(timings.rows.values()), timings.writer_s
    print(
        f"MLflow rows written: {rows} ({timings.rows['metrics']} metric, {timings.rows['params']} param, "
        f"{timings.rows['tags']} tag): {rows / search_s:.0f} rows/s of the search; the writer was busy {busy:.0f} s "
        f"({busy / search_s:.0%} of the search), {rows / max(busy, 1e-9):.0f} rows/s while writing"
    )
    rss = "; ".join(f"{k} trials: {v:.0f} MB" for k, v in sorted(clock.rss_mb.items()))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"driver RSS after N trials ended: {rss or 'fewer than 50 trials'}; peak {peak:.0f} MB")
    if 100 in clock.rss_mb and 200 in clock.rss_mb:
        print(f"  growth from 100 to 200 trials: {clock.rss_mb[200] - clock.rss_mb[100]:+.0f} MB")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    sweep_args = argv[argv.index("--") + 1 :] if "--" in argv else []
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=200)
    ap.add_argument("--evals", type=int, default=20, help="evaluations in a full trial")
    ap.add_argument("--eval-s", type=float, default=2.0, help="seconds the stand-in sleeps per evaluation")
    ap.add_argument("--concurrent", type=int, default=8, help="trials at once (search.max_concurrent)")
    ap.add_argument("--workers", type=int, default=1, help="workers a trial (1: in process; more: Ray Train)")
    ap.add_argument("--cpus-per-trial", type=float, help="each worker's CPUs (default: 2 / --concurrent / --workers)")
    ap.add_argument("--postgres", action="store_true", help="MLflow and the study on PostgreSQL at 127.0.0.1:5432")
    ap.add_argument("--out", default=os.path.join("runs", "bench-sweep-scale"))
    ap.add_argument(
        "--train-floor", type=int, metavar="N", help="instead of the sweep: N bare TorchTrainer runs, Ray Train's floor"
    )
    args = ap.parse_args(argv[: argv.index("--")] if "--" in argv else argv)
    if __name__ != "__main__":  # imported (a test): Ray's workers cannot import this file, so its functions travel
        ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    os.makedirs(args.out, exist_ok=True)
    space = write_space(args, args.out)
    t0 = time.perf_counter()
    with Postgres() if args.postgres else _NoDatabase() as database:
        flags = {
            "--storage": os.path.join(args.out, "sweeps"),
            "--tracking-uri": f"sqlite:///{os.path.abspath(os.path.join(args.out, 'mlflow.db'))}",
            **database,
        }
        given = {a.split("=", 1)[0] for a in sweep_args if a.startswith("--")}
        command = ["--space", space, "--quiet", *[a for k, v in flags.items() if k not in given for a in (k, v)]]
        command += sweep_args
        print("sweep:", " ".join(command), flush=True)
        try:
            plan = make_plan(sweep_module.parse_args(command))
        except PLAN_ERRORS as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        if args.train_floor:
            train_floor(plan, args.train_floor)
            return 0
        state = trainer_state(plan)
        print(f"checkpoints: {SEEDS} trainer states of {len(state) / 2**20:.1f} MB each", flush=True)
        timings, clock = Timings(), TrialClock()
        timings.install()
        stops = StopSignals()
        try:
            code = sweep_module.Sweep(plan, stops, t0, trial=make_standin(args.eval_s, state), callbacks=[clock]).run()
        finally:
            stops.restore()
    if not any(clock.evals.values()):
        print(
            f"error: no trial reported an evaluation (sweep exit {code}); see the trials' errors above", file=sys.stderr
        )
        return code or 1
    report(args, clock, timings, time.perf_counter() - t0)
    return code


class _NoDatabase:
    def __enter__(self) -> dict[str, str]:
        return {}

    def __exit__(self, *exc) -> None:
        return None


if __name__ == "__main__":
    sys.exit(main())
