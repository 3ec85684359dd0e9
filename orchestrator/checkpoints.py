"""What a trial checkpoint holds, and how it is read back: one file per seed's training state (seed 0's is the
trial's model, the one the export takes) and `reports.json`, every report up to the checkpoint (a resumed trial
resends those Tune never took). Plain tensors and values only: everything loads with `weights_only=True`."""

from __future__ import annotations

import io
import json
import os
from typing import Any

import torch

from adin_core.data.storage import StorageError, resolve

STATE_FILE = "state.pt"
REPORTS_FILE = "reports.json"


class CheckpointError(RuntimeError):
    """A checkpoint named by the tracking store is not where it says (storage moved or pruned)."""


def state_file(k: int) -> str:
    """Seed k's training state in a trial checkpoint."""
    return STATE_FILE if k == 0 else f"state-seed{k}.pt"


def load_checkpoint(checkpoint, seeds: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """A Ray Train checkpoint's states of every seed, and the reports up to it (none in a checkpoint written before
    they were kept)."""
    with checkpoint.as_directory() as d:
        states = [torch.load(os.path.join(d, state_file(k)), weights_only=True) for k in range(seeds)]
        history = []
        if os.path.exists(os.path.join(d, REPORTS_FILE)):
            with open(os.path.join(d, REPORTS_FILE)) as fh:
                history = json.load(fh)
    return states, history


def load_state(checkpoint_uri: str, seed_index: int = 0) -> dict[str, Any]:
    """One seed's training state from a checkpoint folder, local or s3://."""
    loc = resolve(checkpoint_uri).join(state_file(seed_index))
    try:
        data = loc.read_bytes()
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {loc.uri} does not exist (storage moved or pruned?)") from None
    except OSError as exc:
        raise StorageError(f"cannot read checkpoint {loc.uri}: {exc}") from None
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)


__all__ = ["CheckpointError", "REPORTS_FILE", "STATE_FILE", "load_checkpoint", "load_state", "state_file"]
