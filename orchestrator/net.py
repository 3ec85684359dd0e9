"""Loopback ports for the services a sweep, the local cluster, the tests and the benchmarks start themselves."""

from __future__ import annotations

import random
import socket
import time

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
