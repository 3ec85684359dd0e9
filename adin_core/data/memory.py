"""Decoded images in memory, split for ADIN training, served as batches to one of N workers.

This is what the trainer consumes. Any source (a synthetic generator, a Parquet shard set, a folder of JPEG
files) becomes a `ReIDArrays` per split; `TrainingData` relabels identities, derives the nuisance labels and
their priors, and deals each worker a disjoint, per-epoch reshuffled part of the training split.
"""

from __future__ import annotations

import io
import os
import queue
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Iterator, Sequence, TypeVar

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from adin_core.nuisance import NuisanceLabeler, heads_for

T = TypeVar("T")
# torch.frombuffer over immutable bytes: the decoder only reads them. torchvision 0.29 deprecates its image
# decoders in favour of TorchCodec; until a pinned TorchCodec is adopted, PIL is the fallback (see decode_image).
warnings.filterwarnings("ignore", message="The given buffer is not writable", category=UserWarning)
warnings.filterwarnings(
    "ignore", message="The image decoding and encoding capabilities of TorchVision", category=DeprecationWarning
)
DECODE_THREADS = max(1, min(8, os.cpu_count() or 1))
_DECODE_POOL: ThreadPoolExecutor | None = None


def _decode_pool() -> ThreadPoolExecutor:
    global _DECODE_POOL
    if _DECODE_POOL is None:
        _DECODE_POOL = ThreadPoolExecutor(DECODE_THREADS, thread_name_prefix="decode")
    return _DECODE_POOL


class ImageDecodeError(ValueError):
    """An image that cannot be decoded; the message names its source."""


def decode_image(blob: bytes, size: tuple[int, int] | None, name: str = "image") -> np.ndarray:
    """JPEG/PNG bytes -> (H, W, 3) uint8, resized (bilinear) to size=(H, W) when given."""
    try:
        with Image.open(io.BytesIO(blob)) as im:
            if size is not None and im.format == "JPEG":
                im.draft("RGB", (size[1], size[0]))  # let libjpeg downscale while decoding when it can
            im = im.convert("RGB")
            if size is not None and im.size != (size[1], size[0]):
                im = im.resize((size[1], size[0]), Image.BILINEAR)
            return np.array(im, dtype=np.uint8)
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise ImageDecodeError(f"cannot decode {name}: {exc}") from None


class EncodedImages:
    """Compressed images decoded on demand to one size: a worker holds the split's JPEG bytes, not its pixels.

    Indexing with an array of positions decodes those images on a thread pool (PIL releases the GIL while
    decoding) and returns an (N, H, W, 3) uint8 array, so it stands in for a decoded array wherever one is read.
    """

    ndim = 4
    dtype = np.dtype(np.uint8)

    def __init__(self, blobs: Sequence[bytes], size: tuple[int, int], names: Sequence[str] | None = None) -> None:
        self.blobs = list(blobs)
        self.size = (int(size[0]), int(size[1]))
        self.names = list(names) if names is not None else [f"image #{i}" for i in range(len(self.blobs))]

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (len(self.blobs), self.size[0], self.size[1], 3)

    def __len__(self) -> int:
        return len(self.blobs)

    def take(self, index: np.ndarray) -> "EncodedImages":
        return EncodedImages([self.blobs[i] for i in index], self.size, [self.names[i] for i in index])

    def __getitem__(self, index) -> np.ndarray:
        idx = np.arange(len(self))[index]
        if np.ndim(idx) == 0:
            return decode_image(self.blobs[int(idx)], self.size, self.names[int(idx)])
        chunks = np.array_split(idx, min(len(idx), DECODE_THREADS)) if len(idx) else [idx]
        parts = list(_decode_pool().map(self._decode_chunk, chunks))
        return np.concatenate(parts) if parts else np.empty((0, *self.size, 3), np.uint8)

    def _decode_chunk(self, idx: np.ndarray) -> np.ndarray:
        """libjpeg-turbo batch decode (torchvision; libpng for PNG), then one uint8 antialiased bilinear resize per
        group of equal native size; PIL for anything else, which also names the file when one cannot be decoded."""
        from torchvision.io import ImageReadMode, decode_jpeg, decode_png  # costs ~1.8 s: only where images decode

        blobs = [self.blobs[int(i)] for i in idx]
        images = None
        try:
            if all(b[:2] == b"\xff\xd8" for b in blobs):  # JPEG (magic bytes): one batch decode
                images = decode_jpeg([torch.frombuffer(b, dtype=torch.uint8) for b in blobs], mode=ImageReadMode.RGB)
            elif all(b[:4] == b"\x89PNG" for b in blobs):  # PNG (the synthetic benchmark's lossless shards)
                images = [decode_png(torch.frombuffer(b, dtype=torch.uint8), mode=ImageReadMode.RGB) for b in blobs]
        except RuntimeError:
            images = None
        if images is None:
            images = [
                torch.from_numpy(decode_image(self.blobs[int(i)], None, self.names[int(i)])).permute(2, 0, 1)
                for i in idx
            ]
        out = torch.empty((len(idx), 3, *self.size), dtype=torch.uint8)
        by_shape: dict[tuple[int, int], list[int]] = {}
        for j, im in enumerate(images):
            by_shape.setdefault(tuple(im.shape[-2:]), []).append(j)
        for shape, members in by_shape.items():
            group = torch.stack([images[j] for j in members])
            if shape != self.size:
                group = F.interpolate(group, size=self.size, mode="bilinear", align_corners=False, antialias=True)
            out[members] = group
        return out.permute(0, 2, 3, 1).contiguous().numpy()


def prefetch(iterator: Iterator[T], depth: int = 2) -> Iterator[T]:
    """Run `iterator` on a background thread, `depth` items ahead, so decoding overlaps training."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    done = object()
    stop = threading.Event()

    def work() -> None:
        try:
            for item in iterator:
                if stop.is_set():
                    return
                q.put(item)
        except BaseException as exc:  # handed to the consumer
            q.put(exc)
            return
        q.put(done)

    thread = threading.Thread(target=work, daemon=True, name="prefetch")
    thread.start()
    try:
        while True:
            item = q.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()


@dataclass
class ReIDArrays:
    """One split: images (N, H, W, 3) uint8 (decoded, or EncodedImages), pids, camids, time periods (-1: unknown)."""

    images: np.ndarray | EncodedImages
    pids: np.ndarray
    camids: np.ndarray
    timeperiods: np.ndarray

    def __post_init__(self) -> None:
        n = len(self.images)
        if self.images.ndim != 4 or self.images.shape[-1] != 3 or self.images.dtype != np.uint8:
            raise ValueError(f"images must be uint8 (N, H, W, 3), got {self.images.dtype} {self.images.shape}")
        for name in ("pids", "camids", "timeperiods"):
            arr = np.asarray(getattr(self, name), dtype=np.int64)
            if arr.shape != (n,):
                raise ValueError(f"{name} must have shape ({n},), got {arr.shape}")
            setattr(self, name, arr)

    def __len__(self) -> int:
        return len(self.images)

    def subset(self, index: np.ndarray) -> "ReIDArrays":
        images = self.images.take(index) if isinstance(self.images, EncodedImages) else self.images[index]
        return ReIDArrays(images, self.pids[index], self.camids[index], self.timeperiods[index])

    @property
    def has_time(self) -> bool:
        return len(self) > 0 and bool(np.all(self.timeperiods >= 0))


@dataclass
class EvalTarget:
    """A test split to retrieve on: a query and a gallery (or, for VehicleID, one test list to draw from)."""

    name: str
    query: ReIDArrays
    gallery: ReIDArrays | None = None  # None: the VehicleID protocol over `query`

    def __post_init__(self) -> None:
        if not self.name or "/" in self.name:
            raise ValueError(
                f"target name {self.name!r} must be non-empty and without '/' (it keys the metrics "
                "<role>/<target>/<metric>)"
            )

    def images(self) -> list[ReIDArrays]:
        return [self.query] if self.gallery is None else [self.query, self.gallery]


@dataclass
class Batch:
    images: torch.Tensor  # uint8 (B, 3, H, W); normalised on the device by the trainer
    pids: torch.Tensor  # identity class index
    nuisance: dict[str, torch.Tensor]  # label kind -> class index


def hold_out_indices(pids: np.ndarray, seed: int = 0) -> np.ndarray:
    """The validation split of a training split without one: one image per identity (of those with >= 2 images),
    drawn with `seed`; the authors' code does the same. The one rule for in-memory data, shards and the synthetic
    benchmark's MSMT17 `list_val`."""
    pids = np.asarray(pids)
    rng = np.random.default_rng(seed)
    chosen = [int(rng.choice(idx)) for idx in (np.flatnonzero(pids == pid) for pid in np.unique(pids)) if len(idx) >= 2]
    return np.array(sorted(chosen), dtype=np.int64)


def held_out_val(train: ReIDArrays, seed: int = 0) -> tuple[ReIDArrays, ReIDArrays]:
    """(train without the held-out images, the held-out validation images): `hold_out_indices`."""
    mask = np.zeros(len(train), dtype=bool)
    mask[hold_out_indices(train.pids, seed)] = True
    return train.subset(np.flatnonzero(~mask)), train.subset(np.flatnonzero(mask))


class TrainingData:
    """Training and validation splits with relabelled identities and nuisance labels for the chosen heads."""

    def __init__(self, train: ReIDArrays, val: ReIDArrays, nuisance: str, *, name: str = "the dataset") -> None:
        if len(train) == 0:
            raise ValueError(f"{name}: the training split is empty")
        if len(val) == 0:
            raise ValueError(f"{name}: the validation split is empty")
        self.name = name
        self.train = train
        self.val = val
        self.kinds = tuple(heads_for(nuisance))
        # classes: every camera of train and val (a camera only val shows gets prior 0, but can be scored)
        has_time = train.has_time and (val.has_time or len(val) == 0)
        self.labeler = NuisanceLabeler.from_arrays(
            np.concatenate([train.camids, val.camids]), np.zeros(1) if has_time else None
        )
        for kind in self.kinds:
            self.labeler.check(kind, dataset=name)
        pids = np.unique(train.pids)
        self.pid_index = {int(p): i for i, p in enumerate(pids)}
        unknown = sorted(set(np.unique(val.pids).tolist()) - set(self.pid_index))
        if unknown:
            raise ValueError(f"{name}: validation identities {unknown[:5]} are absent from the training split")
        self.num_identities = len(pids)
        self.train_labels = self._labels(train)
        self.val_labels = self._labels(val)
        self.priors = {k: self.labeler.prior(k, train.camids, train.timeperiods) for k in self.kinds}

    def with_shuffled_nuisance(self, seed: int) -> "TrainingData":
        """The control arm's data: nuisance labels permuted within the training split and within the validation
        split (one permutation for all label kinds, so camera and time stay paired), identities untouched. The
        class counts, and so the priors, are exactly those of the real labels; only the link to the image is cut."""
        import copy

        rng = np.random.default_rng([seed, 0x5EED])
        out = copy.copy(self)
        for attr in ("train_labels", "val_labels"):
            pid_labels, nuis = getattr(self, attr)
            perm = rng.permutation(len(pid_labels))
            setattr(out, attr, (pid_labels, {k: v[perm] for k, v in nuis.items()}))
        return out

    def num_nuisance_classes(self) -> dict[str, int]:
        return {k: self.labeler.num_classes(k) for k in self.kinds}

    def _labels(self, split: ReIDArrays) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        pid_labels = np.fromiter((self.pid_index[int(p)] for p in split.pids), np.int64, count=len(split))
        nuis = {k: self.labeler.labels(k, split.camids, split.timeperiods) for k in self.kinds}
        return pid_labels, nuis

    @property
    def image_shape(self) -> tuple[int, int]:
        return int(self.train.images.shape[1]), int(self.train.images.shape[2])

    def steps_per_epoch(self, batch_size: int, world_size: int = 1) -> int:
        return max(1, len(self.train) // (batch_size * world_size))

    def batches(
        self, epoch: int, batch_size: int, *, rank: int = 0, world_size: int = 1, seed: int = 0, start: int = 0
    ) -> Iterator[Batch]:
        """One epoch for one worker: a disjoint part of a per-epoch permutation, equal length on every worker
        (so that data-parallel steps stay in lock-step), deterministic given (seed, epoch). `start` skips the
        first batches, so a resumed run sees exactly the batches an uninterrupted one would."""
        order = np.random.default_rng([seed, epoch]).permutation(len(self.train))
        per_worker = len(order) // world_size
        mine = order[rank * per_worker : (rank + 1) * per_worker]
        steps = max(1, per_worker // batch_size)
        if per_worker < batch_size:  # tiny data: one smaller batch rather than none
            mine = mine[:per_worker]
        pid_labels, nuis = self.train_labels
        for s in range(start, steps):
            idx = np.sort(mine[s * batch_size : (s + 1) * batch_size])
            yield self._batch(self.train, idx, pid_labels, nuis)

    def val_batches(self, batch_size: int) -> Iterator[Batch]:
        pid_labels, nuis = self.val_labels
        for start in range(0, len(self.val), batch_size):
            idx = np.arange(start, min(start + batch_size, len(self.val)))
            yield self._batch(self.val, idx, pid_labels, nuis)

    @staticmethod
    def _batch(split: ReIDArrays, idx: np.ndarray, pid_labels: np.ndarray, nuis: dict[str, np.ndarray]) -> Batch:
        images = torch.from_numpy(np.ascontiguousarray(split.images[idx])).permute(0, 3, 1, 2)
        return Batch(images, torch.from_numpy(pid_labels[idx]), {k: torch.from_numpy(v[idx]) for k, v in nuis.items()})
