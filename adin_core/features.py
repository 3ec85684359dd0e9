"""Retrieval features and direct-transfer evaluation.

Features follow the common ReID test protocol: the embedding of the image plus that of its horizontal flip,
summed and L2-normalised; retrieval uses cosine distance. Direct transfer scores a model trained on one dataset
on another dataset's query/gallery, with no adaptation.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from adin_core.data.memory import ReIDArrays
from adin_core.metrics import RankResult, evaluate_features, evaluate_vehicleid
from adin_core.models import ADINModel


@dataclass
class EvalTarget:
    """A target's test split: a query and a gallery (or, for VehicleID, one test list to draw from)."""

    name: str
    query: ReIDArrays
    gallery: ReIDArrays | None = None  # None: VehicleID protocol over `query`


def _resize(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if tuple(images.shape[-2:]) == size:
        return images
    return F.interpolate(images, size=size, mode="bilinear", align_corners=False, antialias=True)


@torch.no_grad()
def extract_features(model: ADINModel, images: np.ndarray, *, batch_size: int = 256,
                     image_size: tuple[int, int] | None = None, device: torch.device | str = "cpu",
                     flip: bool = True, amp: bool = False) -> torch.Tensor:
    """(N, H, W, 3) uint8 images -> (N, D) L2-normalised float32 features on the CPU."""
    device = torch.device(device)
    was_training = model.training
    model.eval()
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if amp and device.type == "cuda" else nullcontext()
    out = []
    try:
        for s in range(0, len(images), batch_size):
            x = torch.from_numpy(np.ascontiguousarray(images[s:s + batch_size])).to(device).permute(0, 3, 1, 2)
            x = model.normalise(x)
            if image_size is not None:
                x = _resize(x, image_size)
            if device.type == "cuda":
                x = x.contiguous(memory_format=torch.channels_last)
            with autocast:
                f = model.embed(x)
                if flip:
                    f = f + model.embed(torch.flip(x, dims=[3]))
            out.append(F.normalize(f.float(), dim=1).cpu())
    finally:
        model.train(was_training)
    return torch.cat(out) if out else torch.empty(0, 0)


def evaluate_transfer(model: ADINModel, target: EvalTarget, *, batch_size: int = 256,
                      image_size: tuple[int, int] | None = None, device: torch.device | str = "cpu",
                      amp: bool = False, max_rank: int = 50) -> RankResult:
    """Score `model` on a target's test split: CMC, mAP, mINP (rank-1/5/10 via RankResult.summary())."""
    kwargs = dict(batch_size=batch_size, image_size=image_size, device=device, amp=amp)
    qf = extract_features(model, target.query.images, **kwargs)
    if target.gallery is None:
        return evaluate_vehicleid(qf, target.query.pids, max_rank=max_rank)
    gf = extract_features(model, target.gallery.images, **kwargs)
    return evaluate_features(qf, gf, target.query.pids, target.gallery.pids, target.query.camids,
                             target.gallery.camids, max_rank=max_rank)
