import numpy as np
import pytest
import torch
import torch.nn.functional as F

from adin_core.probe import _identity_halves, _subsample, nuisance_probe


def _population(n_ids=40, per_id=6, n_cams=4, cams_per_id=1, seed=0):
    """Identities seen by `cams_per_id` cameras each (Zipf-free, round robin)."""
    rng = np.random.default_rng(seed)
    pids = np.repeat(np.arange(n_ids), per_id)
    cams = np.array([(p + (i % cams_per_id)) % n_cams for p in range(n_ids) for i in range(per_id)])
    return rng, pids, cams


def test_features_that_encode_the_camera_are_read_by_the_probe():
    rng, pids, cams = _population(cams_per_id=2)
    cam_dirs = rng.normal(size=(4, 32))
    feats = F.normalize(torch.tensor(cam_dirs[cams] + 0.3 * rng.normal(size=(len(pids), 32))), dim=1)
    r = nuisance_probe(feats, pids, cams)
    assert r.accuracy > 0.95
    assert r.chance < 0.5 and r.classes == 4 and r.images == len(pids)


def test_features_without_camera_information_sit_at_chance():
    rng, pids, cams = _population(cams_per_id=2)
    feats = F.normalize(torch.tensor(rng.normal(size=(len(pids), 32))), dim=1)
    r = nuisance_probe(feats, pids, cams)
    assert abs(r.accuracy - r.chance) < 0.15


def test_identity_knowledge_is_not_reported_as_camera_knowledge():
    """Each identity is seen by one camera: features that only know the identity predict the camera perfectly on
    the identities the probe was fitted on, and not at all on others, which is what the probe scores."""
    rng, pids, cams = _population(cams_per_id=1)
    id_dirs = rng.normal(size=(40, 64))
    feats = F.normalize(torch.tensor(id_dirs[pids] + 0.05 * rng.normal(size=(len(pids), 64))), dim=1)
    r = nuisance_probe(feats, pids, cams)
    assert r.accuracy < r.chance + 0.2
    # the same features on identity-overlapping folds would look camera-aware: the reason for disjoint halves
    idx = rng.permutation(len(pids))
    fit, test = idx[: len(idx) // 2], idx[len(idx) // 2 :]
    w = torch.linalg.lstsq(feats[fit], F.one_hot(torch.tensor(cams[fit]), 4).double()).solution
    assert ((feats[test] @ w).argmax(1).numpy() == cams[test]).mean() > 0.9


def test_chance_is_the_training_halfs_majority_class():
    pids = np.repeat(np.arange(10), 4)
    cams = np.where(pids % 2 == 0, 0, 1)
    cams[pids == 0] = 2  # unbalanced classes
    feats = torch.zeros(len(pids), 3)  # nothing to read: the probe predicts one class for everything
    r = nuisance_probe(feats, pids, cams, seed=1)
    a, b = _identity_halves(pids, seed=1)
    expected = 0
    for fit, test in ((a, b), (b, a)):
        majority = np.bincount(cams[fit], minlength=3).argmax()
        expected += (cams[test] == majority).sum()
    assert r.chance == pytest.approx(expected / len(pids))


def test_large_splits_are_subsampled_by_whole_identities():
    pids = np.repeat(np.arange(500), 10)
    keep = _subsample(pids, 1000, seed=0)
    assert 900 <= len(keep) <= 1000
    kept = set(pids[keep].tolist())
    assert all((pids[keep] == p).sum() == 10 for p in kept)  # no identity cut in two
    a, b = _identity_halves(pids[keep], seed=0)
    assert not set(pids[keep][a]) & set(pids[keep][b])


def test_inputs_are_checked():
    with pytest.raises(ValueError, match="differ in length"):
        nuisance_probe(torch.zeros(4, 2), np.arange(4), np.arange(3))
    with pytest.raises(ValueError, match="two identities"):
        nuisance_probe(torch.zeros(4, 2), np.zeros(4), np.arange(4))


def test_the_probe_has_converged_at_its_iteration_budget(monkeypatch):
    """More L-BFGS iterations would not change the answer: PROBE_ITERS is enough on realistic features."""
    import adin_core.probe as probe

    rng, pids, cams = _population(n_ids=60, per_id=8, n_cams=6, cams_per_id=2, seed=3)
    cam_dirs, id_dirs = rng.normal(size=(6, 128)), rng.normal(size=(60, 128))
    feats = F.normalize(torch.tensor(0.4 * cam_dirs[cams] + id_dirs[pids] + rng.normal(size=(len(pids), 128))), dim=1)
    base = nuisance_probe(feats, pids, cams).accuracy
    monkeypatch.setattr(probe, "PROBE_ITERS", 4 * probe.PROBE_ITERS)
    assert nuisance_probe(feats, pids, cams).accuracy == pytest.approx(base, abs=0.02)


def test_another_reader_gets_the_same_folds_and_chance():
    """A reader that always answers the fit half's most frequent class scores exactly the probe's chance level:
    readers are compared on the same identity-disjoint folds and standardisation."""
    rng, pids, cams = _population(n_ids=30, per_id=5, n_cams=5, cams_per_id=2, seed=4)
    feats = F.normalize(torch.tensor(rng.normal(size=(len(pids), 16))), dim=1)

    def majority(x_fit, y_fit, x_test, k):
        assert torch.allclose(x_fit.mean(0), torch.zeros(x_fit.shape[1], dtype=x_fit.dtype), atol=1e-9)
        return torch.full((len(x_test),), int(torch.bincount(y_fit, minlength=k).argmax()))

    r = nuisance_probe(feats, pids, cams, reader=majority)
    assert r.accuracy == r.chance == nuisance_probe(feats, pids, cams).chance


def test_the_probes_objective_has_the_gradient_it_reports():
    """The probe's fit trusts `_softmax_objective`'s analytic gradient: compare it with central differences."""
    from adin_core.probe import _softmax_objective

    rng = np.random.default_rng(5)
    x, y = rng.normal(size=(30, 6)).astype(np.float64), rng.integers(0, 4, 30)
    theta = rng.normal(size=(6 + 1) * 4)
    loss, grad = _softmax_objective(theta, x, y, 0.1)
    eps = 1e-6
    numeric = np.array(
        [
            (_softmax_objective(theta + eps * e, x, y, 0.1)[0] - _softmax_objective(theta - eps * e, x, y, 0.1)[0])
            / (2 * eps)
            for e in np.eye(len(theta))
        ]
    )
    assert np.allclose(grad, numeric, atol=1e-6)
    logits = x @ theta[:24].reshape(6, 4) + theta[24:]
    expected = F.cross_entropy(torch.tensor(logits), torch.tensor(y)).item() + 0.05 * (theta[:24] ** 2).sum()
    assert loss == pytest.approx(expected, rel=1e-9)
