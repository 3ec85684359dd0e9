import math

import pytest
import torch
import torch.nn.functional as F

from adin_core.losses import (
    ADVERSARIAL_FORMS,
    CALIBRATIONS,
    CenterLoss,
    adversarial_loss,
    cane_class_prior,
    identity_loss,
    js_to_uniform,
    kl_prior_to_prediction,
    kl_uniform_to_prediction,
    negative_entropy,
    tempered_prior,
)

K = 5
PRIOR = torch.tensor([0.5, 0.2, 0.15, 0.1, 0.05])


def _logit_grad(form: str, logits: torch.Tensor, labels: torch.Tensor, calibration: str = "none") -> torch.Tensor:
    logits = logits.clone().requires_grad_()
    adversarial_loss(form, logits, labels, PRIOR, calibration=calibration).backward()
    return logits.grad


def _confident(batch: int = 4, margin: float = 12.0) -> torch.Tensor:
    """f_N at its strongest: class 0 with probability ~0.99998 (the regime of a pretrained adversary)."""
    logits = torch.zeros(batch, K)
    logits[:, 0] = margin
    return logits


# --- values ------------------------------------------------------------------------------------------------
def test_negative_entropy_hand_value_and_minimum():
    logits = torch.log(torch.tensor([[0.5, 0.25, 0.25]]))
    expected = 0.5 * math.log(0.5) + 2 * 0.25 * math.log(0.25)
    assert negative_entropy(logits).item() == pytest.approx(expected, abs=1e-6)
    assert negative_entropy(torch.zeros(1, 4)).item() == pytest.approx(-math.log(4), abs=1e-6)
    for _ in range(20):  # any other distribution has a larger NE
        assert negative_entropy(torch.randn(1, 4) * 3).item() > -math.log(4)


def test_cane_class_prior_hand_value_and_uniform_prior_is_ne_over_k():
    c = torch.tensor([[0.7, 0.2, 0.1]])
    p = torch.tensor([0.6, 0.3, 0.1])
    expected = sum(pk * ck * math.log(ck) for pk, ck in zip(p.tolist(), c[0].tolist()))
    assert cane_class_prior(c.log(), p).item() == pytest.approx(expected, abs=1e-6)
    logits = torch.randn(8, 6)
    assert cane_class_prior(logits, torch.full((6,), 1 / 6)).item() == pytest.approx(
        negative_entropy(logits).item() / 6, rel=1e-5
    )
    # ne + class_prior through the dispatcher is CaNE (paper Eq. 6)
    assert adversarial_loss(
        "ne", c.log(), torch.zeros(1, dtype=torch.long), p, calibration="class_prior"
    ).item() == pytest.approx(expected, abs=1e-6)


def test_kl_uniform_to_prediction_is_cross_entropy_to_uniform_minus_log_k():
    c = torch.tensor([[0.7, 0.2, 0.1]])
    expected = -sum(math.log(x) for x in c[0].tolist()) / 3 - math.log(3)
    assert kl_uniform_to_prediction(c.log()).item() == pytest.approx(expected, abs=1e-6)
    assert kl_uniform_to_prediction(torch.zeros(2, 3)).item() == pytest.approx(0.0, abs=1e-7)


def test_kl_prior_to_prediction_is_zero_exactly_at_the_prior():
    assert kl_prior_to_prediction(PRIOR.log()[None], PRIOR).item() == pytest.approx(0.0, abs=1e-6)
    c = torch.tensor([[0.3, 0.3, 0.2, 0.1, 0.1]])
    expected = sum(p * math.log(p / q) for p, q in zip(PRIOR.tolist(), c[0].tolist()))
    assert kl_prior_to_prediction(c.log(), PRIOR).item() == pytest.approx(expected, abs=1e-6)


def test_sample_prior_weights_each_sample_by_k_times_its_label_prior():
    c = torch.tensor([[0.7, 0.3], [0.5, 0.5], [0.9, 0.1]])
    labels = torch.tensor([0, 1, 1])
    p = torch.tensor([0.8, 0.2])
    for form, per_sample in (
        ("ne", lambda row: sum(x * math.log(2 * x) for x in row)),  # KL(c || u)
        ("kl", lambda row: -sum(math.log(x) for x in row) / 2 - math.log(2)),
    ):  # KL(u || c)
        terms = [per_sample(row) for row in c.tolist()]
        expected = sum(2 * p[y].item() * t for y, t in zip(labels.tolist(), terms)) / 3
        got = adversarial_loss(form, c.log(), labels, p, calibration="sample_prior").item()
        assert got == pytest.approx(expected, abs=1e-6), form


def test_js_to_uniform_hand_value():
    assert js_to_uniform(torch.zeros(3, 5)).item() == pytest.approx(0.0, abs=1e-7)
    # one-hot vs uniform over 2 classes: JS = 0.5*KL([1,0]||[.75,.25]) + 0.5*KL([.5,.5]||[.75,.25])
    expected = 0.5 * math.log(1 / 0.75) + 0.5 * (0.5 * math.log(0.5 / 0.75) + 0.5 * math.log(0.5 / 0.25))
    assert js_to_uniform(torch.tensor([[60.0, 0.0]])).item() == pytest.approx(expected, abs=1e-5)


def test_tempered_prior():
    p = torch.tensor([0.6, 0.3, 0.1])
    torch.testing.assert_close(tempered_prior(p, 1.0), p)
    torch.testing.assert_close(tempered_prior(p, 0.0), torch.full((3,), 1 / 3))
    torch.testing.assert_close(tempered_prior(p, 2.0), p**2 / (p**2).sum())


# --- where each form is minimised --------------------------------------------------------------------------
@pytest.mark.parametrize(
    "form,calibration,optimum",
    [
        ("ne", "none", "uniform"),
        ("kl", "none", "uniform"),
        ("js", "none", "uniform"),
        ("kl", "sample_prior", "uniform"),
        ("ne", "sample_prior", "uniform"),
        ("kl", "class_prior", "prior"),
    ],
)
def test_each_form_is_minimised_where_it_should_be(form, calibration, optimum):
    """Gradient descent on free logits from a confident start ends at the form's optimum: the uniform prediction,
    or, for KL(p || c), the prior (a prediction that says nothing beyond the class frequencies)."""
    torch.manual_seed(0)
    logits = (torch.randn(3, K) * 2).requires_grad_()
    labels = torch.tensor([0, 2, 4])
    opt = torch.optim.SGD([logits], lr=2.0)
    for _ in range(3000):
        opt.zero_grad()
        adversarial_loss(form, logits, labels, PRIOR, calibration=calibration).backward()
        opt.step()
    target = torch.full((K,), 1 / K) if optimum == "uniform" else PRIOR
    torch.testing.assert_close(F.softmax(logits.detach(), 1), target.expand(3, K), atol=5e-3, rtol=0)


# --- grip where f_N is confident ----------------------------------------------------------------------------
@pytest.mark.parametrize("calibration", CALIBRATIONS)
def test_kl_keeps_its_gradient_when_the_adversary_is_confident(calibration):
    """KL(u || c) and its calibrations: logit gradient c - u (or c - p), largest where f_N is sure."""
    labels = torch.zeros(4, dtype=torch.long)
    g = _logit_grad("kl", _confident(), labels, calibration)
    per_sample = g.norm(dim=1) * 4  # the loss is a batch mean
    assert per_sample.min().item() > 0.5
    if calibration == "class_prior":
        torch.testing.assert_close(g * 4, F.softmax(_confident(), 1) - PRIOR, atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    "form,calibration", [("ne", "none"), ("ne", "class_prior"), ("ne", "sample_prior"), ("js", "none")]
)
def test_entropy_forms_lose_their_gradient_when_the_adversary_is_confident(form, calibration):
    """NE, CaNE and JS are flat near one-hot: the measured reason the paper's loss had no grip (README)."""
    labels = torch.zeros(4, dtype=torch.long)
    confident = _logit_grad(form, _confident(), labels, calibration).norm(dim=1) * 4
    moderate = _logit_grad(form, torch.randn(4, K), labels, calibration).norm(dim=1) * 4
    assert confident.max().item() < 1e-3
    assert moderate.min().item() > 1e-2  # not flat everywhere: only where f_N is confident


def test_reverse_gradient_is_flat_where_the_adversary_is_right_and_confident():
    right = _logit_grad("rg", _confident(), torch.zeros(4, dtype=torch.long)).norm(dim=1) * 4
    wrong = _logit_grad("rg", _confident(), torch.full((4,), 3)).norm(dim=1) * 4
    assert right.max().item() < 1e-3 and wrong.min().item() > 1.0


def test_unknown_form_and_calibration_are_rejected():
    with pytest.raises(ValueError, match="unknown adversarial loss"):
        adversarial_loss("focal", torch.zeros(1, 2), torch.zeros(1, dtype=torch.long))
    with pytest.raises(ValueError, match="unknown calibration"):
        adversarial_loss("kl", torch.zeros(1, 2), torch.zeros(1, dtype=torch.long), calibration="inverse")
    assert set(ADVERSARIAL_FORMS) == {"rg", "ne", "kl", "js"}


def test_identity_loss_is_ce_plus_weighted_center():
    torch.manual_seed(0)
    center = CenterLoss(3, 4)
    feats, logits, labels = torch.randn(6, 4), torch.randn(6, 3), torch.tensor([0, 1, 2, 0, 1, 2])
    c_val = ((feats - center.centers[labels]) ** 2).sum(1).mean()
    expected = F.cross_entropy(logits, labels) + 0.1 * c_val
    got = identity_loss(logits, labels, features=feats, center=center, center_weight=0.1)
    assert got.item() == pytest.approx(expected.item(), rel=1e-6)
    smoothed = identity_loss(logits, labels, label_smoothing=0.1)
    assert smoothed.item() == pytest.approx(F.cross_entropy(logits, labels, label_smoothing=0.1).item())
