"""The network as a sweep meets it: loopback ports for the services it, the local cluster, the tests and the benchmarks
start themselves, and whether a Ray address answers as Ray does."""

from __future__ import annotations

import random
import socket
import time
import urllib.parse

RAY_WORKER_PORTS = (10002, 19999)  # Ray's default --min/--max-worker-port: its workers bind these
_pick = random.SystemRandom()  # not the global RNG, which a seeded run would make repeat across processes
_given: set[int] = set()  # handed out by this process: a service may not have bound it yet
_EPHEMERAL_FILE = "/proc/sys/net/ipv4/ip_local_port_range"


def ephemeral_range() -> tuple[int, int]:
    """The ports the kernel hands out to client sockets (Linux's default where the file is missing)."""
    try:
        with open(_EPHEMERAL_FILE) as f:
            low, high = (int(x) for x in f.read().split())
        return low, high
    except (OSError, ValueError):
        return 32768, 60999


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on now, which no client socket will take before it is bound: chosen between Ray's
    worker ports and the kernel's ephemeral range. A port from `bind(0)` comes from that ephemeral range, so any
    outgoing connection (MLflow's to PostgreSQL, say) could take it in the seconds before the service that was
    given it starts; the local cluster's Ray head once failed so ("Failed to start the grpc server"). Ray's
    default 6379 is Redis's on these machines: always ask for one."""
    low, high = RAY_WORKER_PORTS[1] + 1, ephemeral_range()[0] - 1
    if high - low >= 100:
        for _ in range(200):
            port = _pick.randint(low, high)
            if port in _given:
                continue
            with socket.socket() as s:
                try:
                    s.bind((host, port))
                except OSError:
                    continue
            _given.add(port)
            return port
    with socket.socket() as s:  # no room below the ephemeral range: take the kernel's pick
        s.bind((host, 0))
        return s.getsockname()[1]


def port_open(port: int, host: str = "127.0.0.1", timeout: float = 0.5) -> bool:
    try:
        socket.create_connection((host, port), timeout=timeout).close()
        return True
    except OSError:
        return False


def wait_for_port(port: int, host: str = "127.0.0.1", timeout: float = 30.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if port_open(port, host):
            return
        time.sleep(0.1)
    raise RuntimeError(f"nothing listening on {host}:{port} after {timeout} s")


def ray_address_problem(address: str, timeout: float = 5.0) -> str | None:
    """What is wrong with a Ray address (host:port or ray://host:port), or None: it must answer, and
    answer as Ray does, before ray.init is asked to join it (ray.init retries a dead address, or a port some other
    server holds, Redis on Ray's default 6379 say, for minutes)."""
    if address in ("auto", "local"):
        return None
    parsed = urllib.parse.urlparse(address if "://" in address else f"tcp://{address}")
    if not parsed.hostname or not parsed.port:
        return "expected host:port, ray://host:port or http://host:port"
    if parsed.scheme in ("http", "https"):  # ray.init refuses these (Ray 2.60: "Invalid Ray address")
        return (
            "an http address is a Ray dashboard's, which `ray job submit` takes; give the sweep the cluster's GCS "
            "address (host:port, `ray start --port`) or ray://host:10001, or submit it: ray job submit -- "
            "python -m orchestrator.sweep ..."
        )
    try:
        ray_like = _speaks_grpc(parsed.hostname, parsed.port, timeout)
    except OSError as exc:
        return (
            f"nothing answers at {parsed.hostname}:{parsed.port} ({exc}); start the cluster, or leave "
            "--ray-address out to run on a local Ray"
        )
    if ray_like:
        return None
    return (
        f"something answers at {parsed.hostname}:{parsed.port}, but not Ray (its GCS or client server speak gRPC); "
        "check the port (the GCS is "
        "`ray start --port`, the dashboard its --dashboard-port)"
    )


def _speaks_grpc(host: str, port: int, timeout: float) -> bool:
    """Whether the server at host:port speaks HTTP/2, as every gRPC server does: it answers the client preface with
    a SETTINGS frame (frame type 4). Redis, PostgreSQL or an HTTP/1 server answer otherwise, or not at all."""
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0]))
        frame = b""
        try:
            while len(frame) < 9:
                chunk = sock.recv(9 - len(frame))
                if not chunk:
                    break
                frame += chunk
        except socket.timeout:
            return False
    return len(frame) == 9 and frame[3] == 4
