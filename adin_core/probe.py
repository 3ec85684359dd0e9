"""How much a nuisance the features still carry: a linear probe on frozen retrieval features.

ADIN's claim is about what f_E knows, so it is measured on f_E's output, not on f_N (which the adversary trains
to fail): a fresh multinomial logistic regression, fitted on the L2-normalised retrieval features of some
identities and scored on the features of *other* identities. Identity-disjoint halves matter: when identities
are seen by one or two cameras, a probe scored on the identities it was fitted on could read the camera off the
identity, and would report identity knowledge as camera knowledge.

Two folds (fit on half A, score on half B, and the reverse); the accuracy is over all scored images. `chance`
is what a label-blind guess reaches on the same folds: the training half's most frequent class. A feature with
no nuisance information sits at chance; the raw distance between the two is the information the adversary has
yet to remove.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from scipy.optimize import minimize
from threadpoolctl import ThreadpoolController

PROBE_MAX_IMAGES = 4000  # large test splits (MSMT17: 94k images) are subsampled by identity to bound the cost
PROBE_L2 = 1e-3  # weight decay of the probe, on standardised features
PROBE_ITERS = 60  # L-BFGS iterations: the accuracy is then within ~0.01 of a fit run to convergence (docs/benchmarks)
PROBE_GTOL = 1e-5  # ... or fewer, where the gradient is already this small


@dataclass(frozen=True)
class ProbeResult:
    accuracy: float
    chance: float
    images: int
    classes: int

    def metrics(self, kind: str) -> dict[str, float]:
        return {f"probe/{kind}_acc": self.accuracy, f"probe/{kind}_chance": self.chance}


def _identity_halves(pids: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    ids = np.unique(pids)
    if len(ids) < 2:
        raise ValueError(f"the probe needs at least two identities, got {len(ids)}")
    perm = np.random.default_rng(seed).permutation(ids)
    in_a = np.isin(pids, perm[: len(ids) // 2])
    return np.flatnonzero(in_a), np.flatnonzero(~in_a)


def _subsample(pids: np.ndarray, limit: int, seed: int) -> np.ndarray:
    """At most `limit` images, taken as whole identities (so the halves stay identity-disjoint and balanced)."""
    if len(pids) <= limit:
        return np.arange(len(pids))
    rng = np.random.default_rng([seed, 1])
    keep, total = [], 0
    for pid in rng.permutation(np.unique(pids)):
        idx = np.flatnonzero(pids == pid)
        if total + len(idx) > limit and keep:
            continue
        keep.append(idx)
        total += len(idx)
    return np.sort(np.concatenate(keep))


Reader = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, int], torch.Tensor]
"""A linear reader: (standardised fit features, their class indices, standardised test features, number of
classes) -> the predicted class of each test feature."""


def _softmax_objective(theta: np.ndarray, x: np.ndarray, y: np.ndarray, l2: float) -> tuple[float, np.ndarray]:
    """Mean cross-entropy of a softmax regression plus (l2 / 2) ||W||^2, and its gradient (for SciPy's L-BFGS-B,
    which iterates in float64; the arithmetic runs in `x`'s float32)."""
    n, d = x.shape
    k = theta.size // (d + 1)
    params = theta.astype(x.dtype)
    w, b = params[: d * k].reshape(d, k), params[d * k :]
    z = x @ w + b
    z -= z.max(1, keepdims=True)
    e = np.exp(z)
    s = e.sum(1)
    rows = np.arange(n)
    loss = float(np.log(s).mean() - z[rows, y].mean()) + 0.5 * l2 * float((w * w).sum())
    p = e / s[:, None]
    p[rows, y] -= 1.0
    p /= n
    grad = np.empty(theta.size)
    grad[: d * k] = (x.T @ p + l2 * w).ravel()
    grad[d * k :] = p.sum(0)
    return loss, grad


_BLAS = ThreadpoolController()  # made once: finding the BLAS libraries costs ~1 ms, a limit on them ~10 us


def logistic_reader(l2: float = PROBE_L2) -> Reader:
    """The probe's reader: an L2-regularised softmax regression, fitted by SciPy's L-BFGS-B from zero weights
    (deterministic) for at most PROBE_ITERS iterations.

    Why NumPy/SciPy, on one BLAS thread: the problem is tiny (a few hundred points, 23 classes), so the cost is
    per-iteration overhead, which torch's autograd and optimiser loop (~0.7 ms an iteration) have 4x more of; and
    right after torch's OpenMP threads extracted the features, a multi-threaded BLAS call on matrices this small
    fights them for the cores (a single fit then took up to a second instead of 15 ms)."""

    def read(x_fit: torch.Tensor, y_fit: torch.Tensor, x_test: torch.Tensor, num_classes: int) -> torch.Tensor:
        x = x_fit.numpy().astype(np.float32)
        d = x.shape[1]
        with _BLAS.limit(limits=1, user_api="blas"):
            fitted = minimize(
                _softmax_objective,
                np.zeros((d + 1) * num_classes),
                args=(x, y_fit.numpy(), l2),
                jac=True,
                method="L-BFGS-B",
                options={"maxiter": PROBE_ITERS, "gtol": PROBE_GTOL, "maxcor": 10},
            )
            params = fitted.x.astype(np.float32)
            w, b = params[: d * num_classes].reshape(d, num_classes), params[d * num_classes :]
            return torch.as_tensor((x_test.numpy().astype(np.float32) @ w + b).argmax(1))

    return read


def nuisance_probe(
    features: torch.Tensor | np.ndarray,
    pids: np.ndarray,
    labels: np.ndarray,
    *,
    seed: int = 0,
    max_images: int = PROBE_MAX_IMAGES,
    reader: Reader | None = None,
) -> ProbeResult:
    """Accuracy of a linear reader (default: the probe's, `logistic_reader()`) predicting `labels` (class indices)
    from `features`, on identity-disjoint folds, with its chance level. `features`: (N, D), as retrieval uses them
    (L2-normalised); each fold standardises them with the fit half's statistics."""
    read = reader or logistic_reader()
    x = torch.as_tensor(features, dtype=torch.float32).detach().cpu()
    pids, labels = np.asarray(pids), np.asarray(labels, dtype=np.int64)
    if not (len(x) == len(pids) == len(labels)):
        raise ValueError(f"features, pids and labels differ in length: {len(x)}, {len(pids)}, {len(labels)}")
    keep = _subsample(pids, max_images, seed)
    x, pids, labels = x[keep].double(), pids[keep], labels[keep]
    classes, y = np.unique(labels, return_inverse=True)
    y_t = torch.as_tensor(y)
    correct = chance = 0
    half_a, half_b = _identity_halves(pids, seed)
    for fit, test in ((half_a, half_b), (half_b, half_a)):
        mean, std = x[fit].mean(0, keepdim=True), x[fit].std(0, keepdim=True).clamp_min(1e-6)
        predicted = read((x[fit] - mean) / std, y_t[fit], (x[test] - mean) / std, len(classes))
        correct += int((predicted == y_t[test]).sum())
        majority = np.bincount(y[fit], minlength=len(classes)).argmax()
        chance += int((y[test] == majority).sum())
    return ProbeResult(correct / len(y), chance / len(y), len(y), len(classes))


__all__ = ["ProbeResult", "Reader", "logistic_reader", "nuisance_probe", "PROBE_MAX_IMAGES"]
