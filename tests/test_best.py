"""The model card and the exported model, without a sweep (the end-to-end export is in test_sweep)."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from adin_core.config import TrainConfig
from adin_core.features import extract_features
from adin_core.models import ADINModel
from orchestrator.best import Winner, load_export, model_card, write_export

VERIFIED = (
    '{"seeds": 3, "summary": ["winner - baseline:      +0.031 mAP [+0.012, +0.050], 3/3 seeds", '
    '"winner - paper default: +0.004 mAP [-0.020, +0.028], 2/3 seeds: not distinguishable"]}'
)


def _winner(state: str, verification: str | None = VERIFIED) -> Winner:
    tags = {"adin.state": state, **({"adin.verification": verification} if verification else {})}
    return Winner(
        "s1", "p", "r", "t7", "transfer_mAP", 0.31, "s3://b/sweeps/s1/train/trial-t7/checkpoint_000003", {}, {}, tags
    )


def test_card_says_what_a_user_needs(tmp_path):
    cfg = TrainConfig(backbone="small_cnn", image_height=32, image_width=16)
    data = {
        os.path.abspath("runs/data/synthetic-tiny-select/g2-x"): "synthetic-tiny-select/g2-x",
        "/tmp/elsewhere/data/synthetic-tiny/g2-y": "synthetic-tiny/g2-y",
        "s3://b/data/market/v1": "market/v1",
    }
    scores = {"rank1": 0.5, "rank5": 0.7, "rank10": 0.8, "mAP": 0.31, "mINP": 0.2}
    probe = {"probe/camera_acc": 0.41, "probe/camera_chance": 0.34}
    card, md = model_card(_winner("complete"), cfg, {"sel": scores}, {"rep": scores}, data, probe)
    assert card["nuisance_probe"] == probe and card["sweep_state"] == "complete"
    assert "camera: accuracy 0.410 (chance 0.340)" in md and "Partial sweep" not in md
    assert "from orchestrator.best import load_export" in md and "extract_features" in md
    assert os.path.abspath("runs") not in md and "runs/data/synthetic-tiny-select/g2-x" in md  # relative
    assert "/tmp/elsewhere" not in md and "../" not in md and "- synthetic-tiny/g2-y: synthetic-tiny/g2-y" in md
    assert "- s3://b/data/market/v1: market/v1" in md
    assert "- winner - baseline:      +0.031 mAP [+0.012, +0.050], 3/3 seeds" in md and "3 fresh seeds" in md
    _, partial = model_card(_winner("partial", None), cfg, {}, {}, {}, {})
    assert "**Partial sweep**" in partial and "Not verified (the sweep ran with verify.seeds: 0)" in partial


def test_export_loads_and_model_call_is_the_retrieval_feature(tmp_path):
    cfg = TrainConfig(backbone="small_cnn", image_height=32, image_width=16)
    model = ADINModel(cfg, 5, {"camera": 3})
    state = {
        "config": cfg.to_dict(),
        "model_meta": {"num_identities": 5, "nuisance_classes": {"camera": 3}},
        "model": model.state_dict(),
    }
    write_export(str(tmp_path / "x"), state, {"k": 1}, "# card\n")
    loaded, config = load_export(str(tmp_path / "x"))
    images = np.random.default_rng(0).integers(0, 255, (4, 32, 16, 3), dtype=np.uint8)
    feats = extract_features(loaded, images, image_size=(config.image_height, config.image_width))
    direct = loaded(loaded.normalise(torch.from_numpy(images).permute(0, 3, 1, 2)))
    torch.testing.assert_close(feats, direct.detach())
    assert torch.allclose(feats.norm(dim=1), torch.ones(4))


def _state():
    cfg = TrainConfig(backbone="small_cnn", image_height=32, image_width=16)
    model = ADINModel(cfg, 5, {"camera": 3})
    return {
        "config": cfg.to_dict(),
        "model_meta": {"num_identities": 5, "nuisance_classes": {"camera": 3}},
        "model": model.state_dict(),
    }


def test_a_damaged_model_file_is_refused_by_its_recorded_digest(tmp_path):
    from orchestrator.best import ExportError

    card = write_export(str(tmp_path / "x"), _state(), {"k": 1}, "# card\n")
    assert len(card["model_sha256"]) == 64
    assert card["model_sha256"] in open(tmp_path / "x" / "model_card.md").read()
    assert json_load(tmp_path / "x" / "model_card.json")["model_sha256"] == card["model_sha256"]
    load_export(str(tmp_path / "x"))
    path = tmp_path / "x" / "model.pt"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte in the middle of the weights
    path.write_bytes(bytes(data))
    with pytest.raises(ExportError, match="does not match the sha256"):
        load_export(str(tmp_path / "x"))


def test_a_diverged_models_weights_are_never_exported():
    from orchestrator.best import ExportError, check_finite_weights

    state = _state()
    check_finite_weights(state, "trial t")
    state["model"][
        "backbone.stem.0.weight" if "backbone.stem.0.weight" in state["model"] else next(iter(state["model"]))
    ].fill_(float("nan"))
    with pytest.raises(ExportError, match="trial t: 1 of .* weight tensors hold NaN"):
        check_finite_weights(state, "trial t")


def json_load(path):
    import json

    with open(path) as fh:
        return json.load(fh)


def test_the_card_says_whose_weights_it_holds_and_warns_first_when_the_winner_lost_to_the_baseline():
    import json as _json

    cfg = TrainConfig(backbone="small_cnn", image_height=32, image_width=16)
    own = {"sel": {"rank1": 0.5, "rank5": 0.7, "rank10": 0.8, "mAP": 0.3872, "mINP": 0.2}}
    mean = {"sel": {"rank1": 0.52, "rank5": 0.71, "rank10": 0.81, "mAP": 0.4049, "mINP": 0.21}}
    lost = _json.dumps(
        {
            "seeds": 6,
            "lost_to_baseline": True,
            "level": 0.975,
            "winner_minus_baseline": {"mean": -0.04, "seeds": 6, "positive": 1},
            "summary": [
                "winner - baseline: -0.040 mAP [-0.09, +0.01] (97.5% interval), 1/6 seeds: not distinguishable"
            ],
        }
    )
    card, md = model_card(_winner("complete", lost), cfg, own, {}, {}, {}, select_mean=mean, seeds=2)
    first = md.splitlines()[2]
    assert first.startswith("> **Warning: this winner scored below the identity-only baseline on 5 of 6 fresh seeds**")
    assert "These weights are its first seed's model, of the 2 it trained" in md
    assert "| sel | select | 0.5000 |" in md and "| sel | select, trial mean of 2 seeds | 0.5200 |" in md
    assert card["weights"] == {"seed_index": 0, "of_seeds": 2} and card["select_targets_trial_mean"] == mean
    assert "97.5% interval" in md
