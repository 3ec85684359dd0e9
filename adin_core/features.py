"""Retrieval features, as the common ReID test protocol computes them: the embedding of the image plus that of its
horizontal flip, summed and L2-normalised; retrieval then uses cosine distance (adin_core.evaluation)."""

from __future__ import annotations

from contextlib import nullcontext

import numpy as np
import torch
import torch.nn.functional as F

from adin_core.models import ADINModel


def resize_uint8(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """uint8 (B, 3, H, W) -> uint8 at `size` (antialiased bilinear): the one resize of training and evaluation,
    done before normalisation so both see the same pixels."""
    if tuple(images.shape[-2:]) == tuple(size):
        return images
    x = F.interpolate(images.float(), size=size, mode="bilinear", align_corners=False, antialias=True)
    return x.round_().clamp_(0, 255).to(torch.uint8)


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
            if image_size is not None:
                x = resize_uint8(x, image_size)
            x = model.normalise(x)
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
