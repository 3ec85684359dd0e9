"""Search-space files: YAML -> a validated, frozen `SearchSpace` -> an Optuna define-by-run function.

```yaml
name: thresholds                 # MLflow experiment; Tune experiment prefix
objective: {metric: transfer_mAP, mode: max}   # the mean direct-transfer mAP over the `select` targets;
                                 # average_last: n ranks its mean over a trial's last n evaluations
source: synthetic:shortcut/source    # a shard-set URI (<root>/<dataset>/<version>) or synthetic:<preset>/<domain>
targets:
  select: [synthetic:shortcut/select]   # choose hyper-parameters on these
  report: [synthetic:shortcut/report]   # scored for the winner only, never used to choose
search: {sampler: tpe, num_samples: 8, max_concurrent: 2, seed: 0, seeds: 2}   # sampler: tpe|random|cmaes|gp;
                                 # seeds: training seeds per trial (the same for all; the objective is their mean)
                                 # startup_trials: random trials before the sampler's model steers (default:
                                 # Optuna's 10 for tpe/gp, capped at half of num_samples; cmaes: 0)
verify: {seeds: 3}               # retrain winner, baseline and the paper's default on 3 fresh seeds (0: off)
scheduler: {type: asha, grace_period: 1, reduction_factor: 2}      # or {type: none}; grace_period: the first rung,
                                 # in evaluations; after pretraining when every searched parameter acts only
                                 # after it (default: then the first evaluation after it, else 1)
resources: {workers: 1, cpus_per_worker: 0.49, gpus_per_worker: 0}
training: {epochs: 8, eval_every_epochs: 2, checkpoints_to_keep: 2}
parameters:
  beta: {type: float, low: 0.1, high: 10, log: true}
  adv_loss: {type: categorical, choices: [kl, ne]}
  prior_temperature: {type: float, low: 0, high: 2, when: {adv_loss: kl}}   # conditional on a choice above
fixed: {backbone: small_cnn, image_height: 64, image_width: 32}
```

Parameters and fixed values are `adin_core.config.TrainConfig` fields. Everything is checked before any Ray
work starts, including that the extreme corners of the space make valid configs; an error names the file (or the
command-line flag that set the value), the key and what is allowed. The objective may be `transfer_mAP`,
`source/<metric>` (the source's own cross-camera test), `probe/<kind>_acc` (usually with `mode: min`) or
`select/<target>/<metric>`.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import os
import re
from dataclasses import dataclass, field
from typing import Any, Mapping

import optuna.distributions as d
import yaml

from adin_core.config import ADVERSARIAL_PHASE_FIELDS, DECISION_FIELDS, ConfigError, TrainConfig
from adin_core.evaluation import OBJECTIVE, PROBE_KINDS
from adin_core.repeats import averaged_name

SAMPLERS = ("tpe", "random", "cmaes", "gp")
SCHEDULERS = ("asha", "none")
PARAM_TYPES = ("float", "int", "categorical")
TOP_KEYS = {
    "name",
    "description",
    "objective",
    "source",
    "targets",
    "search",
    "scheduler",
    "resources",
    "training",
    "verify",
    "parameters",
    "fixed",
}
TRAIN_FIELDS = frozenset(TrainConfig.__dataclass_fields__)
RESERVED_FIXED = {"epochs"}  # set through training.epochs
RANK_METRICS = ("rank1", "rank5", "rank10", "mAP", "mINP")
MAX_CORNERS = 4096  # 2**12: every corner of a 12-parameter space; larger spaces are checked on the first ones
# Upper bounds: past these a value is a typo, not an experiment (1e9 seeds once built a list of 1e9 per trial)
MAX_SAMPLES = 100_000
MAX_CONCURRENT = 10_000
MAX_SEEDS = 32  # training seeds a trial
MAX_VERIFY_SEEDS = 64
MAX_SAMPLER_SEED = 2**32 - 1  # NumPy's seeds, under every sampler
NAME = re.compile(r"^[A-Za-z0-9_-]+$")  # ASCII: a sweep or space name is a folder, a URI part and an MLflow name


class FrozenDict(dict):
    """A read-only dict that pickles (MappingProxyType does not, and Ray pickles the plan to every trial)."""

    def _read_only(self, *args: Any, **kwargs: Any) -> None:
        raise TypeError("a search space is read-only")

    __setitem__ = __delitem__ = clear = pop = popitem = setdefault = update = _read_only  # type: ignore[assignment]

    def __reduce__(self):
        return (FrozenDict, (dict(self),))


class SpaceError(ValueError):
    """A malformed search space or flag; the message names the file or flag, the key and what is allowed."""


def make_train_config(fixed: Mapping[str, Any], sampled: Mapping[str, Any], epochs: float) -> TrainConfig:
    """A trial's TrainConfig: fixed values, then sampled ones, then the training budget. The one rule shared by
    the corner check (before Ray starts), the trials, their tracking and the verification of the winner."""
    return TrainConfig.from_dict({**fixed, **{k: v for k, v in sampled.items() if k in TRAIN_FIELDS}, "epochs": epochs})


# ------------------------------------------------------------------------------------------------------------
# the sections of a space
# ------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Objective:
    metric: str = OBJECTIVE  # what a trial evaluates
    mode: str = "max"
    # the search ranks the mean of the metric over a trial's last n evaluations (per seed, then over its seeds):
    # one evaluation of the adversarial phase wobbles by as much as settings differ
    average_last: int = 1

    @property
    def key(self) -> str:
        """The reported metric the search, ASHA and the winner rule read (`metric` itself when average_last is 1)."""
        return averaged_name(self.metric, self.average_last)

    def describe(self) -> str:
        n = self.average_last
        return (
            f"{self.metric} ({self.mode})"
            if n == 1
            else f"{self.metric}, mean of the last {n} evaluations ({self.mode})"
        )

    def better(self, a: float, b: float) -> bool:
        return a > b if self.mode == "max" else a < b


@dataclass(frozen=True)
class Targets:
    source: str
    select: tuple[str, ...]
    report: tuple[str, ...] = ()


@dataclass(frozen=True)
class SearchSettings:
    sampler: str = "tpe"
    num_samples: int = 8
    max_concurrent: int = 2
    seed: int = 0  # the sampler's
    seeds: int = 1  # training seeds per trial, the same for every trial (paired); the objective is their mean
    startup_trials: int | None = None  # trials drawn at random before a model-based sampler steers (None: default)
    # known points tried first, in order (Optuna's enqueue_trial), each as (name, {param: value}); the best of them
    # that finishes is the incumbent the winner rule starts from (orchestrator.results.pick_winner)
    start_from: tuple[tuple[str, Mapping[str, Any]], ...] = ()
    # a trial replaces the incumbent only when it leads it by more than this many standard errors of its paired lead
    promote_se: float = 2.0

    @property
    def random_start(self) -> int:
        """How many trials the sampler draws at random before its model steers. Optuna's TPE and GP samplers start
        with 10, so a search of 8 trials (the main job's) would be random search under another name; by default
        the start is capped at half the trials, so the model chooses at least the other half. CMA-ES keeps its
        own default (0) unless the space sets one; random search is random throughout."""
        if self.sampler == "random":
            return self.num_samples
        if self.startup_trials is not None:
            return self.startup_trials
        return 0 if self.sampler == "cmaes" else min(10, self.num_samples // 2)


VERIFY_ARMS = ("winner", "baseline", "default", "paper")


@dataclass(frozen=True)
class VerifySettings:
    """After the search: the winner, the identity-only baseline (the winner with adv_loss none), the shipped default
    ADIN (TrainConfig's defaults under the space's fixed values) and, when asked, the paper's CaNE, retrained on
    fresh seeds and scored on the report targets. `seeds` fresh seeds first (0: off), then `step` more at a time
    until winner - baseline is distinguishable or `max_seeds` have run; each look's interval is at 95% / looks, so
    the verdict keeps its 5% error rate however many looks it takes (orchestrator.verify)."""

    seeds: int = 0
    max_seeds: int = 0
    step: int = 2
    arms: tuple[str, ...] = ("winner", "baseline", "default")

    @property
    def looks(self) -> int:
        """How many times the verdict may be read: after the first round and after each added one."""
        return 1 + math.ceil(max(0, self.max_seeds - self.seeds) / self.step) if self.seeds else 0

    @property
    def level(self) -> float:
        """The confidence level of each look's interval (Bonferroni over the looks)."""
        return 1 - 0.05 / max(1, self.looks)


@dataclass(frozen=True)
class SchedulerSettings:
    type: str = "asha"
    grace_period: int = 1
    reduction_factor: float = 2.0
    max_t: int = 1  # evaluations in a full trial: training.epochs / training.eval_every_epochs


@dataclass(frozen=True)
class Resources:
    workers: int = 1
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0


@dataclass(frozen=True)
class TrainingSettings:
    epochs: float = 8.0
    eval_every_epochs: float = 1.0
    checkpoints_to_keep: int = 2

    @property
    def evaluations(self) -> int:
        """Evaluations a full trial makes (ASHA's max_t)."""
        return max(1, math.ceil(self.epochs / self.eval_every_epochs))


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

    def active(self, values: Mapping[str, Any]) -> bool:
        return all(name in values and values[name] in allowed for name, allowed in self.when)

    def suggest(self, trial: Any) -> Any:
        if self.type == "float":
            return trial.suggest_float(self.name, self.low, self.high, log=self.log, step=self.step)
        if self.type == "int":
            return trial.suggest_int(self.name, int(self.low), int(self.high), log=self.log, step=int(self.step or 1))
        return trial.suggest_categorical(self.name, list(self.choices))

    def corners(self) -> list[Any]:
        return list(self.choices) if self.type == "categorical" else [self.low, self.high]

    def distribution(self):
        """The Optuna distribution this parameter is suggested from."""
        if self.type == "float":
            return d.FloatDistribution(self.low, self.high, log=self.log, step=self.step)
        if self.type == "int":
            return d.IntDistribution(int(self.low), int(self.high), log=self.log, step=int(self.step or 1))
        return d.CategoricalDistribution(list(self.choices))


@dataclass(frozen=True)
class DefineByRun:
    """Optuna define-by-run: suggests the active parameters in file order (so `when:` conditions see the values
    chosen above them). Fixed values are not Tune's business: trials get them from the plan. A plain class, so
    Tune can pickle the searcher for --resume."""

    params: tuple[Param, ...]

    def __call__(self, trial: Any) -> None:
        values: dict[str, Any] = {}
        for p in self.params:
            if p.active(values):
                values[p.name] = p.suggest(trial)


@dataclass(frozen=True)
class SearchSpace:
    """A checked search space: what a sweep searches (`params`), holds fixed (`fixed`), trains and scores on, and how
    it searches, stops and verifies. Frozen, so the plan can carry it to every process."""

    path: str
    name: str
    objective: Objective
    targets: Targets
    search: SearchSettings
    scheduler: SchedulerSettings
    resources: Resources
    training: TrainingSettings
    verify: VerifySettings
    params: tuple[Param, ...]
    fixed: Mapping[str, Any]
    raw: Mapping[str, Any] = field(repr=False, default_factory=dict)

    def define_by_run(self) -> DefineByRun:
        return DefineByRun(self.params)

    @property
    def shares_pretraining(self) -> bool:
        """Whether every trial pretrains the same (no searched parameter acts before the first decision after
        pretraining): then each seed's pretraining is trained once (orchestrator.pretraining)."""
        return all(p.name in DECISION_FIELDS for p in self.params)

    def some_config(self) -> TrainConfig:
        """A valid trial config (the first corner of the space): what every trial shares when shares_pretraining."""
        values: dict[str, Any] = {}
        for p in self.params:
            if p.active(values):
                values[p.name] = p.corners()[0]
        return self.train_config(values)

    def train_config(self, sampled: Mapping[str, Any]) -> TrainConfig:
        return make_train_config(self.fixed, sampled, self.training.epochs)

    def sampled(self, config: Mapping[str, Any]) -> dict[str, Any]:
        """The searched parameters of a Tune trial config (Tune adds its own keys)."""
        names = {p.name for p in self.params}
        return {k: v for k, v in config.items() if k in names}

    def with_overrides(self, changes: Mapping[str, tuple[str, Any]]) -> "SearchSpace":
        """Command-line overrides, `{"section.key": (flag, value)}`, validated like the file; an error names the
        flag, not the file, since the flag set the value."""
        raw = yaml.safe_load(yaml.safe_dump(_plain(self.raw)))
        flags = {}
        for key, (flag, value) in changes.items():
            section, _, sub = key.partition(".")
            if sub:
                raw.setdefault(section, {})[sub] = value
            else:
                raw[section] = value
            flags[key] = flag
        try:
            return parse_space(raw, self.path)
        except SpaceError as exc:
            msg = str(exc)
            for key, flag in flags.items():
                prefix = f"{self.path}: {key}"
                if msg.startswith(prefix):
                    raise SpaceError(f"{flag}{msg[len(prefix) :]}") from None
            given = " ".join(f"{flag} {_plain(changes[k][1])}" for k, flag in flags.items())
            raise SpaceError(f"{msg} (with the command line's {given})") from None


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


# ------------------------------------------------------------------------------------------------------------
# reading
# ------------------------------------------------------------------------------------------------------------
class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML that refuses a key given twice in one mapping (plain YAML keeps the last one silently)."""


def _no_duplicates(loader: yaml.SafeLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(None, None, f"key {key!r} is given twice", key_node.start_mark)
        seen.add(key)
    return yaml.SafeLoader.construct_mapping(loader, node, deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _no_duplicates)


def load_space(path: str) -> SearchSpace:
    """Read and check a search-space YAML file (docs/search-spaces.md); a `SpaceError` names the file and the key."""
    if os.path.isdir(path):
        raise SpaceError(f"--space {path} is a folder; give a search-space YAML file (search_spaces/*.yaml)")
    try:
        with open(path, encoding="utf-8") as fh:
            raw = yaml.load(fh, Loader=_UniqueKeyLoader)
    except FileNotFoundError:
        raise SpaceError(f"--space {path} does not exist") from None
    except UnicodeDecodeError:
        raise SpaceError(f"--space {path} is not a text (YAML) file") from None
    except OSError as exc:
        raise SpaceError(f"--space {path} cannot be read: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else path
        what = " ".join(str(p) for p in (getattr(exc, "context", None), getattr(exc, "problem", None)) if p)
        raise SpaceError(f"{where}: not valid YAML: {what or exc}") from None
    return parse_space(raw, path)


def _err(path: str, key: str, msg: str) -> SpaceError:
    return SpaceError(f"{path}: {key}: {msg}")


def _section(raw: Mapping, path: str, key: str, allowed: set[str], required: frozenset[str] = frozenset()) -> dict:
    sec = raw.get(key, {})
    if sec is None:
        sec = {}
    if not isinstance(sec, dict):
        raise _err(path, key, f"must be a mapping with keys {sorted(allowed)}")
    unknown = sorted(set(sec) - allowed, key=str)
    if unknown:
        raise _err(path, f"{key}.{unknown[0]}", f"unknown key; allowed: {sorted(allowed)}")
    missing = sorted(required - set(sec))
    if missing:
        raise _err(path, f"{key}.{missing[0]}", "is required")
    return sec


def _number(
    path: str,
    key: str,
    value: Any,
    *,
    integer: bool = False,
    low: float | None = None,
    low_open: bool = False,
    high: float | None = None,
) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (integer and not float(value).is_integer()):
        raise _err(path, key, f"must be {'an integer' if integer else 'a number'}, got {value!r}")
    if not math.isfinite(value):
        raise _err(path, key, f"must be a finite number, got {value!r}")
    if low is not None and (value <= low if low_open else value < low):
        raise _err(path, key, f"must be {'>' if low_open else '>='} {low}, got {value!r}")
    if high is not None and value > high:
        raise _err(path, key, f"must be <= {high:g}, got {value!r}")
    return int(value) if integer else float(value)


def _uri_list(path: str, key: str, value: Any, *, required: bool = False) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        raise _err(path, key, "must be a URI or a list of URIs")
    if required and not value:
        raise _err(path, key, "must name at least one target (the objective is scored on them)")
    if len(set(value)) != len(value):
        raise _err(path, key, "lists a target twice")
    return tuple(value)


def _check_metric(path: str, metric: Any) -> str:
    if not isinstance(metric, str) or not metric:
        raise _err(path, "objective.metric", "must be a metric name")
    parts = metric.split("/")
    ok = (
        metric == OBJECTIVE
        or (len(parts) == 2 and parts[0] == "source" and parts[1] in RANK_METRICS)
        or (len(parts) == 2 and parts[0] == "probe" and parts[1] in {f"{k}_acc" for k in PROBE_KINDS})
        or (len(parts) == 3 and parts[0] == "select" and parts[1] and parts[2] in RANK_METRICS)
    )
    if not ok:
        raise _err(
            path,
            "objective.metric",
            f"{metric!r} is not a metric a trial reports; choose {OBJECTIVE}, "
            f"source/<{'|'.join(RANK_METRICS)}>, probe/<camera|time>_acc or "
            "select/<target>/<metric>",
        )
    return metric


def _parse_param(path: str, name: str, spec: Any, earlier: dict[str, Param]) -> Param:
    key = f"parameters.{name}"
    if name not in TRAIN_FIELDS or name in RESERVED_FIXED:
        raise _err(
            path, key, f"is not a searchable TrainConfig field; choose from {sorted(TRAIN_FIELDS - RESERVED_FIXED)}"
        )
    if not isinstance(spec, dict):
        raise _err(path, key, "must be a mapping like {type: float, low: 0.1, high: 10}")
    allowed = {"type", "low", "high", "log", "step", "choices", "when"}
    unknown = sorted(set(spec) - allowed, key=str)
    if unknown:
        raise _err(path, f"{key}.{unknown[0]}", f"unknown key; allowed: {sorted(allowed)}")
    ptype = spec.get("type")
    if ptype not in PARAM_TYPES:
        raise _err(path, f"{key}.type", f"{ptype!r} is not allowed; choose one of {list(PARAM_TYPES)}")
    when = _when(path, key, spec.get("when", {}), earlier)
    if ptype == "categorical":
        return Param(name, ptype, choices=_choices(path, key, spec), when=when)
    if "choices" in spec:
        raise _err(path, f"{key}.choices", f"does not apply to a {ptype} parameter")
    return _numeric_param(path, key, name, ptype, spec, when)


def _when(path: str, key: str, cond: Any, earlier: Mapping[str, Param]) -> tuple[tuple[str, tuple[Any, ...]], ...]:
    """`when`: the parameter exists only while earlier categorical parameters hold the listed values."""
    if not isinstance(cond, dict):
        raise _err(path, f"{key}.when", "must map an earlier categorical parameter to a value or list of values")
    when = []
    for other, vals in cond.items():
        if other not in earlier or earlier[other].type != "categorical":
            raise _err(path, f"{key}.when.{other}", "must name a categorical parameter defined above this one")
        vals = tuple(vals) if isinstance(vals, list) else (vals,)
        bad = [v for v in vals if v not in earlier[other].choices]
        if bad:
            raise _err(
                path, f"{key}.when.{other}", f"{bad[0]!r} is not one of its choices {list(earlier[other].choices)}"
            )
        when.append((other, vals))
    return tuple(when)


def _choices(path: str, key: str, spec: Mapping[str, Any]) -> tuple[Any, ...]:
    for k in ("low", "high", "log", "step"):
        if k in spec:
            raise _err(path, f"{key}.{k}", "does not apply to a categorical parameter")
    choices = spec.get("choices")
    if not isinstance(choices, list) or not choices:
        raise _err(path, f"{key}.choices", "must be a non-empty list")
    if len({repr(c) for c in choices}) != len(choices):
        raise _err(path, f"{key}.choices", "lists a choice twice")
    return tuple(choices)


def _numeric_param(
    path: str, key: str, name: str, ptype: str, spec: Mapping[str, Any], when: tuple[tuple[str, tuple[Any, ...]], ...]
) -> Param:
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
        if step > high - low:
            raise _err(
                path,
                f"{key}.step",
                f"{step:g} is wider than the range {low:g}..{high:g}: the parameter "
                "would take one value only; use a smaller step, or put it in fixed",
            )
    return Param(name, ptype, low, high, log, step, when=when)


def parse_space(raw: Any, path: str = "<space>") -> SearchSpace:
    """The schema's one entry: each section parsed by its own reader, then the checks that span sections."""
    _check_top(raw, path)
    objective, targets = _objective(raw, path), _targets(raw, path)
    search = _search(raw, path)
    verify = _verify(path, _section(raw, path, "verify", {"seeds", "max_seeds", "step", "arms"}))
    if verify.seeds and not targets.report:
        raise _err(path, "verify.seeds", "verification scores the report targets; targets.report is empty")
    training = _training(raw, path)
    _check_window(path, objective, training)
    resources = _resources(raw, path)
    params = _params(raw, path)
    fixed = _fixed(raw, path, params)
    scheduler = _scheduler(raw, path, params, fixed, training)
    if verify.seeds and fixed.get("adv_loss") == "none":
        raise _err(
            path,
            "verify.seeds",
            "the space fixes adv_loss: none, so its winner is the baseline; nothing to "
            "verify against (set verify.seeds: 0)",
        )
    start_from = (raw.get("search") or {}).get("start_from")
    if start_from is not None:
        search = dataclasses.replace(search, start_from=_start_points(path, start_from, params, fixed, training.epochs))
        if len(search.start_from) > search.num_samples:
            raise _err(
                path,
                "search.start_from",
                f"names {len(search.start_from)} points, more than the "
                f"{search.num_samples} trials of the search (num_samples)",
            )
    space = SearchSpace(
        path=path,
        name=raw["name"],
        objective=objective,
        targets=targets,
        search=search,
        scheduler=scheduler,
        resources=resources,
        training=training,
        verify=verify,
        params=tuple(params.values()),
        fixed=FrozenDict(fixed),
        raw=FrozenDict(raw),
    )
    _check_corners(space)
    return space


def _check_top(raw: Any, path: str) -> None:
    if not isinstance(raw, dict):
        raise SpaceError(f"{path}: the file must hold a mapping with keys {sorted(TOP_KEYS)}")
    unknown = sorted(set(raw) - TOP_KEYS, key=str)
    if unknown:
        raise _err(path, str(unknown[0]), f"unknown key; allowed: {sorted(TOP_KEYS)}")
    for key in ("name", "source", "targets", "parameters"):
        if key not in raw:
            raise _err(path, key, "is required")
    name = raw["name"]
    if not isinstance(name, str) or not NAME.match(name):
        raise _err(path, "name", f"must be ASCII letters, digits, '-' or '_', got {name!r}")


def _objective(raw: Mapping[str, Any], path: str) -> Objective:
    obj = _section(raw, path, "objective", {"metric", "mode", "average_last"})
    mode = obj.get("mode", "max")
    if mode not in ("max", "min"):
        raise _err(path, "objective.mode", f"{mode!r} is not allowed; choose 'max' or 'min'")
    n = obj.get("average_last", 1)
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise _err(path, "objective.average_last", f"must be a whole number of evaluations >= 1, got {n!r}")
    return Objective(_check_metric(path, obj.get("metric", OBJECTIVE)), mode, n)


def _check_window(path: str, objective: Objective, training: TrainingSettings) -> None:
    evaluations = training.evaluations
    if objective.average_last > evaluations:
        raise _err(
            path,
            "objective.average_last",
            f"{objective.average_last} evaluations is more than a trial makes ({evaluations}: "
            f"{training.epochs:g} epochs, one evaluation every {training.eval_every_epochs:g})",
        )


def _targets(raw: Mapping[str, Any], path: str) -> Targets:
    if not isinstance(raw["source"], str) or not raw["source"]:
        raise _err(path, "source", "must be a shard-set URI")
    tsec = _section(raw, path, "targets", {"select", "report"}, frozenset({"select"}))
    targets = Targets(
        raw["source"],
        _uri_list(path, "targets.select", tsec["select"], required=True),
        _uri_list(path, "targets.report", tsec.get("report", [])),
    )
    overlap = sorted(set(targets.select) & set(targets.report))
    if overlap:
        raise _err(
            path,
            "targets.report",
            f"{overlap[0]} is also a select target: a target used to choose cannot report generalisation",
        )
    if targets.source in targets.select + targets.report:
        raise _err(path, "targets", f"{targets.source} is the source: direct transfer is scored on other datasets")
    return targets


def _search(raw: Mapping[str, Any], path: str) -> SearchSettings:
    """`search`, less `start_from`, which needs the parameters and is read once they are."""
    s = _section(
        raw,
        path,
        "search",
        {"sampler", "num_samples", "max_concurrent", "seed", "seeds", "startup_trials", "start_from", "promote_se"},
    )
    if s.get("sampler", "tpe") not in SAMPLERS:
        raise _err(path, "search.sampler", f"{s['sampler']!r} is not allowed; choose one of {list(SAMPLERS)}")

    def count(key: str, default: int, high: int | None = None) -> int:
        return _number(
            path, f"search.{key}", s.get(key, default), integer=True, low=0 if key == "seed" else 1, high=high
        )

    search = SearchSettings(
        s.get("sampler", "tpe"),
        count("num_samples", 8, MAX_SAMPLES),
        count("max_concurrent", 2, MAX_CONCURRENT),
        count("seed", 0, MAX_SAMPLER_SEED),
        count("seeds", 1, MAX_SEEDS),
        None
        if s.get("startup_trials") is None
        else _number(path, "search.startup_trials", s["startup_trials"], integer=True, low=0),
        promote_se=_number(path, "search.promote_se", s.get("promote_se", 2.0), low=0, high=100),
    )
    if search.startup_trials is not None and search.sampler == "random":
        raise _err(path, "search.startup_trials", "has no meaning for sampler random (every trial is random)")
    return search


def _training(raw: Mapping[str, Any], path: str) -> TrainingSettings:
    t = _section(raw, path, "training", {"epochs", "eval_every_epochs", "checkpoints_to_keep"})
    return TrainingSettings(
        _number(path, "training.epochs", t.get("epochs", 8), low=0, low_open=True),
        _number(path, "training.eval_every_epochs", t.get("eval_every_epochs", 1), low=0, low_open=True),
        _number(path, "training.checkpoints_to_keep", t.get("checkpoints_to_keep", 2), integer=True, low=1),
    )


def _resources(raw: Mapping[str, Any], path: str) -> Resources:
    r = _section(raw, path, "resources", {"workers", "cpus_per_worker", "gpus_per_worker"})
    return Resources(
        _number(path, "resources.workers", r.get("workers", 1), integer=True, low=1),
        _number(path, "resources.cpus_per_worker", r.get("cpus_per_worker", 1), low=0, low_open=True),
        _number(path, "resources.gpus_per_worker", r.get("gpus_per_worker", 0), low=0),
    )


def _params(raw: Mapping[str, Any], path: str) -> dict[str, Param]:
    params_raw = raw["parameters"]
    if not isinstance(params_raw, dict) or not params_raw:
        raise _err(path, "parameters", "must map TrainConfig fields to {type: ...} specs")
    params: dict[str, Param] = {}
    for pname, spec in params_raw.items():
        params[str(pname)] = _parse_param(path, str(pname), spec, params)
    return params


def _fixed(raw: Mapping[str, Any], path: str, params: Mapping[str, Param]) -> dict[str, Any]:
    fixed = raw.get("fixed", {}) or {}
    if not isinstance(fixed, dict):
        raise _err(path, "fixed", "must map TrainConfig fields to values")
    for k in fixed:
        if k not in TRAIN_FIELDS or k in RESERVED_FIXED:
            raise _err(
                path,
                f"fixed.{k}",
                "is not a TrainConfig field" if k not in TRAIN_FIELDS else "is set by training.epochs",
            )
        if k in params:
            raise _err(path, f"fixed.{k}", "is also a searched parameter")
    return fixed


def _scheduler(
    raw: Mapping[str, Any], path: str, params: Mapping[str, Param], fixed: Mapping[str, Any], training: TrainingSettings
) -> SchedulerSettings:
    sched = _section(raw, path, "scheduler", {"type", "grace_period", "reduction_factor"})  # max_t: the epochs
    stype = sched.get("type", "asha")
    if stype not in SCHEDULERS:
        raise _err(path, "scheduler.type", f"{stype!r} is not allowed; choose one of {list(SCHEDULERS)}")
    if stype == "none" and len(sched) > 1:
        raise _err(path, "scheduler", "type 'none' takes no other settings")
    grace = (
        None
        if sched.get("grace_period") is None
        else _number(path, "scheduler.grace_period", sched["grace_period"], integer=True, low=1)
    )
    reduction = _number(path, "scheduler.reduction_factor", sched.get("reduction_factor", 2), low=1, low_open=True)
    evaluations = training.evaluations  # ASHA's max_t
    return SchedulerSettings(
        stype, _grace_period(path, stype, grace, params, fixed, training, evaluations), reduction, evaluations
    )


def _start_points(
    path: str, raw: Any, params: Mapping[str, Param], fixed: Mapping[str, Any], epochs: float
) -> tuple[tuple[str, FrozenDict], ...]:
    """`search.start_from`: a list of `defaults` (TrainConfig's defaults of the searched parameters, what the project
    ships) and explicit points ({parameter: value}, unnamed ones at their defaults); each must lie inside the space
    and make a valid config."""
    if not isinstance(raw, list) or not raw:
        raise _err(path, "search.start_from", "must be a list of points: `defaults` or {parameter: value} mappings")
    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    out, seen = [], set()
    for i, item in enumerate(raw):
        key = f"search.start_from[{i}]"
        if item == "defaults":
            name, given = "defaults", {}
        elif isinstance(item, dict):
            unknown = sorted(set(item) - set(params), key=str)
            if unknown:
                raise _err(path, f"{key}.{unknown[0]}", f"is not a searched parameter; they are {sorted(params)}")
            name, given = f"start{i}", dict(item)
        else:
            raise _err(path, key, f"must be `defaults` or a mapping {{parameter: value}}, got {item!r}")
        point: dict[str, Any] = {}
        for p in params.values():
            if not p.active(point):
                if p.name in given:
                    raise _err(path, f"{key}.{p.name}", "does not apply: its `when:` condition does not hold there")
                continue
            value = given.get(p.name, defaults[p.name])
            where = f"{key}.{p.name}" if p.name in given else f"{key} ({name}: {p.name}'s default)"
            point[p.name] = _inside(path, where, p, value)
        try:
            make_train_config(fixed, point, epochs)
        except ConfigError as exc:
            raise _err(path, key, f"is not a valid config: {exc}") from None
        frozen = tuple(sorted(point.items()))
        if frozen in seen:
            raise _err(path, key, "repeats an earlier start point")
        seen.add(frozen)
        out.append((name, FrozenDict(point)))
    return tuple(out)


def _inside(path: str, key: str, p: Param, value: Any) -> Any:
    """`value` as parameter `p` would sample it, or an error saying where the space excludes it."""
    if p.type == "categorical":
        if value not in p.choices:
            raise _err(path, key, f"{value!r} is not among its choices {list(p.choices)}")
        return value
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or (p.type == "int" and not float(value).is_integer())
    ):
        raise _err(path, key, f"must be {'an integer' if p.type == 'int' else 'a number'}, got {value!r}")
    if not p.low <= value <= p.high:
        raise _err(
            path,
            key,
            f"{value!r} lies outside the searched range {p.low:g}..{p.high:g}; widen "
            f"parameters.{p.name} or start elsewhere",
        )
    if p.step is not None and abs((value - p.low) / p.step - round((value - p.low) / p.step)) > 1e-9:
        raise _err(path, key, f"{value!r} is not on the grid of step {p.step:g} from {p.low:g}")
    return int(value) if p.type == "int" else float(value)


def _verify(path: str, v: Mapping[str, Any]) -> VerifySettings:
    seeds = _number(path, "verify.seeds", v.get("seeds", 0), integer=True, low=0, high=MAX_VERIFY_SEEDS)
    if seeds == 1:
        raise _err(path, "verify.seeds", "must be 0 (off) or >= 2: one seed gives no interval")
    max_seeds = _number(path, "verify.max_seeds", v.get("max_seeds", seeds), integer=True, low=0, high=MAX_VERIFY_SEEDS)
    if max_seeds < seeds:
        raise _err(path, "verify.max_seeds", f"{max_seeds} is fewer than verify.seeds ({seeds}), the first round")
    step = _number(path, "verify.step", v.get("step", 2), integer=True, low=1, high=MAX_VERIFY_SEEDS)
    arms = v.get("arms", list(VerifySettings.arms))
    if not isinstance(arms, list) or any(a not in VERIFY_ARMS for a in arms) or len(set(arms)) != len(arms):
        raise _err(path, "verify.arms", f"must list arms among {list(VERIFY_ARMS)}, each once; got {arms!r}")
    if "winner" not in arms or "baseline" not in arms:
        raise _err(path, "verify.arms", "must include winner and baseline: the verdict is winner - baseline")
    return VerifySettings(seeds, max(max_seeds, seeds), step, tuple(arms))


def _grace_period(
    path: str,
    stype: str,
    grace: int | None,
    params: Mapping[str, Param],
    fixed: Mapping[str, Any],
    training: TrainingSettings,
    evaluations: int,
) -> int:
    """ASHA's first rung, in evaluations (never beyond a trial's last). When every searched parameter is one that
    acts only after pretraining
    (ADVERSARIAL_PHASE_FIELDS), all trials train the same encoder until then, so a rung inside pretraining ranks
    identical models (ties, or thread noise) and stops trials for nothing the search chose. The default is then
    the first evaluation after pretraining, and an earlier one is refused; otherwise the default is 1."""
    if grace is not None and grace > evaluations:
        raise _err(
            path,
            "scheduler.grace_period",
            f"{grace} evaluations is beyond a trial's last: it has "
            f"{evaluations} ({training.epochs:g} epochs, one evaluation every "
            f"{training.eval_every_epochs:g})",
        )
    if stype != "asha" or not set(params) <= ADVERSARIAL_PHASE_FIELDS:
        return 1 if grace is None else grace
    defaults = TrainConfig.__dataclass_fields__
    try:
        pretraining = sum(
            float(fixed.get(k, defaults[k].default)) for k in ("pretrain_id_epochs", "pretrain_nuisance_epochs")
        )
    except (TypeError, ValueError):  # not a number: the corner check names the field
        return 1 if grace is None else grace
    first = math.floor(pretraining / training.eval_every_epochs + 1e-9) + 1  # first evaluation after it
    acting = f"every searched parameter ({', '.join(params)}) acts only after pretraining ({pretraining:g} epochs)"
    if first >= evaluations:
        raise _err(
            path,
            "scheduler",
            f"ASHA has no rung between the end of pretraining and the end of training: "
            f"{acting}, and a trial has {evaluations} evaluations of "
            f"{training.eval_every_epochs:g} epochs; use type: none or train longer",
        )
    if grace is not None and grace < first:
        raise _err(
            path,
            "scheduler.grace_period",
            f"{grace} evaluations ({grace * training.eval_every_epochs:g} "
            f"epochs) is not after pretraining, so that rung would rank "
            f"identical models: {acting}; use >= {first}",
        )
    return first if grace is None else grace


def _check_corners(space: SearchSpace) -> None:
    """Combinations of extreme values must make valid TrainConfigs (e.g. i_trigger < i_target)."""
    params = space.params
    for combo in itertools.islice(itertools.product(*(p.corners() for p in params)), MAX_CORNERS):
        values = dict(zip((p.name for p in params), combo))
        active = {p.name: values[p.name] for p in params if p.active(values)}
        try:
            space.train_config(active)
        except ConfigError as exc:
            raise SpaceError(
                f"{space.path}: parameters/fixed: a corner of the space is not a valid config ({exc}); values: {active}"
            ) from None
