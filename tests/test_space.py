import copy
import glob
import os
import pickle

import optuna
import pytest
import yaml

from orchestrator.space import SpaceError, load_space, parse_space

BASE = {
    "name": "t",
    "source": "synthetic:tiny/source",
    "targets": {"select": ["synthetic:tiny/select"], "report": ["synthetic:tiny/report"]},
    "parameters": {
        "adv_loss": {"type": "categorical", "choices": ["kl", "ne"]},
        "prior_temperature": {"type": "float", "low": 0.0, "high": 2.0, "when": {"adv_loss": "kl"}},
        "beta": {"type": "float", "low": 0.1, "high": 10, "log": True},
    },
    "fixed": {"backbone": "small_cnn", "image_height": 32, "image_width": 16},
}


def with_(path: str, value):
    raw = copy.deepcopy(BASE)
    keys = path.split(".")
    node = raw
    for k in keys[:-1]:
        node = node.setdefault(k, {})
    if value is None:
        del node[keys[-1]]
    else:
        node[keys[-1]] = value
    return raw


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHIPPED = sorted(glob.glob(os.path.join(REPO, "search_spaces", "*.yaml")))


@pytest.mark.parametrize("path", SHIPPED, ids=os.path.basename)
def test_shipped_spaces_are_valid(path):
    space = load_space(path)
    assert space.params and space.targets.select
    assert set(space.targets.select).isdisjoint(space.targets.report)


def test_required_spaces_exist():
    assert {load_space(p).name for p in SHIPPED} == {"smoke", "thresholds", "adin"}


@pytest.mark.parametrize("path", [p for p in SHIPPED if not p.endswith("smoke.yaml")], ids=os.path.basename)
def test_shipped_spaces_train_as_the_measured_benchmark_does(path):
    """thresholds/adin fix what adin_core.benchmark trains with, so a sweep's default trial is the README's ADIN."""
    from adin_core.benchmark import SYNTHETIC_TRAINING

    space = load_space(path)
    expected = {k: v for k, v in SYNTHETIC_TRAINING.items() if k != "epochs"}
    assert {k: space.fixed[k] for k in expected} == expected and space.training.epochs == SYNTHETIC_TRAINING["epochs"]
    assert (space.fixed["image_height"], space.fixed["image_width"]) == (64, 32)


@pytest.mark.parametrize(
    "path,value,match",
    [
        ("colour", "red", r"colour: unknown key; allowed"),
        ("search.sampler", "hyperopt", r"search.sampler: 'hyperopt' is not allowed; choose one of \['tpe'"),
        ("search.num_samples", 0, r"search.num_samples: must be >= 1"),
        ("scheduler.type", "pbt", r"scheduler.type: 'pbt' is not allowed"),
        ("scheduler.max_t", 4, r"scheduler.max_t: unknown key"),  # set by training.epochs / eval_every_epochs
        ("resources.cpus_per_worker", 0, r"resources.cpus_per_worker: must be > 0"),
        ("parameters.beta.log", "yes", r"parameters.beta.log: must be true or false"),
        ("parameters.beta.low", -1, r"parameters.beta.log: log scale needs low > 0"),
        ("parameters.beta.high", 0.01, r"parameters.beta: low \(0.1\) must be < high"),
        ("parameters.beta.type", "normal", r"parameters.beta.type: 'normal' is not allowed"),
        ("parameters.gamma", {"type": "float", "low": 0, "high": 1}, r"parameters.gamma: is not a searchable"),
        ("parameters.prior_temperature.when", {"adv_loss": "rg"}, r"when.adv_loss: 'rg' is not one of its choices"),
        (
            "parameters.prior_temperature.when",
            {"beta": 1},
            r"when.beta: must name a categorical parameter defined above",
        ),
        ("fixed.beta", 2.0, r"fixed.beta: is also a searched parameter"),
        ("fixed.epochs", 2, r"fixed.epochs: is set by training.epochs"),
        ("targets.report", ["synthetic:tiny/select"], r"targets.report: .* is also a select target"),
        ("targets", None, r"targets: is required"),
        ("fixed.backbone", "vgg", r"a corner of the space is not a valid config \(backbone='vgg'"),
        ("search.seeds", 0, r"search.seeds: must be >= 1, got 0"),
        ("search.startup_trials", -1, r"search.startup_trials: must be >= 0"),
        ("search.startup_trials", 2.5, r"search.startup_trials: must be an integer"),
        ("verify.seeds", 1, r"verify.seeds: must be 0 \(off\) or >= 2"),
        ("verify.colour", 1, r"verify.colour: unknown key"),
        ("parameters.beta.high", float("nan"), r"parameters.beta.high: must be a finite number"),
        ("objective.metric", "select/x", r"objective.metric: 'select/x' is not a metric"),
        ("objective.average_last", 0, r"objective.average_last: must be a whole number of evaluations >= 1, got 0"),
        ("objective.average_last", "3", r"objective.average_last: must be a whole number of evaluations"),
        (
            "objective.average_last",
            9,
            r"objective.average_last: 9 evaluations is more than a trial makes \(8: 8 epochs",
        ),
        # start points: inside the space, naming searched parameters, valid configs
        ("search.start_from", "defaults", r"search.start_from: must be a list of points"),
        ("search.start_from", [{"beta": 20.0}], r"start_from\[0\].beta: 20.0 lies outside the searched range 0.1..10"),
        ("search.start_from", [{"lr_heads": 0.2}], r"start_from\[0\].lr_heads: is not a searched parameter"),
        (
            "search.start_from",
            [{"adv_loss": "ne", "prior_temperature": 1.0}],
            r"start_from\[0\].prior_temperature: does not apply: its `when:` condition does not hold there",
        ),
        ("search.start_from", [{"adv_loss": "rg"}], r"start_from\[0\].adv_loss: 'rg' is not among its choices"),
        ("search.start_from", ["defaults", {"beta": 0.1}], r"start_from\[1\]: repeats an earlier start point"),
        ("search.start_from", [42], r"start_from\[0\]: must be `defaults` or a mapping"),
        ("search.promote_se", -1, r"search.promote_se: must be >= 0"),
        ("verify.arms", ["winner", "default"], r"verify.arms: must include winner and baseline"),
        ("verify.arms", ["winner", "baseline", "oracle"], r"verify.arms: must list arms among"),
    ],
)
def test_malformed_space_names_the_key(path, value, match):
    with pytest.raises(SpaceError, match=match):
        parse_space(with_(path, value), "space.yaml")


def test_start_points_resolve_defaults_inside_the_space_and_say_where_a_default_falls_outside():
    space = parse_space(with_("search.start_from", ["defaults", {"beta": 2.0, "adv_loss": "ne"}]), "space.yaml")
    assert [(n, dict(p)) for n, p in space.search.start_from] == [
        ("defaults", {"adv_loss": "kl", "prior_temperature": 1.0, "beta": 0.1}),
        ("start1", {"adv_loss": "ne", "beta": 2.0}),
    ]  # prior_temperature applies only under kl
    raw = with_("search.start_from", ["defaults"])
    raw["parameters"]["beta"]["low"] = 0.5
    with pytest.raises(
        SpaceError,
        match=r"start_from\[0\] \(defaults: beta's default\): 0.1 lies outside the "
        r"searched range 0.5..10",
    ):
        parse_space(raw, "space.yaml")
    with pytest.raises(SpaceError, match="names 3 points, more than the 2 trials"):
        parse_space(
            dict(
                with_("search.start_from", ["defaults", {"beta": 1.0}, {"beta": 2.0}]),
                search={"num_samples": 2, "start_from": ["defaults", {"beta": 1.0}, {"beta": 2.0}]},
            ),
            "space.yaml",
        )


def test_a_model_based_sampler_steers_at_least_half_the_trials_by_default():
    """Optuna's TPE draws its first 10 trials at random: in a search of 8 it would never use its model."""

    def search(**settings):
        raw = with_("search", {"num_samples": 8, **settings})
        return parse_space(raw, "space.yaml").search

    from orchestrator.search import make_sampler

    tpe = search(max_concurrent=2)
    assert tpe.random_start == 4
    sampler = make_sampler(tpe)
    assert sampler._constant_liar  # parallel trials: no duplicate picks
    # Optuna counts finished trials: 4 drawn at random with 2 in flight is 3 finished (tests/test_search.py replays it)
    assert sampler._n_startup_trials == 3
    assert search(num_samples=40).random_start == 10  # Optuna's own default where it fits
    assert make_sampler(search(startup_trials=2, max_concurrent=1))._n_startup_trials == 2
    assert not make_sampler(search(max_concurrent=1))._constant_liar
    assert search(sampler="cmaes").random_start == 0
    assert make_sampler(search(sampler="gp", max_concurrent=1))._n_startup_trials == 4
    with pytest.raises(SpaceError, match=r"search.startup_trials: has no meaning for sampler random"):
        search(sampler="random", startup_trials=3)


def test_no_asha_rung_inside_pretraining_when_no_searched_parameter_acts_there():
    """beta, adv_loss, prior_temperature act only once pretraining ends (4 epochs here): a rung at epoch 4 would
    rank identical encoders (tests/test_train.py), so it is refused, and the default rung moves past it."""
    raw = with_("fixed", {**BASE["fixed"], "pretrain_id_epochs": 3, "pretrain_nuisance_epochs": 1})
    raw["training"] = {"epochs": 16, "eval_every_epochs": 2}
    raw["scheduler"] = {"type": "asha", "grace_period": 2}
    with pytest.raises(
        SpaceError,
        match=r"^space.yaml: scheduler.grace_period: 2 evaluations \(4 epochs\) is not "
        r"after pretraining.*\(adv_loss, prior_temperature, beta\).*use >= 3$",
    ):
        parse_space(raw, "space.yaml")
    raw["scheduler"] = {"type": "asha", "grace_period": 3}
    assert parse_space(raw, "space.yaml").scheduler.grace_period == 3
    raw["scheduler"] = {"type": "asha"}
    assert parse_space(raw, "space.yaml").scheduler.grace_period == 3  # the default: the first rung after it
    raw["parameters"]["lr_heads"] = {"type": "float", "low": 0.01, "high": 0.3}  # acts from the first step
    assert parse_space(raw, "space.yaml").scheduler.grace_period == 1
    raw["parameters"].pop("lr_heads")
    raw["training"] = {"epochs": 6, "eval_every_epochs": 2}  # evaluations at 2, 4, 6: no rung after pretraining
    with pytest.raises(SpaceError, match=r"scheduler: ASHA has no rung between the end of pretraining"):
        parse_space(raw, "space.yaml")
    raw["scheduler"] = {"type": "none"}
    assert parse_space(raw, "space.yaml").scheduler.type == "none"


def test_verification_needs_report_targets_and_something_to_verify_against():
    raw = with_("verify.seeds", 3)
    raw["targets"].pop("report")
    with pytest.raises(SpaceError, match="verify.seeds: verification scores the report targets"):
        parse_space(raw, "space.yaml")
    raw = with_("verify.seeds", 3)
    raw["parameters"].pop("adv_loss")
    raw["parameters"].pop("prior_temperature")
    raw["fixed"]["adv_loss"] = "none"
    with pytest.raises(SpaceError, match="its winner is the baseline"):
        parse_space(raw, "space.yaml")
    assert parse_space(with_("verify.seeds", 3), "space.yaml").verify.seeds == 3


def test_overlapping_threshold_ranges_are_caught_before_ray():
    raw = with_("parameters.i_target", {"type": "float", "low": 0.9, "high": 1.0})
    raw["parameters"]["i_trigger"] = {"type": "float", "low": 0.85, "high": 0.95}
    with pytest.raises(SpaceError, match="i_trigger must be < i_target"):
        parse_space(raw, "space.yaml")


def test_corners_are_checked_beyond_the_first_in_a_large_space():
    raw = with_("parameters.i_target", {"type": "float", "low": 0.9, "high": 1.0})
    raw["parameters"]["i_trigger"] = {"type": "float", "low": 0.85, "high": 0.95}  # bad only at (0.9, 0.95)
    for name in (
        "label_smoothing",
        "center_weight",
        "n_trigger",
        "lr_backbone",
        "lr_heads",
        "momentum",
        "weight_decay",
        "pretrain_id_epochs",
        "pretrain_nuisance_epochs",
    ):
        raw["parameters"][name] = {"type": "float", "low": 0.01, "high": 0.1}
    raw["parameters"]["refresh_steps"] = {"type": "int", "low": 1, "high": 5}
    assert len(raw["parameters"]) == 15
    with pytest.raises(SpaceError, match="i_trigger must be < i_target"):
        parse_space(raw, "space.yaml")


def test_define_by_run_conditions_and_pickles(tmp_path):
    space = parse_space(BASE, "space.yaml")
    define = pickle.loads(pickle.dumps(space.define_by_run()))  # Tune pickles the searcher
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = []
    for _ in range(30):
        trial = study.ask()
        assert define(trial) is None  # fixed values reach trials through the plan, not Tune's config
        seen.append(dict(trial.params))
        study.tell(trial, 0.0)
    assert any(p["adv_loss"] == "ne" for p in seen) and any(p["adv_loss"] == "kl" for p in seen)
    for p in seen:
        assert ("prior_temperature" in p) == (p["adv_loss"] == "kl")
        assert 0.1 <= p["beta"] <= 10
    cfg = space.train_config(seen[0])
    assert cfg.backbone == "small_cnn" and cfg.epochs == space.training.epochs


def test_command_line_overrides_are_validated_and_errors_name_the_flag():
    space = parse_space(BASE, "space.yaml")
    moved = space.with_overrides(
        {
            "source": ("--source", "s3://b/msmt17/v1"),
            "resources.workers": ("--workers", 4),
            "resources.gpus_per_worker": ("--gpus-per-worker", 1.0),
            "targets.select": ("--select", ["s3://b/duke/v1"]),
        }
    )
    assert moved.targets.source == "s3://b/msmt17/v1" and moved.resources.workers == 4
    assert moved.targets.select == ("s3://b/duke/v1",) and space.resources.workers == 1  # the original is frozen
    with pytest.raises(SpaceError, match=r"^--workers: must be >= 1, got 0$"):
        space.with_overrides({"resources.workers": ("--workers", 0)})
    with pytest.raises(SpaceError, match=r"^--epochs: must be > 0, got -1$"):
        space.with_overrides({"training.epochs": ("--epochs", -1)})
    with pytest.raises(TypeError):
        space.fixed["backbone"] = "resnet50"


def test_scheduler_override_from_the_command_line():
    from orchestrator.plan import _space_changes

    space = load_space(os.path.join(REPO, "search_spaces", "smoke.yaml"))
    assert space.scheduler.type == "asha"
    off = space.with_overrides(_space_changes(space, {"--scheduler": "none"}))
    assert off.scheduler.type == "none"
    on = off.with_overrides(_space_changes(off, {"--scheduler": "asha"}))
    # defaults when the file has none: the first rung after pretraining (1.5 epochs), every parameter acting after it
    assert on.scheduler.type == "asha" and on.scheduler.grace_period == 2
    assert not _space_changes(space, {"--scheduler": "asha"})  # the file's own ASHA settings are kept


def test_file_errors(tmp_path):
    with pytest.raises(SpaceError, match="does not exist"):
        load_space(str(tmp_path / "nope.yaml"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(SpaceError, match="not valid YAML"):
        load_space(str(bad))
    bad.write_text(yaml.safe_dump(["a", "list"]))
    with pytest.raises(SpaceError, match="must hold a mapping"):
        load_space(str(bad))


def test_sweep_cli_rejects_bad_space_before_ray(tmp_path, capsys):
    from orchestrator.sweep import main

    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(with_("search.sampler", "grid")))
    assert (
        main(
            [
                "--space",
                str(bad),
                "--storage",
                str(tmp_path / "s"),
                "--data-root",
                str(tmp_path / "d"),
                "--tracking-uri",
                f"sqlite:///{tmp_path}/m.db",
            ]
        )
        == 2
    )
    assert "search.sampler: 'grid' is not allowed" in capsys.readouterr().err
    assert (
        main(
            [
                "--space",
                "search_spaces/smoke.yaml",
                "--retry-budget",
                "-1",
                "--storage",
                str(tmp_path / "s"),
                "--tracking-uri",
                f"sqlite:///{tmp_path}/m.db",
            ]
        )
        == 2
    )
    assert "--retry-budget must be >= 0" in capsys.readouterr().err
    import ray

    assert not ray.is_initialized()


def test_sweep_refuses_an_existing_name_before_ray(tmp_path, capsys):
    from orchestrator.sweep import main

    (tmp_path / "s" / "smoke-x").mkdir(parents=True)
    assert (
        main(
            [
                "--space",
                "search_spaces/smoke.yaml",
                "--name",
                "smoke-x",
                "--storage",
                str(tmp_path / "s"),
                "--data-root",
                str(tmp_path / "d"),
                "--tracking-uri",
                f"sqlite:///{tmp_path}/m.db",
            ]
        )
        == 2
    )
    assert "sweep 'smoke-x' already exists" in capsys.readouterr().err


def test_sweep_checks_nuisance_labels_against_the_source_manifest(tmp_path):
    from adin_core.data.datasets import resolve_dataset
    from adin_core.data.shards import ShardSet
    from orchestrator.plan import check_nuisance_labels

    source = ShardSet.open(resolve_dataset("synthetic:tiny/source?with_time=false", str(tmp_path)))  # no time
    check_nuisance_labels(parse_space(BASE, "space.yaml"), source)  # camera (the default) is there
    raw = with_("parameters.nuisance", {"type": "categorical", "choices": ["camera", "camera+time"]})
    with pytest.raises(SpaceError, match=r"nuisance 'camera\+time' needs label kind\(s\) \['time'\]"):
        check_nuisance_labels(parse_space(raw, "space.yaml"), source)


def test_an_averaged_objective_is_ranked_by_its_own_reported_metric():
    space = parse_space(with_("objective.average_last", 3), "space.yaml")
    assert space.objective.key == "transfer_mAP_avg3" and space.objective.metric == "transfer_mAP"
    assert "mean of the last 3 evaluations" in space.objective.describe()
    assert parse_space(BASE, "space.yaml").objective.key == "transfer_mAP"
