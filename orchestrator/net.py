"""Loopback ports for the services a sweep, the local cluster, the tests and the benchmarks start themselves."""

from __future__ import annotations

import socket
import time


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on now (Ray's default 6379 is Redis's on these machines: always ask for one)."""
    with socket.socket() as s:
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
