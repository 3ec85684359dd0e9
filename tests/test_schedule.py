import pytest

from adin_core.config import TrainConfig
from adin_core.schedule import Phase, Schedule, ScheduleConfig


def make(**kw) -> Schedule:
    base = dict(
        total_steps=1000,
        pretrain_id_steps=20,
        pretrain_nuisance_steps=10,
        check_every=10,
        max_adversarial_steps=30,
        max_rescue_steps=20,
        refresh_steps=10,
        i_target=1.0,
        i_trigger=0.9,
        n_trigger=0.8,
    )
    base.update(kw)
    return Schedule(ScheduleConfig(**base))


def run_check(s: Schedule, id_acc: float, n_acc: float | None):
    s.advance(s.steps_until_check())
    return s.observe(id_acc, n_acc)


def test_pretraining_then_relative_thresholds():
    s = make()
    assert s.phase is Phase.PRETRAIN_ID and s.steps_until_check() == 10
    assert run_check(s, 0.3, None) is None
    tr = run_check(s, 0.5, None)
    assert (tr.source, tr.target) == ("pretrain_id", "pretrain_nuisance")
    tr = run_check(s, 0.6, 0.9)
    assert tr.target == "adversarial" and s.a0 == 0.6 and s.n0 == 0.9
    assert s.thresholds == pytest.approx({"i_target": 0.6, "i_trigger": 0.54, "n_trigger": 0.72})


def adversarial_schedule(**kw) -> Schedule:
    s = make(**kw)
    run_check(s, 0.3, None)
    run_check(s, 0.5, None)
    run_check(s, 0.6, 0.9)  # -> adversarial; thresholds 0.6 / 0.54 / 0.72
    assert s.phase is Phase.ADVERSARIAL
    return s


def test_identity_drop_triggers_rescue_until_target():
    s = adversarial_schedule()
    assert run_check(s, 0.58, 0.85) is None  # above I-trigger, adversary still strong: keep going
    tr = run_check(s, 0.50, 0.85)
    assert tr.target == "rescue" and tr.reason.startswith("identity accuracy below I-trigger")
    assert run_check(s, 0.55, 0.85) is None  # recovering but below I-target
    tr = run_check(s, 0.61, 0.85)
    assert tr.target == "adversarial" and "reached I-target" in tr.reason


def test_weak_adversary_is_refreshed_then_training_continues():
    s = adversarial_schedule()
    tr = run_check(s, 0.6, 0.5)
    assert tr.target == "refresh"
    assert s.steps_until_check() == 10
    tr = run_check(s, 0.6, 0.5)  # a fresh adversary is still weak: invariant features, keep training
    assert tr.target == "adversarial" and "invariant" in tr.reason
    tr = run_check(s, 0.6, 0.95)
    assert tr is None


def test_phase_budgets_bound_every_phase():
    s = adversarial_schedule()
    run_check(s, 0.6, 0.9)
    run_check(s, 0.6, 0.9)
    tr = run_check(s, 0.6, 0.9)  # 30 adversarial steps = budget
    assert tr.target == "refresh" and "budget" in tr.reason
    run_check(s, 0.6, 0.9)  # refresh done -> adversarial
    assert s.phase is Phase.ADVERSARIAL
    run_check(s, 0.1, 0.9)  # -> rescue
    run_check(s, 0.1, 0.9)
    tr = run_check(s, 0.1, 0.9)  # rescue budget (20) spent, still below trigger: rescue again, recorded
    assert (tr.source, tr.target) == ("rescue", "rescue") and "budget" in tr.reason


def test_total_budget_always_ends_the_run():
    s = make(total_steps=95)
    checks = 0
    while not s.done:
        run_check(s, 0.1 if checks % 3 else 0.9, 0.5)
        checks += 1
        assert checks < 100
    assert s.step == 95 and s.transitions[-1].target == "done"


def test_steps_until_check_respects_remaining_budgets():
    s = make(total_steps=25, pretrain_id_steps=15, check_every=10)
    assert s.steps_until_check() == 10
    s.advance(10)
    s.observe(0.1, None)
    assert s.steps_until_check() == 5  # rest of the pretraining budget


def test_absolute_thresholds():
    s = make(relative=False, i_target=0.7, i_trigger=0.5, n_trigger=0.3)
    run_check(s, 0.3, None)
    run_check(s, 0.5, None)
    tr = run_check(s, 0.4, 0.9)
    assert tr.target == "rescue" and s.thresholds == {"i_target": 0.7, "i_trigger": 0.5, "n_trigger": 0.3}


def test_baseline_trains_identity_only():
    cfg = TrainConfig(backbone="small_cnn", adv_loss="none", epochs=2, image_height=32, image_width=16)
    s = Schedule(ScheduleConfig.from_train_config(cfg, steps_per_epoch=10))
    phases = set()
    while not s.done:
        phases.add(s.phase)
        run_check(s, 0.5, None)
    assert phases == {Phase.PRETRAIN_ID} and s.step == 20


def test_state_dict_round_trip():
    s = adversarial_schedule()
    run_check(s, 0.5, 0.85)
    restored = Schedule.from_state_dict(s.config, s.state_dict())
    assert restored.state_dict() == s.state_dict()
    assert restored.phase is Phase.RESCUE


def test_from_train_config_converts_epochs_to_steps():
    cfg = TrainConfig(
        backbone="small_cnn",
        epochs=3,
        pretrain_id_epochs=1,
        pretrain_nuisance_epochs=0.5,
        image_height=32,
        image_width=16,
    )
    sc = ScheduleConfig.from_train_config(cfg, steps_per_epoch=40)
    assert (sc.total_steps, sc.pretrain_id_steps, sc.pretrain_nuisance_steps) == (120, 40, 20)


def test_invalid_schedule_config():
    with pytest.raises(ValueError, match="i_trigger"):
        make(i_trigger=1.0, i_target=1.0)
    with pytest.raises(ValueError, match="check_every"):
        make(check_every=0)
