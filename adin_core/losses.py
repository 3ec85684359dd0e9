"""Identity and adversarial losses of ADIN.

The adversarial losses act on f_N's logits. Only `rg` needs the true nuisance label to push f_E; the others
(`ne`, `kl`, `js`) only ask f_N's prediction to be uninformative, and `sample_prior` calibration uses the label to
pick each sample's weight. Which of them keeps a grip on f_E when f_N is confident is said below, and measured in
docs/results.md (`python -m adin_core.compare`).
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


def identity_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    label_smoothing: float = 0.0,
    features: torch.Tensor | None = None,
    center: CenterLoss | None = None,
    center_weight: float = 0.0,
) -> torch.Tensor:
    """L_I = cross-entropy (optionally label-smoothed) + lambda_c * center loss."""
    loss = F.cross_entropy(logits.float(), labels, label_smoothing=label_smoothing)
    if center is not None and center_weight > 0.0:
        if features is None:
            raise ValueError("identity_loss: center_weight > 0 needs the features")
        loss = loss + center_weight * center(features, labels)
    return loss


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
#
# Two families, told apart by what their gradient does where f_N is confident (c close to one-hot), which is
# where a strong adversary lives:
# * entropy forms, built on sum_k c_k log c_k (`ne`, paper Eq. 5; calibrated: CaNE, Eq. 6) and `js`: their
#   gradient with respect to the logits vanishes as c approaches one-hot (each term c_k log c_k -> 0), so a
#   confident f_N exerts almost no pressure on f_E;
# * the cross-entropy form `kl` = KL(u || c) = -(1/K) sum_k log c_k - log K (the paper's "cross-entropy with the
#   uniform distribution", the domain-confusion loss of Tzeng et al. 2015): its logit gradient is c - u, largest
#   exactly where f_N is confident. Calibrated with the prior (`class_prior`) it is KL(p || c) + const, whose
#   optimum is "predict the nuisance prior", i.e. no information beyond the class frequencies.
# Calibration (`calibration`, paper 3.2) weights class k's term by the (tempered) prior p_k (`class_prior`,
# Eq. 6 for `ne`) or each sample by K * p[y] (`sample_prior`, the authors' code); `none` leaves the form as is.
# ---------------------------------------------------------------------------------------------------------
ADVERSARIAL_FORMS = ("rg", "ne", "kl", "js")
CALIBRATIONS = ("none", "class_prior", "sample_prior")
CALIBRATED_FORMS = ("ne", "kl")  # the forms `calibration` applies to; ignored for `rg` and `js`


def _log_softmax(logits: torch.Tensor) -> torch.Tensor:
    return F.log_softmax(logits.float(), dim=1)


def negative_entropy_terms(logits: torch.Tensor) -> torch.Tensor:
    """c_k log c_k per sample and class (exactly 0 where c_k underflows)."""
    log_c = _log_softmax(logits)
    return log_c.exp() * log_c


def negative_entropy(logits: torch.Tensor) -> torch.Tensor:
    """NE (paper Eq. 5): sum_k c_k log c_k; minimised (= -log K) by the uniform prediction. Saturates."""
    return negative_entropy_terms(logits).sum(dim=1).mean()


def cane_class_prior(logits: torch.Tensor, prior: torch.Tensor) -> torch.Tensor:
    """CaNE (paper Eq. 6): sum_k p_k c_k log c_k with p the (tempered) nuisance class prior. Saturates."""
    return (negative_entropy_terms(logits) * prior.to(logits.device)[None, :]).sum(dim=1).mean()


def kl_uniform_to_prediction_per_sample(logits: torch.Tensor) -> torch.Tensor:
    """KL(u || c) per sample: -(1/K) sum_k log c_k - log K."""
    k = logits.shape[1]
    return -_log_softmax(logits).mean(dim=1) - math.log(k)


def kl_uniform_to_prediction(logits: torch.Tensor) -> torch.Tensor:
    """`kl`: KL(u || c), 0 at the uniform prediction; its logit gradient c - u does not vanish when f_N is
    confident."""
    return kl_uniform_to_prediction_per_sample(logits).mean()


def kl_prior_to_prediction(logits: torch.Tensor, prior: torch.Tensor) -> torch.Tensor:
    """`kl` with class-prior calibration: KL(p || c) = -sum_k p_k log c_k - H(p), 0 where c = p (a prediction
    that carries no information beyond the class frequencies); logit gradient c - p."""
    p = prior.to(logits.device).float()
    entropy = -(p * p.clamp_min(1e-30).log()).sum()
    return (-(p[None, :] * _log_softmax(logits)).sum(dim=1)).mean() - entropy


def sample_prior_weights(labels: torch.Tensor, prior: torch.Tensor, k: int) -> torch.Tensor:
    """K * p[y] per sample (a uniform prior gives weight 1): the authors' code's calibration."""
    return k * prior.to(labels.device)[labels]


def js_to_uniform(logits: torch.Tensor) -> torch.Tensor:
    """Jensen-Shannon divergence between c and the uniform distribution (natural log). Bounded by log 2 and, like
    NE, flat where f_N is confident."""
    c = F.softmax(logits.float(), dim=1)
    u = torch.full_like(c, 1.0 / c.shape[1])
    m = 0.5 * (c + u)
    log_m = m.log()
    kl_cm = (c * (c.clamp_min(1e-30).log() - log_m)).sum(dim=1)
    kl_um = (u * (u.log() - log_m)).sum(dim=1)
    return (0.5 * (kl_cm + kl_um)).mean()


def adversarial_loss(
    form: str,
    logits: torch.Tensor,
    labels: torch.Tensor,
    prior: torch.Tensor | None = None,
    *,
    calibration: str = "none",
) -> torch.Tensor:
    """L_adv for one nuisance head, minimised by f_E.

    `prior` is the calibration's p, already tempered (`tempered_prior`): it is fixed for a run, so the trainer
    computes it once, on the device, instead of at every step. For `rg` this is f_N's plain cross-entropy: the
    trainer lets f_N descend it and sends its gradient at the features to f_E reversed (gradient reversal, Ganin &
    Lempitsky). `calibration` applies to `ne` and `kl` and is ignored for `rg` and `js`.
    """
    if form not in ADVERSARIAL_FORMS:
        raise ValueError(f"unknown adversarial loss {form!r}; choose one of {list(ADVERSARIAL_FORMS)}")
    if calibration not in CALIBRATIONS:
        raise ValueError(f"unknown calibration {calibration!r}; choose one of {list(CALIBRATIONS)}")
    if form == "rg":
        return F.cross_entropy(logits.float(), labels)
    if form == "js":
        return js_to_uniform(logits)
    if calibration != "none" and prior is None:
        raise ValueError(f"calibration {calibration!r} needs the nuisance class prior")
    if form == "ne":
        if calibration == "class_prior":
            return cane_class_prior(logits, prior)
        per_sample = negative_entropy_terms(logits).sum(dim=1) + math.log(logits.shape[1])  # KL(c || u)
        if calibration == "sample_prior":
            return (sample_prior_weights(labels, prior, logits.shape[1]) * per_sample).mean()
        return per_sample.mean() - math.log(logits.shape[1])
    if calibration == "class_prior":
        return kl_prior_to_prediction(logits, prior)
    per_sample = kl_uniform_to_prediction_per_sample(logits)
    if calibration == "sample_prior":
        return (sample_prior_weights(labels, prior, logits.shape[1]) * per_sample).mean()
    return per_sample.mean()
