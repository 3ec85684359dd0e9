"""Readers of the real on-disk layouts of the datasets the paper uses, following torchreid / fast-reid.

`read_layout(format, src)` returns `ImageRecord`s (pid, 0-based camera, time of day where the name has it, frame
where the name has it, split, source path). A missing folder or list file, or a file name that does not parse,
raises `LayoutError` naming it.
"""

from __future__ import annotations

from typing import Callable

from adin_core.data.layouts import dukemtmc, market1501, msmt17, vehicleid, veri776
from adin_core.data.layouts.base import SPLITS, ImageRecord, LayoutError

READERS: dict[str, Callable[[str], list[ImageRecord]]] = {
    "market1501": market1501.read,
    "dukemtmc": dukemtmc.read,
    "msmt17": msmt17.read,
    "veri776": veri776.read,
    "vehicleid": vehicleid.read,
}


def read_layout(fmt: str, src: str) -> list[ImageRecord]:
    if fmt not in READERS:
        raise LayoutError(f"unknown dataset format {fmt!r}; choose one of {sorted(READERS)}")
    return READERS[fmt](src)


__all__ = ["READERS", "SPLITS", "ImageRecord", "LayoutError", "read_layout"]
