"""Test helpers: small dataset trees in the exact real layouts, loopback ports, a TCP proxy that can cut a service."""

from __future__ import annotations

import contextlib
import io
import os
import signal
import socket
import subprocess
import threading

import numpy as np
from PIL import Image

from orchestrator.net import free_port, port_open, wait_for_port  # noqa: F401  (one home for these)


def jpeg_bytes(seed: int, size=(32, 16)) -> bytes:
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 255, (size[0], size[1], 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG")
    return buf.getvalue()


def write_jpeg(path: str, seed: int) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as fh:
        fh.write(jpeg_bytes(seed))


# --- real layouts ---------------------------------------------------------------------------------------------
def write_tree(base: str, names: dict[str, list[str]]) -> None:
    """One JPEG per name, in its split folder."""
    for folder, files in names.items():
        for i, name in enumerate(files):
            write_jpeg(os.path.join(base, folder, name), i)


def make_market(root: str) -> str:
    base = os.path.join(root, "Market-1501-v15.09.15")
    names = {
        "bounding_box_train": [
            "0002_c1s1_000451_03.jpg",
            "0002_c2s1_000551_01.jpg",
            "0002_c3s1_000601_02.jpg",
            "0007_c2s3_070952_01.jpg",
            "0007_c6s1_013521_03.jpg",
            "0010_c1s1_002301_02.jpg",
            "0010_c4s1_003276_01.jpg",
        ],
        "query": ["0001_c1s1_001051_00.jpg", "0003_c3s3_075694_00.jpg"],
        "bounding_box_test": [
            "-1_c1s1_000401_03.jpg",
            "0000_c1s1_000151_01.jpg",
            "0001_c2s1_000301_01.jpg",
            "0001_c1s1_001251_02.jpg",
            "0003_c1s2_037821_01.jpg",
        ],
    }
    write_tree(base, names)
    os.makedirs(os.path.join(base, "gt_bbox"), exist_ok=True)  # other folders of the archive are ignored
    return root


def make_duke(root: str) -> str:
    base = os.path.join(root, "DukeMTMC-reID")
    names = {
        "bounding_box_train": [
            "0001_c2_f0046182.jpg",
            "0001_c5_f0051341.jpg",
            "0003_c1_f0044158.jpg",
            "0003_c8_f0040436.jpg",
        ],
        "query": ["0005_c2_f0046985.jpg"],
        "bounding_box_test": ["0005_c5_f0051781.jpg", "0019_c1_f0056049.jpg"],
    }
    write_tree(base, names)
    return root


def make_msmt(root: str, version: str = "MSMT17_V1") -> str:
    train_dir, test_dir = {"MSMT17_V1": ("train", "test"), "MSMT17_V2": ("mask_train_v2", "mask_test_v2")}[version]
    base = os.path.join(root, version)
    lists = {
        "train": [
            ("0000/0000_000_01_0303morning_0015_0.jpg", 0),
            ("0000/0000_001_05_0303noon_0036_1.jpg", 0),
            ("0001/0001_000_12_0113afternoon_0790_0.jpg", 1),
            ("0001/0001_003_12_0113morning_0811_0.jpg", 1),
        ],
        "val": [("0000/0000_004_05_0303noon_0100_0.jpg", 0), ("0001/0001_005_03_0113afternoon_0900_1.jpg", 1)],
        "query": [("0000/0000_000_15_0302afternoon_1020_0.jpg", 0)],
        "gallery": [("0000/0000_003_02_0302noon_0911_1.jpg", 0), ("0001/0001_000_07_0302morning_0001_0.jpg", 1)],
    }
    for split, rows in lists.items():
        folder = train_dir if split in ("train", "val") else test_dir
        for i, (rel, _) in enumerate(rows):
            write_jpeg(os.path.join(base, folder, rel), i)
        with open(os.path.join(base, f"list_{split}.txt"), "w") as fh:
            fh.write("".join(f"{rel} {pid}\n" for rel, pid in rows))
    return root


def make_veri(root: str) -> str:
    base = os.path.join(root, "VeRi")
    names = {
        "image_train": [
            "0001_c001_00016450_0.jpg",
            "0001_c002_00018375_1.jpg",
            "0002_c002_00030600_0.jpg",
            "0002_c020_00081265_1.jpg",
        ],
        "image_query": ["0005_c003_00077810_0.jpg"],
        "image_test": ["0005_c010_00085190_1.jpg", "0006_c004_00011070_0.jpg"],
    }
    write_tree(base, names)
    return root


def make_vehicleid(root: str) -> str:
    base = os.path.join(root, "VehicleID_V1.0")
    train = [("0001789", 2), ("0001790", 2), ("0001791", 3), ("0001792", 3)]
    test = [("0000006", 11), ("0000007", 11), ("0000010", 12), ("0000011", 12)]
    for i, (img, _) in enumerate(train + test):
        write_jpeg(os.path.join(base, "image", img + ".jpg"), i)
    os.makedirs(os.path.join(base, "train_test_split"), exist_ok=True)
    with open(os.path.join(base, "train_test_split", "train_list.txt"), "w") as fh:
        fh.write("".join(f"{a} {b}\n" for a, b in train))
    for size in (800, 1600, 2400, 3200):
        with open(os.path.join(base, "train_test_split", f"test_list_{size}.txt"), "w") as fh:
            fh.write("".join(f"{a} {b}\n" for a, b in test))
    return root


LAYOUT_BUILDERS = {
    "market1501": make_market,
    "dukemtmc": make_duke,
    "msmt17": make_msmt,
    "veri776": make_veri,
    "vehicleid": make_vehicleid,
}


# --- loopback services ----------------------------------------------------------------------------------------
class TcpProxy:
    """A loopback TCP forwarder to a local service that can be taken down (new connections refused, open ones
    cut) and brought up again on the same port: an outage of the service without losing the service's state."""

    def __init__(self, target_port: int) -> None:
        self.port, self.target = free_port(), target_port
        self._conns: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None
        self.up()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def up(self) -> None:
        srv = socket.socket()
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        srv.bind(("127.0.0.1", self.port))
        srv.listen(128)
        srv.settimeout(0.2)
        self._listener = srv
        threading.Thread(target=self._accept, args=(srv,), daemon=True).start()

    def down(self) -> None:
        srv, self._listener = self._listener, None
        if srv is not None:
            srv.close()
        with self._lock:
            conns, self._conns = self._conns, set()
        for c in conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            c.close()

    def _accept(self, srv: socket.socket) -> None:
        while self._listener is srv:
            try:
                client, _ = srv.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target))
            except OSError:
                client.close()
                continue
            with self._lock:
                self._conns |= {client, upstream}
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()
            with self._lock:
                self._conns.discard(src)
                self._conns.discard(dst)


@contextlib.contextmanager
def another_ray(env: dict[str, str], temp_dir: str | None = None):
    """A Ray a user started on this host (`ray start --head`, one CPU, free ports, 127.0.0.1), as a notebook's or a
    shell's would be; yields (process, GCS port, dashboard port) and stops that process group by its id, never
    with `ray stop`."""
    port, dash = free_port(), free_port()
    command = ["ray", "start", "--head", "--block", "--node-ip-address", "127.0.0.1", "--port", str(port)]
    command += ["--dashboard-host", "127.0.0.1", "--dashboard-port", str(dash), "--num-cpus", "1"]
    command += ["--include-dashboard", "true", *(["--temp-dir", temp_dir] if temp_dir else [])]
    proc = subprocess.Popen(
        command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    try:
        yield proc, port, dash
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # the instance this helper started, and only it
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
