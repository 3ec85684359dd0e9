import math

import pytest
import torch
import torch.nn.functional as F

from adin_core.losses import (CenterLoss, adversarial_loss, cane_class_prior, cane_sample_prior, grad_reverse,
                              identity_loss, js_to_uniform, kl_to_uniform, negative_entropy, tempered_prior)


def test_negative_entropy_hand_value_and_minimum():
    logits = torch.log(torch.tensor([[0.5, 0.25, 0.25]]))
    expected = 0.5 * math.log(0.5) + 2 * 0.25 * math.log(0.25)
    assert negative_entropy(logits).item() == pytest.approx(expected, abs=1e-6)
    uniform = torch.zeros(1, 4)
    assert negative_entropy(uniform).item() == pytest.approx(-math.log(4), abs=1e-6)
    # any other distribution has a larger NE
    for _ in range(20):
        assert negative_entropy(torch.randn(1, 4) * 3).item() > -math.log(4)


def test_ne_gradient_vanishes_at_uniform():
    logits = torch.zeros(2, 5, requires_grad=True)
    negative_entropy(logits).backward()
    assert logits.grad.abs().max().item() < 1e-7


def test_cane_with_uniform_prior_is_ne_over_k():
    logits = torch.randn(8, 6)
    prior = torch.full((6,), 1 / 6)
    assert cane_class_prior(logits, prior).item() == pytest.approx(negative_entropy(logits).item() / 6, rel=1e-5)
    # temperature 0 turns any prior into the uniform one
    skewed = torch.tensor([0.5, 0.2, 0.1, 0.1, 0.05, 0.05])
    via_temp = adversarial_loss("cane", logits, torch.zeros(8, dtype=torch.long), tempered_prior(skewed, 0.0))
    assert via_temp.item() == pytest.approx(negative_entropy(logits).item() / 6, rel=1e-5)


def test_cane_class_prior_hand_value():
    c = torch.tensor([[0.7, 0.2, 0.1]])
    p = torch.tensor([0.6, 0.3, 0.1])
    expected = sum(pk * ck * math.log(ck) for pk, ck in zip(p.tolist(), c[0].tolist()))
    assert cane_class_prior(c.log(), p).item() == pytest.approx(expected, abs=1e-6)


def test_cane_sample_prior_weights_each_sample_by_its_label_prior():
    c = torch.tensor([[0.7, 0.3], [0.5, 0.5], [0.9, 0.1]])
    labels = torch.tensor([0, 1, 1])
    p = torch.tensor([0.8, 0.2])
    kl = [sum(ck * math.log(ck * 2) for ck in row) for row in c.tolist()]
    expected = sum(2 * p[y].item() * k for y, k in zip(labels.tolist(), kl)) / 3
    assert cane_sample_prior(c.log(), labels, p).item() == pytest.approx(expected, abs=1e-6)
    # uniform prior: plain mean KL to uniform
    assert cane_sample_prior(c.log(), labels, torch.tensor([0.5, 0.5])).item() == pytest.approx(
        kl_to_uniform(c.log()).item(), abs=1e-6)


def test_tempered_prior():
    p = torch.tensor([0.6, 0.3, 0.1])
    torch.testing.assert_close(tempered_prior(p, 1.0), p)
    torch.testing.assert_close(tempered_prior(p, 0.0), torch.full((3,), 1 / 3))
    sq = p ** 2 / (p ** 2).sum()
    torch.testing.assert_close(tempered_prior(p, 2.0), sq)


def test_kl_and_js_to_uniform():
    logits = torch.randn(4, 5)
    assert kl_to_uniform(logits).item() == pytest.approx(negative_entropy(logits).item() + math.log(5), abs=1e-5)
    assert js_to_uniform(torch.zeros(3, 5)).item() == pytest.approx(0.0, abs=1e-7)
    # one-hot vs uniform over 2 classes: JS = 0.5*KL([1,0]||[.75,.25]) + 0.5*KL([.5,.5]||[.75,.25])
    onehot = torch.tensor([[60.0, 0.0]])
    expected = 0.5 * math.log(1 / 0.75) + 0.5 * (0.5 * math.log(0.5 / 0.75) + 0.5 * math.log(0.5 / 0.25))
    assert js_to_uniform(onehot).item() == pytest.approx(expected, abs=1e-5)


def test_gradient_reversal_flips_exactly_the_encoder_gradient():
    torch.manual_seed(0)
    enc = torch.nn.Linear(4, 3)
    head = torch.nn.Linear(3, 2)
    x, y = torch.randn(5, 4), torch.tensor([0, 1, 0, 1, 1])

    def grads(reverse: bool, coeff: float = 1.0):
        enc.zero_grad()
        head.zero_grad()
        f = enc(x)
        logits = head(grad_reverse(f, coeff) if reverse else f)
        F.cross_entropy(logits, y).backward()
        return enc.weight.grad.clone(), head.weight.grad.clone()

    enc_plain, head_plain = grads(False)
    enc_rev, head_rev = grads(True, 0.3)
    torch.testing.assert_close(enc_rev, -0.3 * enc_plain)  # f_E: reversed and scaled
    torch.testing.assert_close(head_rev, head_plain)  # f_N: untouched
    # forward is the identity
    f = torch.randn(3, 3)
    torch.testing.assert_close(grad_reverse(f, 2.0), f)


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


def test_unknown_loss_is_rejected():
    with pytest.raises(ValueError, match="unknown adversarial loss"):
        adversarial_loss("focal", torch.zeros(1, 2), torch.zeros(1, dtype=torch.long))
