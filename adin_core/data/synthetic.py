"""A synthetic nuisance benchmark: the problem ADIN solves, without any download.

People are drawn as head, torso and legs whose colours and patterns come from a palette shared by all domains.
Each camera images them in its own style (background colour and oriented texture, blur, mirroring, horizontal
offset, sensor noise, optionally a colour cast); each person keeps to a preferred time of day (three periods, as
MSMT17 names them). A benchmark has a source domain (train split and a cross-camera test split) and two target
domains (`select`, to choose hyper-parameters on, and `report`, to report on) with new identities and new cameras.

What makes invariance matter, the principle the `shortcut` preset follows (fixed before any result was seen):

1. **The nuisance is a shortcut.** In the source, each identity is seen by one or two cameras (`cams_per_id`,
   cameras drawn from a Zipf prior), so a camera's style tells the identity classifier which few identities to
   expect: an encoder trained on identity alone learns to encode the camera.
2. **The nuisance is separable from identity.** A camera changes the scene and the imaging (background, blur,
   noise, position, mirroring), not the person's colours (`tint` 0): an encoder can drop the camera and keep the
   identity. A colour cast (`tint`, `time_cast`, `time_gain`) entangles the two, and invariance to it costs
   identity (`hard` keeps one).
3. **The source spans the nuisance.** The source has many cameras (`num_cameras`, 24: a city's cameras), each
   target a few new ones (`target_cameras`, 6) drawn from the same style distribution, as in the paper's transfer
   from MSMT17 (15 cameras) to Market-1501 (6): invariance learned from examples can only carry over to cameras
   within the span of those it was learned on.
4. **Identity is learnable.** People fill most of the crop (`person_width`), as a detector's crops do, in 12
   colours: the identity-only baseline reaches a source cross-camera mAP of about 0.5 within the main job's CPU
   budget, so there is identity for invariance to protect.

Also measured (docs/results.md, `python -m adin_core.compare --gen ...`): a nuisance that varies *within* an identity's
images, such as a time-of-day change of the scene's brightness (`time_scene`), teaches the baseline some of the
invariance on its own (it works like augmentation), and ADIN's margin shrinks. In `shortcut`, time of day is a
label (each person keeps to a preferred period) that leaves no trace in the image.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass, replace

import numpy as np
from PIL import Image

from adin_core.data.layouts.base import ImageRecord
from adin_core.data.memory import ReIDArrays, hold_out_indices

PERIOD_LIGHT = np.array(
    [[0.85, 0.9, 1.05], [1.15, 1.12, 1.05], [1.0, 0.85, 0.7]], dtype=np.float32
)  # morning/noon/afternoon
PERIOD_GAIN = np.array([-1.0, 1.0, 0.0], dtype=np.float32)  # morning darker, noon brighter (times time_gain)


@dataclass(frozen=True)
class SynthConfig:
    """Every knob of the generator. Defaults are the `hard` preset's; `shortcut` is what docs/results.md measures."""

    height: int = 64  # image size (pixels)
    width: int = 32
    palette_size: int = 6  # clothing colours shared by all identities and domains; small -> identities collide
    person_width: tuple[float, float] = (0.13, 0.24)  # range of a person's half-width, fraction of the image width
    num_cameras: int = 12  # cameras of the source domain (each its own style)
    target_cameras: int | None = None  # cameras of each target domain (None: num_cameras); new styles, same laws
    cams_per_id: int = 2  # cameras that see each training identity: 1-2 make the camera a shortcut for identity
    test_cams_per_id: int | None = None  # cameras that see each test identity (>= 2; None: max(2, cams_per_id))
    zipf_alpha: float = 1.0  # camera frequency prior p_k ~ 1 / k**alpha (imbalance, as CaNE's calibration assumes)
    style_strength: float = 1.0  # scales every camera effect: 0 none, 1 background and style dominate raw pixels
    tint: float = 0.45  # camera colour cast on the whole image, person included: per-channel gain 1 +/- tint
    noise: float = 0.06  # sensor noise (per camera: 0.5-1.5 times this)
    train_ids: int = 120  # identities of a domain's train split
    test_ids: int = 60  # identities of a domain's test split (query: one image per identity and camera)
    images_per_id: int = 8
    with_time: bool = True  # time-of-day labels (three periods; each identity prefers one, 70% of its images)
    time_cast: float = 1.0  # time of day's colour cast on the whole image (PERIOD_LIGHT's deviation, scaled)
    time_gain: float = 0.0  # time of day's brightness change of the whole image, all channels alike (+/-)
    time_scene: float = 0.0  # time of day's brightness change of the background only (+/-)

    def __post_init__(self) -> None:
        if self.height < 16 or self.width < 8:
            raise ValueError("SynthConfig: images must be at least 16 x 8")
        if not 1 <= self.cams_per_id <= self.num_cameras:
            raise ValueError("SynthConfig.cams_per_id must be in [1, num_cameras]")
        if self.target_cameras is not None and not max(2, self.cams_per_id) <= self.target_cameras:
            raise ValueError("SynthConfig.target_cameras must be >= max(2, cams_per_id)")
        cameras = min(self.num_cameras, self.target_cameras or self.num_cameras)
        if self.test_cams_per_id is not None and not 2 <= self.test_cams_per_id <= cameras:
            raise ValueError(
                "SynthConfig.test_cams_per_id must be in [2, min(num_cameras, target_cameras)]: every "
                "test identity needs a cross-camera match"
            )
        if not 0 <= self.tint < 1:
            raise ValueError("SynthConfig.tint must be in [0, 1)")
        object.__setattr__(self, "person_width", tuple(float(v) for v in self.person_width))
        if len(self.person_width) != 2 or not 0.02 <= self.person_width[0] <= self.person_width[1] <= 0.5:
            raise ValueError("SynthConfig.person_width must be (low, high) with 0.02 <= low <= high <= 0.5")
        if self.images_per_id < 2 or self.train_ids < 2 or self.test_ids < 2:
            raise ValueError("SynthConfig: need >= 2 identities per split and >= 2 images per identity")


PRESETS: dict[str, SynthConfig] = {
    # tiny and quick: what the test-suite trains on
    "tiny": SynthConfig(
        height=32,
        width=16,
        palette_size=8,
        num_cameras=4,
        cams_per_id=2,
        style_strength=0.6,
        train_ids=24,
        test_ids=12,
        images_per_id=8,
    ),
    # unambiguous identities, mild camera style: plain training already transfers
    "easy": SynthConfig(palette_size=24, num_cameras=6, cams_per_id=3, zipf_alpha=0.5, style_strength=0.4, noise=0.03),
    # ambiguous identities, a dominant camera style that also recolours the person (tint, time-of-day cast)
    "hard": SynthConfig(palette_size=6, num_cameras=12, cams_per_id=2, zipf_alpha=1.0, style_strength=1.0),
    # where invariance should matter (module docstring): camera a shortcut for identity, separable from it, and
    # a source whose many cameras span the style that the targets' few new cameras are drawn from
    "shortcut": SynthConfig(
        palette_size=12,
        num_cameras=24,
        target_cameras=6,
        cams_per_id=2,
        zipf_alpha=1.0,
        style_strength=1.0,
        tint=0.0,
        time_cast=0.0,
        person_width=(0.25, 0.4),
    ),
}


@dataclass
class SynthDomain:
    name: str
    train: ReIDArrays
    query: ReIDArrays
    gallery: ReIDArrays
    cameras: tuple[int, ...]


def camera_prior(num_cameras: int, alpha: float) -> np.ndarray:
    p = 1.0 / np.arange(1, num_cameras + 1) ** alpha
    return p / p.sum()


def _camera_styles(rng: np.random.Generator, n: int, tint: float) -> dict[str, np.ndarray]:
    return {
        "bg": rng.uniform(0.05, 0.95, (n, 3)).astype(np.float32),
        "bg2": rng.uniform(0.05, 0.95, (n, 3)).astype(np.float32),
        "freq": rng.uniform(2.0, 9.0, n).astype(np.float32),
        "angle": rng.uniform(0, np.pi, n).astype(np.float32),
        "tint": rng.uniform(1 - tint, 1 + tint, (n, 3)).astype(np.float32),
        "blur": rng.integers(0, 2, n),
        "flip": rng.integers(0, 2, n).astype(bool),
        "offset": rng.uniform(-0.12, 0.12, n).astype(np.float32),
        "noise": rng.uniform(0.5, 1.5, n).astype(np.float32),
    }


def _identities(
    rng: np.random.Generator, n: int, palette: np.ndarray, width: tuple[float, float]
) -> dict[str, np.ndarray]:
    k = len(palette)
    return {
        "top": palette[rng.integers(0, k, n)],
        "bottom": palette[rng.integers(0, k, n)],
        "accent": palette[rng.integers(0, k, n)],
        "pattern": rng.integers(0, 3, n),  # plain, stripes, split
        "width": rng.uniform(width[0], width[1], n).astype(np.float32),
        "hair": rng.uniform(0.05, 0.5, (n, 3)).astype(np.float32),
        "legs": rng.uniform(0.35, 0.6, n).astype(np.float32),  # torso/leg boundary
    }


def _render(
    cfg: SynthConfig,
    rng: np.random.Generator,
    ids: dict[str, np.ndarray],
    cams: dict[str, np.ndarray],
    id_idx: np.ndarray,
    cam_idx: np.ndarray,
    period: np.ndarray,
) -> np.ndarray:
    n, h, w = len(id_idx), cfg.height, cfg.width
    yy, xx = np.meshgrid(np.linspace(0, 1, h, dtype=np.float32), np.linspace(0, 1, w, dtype=np.float32), indexing="ij")
    yy, xx = yy[None], xx[None]
    s = cfg.style_strength
    # background: camera colour and oriented stripes, blended toward grey as style weakens
    ang, freq = cams["angle"][cam_idx][:, None, None], cams["freq"][cam_idx][:, None, None]
    wave = 0.5 + 0.5 * np.sin(2 * np.pi * freq * (np.cos(ang) * xx + np.sin(ang) * yy))
    bg = cams["bg"][cam_idx][:, None, None, :] * wave[..., None] + cams["bg2"][cam_idx][:, None, None, :] * (
        1 - wave[..., None]
    )
    bg = s * bg + (1 - s) * 0.5
    if cfg.with_time and cfg.time_scene:
        bg = bg * (1 + cfg.time_scene * PERIOD_GAIN[period])[:, None, None, None]
    # person, shifted by the camera offset plus a little per-image jitter
    cx = 0.5 + s * cams["offset"][cam_idx] + rng.normal(0, 0.02, n).astype(np.float32)
    cx = cx[:, None, None]
    half = ids["width"][id_idx][:, None, None]
    dx = np.abs(xx - cx)
    legs_y = ids["legs"][id_idx][:, None, None]
    head = (dx**2 + ((yy - 0.12) * w / h * 2) ** 2) < (0.35 * half) ** 2 + 0.004
    torso = (yy > 0.22) & (yy < legs_y) & (dx < half)
    legs = (yy >= legs_y) & (yy < 0.95) & (dx < half * 0.8) & (dx > half * 0.12)
    pattern = ids["pattern"][id_idx][:, None, None]
    stripes = (np.floor(yy * h / 3) % 2 == 0) & (pattern == 1)
    split = (xx > cx) & (pattern == 2)
    top = np.where(
        (stripes | split)[..., None], ids["accent"][id_idx][:, None, None, :], ids["top"][id_idx][:, None, None, :]
    )
    img = bg
    img = np.where(torso[..., None], top, img)
    img = np.where(legs[..., None], ids["bottom"][id_idx][:, None, None, :], img)
    img = np.where(head[..., None], ids["hair"][id_idx][:, None, None, :], img)
    # camera tint, time-of-day illumination, blur, viewpoint flip, sensor noise
    tint = 1 + s * (cams["tint"][cam_idx] - 1)
    img = img * tint[:, None, None, :]
    if cfg.with_time:
        light = 1 + cfg.time_cast * (PERIOD_LIGHT[period] - 1) + cfg.time_gain * PERIOD_GAIN[period][:, None]
        img = img * light[:, None, None, :]
    blur = cams["blur"][cam_idx].astype(bool) & (s > 0.5)
    if blur.any():
        b = img[blur]
        b = (b + np.roll(b, 1, axis=1) + np.roll(b, -1, axis=1) + np.roll(b, 1, axis=2) + np.roll(b, -1, axis=2)) / 5
        img[blur] = b
    flip = cams["flip"][cam_idx] & (s > 0)
    img[flip] = img[flip][:, :, ::-1]
    img = (
        img + rng.normal(0, 1, img.shape).astype(np.float32) * (cfg.noise * cams["noise"][cam_idx])[:, None, None, None]
    )
    return (np.clip(img, 0, 1) * 255).astype(np.uint8)


def _sample_views(
    cfg: SynthConfig, rng: np.random.Generator, n_ids: int, prior: np.ndarray, images_per_id: int, cams_per_id: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each identity: its cameras (Zipf prior, without replacement), one image per camera first so every
    identity is cross-camera, then the rest drawn by the prior; a preferred time period per identity."""
    id_idx, cam_idx, period = [], [], []
    for i in range(n_ids):
        cams = rng.choice(len(prior), size=cams_per_id, replace=False, p=prior)
        p_local = prior[cams] / prior[cams].sum()
        chosen = list(cams[:images_per_id]) + list(rng.choice(cams, size=max(0, images_per_id - len(cams)), p=p_local))
        home = rng.integers(0, 3)
        per = np.where(rng.random(images_per_id) < 0.7, home, rng.integers(0, 3, images_per_id))
        id_idx += [i] * images_per_id
        cam_idx += chosen
        period += per.tolist()
    return np.array(id_idx), np.array(cam_idx), np.array(period)


def generate_domain(
    cfg: SynthConfig, *, name: str, seed: int, pid_offset: int = 0, cam_offset: int = 0, with_train: bool = True
) -> SynthDomain:
    """One domain: its own cameras (styles), its own identities; train split plus a query/gallery test split.

    Query: one image per (test identity, camera); gallery: the rest, so every query has a cross-camera match.
    """
    rng = np.random.default_rng(seed)
    palette = np.random.default_rng(seed // 1000).uniform(0.05, 0.95, (cfg.palette_size, 3)).astype(np.float32)
    cams = _camera_styles(rng, cfg.num_cameras, cfg.tint)
    prior = camera_prior(cfg.num_cameras, cfg.zipf_alpha)
    cameras = tuple(range(cam_offset, cam_offset + cfg.num_cameras))

    def split(n_ids: int, first_pid: int, cams_per_id: int) -> tuple[ReIDArrays, np.ndarray]:
        ids = _identities(rng, n_ids, palette, cfg.person_width)
        id_idx, cam_idx, period = _sample_views(cfg, rng, n_ids, prior, cfg.images_per_id, cams_per_id)
        images = _render(cfg, rng, ids, cams, id_idx, cam_idx, period)
        periods = period if cfg.with_time else np.full(len(period), -1)
        return ReIDArrays(images, id_idx + first_pid, cam_idx + cam_offset, periods), id_idx

    empty = ReIDArrays(np.zeros((0, cfg.height, cfg.width, 3), np.uint8), np.zeros(0), np.zeros(0), np.zeros(0))
    train = split(cfg.train_ids, pid_offset, cfg.cams_per_id)[0] if with_train else empty
    test_cams = cfg.test_cams_per_id or max(2, cfg.cams_per_id)
    test, _ = split(cfg.test_ids, pid_offset + cfg.train_ids, test_cams)
    key = test.pids * 100000 + test.camids
    _, first = np.unique(key, return_index=True)
    is_query = np.zeros(len(test), dtype=bool)
    is_query[first] = True
    return SynthDomain(
        name, train, test.subset(np.flatnonzero(is_query)), test.subset(np.flatnonzero(~is_query)), cameras
    )


@dataclass
class SynthBenchmark:
    config: SynthConfig
    source: SynthDomain
    targets: dict[str, SynthDomain]  # "select" (choose hyper-parameters on) and "report" (report on)


def generate_benchmark(
    preset: str | SynthConfig = "hard", *, seed: int = 0, with_target_train: bool = False, **overrides
) -> SynthBenchmark:
    """Source domain plus `select` and `report` targets: disjoint identities, disjoint cameras (own styles)."""
    if isinstance(preset, str):
        if preset not in PRESETS:
            raise ValueError(f"unknown synthetic preset {preset!r}; choose from {sorted(PRESETS)}")
        cfg = PRESETS[preset]
    else:
        cfg = preset
    if overrides:
        cfg = replace(cfg, **overrides)
    stride = cfg.train_ids + cfg.test_ids
    source = generate_domain(cfg, name="source", seed=seed * 1000 + 1, pid_offset=0, cam_offset=0)
    target_cfg = replace(cfg, num_cameras=cfg.target_cameras or cfg.num_cameras, target_cameras=None)
    targets = {
        name: generate_domain(
            target_cfg,
            name=name,
            seed=seed * 1000 + 2 + i,
            pid_offset=(i + 1) * stride,
            cam_offset=cfg.num_cameras + i * target_cfg.num_cameras,
            with_train=with_target_train,
        )
        for i, name in enumerate(("select", "report"))
    }
    return SynthBenchmark(cfg, source, targets)


# ------------------------------------------------------------------------------------------------------------
# writing the real on-disk layouts
# ------------------------------------------------------------------------------------------------------------
LAYOUTS = ("market1501", "msmt17")
_PERIOD_NAMES = ("morning", "noon", "afternoon")


def _jpeg(img: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def _png(img: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue()


def domain_records(domain: SynthDomain) -> list[ImageRecord]:
    """A domain's images as shard records, encoded as PNG: lossless, so a sharded benchmark holds exactly the
    generated pixels, and training from shards sees what training from the arrays sees."""
    out = []
    for split in ("train", "query", "gallery"):
        arr: ReIDArrays = getattr(domain, split)
        for i in range(len(arr)):
            period = int(arr.timeperiods[i])
            out.append(
                ImageRecord(
                    f"{domain.name}/{split}/{i:06d}.png",
                    int(arr.pids[i]),
                    int(arr.camids[i]),
                    split,
                    period if period >= 0 else None,
                    None,
                    _png(arr.images[i]),
                )
            )
    return out


def write_layout(domain: SynthDomain, out_dir: str, layout: str) -> str:
    """Write a domain as a dataset tree in a real layout, with real names, list files and JPEG files.

    Cameras and identities are numbered within the written dataset as the real one numbers them (cameras from 1;
    Market-1501 names hold one camera digit, so at most 6 cameras; MSMT17 names two). Returns the dataset folder.
    """
    cams = sorted(
        set(domain.train.camids.tolist()) | set(domain.query.camids.tolist()) | set(domain.gallery.camids.tolist())
    )
    cam_no = {c: i + 1 for i, c in enumerate(cams)}
    pid_base = int(min(domain.query.pids.min(), domain.train.pids.min() if len(domain.train) else 10**9))
    if layout == "market1501":
        if len(cams) > 6:
            raise ValueError(
                f"the Market-1501 layout names at most 6 cameras (one digit); this domain has {len(cams)}:"
                " write it with layout='msmt17'"
            )
        root = os.path.join(out_dir, "Market-1501-v15.09.15")
        folders = {"train": "bounding_box_train", "query": "query", "gallery": "bounding_box_test"}
        for split, folder in folders.items():
            arr = getattr(domain, split)
            os.makedirs(os.path.join(root, folder), exist_ok=True)
            for i in range(len(arr)):
                name = f"{int(arr.pids[i]) - pid_base + 1:04d}_c{cam_no[int(arr.camids[i])]}s1_{i:06d}_00.jpg"
                with open(os.path.join(root, folder, name), "wb") as fh:
                    fh.write(_jpeg(arr.images[i]))
        return root
    if layout == "msmt17":
        if len(cams) > 99:
            raise ValueError(f"the MSMT17 layout's names carry a two-digit camera; this domain has {len(cams)}")
        root = os.path.join(out_dir, "MSMT17_V1")
        val = set(hold_out_indices(domain.train.pids).tolist())  # list_val: one image per training identity
        lists = {"train": [], "val": [], "query": [], "gallery": []}
        for split, folder in (("train", "train"), ("query", "test"), ("gallery", "test")):
            arr = getattr(domain, split)
            for i in range(len(arr)):
                pid = int(arr.pids[i]) - pid_base
                period = _PERIOD_NAMES[int(arr.timeperiods[i])] if arr.timeperiods[i] >= 0 else "morning"
                rel = f"{pid:04d}/{pid:04d}_{i:03d}_{cam_no[int(arr.camids[i])]:02d}_0303{period}_{i:04d}_0.jpg"
                os.makedirs(os.path.join(root, folder, f"{pid:04d}"), exist_ok=True)
                with open(os.path.join(root, folder, rel), "wb") as fh:
                    fh.write(_jpeg(arr.images[i]))
                lists["val" if split == "train" and i in val else split].append(f"{rel} {pid}")
        for split, lines in lists.items():
            with open(os.path.join(root, f"list_{split}.txt"), "w") as fh:
                fh.write("\n".join(lines) + "\n")
        return root
    raise ValueError(f"unknown layout {layout!r}; choose from {list(LAYOUTS)}")
