"""Starting ``spawn`` child processes (workers, simulated servers) from any parent."""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from collections.abc import Iterator
from typing import Any

__all__ = ["main_hidden", "start_process"]

_MISSING = object()


@contextlib.contextmanager
def main_hidden() -> Iterator[None]:
    """Keep a 'spawn' child from re-running the parent's ``__main__`` while processes are
    started inside this block. A script without an ``if __name__ == '__main__'`` guard
    would otherwise start itself again in every child; the children never need
    ``__main__`` (apps defined there are shipped by value with cloudpickle)."""
    main = sys.modules.get("__main__")
    if main is None:
        yield
        return
    saved_file = main.__dict__.pop("__file__", _MISSING)
    saved_spec = main.__dict__.get("__spec__", _MISSING)
    main.__spec__ = None
    try:
        yield
    finally:
        if saved_file is not _MISSING:
            main.__file__ = saved_file
        if saved_spec is _MISSING:
            main.__dict__.pop("__spec__", None)
        else:
            main.__spec__ = saved_spec


def start_process(proc: Any) -> None:
    """Start ``spawn`` child ``proc`` with SIGINT ignored and ``__main__`` hidden.

    An ignored signal stays ignored across the child's exec, so a Ctrl-C typed in the
    terminal (it reaches the whole process group) never interrupts a worker or a simulated
    server, even while it starts up: the parent that started it decides when it stops. The
    parent ignores SIGINT only for the launch itself; whatever handler it had (a CLI's
    "abort the connect", Python's KeyboardInterrupt) is back at once. From a thread other
    than the main one (a worker restarted by the monitor) signal dispositions cannot be
    changed: the child then ignores SIGINT from its first line on.
    """
    with main_hidden():
        if threading.current_thread() is not threading.main_thread():
            proc.start()
            return
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            proc.start()
        finally:
            signal.signal(signal.SIGINT, previous)
