"""Identity and adversarial losses of ADIN.

The adversarial losses act on f_N's logits. Only `rg` needs the true nuisance label to push f_E; the
entropy-style losses (`ne`, `cane`, `kl`, `js`) only ask f_N's prediction to be uninformative. `sample_prior`
CaNE uses the label to pick each sample's weight.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


# ---------------------------------------------------------------------------------------------------------
# identity loss
# ---------------------------------------------------------------------------------------------------------
class CenterLoss(nn.Module):
    """Center loss (Wen et al., ECCV 2016): mean squared distance of each feature to its class centre.

    Written as torchreid does (sum over the batch of ||x - c_y||^2, divided by the batch size), so lambda_c
    values from the literature carry over.
    """

    def __init__(self, num_classes: int, feat_dim: int) -> None:
        super().__init__()
        self.centers = nn.Parameter(torch.randn(num_classes, feat_dim) * 0.01)

    def forward(self, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        diff = features.float() - self.centers[labels]
        return diff.pow(2).sum(dim=1).clamp(min=1e-12, max=1e12).mean()


def identity_loss(logits: torch.Tensor, labels: torch.Tensor, *, label_smoothing: float = 0.0,
                  features: torch.Tensor | None = None, center: CenterLoss | None = None,
                  center_weight: float = 0.0) -> torch.Tensor:
    """L_I = cross-entropy (optionally label-smoothed) + lambda_c * center loss."""
    loss = F.cross_entropy(logits.float(), labels, label_smoothing=label_smoothing)
    if center is not None and center_weight > 0.0:
        if features is None:
            raise ValueError("identity_loss: center_weight > 0 needs the features")
        loss = loss + center_weight * center(features, labels)
    return loss


# ---------------------------------------------------------------------------------------------------------
# gradient reversal
# ---------------------------------------------------------------------------------------------------------
class _GradReverse(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, coeff: float) -> torch.Tensor:  # type: ignore[override]
        ctx.coeff = coeff
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        return -ctx.coeff * grad, None


def grad_reverse(x: torch.Tensor, coeff: float = 1.0) -> torch.Tensor:
    """Identity forward; multiplies the gradient by -coeff backward (Ganin & Lempitsky)."""
    return _GradReverse.apply(x, coeff)


# ---------------------------------------------------------------------------------------------------------
# priors
# ---------------------------------------------------------------------------------------------------------
def tempered_prior(prior: torch.Tensor, temperature: float) -> torch.Tensor:
    """p_k ** gamma, renormalised. gamma = 0 gives the uniform distribution, gamma = 1 the prior itself.

    Classes with zero prior stay at zero for gamma > 0 (0 ** gamma = 0).
    """
    prior = prior.double().clamp(min=0)
    if prior.sum() <= 0:
        raise ValueError("prior must have positive mass")
    if temperature == 0:
        tempered = torch.ones_like(prior)
    else:
        tempered = prior.pow(temperature)
    return (tempered / tempered.sum()).float()


# ---------------------------------------------------------------------------------------------------------
# adversarial losses on f_N's logits (batch x K); each returns a scalar, mean over the batch
# ---------------------------------------------------------------------------------------------------------
def _plogp(logits: torch.Tensor) -> torch.Tensor:
    log_c = F.log_softmax(logits.float(), dim=1)
    return log_c.exp() * log_c  # c_k log c_k, exactly 0 where c_k underflows


def negative_entropy(logits: torch.Tensor) -> torch.Tensor:
    """NE (paper Eq. 5): sum_k c_k log c_k; minimised (= -log K) by the uniform prediction."""
    return _plogp(logits).sum(dim=1).mean()


def cane_class_prior(logits: torch.Tensor, prior: torch.Tensor) -> torch.Tensor:
    """CaNE (paper Eq. 6): sum_k p_k c_k log c_k with p the (tempered) nuisance class prior."""
    return (_plogp(logits) * prior.to(logits.device)[None, :]).sum(dim=1).mean()


def cane_sample_prior(logits: torch.Tensor, labels: torch.Tensor, prior: torch.Tensor) -> torch.Tensor:
    """Authors' code: each sample's KL(c || uniform), weighted by K * p[y] (so a uniform prior gives KL)."""
    k = logits.shape[1]
    weights = k * prior.to(logits.device)[labels]
    return (weights * kl_to_uniform_per_sample(logits)).mean()


def kl_to_uniform_per_sample(logits: torch.Tensor) -> torch.Tensor:
    return _plogp(logits).sum(dim=1) + math.log(logits.shape[1])


def kl_to_uniform(logits: torch.Tensor) -> torch.Tensor:
    """KL(c || uniform) = NE + log K."""
    return kl_to_uniform_per_sample(logits).mean()


def js_to_uniform(logits: torch.Tensor) -> torch.Tensor:
    """Jensen-Shannon divergence between c and the uniform distribution (natural log)."""
    c = F.softmax(logits.float(), dim=1)
    u = torch.full_like(c, 1.0 / c.shape[1])
    m = 0.5 * (c + u)
    log_m = m.log()
    kl_cm = (c * (c.clamp_min(1e-30).log() - log_m)).sum(dim=1)
    kl_um = (u * (u.log() - log_m)).sum(dim=1)
    return (0.5 * (kl_cm + kl_um)).mean()


def adversarial_loss(kind: str, logits: torch.Tensor, labels: torch.Tensor, prior: torch.Tensor | None = None,
                     *, weighting: str = "class_prior") -> torch.Tensor:
    """L_adv for one nuisance head, minimised by f_E.

    `prior` is CaNE's p, already tempered (`tempered_prior`): it is fixed for a run, so the trainer computes it
    once, on the device, instead of at every step. For `rg` the caller passes logits computed on
    grad_reverse(features): minimising the plain cross-entropy then trains f_N to classify and pushes f_E the
    other way.
    """
    if kind == "rg":
        return F.cross_entropy(logits.float(), labels)
    if kind == "ne":
        return negative_entropy(logits)
    if kind == "kl":
        return kl_to_uniform(logits)
    if kind == "js":
        return js_to_uniform(logits)
    if kind == "cane":
        if prior is None:
            raise ValueError("cane needs the nuisance class prior")
        if weighting == "class_prior":
            return cane_class_prior(logits, prior)
        if weighting == "sample_prior":
            return cane_sample_prior(logits, labels, prior)
        raise ValueError(f"unknown cane weighting {weighting!r}")
    raise ValueError(f"unknown adversarial loss {kind!r}")
