import os
import socket

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from adin_core.config import TrainConfig
from adin_core.data.memory import TrainingData, held_out_val
from adin_core.data.synthetic import generate_benchmark
from adin_core.features import EvalTarget, evaluate_transfer
from adin_core.nuisance import NuisanceError
from adin_core.train import ADINTrainer, fit


@pytest.fixture(scope="module")
def bench():
    return generate_benchmark("tiny", seed=0)


def _data(bench, nuisance="camera"):
    train, val = held_out_val(bench.source.train)
    return TrainingData(train, val, nuisance, name="tiny")


def _config(**kw) -> TrainConfig:
    base = dict(backbone="small_cnn", image_height=32, image_width=16, batch_size=32, epochs=15,
                pretrain_id_epochs=5, pretrain_nuisance_epochs=1, check_every=10, refresh_steps=5)
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
    scores = evaluate_transfer(result.model, EvalTarget("source", bench.source.query, bench.source.gallery))
    assert scores.mAP > 0.3


@pytest.mark.parametrize("adv_loss,weighting", [("rg", "class_prior"), ("ne", "class_prior"), ("kl", "class_prior"),
                                                ("js", "class_prior"), ("cane", "sample_prior")])
def test_every_adversarial_loss_trains(bench, adv_loss, weighting):
    cfg = _config(adv_loss=adv_loss, cane_weighting=weighting, epochs=3, pretrain_id_epochs=1,
                  pretrain_nuisance_epochs=0.5)
    result = fit(cfg, _data(bench))
    adv = [r for r in result.history if r.phase == "adversarial"]
    assert adv and all(np.isfinite(r.losses["adversarial"]) for r in adv)


@pytest.mark.parametrize("nuisance,heads", [("camera+time", {"camera", "time"}), ("camera_x_time", {"camera_x_time"}),
                                            ("time", {"time"})])
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
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        data = _data(generate_benchmark("tiny", seed=0))
        cfg = _config(epochs=4, pretrain_id_epochs=1, pretrain_nuisance_epochs=1, batch_size=16, seed=0)  # one seed: ranks must start identical
        trainer = ADINTrainer(cfg, data, rank=rank, world_size=world)
        trainer.run()
        flat = torch.cat([p.detach().reshape(-1) for p in trainer.model.parameters()])
        torch.save({"params": flat, "phases": [r.phase for r in trainer.history],
                    "steps": trainer.schedule.step}, f"{out}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_two_workers_stay_in_sync(tmp_path):
    mp.start_processes(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True, start_method="spawn")
    r0, r1 = (torch.load(tmp_path / f"rank{i}.pt") for i in range(2))
    torch.testing.assert_close(r0["params"], r1["params"])
    assert r0["phases"] == r1["phases"] and "adversarial" in r0["phases"]
    # each worker saw half the data per epoch
    data = _data(generate_benchmark("tiny", seed=0))
    assert r0["steps"] == round(4 * data.steps_per_epoch(16, 2))
