"""Search-space files: YAML -> a validated `SearchSpace` -> an Optuna define-by-run function.

```yaml
name: thresholds                 # MLflow experiment; Tune experiment prefix
objective: {metric: transfer_mAP, mode: max}   # mean direct-transfer mAP over the `select` targets
source: synthetic:hard/source    # a shard-set URI (<root>/<dataset>/<version>), or synthetic:<preset>/<domain>
targets:
  select: [synthetic:hard/select]   # choose hyper-parameters on these
  report: [synthetic:hard/report]   # scored for the winner only, never used to choose
search: {sampler: tpe, num_samples: 8, max_concurrent: 2, seed: 0}   # sampler: tpe | random | cmaes | gp
scheduler: {type: asha, grace_period: 1, reduction_factor: 2}      # or {type: none}
resources: {workers: 1, cpus_per_worker: 0.49, gpus_per_worker: 0}
training: {epochs: 8, eval_every_epochs: 2, checkpoints_to_keep: 2}
parameters:
  beta: {type: float, low: 0.1, high: 10, log: true}
  adv_loss: {type: categorical, choices: [cane, ne]}
  prior_temperature: {type: float, low: 0, high: 2, when: {adv_loss: cane}}   # conditional
fixed: {backbone: small_cnn, image_height: 64, image_width: 32}
```

Parameters and fixed values are `adin_core.config.TrainConfig` fields; everything is checked before any Ray
work starts, including that the extreme corners of the space make valid configs.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import Any

import yaml

from adin_core.config import ConfigError, TrainConfig

SAMPLERS = ("tpe", "random", "cmaes", "gp")
SCHEDULERS = ("asha", "none")
PARAM_TYPES = ("float", "int", "categorical")
TOP_KEYS = {"name", "description", "objective", "source", "targets", "search", "scheduler", "resources", "training",
            "parameters", "fixed"}
TRAIN_FIELDS = {f for f in TrainConfig.__dataclass_fields__}
RESERVED_FIXED = {"epochs"}  # set through training.epochs


class SpaceError(ValueError):
    """A malformed search-space file; the message names the file, the key and what is allowed."""


def make_train_config(fixed: dict[str, Any], sampled: dict[str, Any], epochs: float) -> TrainConfig:
    """A trial's TrainConfig: fixed values, then sampled ones, then the training budget. The one rule shared by
    the corner check (before Ray starts) and the trials, so what was checked is what runs."""
    return TrainConfig.from_dict({**fixed, **{k: v for k, v in sampled.items() if k in TRAIN_FIELDS},
                                  "epochs": epochs})


@dataclass(frozen=True)
class Param:
    name: str
    type: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: tuple[Any, ...] = ()
    when: tuple[tuple[str, tuple[Any, ...]], ...] = ()  # (parameter, allowed values) pairs, all must hold

    def active(self, values: dict[str, Any]) -> bool:
        return all(name in values and values[name] in allowed for name, allowed in self.when)

    def suggest(self, trial: Any) -> Any:
        if self.type == "float":
            return trial.suggest_float(self.name, self.low, self.high, log=self.log, step=self.step)
        if self.type == "int":
            return trial.suggest_int(self.name, int(self.low), int(self.high), log=self.log,
                                     step=int(self.step or 1))
        return trial.suggest_categorical(self.name, list(self.choices))

    def corners(self) -> list[Any]:
        return list(self.choices) if self.type == "categorical" else [self.low, self.high]


@dataclass(frozen=True)
class DefineByRun:
    """Optuna define-by-run: suggests the active parameters in file order (so `when:` conditions see the values
    chosen above them) and returns the fixed values. A plain class, so Tune can pickle the searcher for --resume."""

    params: tuple[Param, ...]
    fixed: dict[str, Any]

    def __call__(self, trial: Any) -> dict[str, Any]:
        values: dict[str, Any] = {}
        for p in self.params:
            if p.active(values):
                values[p.name] = p.suggest(trial)
        return dict(self.fixed)


@dataclass
class SearchSpace:
    path: str
    name: str
    metric: str
    mode: str
    source: str
    select: list[str]
    report: list[str]
    sampler: str
    num_samples: int
    max_concurrent: int
    seed: int
    scheduler: dict[str, Any]
    workers: int
    cpus_per_worker: float
    gpus_per_worker: float
    epochs: float
    eval_every_epochs: float
    checkpoints_to_keep: int
    params: list[Param]
    fixed: dict[str, Any]
    raw: dict[str, Any] = field(repr=False, default_factory=dict)

    # --------------------------------------------------------------------------------------------------
    def define_by_run(self) -> "DefineByRun":
        return DefineByRun(tuple(self.params), dict(self.fixed))

    def train_config(self, sampled: dict[str, Any]) -> TrainConfig:
        return make_train_config(self.fixed, sampled, self.epochs)

    def make_sampler(self):
        import optuna

        if self.sampler == "tpe":
            return optuna.samplers.TPESampler(seed=self.seed)
        if self.sampler == "random":
            return optuna.samplers.RandomSampler(seed=self.seed)
        if self.sampler == "cmaes":
            return optuna.samplers.CmaEsSampler(seed=self.seed)
        return optuna.samplers.GPSampler(seed=self.seed)

    def with_overrides(self, **changes: Any) -> "SearchSpace":
        """Command-line overrides (dataset URIs, resources, budget), validated like the file."""
        raw = yaml.safe_load(yaml.safe_dump(self.raw))
        for key, value in changes.items():
            if value is None:
                continue
            section, _, sub = key.partition(".")
            if sub:
                raw.setdefault(section, {})[sub] = value
            else:
                raw[section] = value
        return parse_space(raw, self.path)


# ------------------------------------------------------------------------------------------------------------
def load_space(path: str) -> SearchSpace:
    try:
        with open(path) as fh:
            raw = yaml.safe_load(fh)
    except FileNotFoundError:
        raise SpaceError(f"search-space file {path} does not exist") from None
    except yaml.YAMLError as exc:
        raise SpaceError(f"{path}: not valid YAML: {exc}") from None
    return parse_space(raw, path)


def _err(path: str, key: str, msg: str) -> SpaceError:
    return SpaceError(f"{path}: {key}: {msg}")


def _section(raw: dict, path: str, key: str, allowed: set[str], required: set[str] = frozenset()) -> dict:
    sec = raw.get(key, {})
    if sec is None:
        sec = {}
    if not isinstance(sec, dict):
        raise _err(path, key, f"must be a mapping with keys {sorted(allowed)}")
    unknown = sorted(set(sec) - allowed)
    if unknown:
        raise _err(path, f"{key}.{unknown[0]}", f"unknown key; allowed: {sorted(allowed)}")
    missing = sorted(required - set(sec))
    if missing:
        raise _err(path, f"{key}.{missing[0]}", "is required")
    return sec


def _number(path: str, key: str, value: Any, *, integer: bool = False, low: float | None = None,
            low_open: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (integer and not float(value).is_integer()):
        raise _err(path, key, f"must be {'an integer' if integer else 'a number'}, got {value!r}")
    if low is not None and (value <= low if low_open else value < low):
        raise _err(path, key, f"must be {'>' if low_open else '>='} {low}, got {value!r}")
    return int(value) if integer else float(value)


def _uri_list(path: str, key: str, value: Any) -> list[str]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise _err(path, key, "must be a URI or a list of URIs")
    return list(value)


def _parse_param(path: str, name: str, spec: Any, earlier: dict[str, Param]) -> Param:
    key = f"parameters.{name}"
    if name not in TRAIN_FIELDS or name in RESERVED_FIXED:
        raise _err(path, key, f"is not a searchable TrainConfig field; choose from "
                              f"{sorted(TRAIN_FIELDS - RESERVED_FIXED)}")
    if not isinstance(spec, dict):
        raise _err(path, key, "must be a mapping like {type: float, low: 0.1, high: 10}")
    allowed = {"type", "low", "high", "log", "step", "choices", "when"}
    unknown = sorted(set(spec) - allowed)
    if unknown:
        raise _err(path, f"{key}.{unknown[0]}", f"unknown key; allowed: {sorted(allowed)}")
    ptype = spec.get("type")
    if ptype not in PARAM_TYPES:
        raise _err(path, f"{key}.type", f"{ptype!r} is not allowed; choose one of {list(PARAM_TYPES)}")
    when: list[tuple[str, tuple[Any, ...]]] = []
    cond = spec.get("when", {})
    if not isinstance(cond, dict):
        raise _err(path, f"{key}.when", "must map an earlier categorical parameter to a value or list of values")
    for other, vals in cond.items():
        if other not in earlier or earlier[other].type != "categorical":
            raise _err(path, f"{key}.when.{other}", "must name a categorical parameter defined above this one")
        vals = tuple(vals) if isinstance(vals, list) else (vals,)
        bad = [v for v in vals if v not in earlier[other].choices]
        if bad:
            raise _err(path, f"{key}.when.{other}", f"{bad[0]!r} is not one of its choices "
                                                    f"{list(earlier[other].choices)}")
        when.append((other, vals))
    if ptype == "categorical":
        for k in ("low", "high", "log", "step"):
            if k in spec:
                raise _err(path, f"{key}.{k}", "does not apply to a categorical parameter")
        choices = spec.get("choices")
        if not isinstance(choices, list) or not choices:
            raise _err(path, f"{key}.choices", "must be a non-empty list")
        return Param(name, ptype, choices=tuple(choices), when=tuple(when))
    if "choices" in spec:
        raise _err(path, f"{key}.choices", f"does not apply to a {ptype} parameter")
    for k in ("low", "high"):
        if k not in spec:
            raise _err(path, f"{key}.{k}", "is required")
    low = _number(path, f"{key}.low", spec["low"], integer=ptype == "int")
    high = _number(path, f"{key}.high", spec["high"], integer=ptype == "int")
    if not low < high:
        raise _err(path, key, f"low ({low}) must be < high ({high})")
    log = spec.get("log", False)
    if not isinstance(log, bool):
        raise _err(path, f"{key}.log", "must be true or false")
    if log and low <= 0:
        raise _err(path, f"{key}.log", f"log scale needs low > 0, got {low}")
    step = spec.get("step")
    if step is not None:
        step = _number(path, f"{key}.step", step, integer=ptype == "int", low=0, low_open=True)
        if log:
            raise _err(path, f"{key}.step", "cannot be combined with log: true")
    return Param(name, ptype, low, high, log, step, when=tuple(when))


def parse_space(raw: Any, path: str = "<space>") -> SearchSpace:
    if not isinstance(raw, dict):
        raise SpaceError(f"{path}: the file must hold a mapping with keys {sorted(TOP_KEYS)}")
    unknown = sorted(set(raw) - TOP_KEYS)
    if unknown:
        raise _err(path, unknown[0], f"unknown key; allowed: {sorted(TOP_KEYS)}")
    for key in ("name", "source", "targets", "parameters"):
        if key not in raw:
            raise _err(path, key, "is required")
    name = raw["name"]
    if not isinstance(name, str) or not name.replace("-", "").replace("_", "").isalnum():
        raise _err(path, "name", f"must be letters, digits, '-' or '_', got {name!r}")
    obj = _section(raw, path, "objective", {"metric", "mode"})
    metric = obj.get("metric", "transfer_mAP")
    mode = obj.get("mode", "max")
    if mode not in ("max", "min"):
        raise _err(path, "objective.mode", f"{mode!r} is not allowed; choose 'max' or 'min'")
    if not isinstance(metric, str):
        raise _err(path, "objective.metric", "must be a metric name")
    if not isinstance(raw["source"], str) or not raw["source"]:
        raise _err(path, "source", "must be a shard-set URI")
    targets = _section(raw, path, "targets", {"select", "report"}, {"select"})
    select = _uri_list(path, "targets.select", targets["select"])
    report = _uri_list(path, "targets.report", targets.get("report", []))
    overlap = sorted(set(select) & set(report))
    if overlap:
        raise _err(path, "targets.report", f"{overlap[0]} is also a select target: a target used to choose "
                                            "cannot report generalisation")
    search = _section(raw, path, "search", {"sampler", "num_samples", "max_concurrent", "seed"})
    sampler = search.get("sampler", "tpe")
    if sampler not in SAMPLERS:
        raise _err(path, "search.sampler", f"{sampler!r} is not allowed; choose one of {list(SAMPLERS)}")
    num_samples = _number(path, "search.num_samples", search.get("num_samples", 8), integer=True, low=1)
    max_conc = _number(path, "search.max_concurrent", search.get("max_concurrent", 2), integer=True, low=1)
    seed = _number(path, "search.seed", search.get("seed", 0), integer=True, low=0)
    sched = _section(raw, path, "scheduler", {"type", "grace_period", "reduction_factor"})  # max_t: the epochs
    stype = sched.get("type", "asha")
    if stype not in SCHEDULERS:
        raise _err(path, "scheduler.type", f"{stype!r} is not allowed; choose one of {list(SCHEDULERS)}")
    scheduler = {"type": stype}
    if stype == "asha":
        scheduler["grace_period"] = _number(path, "scheduler.grace_period", sched.get("grace_period", 1),
                                            integer=True, low=1)
        scheduler["reduction_factor"] = _number(path, "scheduler.reduction_factor",
                                                sched.get("reduction_factor", 2), low=1, low_open=True)
    elif len(sched) > 1:
        raise _err(path, "scheduler", "type 'none' takes no other settings")
    res = _section(raw, path, "resources", {"workers", "cpus_per_worker", "gpus_per_worker"})
    workers = _number(path, "resources.workers", res.get("workers", 1), integer=True, low=1)
    cpus = _number(path, "resources.cpus_per_worker", res.get("cpus_per_worker", 1), low=0, low_open=True)
    gpus = _number(path, "resources.gpus_per_worker", res.get("gpus_per_worker", 0), low=0)
    training = _section(raw, path, "training", {"epochs", "eval_every_epochs", "checkpoints_to_keep"})
    epochs = _number(path, "training.epochs", training.get("epochs", 8), low=0, low_open=True)
    eval_every = _number(path, "training.eval_every_epochs", training.get("eval_every_epochs", 1), low=0,
                         low_open=True)
    keep = _number(path, "training.checkpoints_to_keep", training.get("checkpoints_to_keep", 2), integer=True,
                   low=1)
    if scheduler["type"] == "asha":
        scheduler["max_t"] = max(1, math.ceil(epochs / eval_every))
    params_raw = raw["parameters"]
    if not isinstance(params_raw, dict) or not params_raw:
        raise _err(path, "parameters", "must map TrainConfig fields to {type: ...} specs")
    params: dict[str, Param] = {}
    for pname, spec in params_raw.items():
        params[pname] = _parse_param(path, str(pname), spec, params)
    fixed = raw.get("fixed", {}) or {}
    if not isinstance(fixed, dict):
        raise _err(path, "fixed", "must map TrainConfig fields to values")
    for k in fixed:
        if k not in TRAIN_FIELDS or k in RESERVED_FIXED:
            raise _err(path, f"fixed.{k}", "is not a TrainConfig field" if k not in TRAIN_FIELDS else
                       "is set by training.epochs")
        if k in params:
            raise _err(path, f"fixed.{k}", "is also a searched parameter")
    space = SearchSpace(path=path, name=name, metric=metric, mode=mode, source=raw["source"], select=select,
                        report=report, sampler=sampler, num_samples=num_samples, max_concurrent=max_conc, seed=seed,
                        scheduler=scheduler, workers=workers, cpus_per_worker=cpus, gpus_per_worker=gpus,
                        epochs=epochs, eval_every_epochs=eval_every, checkpoints_to_keep=keep,
                        params=list(params.values()), fixed=dict(fixed), raw=raw)
    _check_corners(space)
    return space


MAX_CORNERS = 4096  # 2**12: every corner of a 12-parameter space; larger spaces are checked on the first ones


def _check_corners(space: SearchSpace) -> None:
    """Combinations of extreme values must make valid TrainConfigs (e.g. i_trigger < i_target)."""
    params = space.params
    for combo in itertools.islice(itertools.product(*(p.corners() for p in params)), MAX_CORNERS):
        values = dict(zip((p.name for p in params), combo))
        active = {p.name: values[p.name] for p in params if p.active(values)}
        try:
            space.train_config(active)
        except ConfigError as exc:
            raise SpaceError(f"{space.path}: parameters/fixed: a corner of the space is not a valid config "
                             f"({exc}); values: {active}") from None
