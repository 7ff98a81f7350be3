"""Interactive keys during a load test (SIPp-like), read in a thread in cbreak mode.

``+``/``-`` raise/lower the rate by 10 %, ``*``/``/`` double/halve it, ``p`` pauses (stops
offering) or resumes, ``h`` hangs up every call, ``q`` quits. Keys are only read when stdin
is a terminal; the terminal mode is restored on :meth:`KeyReader.close`.
"""

from __future__ import annotations

import os
import queue
import select
import sys
import threading
from typing import IO

#: key -> (action, argument)
KEY_ACTIONS: dict[str, tuple[str, float]] = {
    "+": ("scale", 1.1),
    "=": ("scale", 1.1),
    "-": ("scale", 1 / 1.1),
    "*": ("scale", 2.0),
    "/": ("scale", 0.5),
    "p": ("pause", 0.0),
    "h": ("hupall", 0.0),
    "q": ("quit", 0.0),
}


def key_action(key: str) -> tuple[str, float] | None:
    """The action a key stands for, or None for keys without meaning."""
    return KEY_ACTIONS.get(key.lower() if key.isalpha() else key)


class KeyReader:
    """Reads single key presses from a terminal in a daemon thread into :attr:`keys`."""

    def __init__(self, stream: IO[str] | None = None) -> None:
        self.stream = stream if stream is not None else sys.stdin
        self.keys: queue.SimpleQueue[str] = queue.SimpleQueue()
        self._stop = threading.Event()
        self._saved: list | None = None
        self._thread: threading.Thread | None = None

    @staticmethod
    def available(stream: IO[str] | None = None) -> bool:
        """True when ``stream`` (stdin by default) is a terminal we can read keys from."""
        s = stream if stream is not None else sys.stdin
        try:
            return s is not None and s.isatty() and os.name == "posix"
        except (ValueError, OSError):
            return False

    def start(self) -> KeyReader:
        """Switch the terminal to cbreak mode and start the reading thread."""
        import termios
        import tty

        fd = self.stream.fileno()
        self._saved = termios.tcgetattr(fd)
        tty.setcbreak(fd)
        self._thread = threading.Thread(
            target=self._run, args=(fd,), name="fastswitch-keys", daemon=True
        )
        self._thread.start()
        return self

    def _run(self, fd: int) -> None:
        while not self._stop.is_set():
            try:
                ready, _, _ = select.select([fd], [], [], 0.2)
                if ready:
                    ch = os.read(fd, 1).decode(errors="ignore")
                    if ch:
                        self.keys.put(ch)
            except (OSError, ValueError):
                return

    def drain(self) -> list[str]:
        """Every key pressed since the last call."""
        out = []
        while True:
            try:
                out.append(self.keys.get_nowait())
            except queue.Empty:
                return out

    def close(self) -> None:
        """Stop reading and restore the terminal mode."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=1.0)
        if self._saved is not None:
            import termios

            try:
                termios.tcsetattr(self.stream.fileno(), termios.TCSADRAIN, self._saved)
            except (termios.error, ValueError, OSError):
                pass
            self._saved = None
