"""How a sweep learns it was told to stop, whoever handles the signal at that moment.

Ctrl-C (SIGINT) and SIGTERM (`ray job stop`, `timeout`, a container stop) end a sweep with 130 and 143, its state
saved and its runs closed. Before Tune runs, our own handlers raise KeyboardInterrupt; while Tune runs, its SIGINT
handler stops it gracefully (saving its state), SIGTERM is turned into that, and Tune's handler is wrapped so the
sweep knows, since Tune itself returns as if nothing happened. The wrapping is done by a Tune callback at Tune's
set-up: a LiveCallback, because Tune pickles its callbacks with the sweep and a resumed sweep must watch with this
run's `StopSignals`, not with an unpickled copy of the first run's (which once made a Ctrl-C during a resumed sweep
look like success).
"""

from __future__ import annotations

import os
import signal

from orchestrator.tracking.callback import LiveCallback

EXIT_SIGNAL = {signal.SIGINT: 130, signal.SIGTERM: 143}


class StopSignals:
    """Which signal stopped the sweep (`received`), and the handlers that record it."""

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous = {s: signal.getsignal(s) for s in EXIT_SIGNAL}
        self.install()

    @property
    def exit_code(self) -> int:
        return EXIT_SIGNAL.get(self.received or signal.SIGINT, 130)

    def install(self) -> None:
        """Put our handlers in place; again after `ray.init`, whose driver set-up replaces the SIGTERM handler
        with one that exits at once (no graceful stop, no closed runs, exit code not 143)."""
        signal.signal(signal.SIGINT, self._before_tune)
        signal.signal(signal.SIGTERM, self._on_term)

    def _before_tune(self, signum, frame) -> None:
        self.received = self.received or signum
        raise KeyboardInterrupt

    def _on_term(self, signum, frame) -> None:
        self.received = self.received or signum
        os.kill(os.getpid(), signal.SIGINT)  # Tune's own graceful stop

    def watch_tune(self) -> None:
        """Called once Tune has put its SIGINT handler in place: wrap it, to learn of a Ctrl-C it handles."""
        tune_handler = signal.getsignal(signal.SIGINT)
        if getattr(tune_handler, "_adin_wrapped", False) or not callable(tune_handler):
            return

        def wrapped(signum, frame):
            self.received = self.received or signum
            tune_handler(signum, frame)

        wrapped._adin_wrapped = True  # type: ignore[attr-defined]
        signal.signal(signal.SIGINT, wrapped)

    def restore(self) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)

    def watcher(self, sweep: str):
        """The Tune callback that wraps Tune's SIGINT handler once Tune has installed it (module docstring)."""
        stops = self

        class WatchSignals(LiveCallback):
            def setup(self, **info) -> None:
                stops.watch_tune()

        return WatchSignals().register(f"signals:{sweep}")


__all__ = ["EXIT_SIGNAL", "StopSignals"]
