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


CPU_CHUNK = 64  # images a forward on the CPU: larger batches spill the activations out of cache


def chunk_size(batch_size: int, device: torch.device | str) -> int:
    """Images a forward: `batch_size` on an accelerator, at most CPU_CHUNK on the CPU, where smaller batches run
    faster and give the same features (the small CNN at 64x32: 0.63x the time of a 256-image batch on 1 thread,
    0.57x on 2; `python bench/feature_speed.py`)."""
    if torch.device(device).type != "cpu":
        return batch_size
    return max(1, min(batch_size, CPU_CHUNK))


@torch.no_grad()
def extract_features(
    model: ADINModel,
    images: np.ndarray,
    *,
    batch_size: int = 256,
    image_size: tuple[int, int] | None = None,
    device: torch.device | str = "cpu",
    flip: bool = True,
    amp: bool = False,
    chunk: int | None = None,
) -> torch.Tensor:
    """(N, H, W, 3) uint8 images -> (N, D) L2-normalised float32 features on the CPU; `chunk` (images a forward)
    defaults to `chunk_size(batch_size, device)`."""
    device = torch.device(device)
    was_training = model.training
    model.eval()
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if amp and device.type == "cuda" else nullcontext()
    out = []
    step = chunk or chunk_size(batch_size, device)
    try:
        for s in range(0, len(images), step):
            x = torch.from_numpy(np.ascontiguousarray(images[s : s + step])).to(device).permute(0, 3, 1, 2)
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
