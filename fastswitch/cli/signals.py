"""Ctrl-C / SIGTERM handling of a load test.

The first Ctrl-C (or a SIGTERM) asks the test to stop offering calls and let the calls in
progress end; a second Ctrl-C asks for every call to be hung up at once. The handler only
counts: the run loop acts on the counts, so CDRs are always flushed and the report printed.

:func:`children_ignore_sigint` is used while the simulator starts its processes and while
the originator shuts down: an ignored signal stays ignored in a child, so a Ctrl-C typed in
the terminal (which reaches the whole process group) only reaches this process, which
coordinates the shutdown of the others. :func:`interruptible_spawning` is used while the
slaves are connected: the children still start with SIGINT ignored, but a Ctrl-C aborts
the connect (:class:`Interrupted`).
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator
from types import FrameType


class StopRequests:
    """Counts stop requests from SIGINT and SIGTERM while installed (the run loop decides:
    the first stops offering, a Ctrl-C while calls drain hangs them up)."""

    def __init__(self) -> None:
        self.interrupts = 0
        self.terminated = False
        self._saved: dict[int, object] = {}

    @property
    def stop(self) -> bool:
        """True once the test should stop offering calls."""
        return self.interrupts >= 1 or self.terminated

    def _on_sigint(self, signum: int, frame: FrameType | None) -> None:
        self.interrupts += 1

    def _on_sigterm(self, signum: int, frame: FrameType | None) -> None:
        self.terminated = True

    def install(self) -> StopRequests:
        """Install the handlers (main thread only)."""
        self._saved[signal.SIGINT] = signal.signal(signal.SIGINT, self._on_sigint)
        self._saved[signal.SIGTERM] = signal.signal(signal.SIGTERM, self._on_sigterm)
        return self

    def restore(self) -> None:
        """Put the previous handlers back."""
        for sig, handler in self._saved.items():
            signal.signal(sig, handler)  # type: ignore[arg-type]
        self._saved.clear()

    def __enter__(self) -> StopRequests:
        return self.install()

    def __exit__(self, *exc: object) -> None:
        self.restore()


@contextlib.contextmanager
def children_ignore_sigint() -> Iterator[None]:
    """Ignore SIGINT while child processes are started, so that they inherit SIG_IGN."""
    old = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old)


class Interrupted(KeyboardInterrupt):
    """Ctrl-C while the slaves were being connected or set up (before the test started)."""


def _raise_interrupted(signum: int, frame: FrameType | None) -> None:
    # the clean-up that follows (stopping the children started so far) must not be cut short
    # by a second Ctrl-C: ignored until the block restores the previous handler
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    raise Interrupted()


@contextlib.contextmanager
def interruptible_spawning() -> Iterator[None]:
    """Let a Ctrl-C abort the block (it raises :class:`Interrupted`, a KeyboardInterrupt),
    e.g. a slow connect. The worker and simulator processes started in it still begin with
    SIGINT ignored: :func:`fastswitch._spawn.start_process` ignores it around each launch.
    """
    previous = signal.signal(signal.SIGINT, _raise_interrupted)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
