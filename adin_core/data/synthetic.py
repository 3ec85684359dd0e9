"""A synthetic nuisance benchmark: the problem ADIN solves, without any download.

People are drawn as head, torso and legs whose colours and patterns come from a shared palette, so some
identities nearly collide and identity is carried by small differences. Each camera imposes a whole-image style
(background colour and texture, tint, blur, viewpoint flip, horizontal offset, noise) strong enough, in the
`hard` preset, that raw-pixel retrieval is at chance. Identities are seen by few cameras, drawn from a Zipf
prior over cameras, so identity and camera correlate as in real datasets; time of day (three periods, each
identity preferring one) changes illumination. A benchmark has a source domain and target domains with disjoint
identities and disjoint cameras: one target to select hyper-parameters on, one to report on.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass, replace

import numpy as np
from PIL import Image

from adin_core.data.memory import ReIDArrays

PERIOD_LIGHT = np.array([[0.85, 0.9, 1.05], [1.15, 1.12, 1.05], [1.0, 0.85, 0.7]], dtype=np.float32)  # morning/noon/afternoon


@dataclass(frozen=True)
class SynthConfig:
    height: int = 64
    width: int = 32
    palette_size: int = 6  # shared clothing colours; small -> identities collide
    num_cameras: int = 12  # per domain
    cams_per_id: int = 2  # cameras that see each identity
    zipf_alpha: float = 1.0  # camera frequency prior p_k ~ 1 / k**alpha
    style_strength: float = 1.0  # 0: no camera style, 1: background/tint dominate raw pixels
    noise: float = 0.06
    train_ids: int = 120
    test_ids: int = 60
    images_per_id: int = 8
    with_time: bool = True

    def __post_init__(self) -> None:
        if self.height < 16 or self.width < 8:
            raise ValueError("SynthConfig: images must be at least 16 x 8")
        if not 1 <= self.cams_per_id <= self.num_cameras:
            raise ValueError("SynthConfig.cams_per_id must be in [1, num_cameras]")
        if self.images_per_id < 2 or self.train_ids < 2 or self.test_ids < 2:
            raise ValueError("SynthConfig: need >= 2 identities per split and >= 2 images per identity")


PRESETS: dict[str, SynthConfig] = {
    # tiny and quick: what the test-suite trains on
    "tiny": SynthConfig(height=32, width=16, palette_size=8, num_cameras=4, cams_per_id=2, style_strength=0.6,
                        train_ids=24, test_ids=12, images_per_id=8),
    # unambiguous identities, mild camera style: plain training already transfers
    "easy": SynthConfig(palette_size=24, num_cameras=6, cams_per_id=3, zipf_alpha=0.5, style_strength=0.4,
                        noise=0.03),
    # ambiguous identities, dominant camera style, one camera-pair per identity: where ADIN helps
    "hard": SynthConfig(palette_size=6, num_cameras=12, cams_per_id=2, zipf_alpha=1.0, style_strength=1.0),
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


def _camera_styles(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    return {
        "bg": rng.uniform(0.05, 0.95, (n, 3)).astype(np.float32),
        "bg2": rng.uniform(0.05, 0.95, (n, 3)).astype(np.float32),
        "freq": rng.uniform(2.0, 9.0, n).astype(np.float32),
        "angle": rng.uniform(0, np.pi, n).astype(np.float32),
        "tint": rng.uniform(0.55, 1.45, (n, 3)).astype(np.float32),
        "blur": rng.integers(0, 2, n),
        "flip": rng.integers(0, 2, n).astype(bool),
        "offset": rng.uniform(-0.12, 0.12, n).astype(np.float32),
        "noise": rng.uniform(0.5, 1.5, n).astype(np.float32),
    }


def _identities(rng: np.random.Generator, n: int, palette: np.ndarray) -> dict[str, np.ndarray]:
    k = len(palette)
    return {
        "top": palette[rng.integers(0, k, n)],
        "bottom": palette[rng.integers(0, k, n)],
        "accent": palette[rng.integers(0, k, n)],
        "pattern": rng.integers(0, 3, n),  # plain, stripes, split
        "width": rng.uniform(0.13, 0.24, n).astype(np.float32),
        "hair": rng.uniform(0.05, 0.5, (n, 3)).astype(np.float32),
        "legs": rng.uniform(0.35, 0.6, n).astype(np.float32),  # torso/leg boundary
    }


def _render(cfg: SynthConfig, rng: np.random.Generator, ids: dict[str, np.ndarray], cams: dict[str, np.ndarray],
            id_idx: np.ndarray, cam_idx: np.ndarray, period: np.ndarray) -> np.ndarray:
    n, h, w = len(id_idx), cfg.height, cfg.width
    yy, xx = np.meshgrid(np.linspace(0, 1, h, dtype=np.float32), np.linspace(0, 1, w, dtype=np.float32),
                         indexing="ij")
    yy, xx = yy[None], xx[None]
    s = cfg.style_strength
    # background: camera colour and oriented stripes, blended toward grey as style weakens
    ang, freq = cams["angle"][cam_idx][:, None, None], cams["freq"][cam_idx][:, None, None]
    wave = 0.5 + 0.5 * np.sin(2 * np.pi * freq * (np.cos(ang) * xx + np.sin(ang) * yy))
    bg = (cams["bg"][cam_idx][:, None, None, :] * wave[..., None]
          + cams["bg2"][cam_idx][:, None, None, :] * (1 - wave[..., None]))
    bg = s * bg + (1 - s) * 0.5
    # person, shifted by the camera offset plus a little per-image jitter
    cx = 0.5 + s * cams["offset"][cam_idx] + rng.normal(0, 0.02, n).astype(np.float32)
    cx = cx[:, None, None]
    half = ids["width"][id_idx][:, None, None]
    dx = np.abs(xx - cx)
    legs_y = ids["legs"][id_idx][:, None, None]
    head = (dx ** 2 + ((yy - 0.12) * w / h * 2) ** 2) < (0.35 * half) ** 2 + 0.004
    torso = (yy > 0.22) & (yy < legs_y) & (dx < half)
    legs = (yy >= legs_y) & (yy < 0.95) & (dx < half * 0.8) & (dx > half * 0.12)
    pattern = ids["pattern"][id_idx][:, None, None]
    stripes = (np.floor(yy * h / 3) % 2 == 0) & (pattern == 1)
    split = (xx > cx) & (pattern == 2)
    top = np.where((stripes | split)[..., None], ids["accent"][id_idx][:, None, None, :],
                   ids["top"][id_idx][:, None, None, :])
    img = bg
    img = np.where(torso[..., None], top, img)
    img = np.where(legs[..., None], ids["bottom"][id_idx][:, None, None, :], img)
    img = np.where(head[..., None], ids["hair"][id_idx][:, None, None, :], img)
    # camera tint, time-of-day illumination, blur, viewpoint flip, sensor noise
    tint = 1 + s * (cams["tint"][cam_idx] - 1)
    img = img * tint[:, None, None, :]
    if cfg.with_time:
        img = img * PERIOD_LIGHT[period][:, None, None, :]
    blur = cams["blur"][cam_idx].astype(bool) & (s > 0.5)
    if blur.any():
        b = img[blur]
        b = (b + np.roll(b, 1, axis=1) + np.roll(b, -1, axis=1) + np.roll(b, 1, axis=2) + np.roll(b, -1, axis=2)) / 5
        img[blur] = b
    flip = cams["flip"][cam_idx] & (s > 0)
    img[flip] = img[flip][:, :, ::-1]
    img = img + rng.normal(0, 1, img.shape).astype(np.float32) * (cfg.noise * cams["noise"][cam_idx])[:, None, None, None]
    return (np.clip(img, 0, 1) * 255).astype(np.uint8)


def _sample_views(cfg: SynthConfig, rng: np.random.Generator, n_ids: int, prior: np.ndarray,
                  images_per_id: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each identity: its cameras (Zipf prior, without replacement), one image per camera first so every
    identity is cross-camera, then the rest drawn by the prior; a preferred time period per identity."""
    id_idx, cam_idx, period = [], [], []
    for i in range(n_ids):
        cams = rng.choice(len(prior), size=cfg.cams_per_id, replace=False, p=prior)
        p_local = prior[cams] / prior[cams].sum()
        chosen = list(cams[:images_per_id]) + list(rng.choice(cams, size=max(0, images_per_id - len(cams)),
                                                               p=p_local))
        home = rng.integers(0, 3)
        per = np.where(rng.random(images_per_id) < 0.7, home, rng.integers(0, 3, images_per_id))
        id_idx += [i] * images_per_id
        cam_idx += chosen
        period += per.tolist()
    return np.array(id_idx), np.array(cam_idx), np.array(period)


def generate_domain(cfg: SynthConfig, *, name: str, seed: int, pid_offset: int = 0, cam_offset: int = 0,
                    with_train: bool = True) -> SynthDomain:
    """One domain: its own cameras (styles), its own identities; train split plus a query/gallery test split.

    Query: one image per (test identity, camera); gallery: the rest, so every query has a cross-camera match.
    """
    rng = np.random.default_rng(seed)
    palette = np.random.default_rng(seed // 1000).uniform(0.05, 0.95, (cfg.palette_size, 3)).astype(np.float32)
    cams = _camera_styles(rng, cfg.num_cameras)
    prior = camera_prior(cfg.num_cameras, cfg.zipf_alpha)
    cameras = tuple(range(cam_offset, cam_offset + cfg.num_cameras))

    def split(n_ids: int, first_pid: int) -> tuple[ReIDArrays, np.ndarray]:
        ids = _identities(rng, n_ids, palette)
        id_idx, cam_idx, period = _sample_views(cfg, rng, n_ids, prior, cfg.images_per_id)
        images = _render(cfg, rng, ids, cams, id_idx, cam_idx, period)
        periods = period if cfg.with_time else np.full(len(period), -1)
        return ReIDArrays(images, id_idx + first_pid, cam_idx + cam_offset, periods), id_idx

    empty = ReIDArrays(np.zeros((0, cfg.height, cfg.width, 3), np.uint8), np.zeros(0), np.zeros(0), np.zeros(0))
    train = split(cfg.train_ids, pid_offset)[0] if with_train else empty
    test, _ = split(cfg.test_ids, pid_offset + cfg.train_ids)
    key = test.pids * 100000 + test.camids
    _, first = np.unique(key, return_index=True)
    is_query = np.zeros(len(test), dtype=bool)
    is_query[first] = True
    return SynthDomain(name, train, test.subset(np.flatnonzero(is_query)), test.subset(np.flatnonzero(~is_query)),
                       cameras)


@dataclass
class SynthBenchmark:
    config: SynthConfig
    source: SynthDomain
    targets: dict[str, SynthDomain]  # "select" (choose hyper-parameters on) and "report" (report on)


def generate_benchmark(preset: str | SynthConfig = "hard", *, seed: int = 0, with_target_train: bool = False,
                       **overrides) -> SynthBenchmark:
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
    targets = {
        name: generate_domain(cfg, name=name, seed=seed * 1000 + 2 + i, pid_offset=(i + 1) * stride,
                              cam_offset=(i + 1) * cfg.num_cameras, with_train=with_target_train)
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


def write_layout(domain: SynthDomain, out_dir: str, layout: str) -> str:
    """Write a domain as a dataset tree in a real layout, with real names, list files and JPEG files.

    Cameras and identities are numbered within the written dataset as the real one numbers them (cameras from 1;
    Market-1501 names hold one camera digit, so at most 6 cameras; MSMT17 up to 15). Returns the dataset folder.
    """
    cams = sorted(set(domain.train.camids.tolist()) | set(domain.query.camids.tolist())
                  | set(domain.gallery.camids.tolist()))
    cam_no = {c: i + 1 for i, c in enumerate(cams)}
    pid_base = int(min(domain.query.pids.min(), domain.train.pids.min() if len(domain.train) else 10**9))
    if layout == "market1501":
        if len(cams) > 6:
            raise ValueError(f"the Market-1501 layout names at most 6 cameras (one digit); this domain has {len(cams)}:"
                             " write it with layout='msmt17'")
        root = os.path.join(out_dir, "Market-1501-v15.09.15")
        folders = {"train": "bounding_box_train", "query": "query", "gallery": "bounding_box_test"}
        for split, folder in folders.items():
            arr = getattr(domain, split)
            os.makedirs(os.path.join(root, folder), exist_ok=True)
            for i in range(len(arr)):
                name = (f"{int(arr.pids[i]) - pid_base + 1:04d}_c{cam_no[int(arr.camids[i])]}s1_{i:06d}_00.jpg")
                with open(os.path.join(root, folder, name), "wb") as fh:
                    fh.write(_jpeg(arr.images[i]))
        return root
    if layout == "msmt17":
        if len(cams) > 15:
            raise ValueError(f"the MSMT17 layout names cameras 01..15; this domain has {len(cams)}")
        root = os.path.join(out_dir, "MSMT17_V1")
        rng = np.random.default_rng(0)
        val = set()
        for pid in np.unique(domain.train.pids):  # list_val: one image of each training identity
            idx = np.flatnonzero(domain.train.pids == pid)
            if len(idx) >= 2:
                val.add(int(rng.choice(idx)))
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
