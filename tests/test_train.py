import os

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from adin_core.config import TrainConfig
from adin_core.data.memory import EvalTarget, TrainingData, held_out_val
from adin_core.data.synthetic import generate_benchmark
from adin_core.evaluation import score_target
from adin_core.nuisance import NuisanceError
from adin_core.train import ADINTrainer, fit
from orchestrator.net import free_port


@pytest.fixture(scope="module")
def bench():
    return generate_benchmark("tiny", seed=0)


def _data(bench, nuisance="camera"):
    train, val = held_out_val(bench.source.train)
    return TrainingData(train, val, nuisance, name="tiny")


def _config(**kw) -> TrainConfig:
    base = dict(
        backbone="small_cnn",
        image_height=32,
        image_width=16,
        batch_size=32,
        epochs=15,
        pretrain_id_epochs=5,
        pretrain_nuisance_epochs=1,
        check_every=10,
        refresh_steps=5,
    )
    base.update(kw)
    return TrainConfig(**base)


def test_short_training_run_raises_identity_accuracy(bench):
    data = _data(bench)
    result = fit(_config(), data)
    accs = [r.id_acc for r in result.history]
    chance = 1 / data.num_identities
    assert accs[0] < 0.3
    assert accs[-1] >= 0.5 and accs[-1] >= accs[0] + 0.3 and accs[-1] > 10 * chance
    phases = {r.phase for r in result.history}
    assert {"pretrain_id", "pretrain_nuisance", "adversarial"} <= phases
    assert result.transitions[-1].target == "done"
    # the trained features retrieve far better than chance on the source's own test split
    scores, _ = score_target(result.model, EvalTarget("source", bench.source.query, bench.source.gallery), _config())
    assert scores["mAP"] > 0.3


@pytest.mark.parametrize(
    "adv_loss,calibration",
    [
        ("rg", "none"),
        ("ne", "none"),
        ("ne", "class_prior"),
        ("kl", "none"),
        ("kl", "class_prior"),
        ("kl", "sample_prior"),
        ("js", "none"),
    ],
)
def test_every_adversarial_loss_trains(bench, adv_loss, calibration):
    cfg = _config(
        adv_loss=adv_loss, calibration=calibration, epochs=3, pretrain_id_epochs=1, pretrain_nuisance_epochs=0.5
    )
    result = fit(cfg, _data(bench))
    adv = [r for r in result.history if r.phase == "adversarial"]
    assert adv and all(np.isfinite(r.losses["adversarial"]) for r in adv)
    # the adversary's grip is measured at every check that trained adversarially, and only there
    assert all(r.grip["adv_to_id"] > 0 and -1 <= r.grip["cosine"] <= 1 for r in adv)
    assert all(not r.grip for r in result.history if r.phase != "adversarial")
    last = result.history[-1]
    assert sum(last.phase_steps.values()) == last.step
    assert set(last.phase_seconds) == set(last.phase_steps)


def _frozen_step_grads(trainer, x, pids, labels):
    """Run one adversarial step with the optimisers' updates switched off; return the gradients it left."""
    trainer.opt_main.step = lambda: None
    trainer.opt_nuisance.step = lambda: None
    trainer._step_nuisance = lambda *a, **k: None  # keep f_N's gradients from L_adv visible
    trainer._step_adversarial(x, pids, labels)
    return (
        [p.grad.clone() for p in trainer.model.encoder_parameters()],
        [None if p.grad is None else p.grad.clone() for p in trainer.model.nuisance_parameters()],
    )


@pytest.mark.parametrize("adv_loss", ["rg", "kl"])
def test_adversarial_step_sends_exactly_l_id_plus_beta_l_adv_to_the_encoder(bench, adv_loss):
    """The encoder's gradient is d(L_I)/dθ_E + β d(L_adv)/dθ_E (rg: minus β times f_N's cross-entropy gradient);
    f_N gets its cross-entropy gradient under rg and nothing from L_adv otherwise."""
    from adin_core.losses import adversarial_loss

    data = _data(bench)
    cfg = _config(adv_loss=adv_loss, beta=0.7, center_weight=0.0)
    trainer = ADINTrainer(cfg, data)
    batch = next(data.batches(0, 16))
    x, pids, labels = trainer._prepare(batch, train=False)
    state = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    enc, nuis = _frozen_step_grads(trainer, x, pids, labels)

    trainer.model.load_state_dict(state)  # the same weights and BatchNorm statistics, by hand
    feats = trainer.model.features(x)
    l_id = trainer._identity_terms(feats, pids)
    head = trainer.model.nuisance_heads[0]["camera"]
    l_adv = adversarial_loss(
        adv_loss, head(feats[0]), labels["camera"], trainer.priors["camera"], calibration=cfg.calibration
    )
    enc_params = trainer.model.encoder_parameters()
    sign = -1.0 if adv_loss == "rg" else 1.0
    g_id = torch.autograd.grad(l_id, enc_params, retain_graph=True)
    g_adv = torch.autograd.grad(l_adv, enc_params + list(head.parameters()))
    for got, gi, ga in zip(enc, g_id, g_adv):
        torch.testing.assert_close(got, gi + sign * 0.7 * ga, atol=1e-5, rtol=1e-4)
    head_grads = [
        g for p, g in zip(trainer.model.nuisance_parameters(), nuis) if any(p is q for q in head.parameters())
    ]
    if adv_loss == "rg":
        for got, want in zip(head_grads, g_adv[len(enc_params) :]):
            torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
    else:
        assert all(g is None for g in head_grads)


def test_beta_scales_the_adversarys_grip_linearly(bench):
    """beta reaches the loss: the reported grip (||β dL_adv/df|| / ||dL_I/df||) doubles with beta."""
    data = _data(bench)
    batch = next(data.batches(0, 16))
    grips = []
    for beta in (0.5, 1.0):
        trainer = ADINTrainer(_config(beta=beta), data)
        x, pids, labels = trainer._prepare(batch, train=False)
        _frozen_step_grads(trainer, x, pids, labels)
        grips.append(trainer._take_means("grip")["adv_to_id"])
    assert grips[1] == pytest.approx(2 * grips[0], rel=1e-4)


def test_shuffled_nuisance_control_keeps_priors_and_cuts_the_labels(bench):
    data = _data(bench)
    shuffled = data.with_shuffled_nuisance(seed=3)
    for split in ("train_labels", "val_labels"):
        pids, nuis = getattr(data, split)
        s_pids, s_nuis = getattr(shuffled, split)
        np.testing.assert_array_equal(pids, s_pids)  # identities untouched
        np.testing.assert_array_equal(np.bincount(nuis["camera"]), np.bincount(s_nuis["camera"]))
        assert (nuis["camera"] != s_nuis["camera"]).mean() > 0.3
    for kind, prior in data.priors.items():
        np.testing.assert_array_equal(prior, shuffled.priors[kind])
    trainer = ADINTrainer(_config(shuffle_nuisance=True, seed=3), data)
    np.testing.assert_array_equal(trainer.data.train_labels[1]["camera"], shuffled.train_labels[1]["camera"])
    assert data.train_labels[1]["camera"] is not trainer.data.train_labels[1]["camera"]  # the caller's data kept


@pytest.mark.parametrize(
    "nuisance,heads", [("camera+time", {"camera", "time"}), ("camera_x_time", {"camera_x_time"}), ("time", {"time"})]
)
def test_nuisance_label_kinds(bench, nuisance, heads):
    data = _data(bench, nuisance)
    result = fit(_config(nuisance=nuisance, epochs=2, pretrain_id_epochs=1, pretrain_nuisance_epochs=0.5), data)
    assert set(result.history[-1].nuisance_acc_by_kind) == heads
    assert set(result.model.nuisance_heads[0].keys()) == heads


def test_missing_nuisance_label_fails_before_training(bench):
    train, val = held_out_val(bench.source.train)
    train.timeperiods[:] = -1  # a dataset without time of day (like Market-1501)
    with pytest.raises(NuisanceError, match="needs time of day"):
        TrainingData(train, val, "camera+time", name="market-like")


def test_baseline_without_adversary(bench):
    result = fit(_config(adv_loss="none", epochs=3), _data(bench))
    assert {r.phase for r in result.history} == {"pretrain_id"}


def test_resume_from_checkpoint_matches_uninterrupted_run(bench, tmp_path):
    data = _data(bench)
    cfg = _config(epochs=6, pretrain_id_epochs=2, pretrain_nuisance_epochs=1)
    full = fit(cfg, data)

    class StopAfter:
        def __init__(self, n):
            self.n, self.saved = n, None

        def on_check(self, trainer, report):
            if len(trainer.history) == self.n:
                path = tmp_path / "ckpt.pt"
                torch.save(trainer.state_dict(), path)
                self.saved = path
                raise KeyboardInterrupt  # the process dies here

    stopper = StopAfter(4)
    with pytest.raises(KeyboardInterrupt):
        fit(cfg, data, hooks=[stopper])
    state = torch.load(stopper.saved, weights_only=True)  # tensors and plain values only: no pickled objects
    resumed = fit(cfg, data, resume_from=state)
    assert [r.id_acc for r in resumed.history] == [r.id_acc for r in full.history]
    assert [t.target for t in resumed.transitions] == [t.target for t in full.transitions]
    for a, b in zip(full.model.state_dict().values(), resumed.model.state_dict().values()):
        torch.testing.assert_close(a, b)


# --- two workers, gloo on 127.0.0.1: gradients all-reduced, schedule identical on every rank ------------------
def _worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        data = _data(generate_benchmark("tiny", seed=0))
        cfg = _config(
            epochs=4, pretrain_id_epochs=1, pretrain_nuisance_epochs=1, batch_size=16, seed=0
        )  # one seed: ranks must start identical
        trainer = ADINTrainer(cfg, data, rank=rank, world_size=world)
        trainer.run()
        flat = torch.cat([p.detach().reshape(-1) for p in trainer.model.parameters()])
        torch.save(
            {"params": flat, "phases": [r.phase for r in trainer.history], "steps": trainer.schedule.step},
            f"{out}/rank{rank}.pt",
        )
    finally:
        dist.destroy_process_group()


def test_two_workers_stay_in_sync(tmp_path):
    mp.start_processes(_worker, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True, start_method="spawn")
    r0, r1 = (torch.load(tmp_path / f"rank{i}.pt") for i in range(2))
    torch.testing.assert_close(r0["params"], r1["params"])
    assert r0["phases"] == r1["phases"] and "adversarial" in r0["phases"]
    # each worker saw half the data per epoch
    data = _data(generate_benchmark("tiny", seed=0))
    assert r0["steps"] == round(4 * data.steps_per_epoch(16, 2))


def _encoder_after_pretraining(bench, **kw) -> dict[str, torch.Tensor]:
    """f_E's, f_I's and the center loss's state when a run of 2 + 1 pretraining epochs ends (its budget is exactly
    the pretraining)."""
    config = _config(epochs=3, pretrain_id_epochs=2, pretrain_nuisance_epochs=1, **kw)
    trainer = ADINTrainer(config, _data(bench, config.nuisance))
    trainer.run()
    state = {f"backbone.{k}": v for k, v in trainer.model.backbone.state_dict().items()}
    state.update({f"id_heads.{k}": v for k, v in trainer.model.id_heads.state_dict().items()})
    state.update({f"centers.{k}": v for k, v in trainer.model.centers.state_dict().items()})
    return {k: v.detach().clone() for k, v in state.items()}


def test_adversarial_phase_fields_leave_pretraining_bit_identical(bench):
    """The search space refuses an ASHA rung inside pretraining when every searched parameter is one of
    ADVERSARIAL_PHASE_FIELDS, because such trials would still be identical there. This holds it to the trainer:
    each field changed alone gives the same f_E and f_I, bit for bit, when pretraining ends; a field outside the
    set (a learning rate, f_E frozen while f_N pretrains) does not."""
    from adin_core.config import ADVERSARIAL_PHASE_FIELDS

    changed = {
        "adv_loss": "rg",
        "beta": 2.5,
        "calibration": "class_prior",
        "prior_temperature": 0.3,
        "nuisance": "camera_x_time",
        "shuffle_nuisance": True,
        "i_target": 0.995,
        "i_trigger": 0.9,
        "n_trigger": 0.5,
    }
    assert set(changed) == ADVERSARIAL_PHASE_FIELDS  # a field added to the set needs a value here
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one thread: bit-identical runs are then a property of the code, not of scheduling
    try:
        reference = _encoder_after_pretraining(bench)
        for name, value in [*changed.items(), ("adv_loss", "none")]:
            other = _encoder_after_pretraining(bench, **{name: value})
            assert other.keys() == reference.keys()
            differ = sorted(k for k in reference if not torch.equal(reference[k], other[k]))
            assert not differ, f"{name}={value!r} changed {differ[:3]} during pretraining"
        for name, value in [("lr_heads", 0.05), ("freeze_encoder_for_nuisance", True)]:
            other = _encoder_after_pretraining(bench, **{name: value})
            assert any(not torch.equal(reference[k], other[k]) for k in reference), name
    finally:
        torch.set_num_threads(threads)


def test_a_run_whose_weights_go_non_finite_stops_at_the_check_with_the_reason(bench):
    """beta = 1e30 blows the encoder up at the first adversarial steps: the check that sees non-finite weights stops
    the run (TrainingDiverged, with the seed, step, phase and losses) before it validates or evaluates anything."""
    from adin_core.train import TrainingDiverged

    cfg = _config(beta=1e30, epochs=3, pretrain_id_epochs=1, pretrain_nuisance_epochs=0.5, seed=3)
    trainer = ADINTrainer(cfg, _data(bench))
    seen = []
    trainer.hooks.append(type("H", (), {"on_check": lambda self, t, r: seen.append(r.phase)})())
    with pytest.raises(TrainingDiverged) as info:
        trainer.run()
    exc = info.value
    assert exc.phase == "adversarial" and exc.seed == 3 and exc.step > 0 and "seed 3 diverged at step" in str(exc)
    assert "adversarial" not in seen  # the diverged check reached no hook
    assert not trainer.weights_finite()
    assert fit(_config(epochs=1, pretrain_id_epochs=0.5, pretrain_nuisance_epochs=0.25), _data(bench)).history


def _trained(bench, config, state=None):
    trainer = ADINTrainer(config, _data(bench))
    if state is not None:
        trainer.adopt_pretraining(state)
    result = trainer.run()
    return trainer, result


def test_a_run_that_adopts_shared_pretraining_is_the_run_that_trained_it_itself(bench):
    """One `pretrain()` per seed serves every config of its pretraining_key: the thresholds, beta, the adversarial
    loss and its calibration decide only from the pending check on. Each consumer ends bit-identical to the same
    config trained from scratch (weights, optimisers, schedule, reports), the identity-only baseline included
    (f_E and f_I; it keeps its own untouched f_N), so sharing changes no result."""
    from adin_core.train import pretraining_key

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        base = _config(epochs=4, pretrain_id_epochs=1.5, pretrain_nuisance_epochs=0.5, seed=5)
        producer = ADINTrainer(base, _data(bench))
        state = producer.pretrain()
        assert state["pending"] and producer.schedule.phase.value == "pretrain_nuisance"
        assert (
            state["schedule"]["step"]
            == producer.schedule.config.pretrain_id_steps + producer.schedule.config.pretrain_nuisance_steps
        )
        for changes in (
            {},
            {"beta": 0.7, "i_trigger": 0.9, "n_trigger": 0.5},
            {"adv_loss": "ne", "calibration": "class_prior"},
            {"adv_loss": "none"},
        ):
            config = base.replace(**changes)
            assert pretraining_key(config) == pretraining_key(base)
            scratch, expected = _trained(bench, config)
            shared, got = _trained(bench, config, state)
            assert [(r.step, r.phase, r.next_phase, r.id_acc) for r in got.history[-len(expected.history) :]] == [
                (r.step, r.phase, r.next_phase, r.id_acc) for r in expected.history
            ], changes
            a, b = scratch.state_dict(), shared.state_dict()
            differ = [k for k in a["model"] if not torch.equal(a["model"][k], b["model"][k])]
            assert not differ, (changes, differ[:3])
            assert a["schedule"]["phase_steps"] == b["schedule"]["phase_steps"], changes
            if config.adversarial:
                assert a["schedule"] == b["schedule"], changes
    finally:
        torch.set_num_threads(threads)


def test_shared_pretraining_refuses_a_config_it_does_not_serve(bench):
    base = _config(epochs=4, pretrain_id_epochs=1.5, pretrain_nuisance_epochs=0.5)
    state = ADINTrainer(base, _data(bench)).pretrain()
    for changes in ({"seed": 1}, {"lr_heads": 0.05}, {"freeze_encoder_for_nuisance": True}, {"shuffle_nuisance": True}):
        with pytest.raises(ValueError, match="pretraining_key"):
            ADINTrainer(base.replace(**changes), _data(bench)).adopt_pretraining(state)
    with pytest.raises(ValueError, match="identity-only"):
        ADINTrainer(base.replace(adv_loss="none"), _data(bench)).pretrain()
