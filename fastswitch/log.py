"""Logging in the seed's format, and the bridge that carries worker logs to the parent.

A record renders as (``%b %d %H:%M:%S [LEVEL] name@hosts file:line : message``)::

    Feb 24 14:12:35 [INFO] fastswitch.Originator@['vm-host'] originator.py:376 : State Change: ...

``get_logger(name, hosts)`` returns a :class:`logging.LoggerAdapter` that stamps every
record with ``hosts`` (rendered after ``@``: a list shows as ``['vm-host']``, a string as
is); :class:`SeedFormatter` produces the line above (records without ``hosts`` render
``name`` alone). ``log_to_stderr()`` installs it on the ``fastswitch`` logger.

Worker processes log through a :class:`RateLimitedQueueHandler` onto a
:class:`multiprocessing.Queue`; the parent's :class:`LogBridge` thread re-emits each record
through the parent's ``logging`` tree, so worker logs obey the parent's configuration
(handlers, levels, pytest's ``caplog``). Log records are not per-call messages in normal
operation; a flood (e.g. thousands of failed originates) is cut to ``max_per_sec``
records per second per logger and level, the rest summarised once a second as
``... N similar messages suppressed``.
"""

from __future__ import annotations

import logging
import logging.handlers
import queue as _queue
import threading
import time
from collections.abc import Iterable, MutableMapping
from typing import Any

__all__ = [
    "SEED_FORMAT",
    "SEED_DATEFMT",
    "SeedFormatter",
    "HostsAdapter",
    "get_logger",
    "log_to_stderr",
    "ensure_default_handler",
    "RateLimitedQueueHandler",
    "LogBridge",
]

SEED_FORMAT = (
    "%(asctime)s [%(levelname)s] %(name)s%(at_hosts)s %(filename)s:%(lineno)d : %(message)s"
)
SEED_DATEFMT = "%b %d %H:%M:%S"


def _render_hosts(hosts: Any) -> str:
    if hosts is None:
        return ""
    if isinstance(hosts, str):
        return hosts
    return repr(list(hosts))


class SeedFormatter(logging.Formatter):
    """``logging.Formatter`` producing the seed's line format (see module docstring)."""

    def __init__(self, fmt: str = SEED_FORMAT, datefmt: str = SEED_DATEFMT) -> None:
        super().__init__(fmt=fmt, datefmt=datefmt)

    def format(self, record: logging.LogRecord) -> str:
        hosts = getattr(record, "hosts", None)
        record.at_hosts = f"@{hosts}" if hosts else ""
        return super().format(record)


class HostsAdapter(logging.LoggerAdapter):
    """Adds the ``hosts`` string to every record (``extra`` of the adapter wins)."""

    def process(
        self, msg: Any, kwargs: MutableMapping[str, Any]
    ) -> tuple[Any, MutableMapping[str, Any]]:
        extra = kwargs.get("extra")
        kwargs["extra"] = dict(self.extra) if extra is None else {**self.extra, **extra}
        return msg, kwargs


def get_logger(name: str, hosts: Iterable[str] | str | None = None) -> HostsAdapter:
    """A logger named ``name`` whose records render ``name@hosts`` in the seed format.

    ``hosts`` is a list of host names (shown as ``['a', 'b']``) or one string (shown as
    is, e.g. ``vm-host``).
    """
    return HostsAdapter(logging.getLogger(name), {"hosts": _render_hosts(hosts)})


def log_to_stderr(level: int | str = logging.INFO) -> logging.Handler:
    """Attach a stderr handler in the seed format to the ``fastswitch`` logger; returns it."""
    logger = logging.getLogger("fastswitch")
    for h in logger.handlers:
        if getattr(h, "_fastswitch_default", False):
            logger.setLevel(level)
            return h
    handler = logging.StreamHandler()
    handler.setFormatter(SeedFormatter())
    handler._fastswitch_default = True  # type: ignore[attr-defined]
    logger.addHandler(handler)
    logger.setLevel(level)
    return handler


def ensure_default_handler() -> None:
    """Install :func:`log_to_stderr` at INFO when the application configured no logging.

    A REPL session then shows the seed's log lines; an application (or pytest) with its
    own handlers on the root or ``fastswitch`` logger is left alone.
    """
    if logging.getLogger().handlers or logging.getLogger("fastswitch").handlers:
        if logging.getLogger("fastswitch").level == logging.NOTSET:
            logging.getLogger("fastswitch").setLevel(logging.INFO)
        return
    log_to_stderr(logging.INFO)


class RateLimitedQueueHandler(logging.handlers.QueueHandler):
    """A QueueHandler (worker side) that lets at most ``max_per_sec`` records per second
    through for each (logger, level); the excess is counted and summarised once a second."""

    def __init__(self, q: Any, max_per_sec: int = 50) -> None:
        super().__init__(q)
        self.max_per_sec = max_per_sec
        self._window = 0
        self._counts: dict[tuple[str, int], int] = {}
        self._suppressed: dict[tuple[str, int], tuple[int, logging.LogRecord]] = {}

    def emit(self, record: logging.LogRecord) -> None:
        sec = int(time.monotonic())
        if sec != self._window:
            self._flush_suppressed()
            self._window = sec
            self._counts.clear()
        key = (record.name, record.levelno)
        n = self._counts.get(key, 0) + 1
        self._counts[key] = n
        if n > self.max_per_sec:
            prev = self._suppressed.get(key)
            self._suppressed[key] = ((prev[0] if prev else 0) + 1, record)
            return
        super().emit(record)

    def _flush_suppressed(self) -> None:
        if not self._suppressed:
            return
        items, self._suppressed = self._suppressed, {}
        for n, last in items.values():
            summary = logging.makeLogRecord(last.__dict__)
            summary.msg = f"... {n} similar messages suppressed in the last second (last: {last.getMessage()})"
            summary.args = None
            summary.exc_info = None
            summary.exc_text = None
            super().emit(summary)

    def flush(self) -> None:
        self._flush_suppressed()


class LogBridge:
    """Parent side: a thread re-emitting records that workers put on ``queue``."""

    def __init__(self, q: Any) -> None:
        self.queue = q
        self._thread = threading.Thread(target=self._run, name="fastswitch-log-bridge", daemon=True)
        self._stopping = threading.Event()

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        while True:
            try:
                record = self.queue.get(timeout=0.2)
            except _queue.Empty:
                if self._stopping.is_set():
                    return
                continue
            except (EOFError, OSError, ValueError):
                return
            if record is None:
                return
            logger = logging.getLogger(record.name)
            if logger.isEnabledFor(record.levelno):
                logger.handle(record)

    def stop(self, timeout: float = 2.0) -> None:
        """Drain what is queued, then stop the thread."""
        self._stopping.set()
        try:
            self.queue.put_nowait(None)
        except Exception:
            pass
        self._thread.join(timeout)
