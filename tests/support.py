"""Helpers the tests share: polling, loopback ports, bounded async tests, the seed's CDR
columns. (Imported as ``support``: pytest puts this folder on ``sys.path``.)"""

from __future__ import annotations

import asyncio
import functools
import os
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any

#: The columns switchio's CDR store has (seed, "measurers.stores.CDR"), in its order.
SEED_CDR_COLUMNS = [
    "fastswitch_app",
    "hangup_cause",
    "caller_create",
    "caller_answer",
    "caller_req_originate",
    "caller_originate",
    "caller_hangup",
    "job_launch",
    "callee_create",
    "callee_answer",
    "callee_hangup",
    "failed_calls",
    "active_sessions",
    "erlangs",
]


def free_port() -> int:
    """A TCP port free on the loopback right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate: Callable[[], Any], timeout: float, period: float = 0.05) -> bool:
    """Poll ``predicate`` until true (True) or ``timeout`` seconds pass (False)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(period)
    return True


def shm_exists(name: str) -> bool:
    """Whether the shared-memory block ``name`` still exists (Linux: /dev/shm)."""
    return os.path.exists("/dev/shm/" + name.lstrip("/"))


def run_async(timeout: float) -> Callable[[Callable[..., Awaitable[Any]]], Callable[..., Any]]:
    """Decorator: run an async test on a fresh event loop, failing after ``timeout`` s."""

    def decorate(fn: Callable[..., Awaitable[Any]]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            async def bounded() -> Any:
                async with asyncio.timeout(timeout):
                    return await fn(*args, **kwargs)

            return asyncio.run(bounded())

        return wrapper

    return decorate


async def until(pred: Callable[[], Any]) -> None:
    """Yield to the loop until ``pred()`` is true (bounded by the test's own timeout)."""
    while not pred():
        await asyncio.sleep(0.005)
