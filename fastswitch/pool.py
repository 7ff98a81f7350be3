"""SlavePool: the parent-side handles of the worker processes, one per slave.

Each :class:`ClientHandle` owns one worker process (``fastswitch.worker.main``) and the
:class:`multiprocessing.Pipe` to it. The pipe carries configuration that changes rarely
(originate command, apps, hupall, api commands) as numbered request/reply pairs: the
parent sends ``(n, (kind, *args))`` and waits for the reply ``(n, 'ok', result)`` or
``(n, 'error', class name, message)`` (a lock serialises requests; a late reply to a
request that timed out is dropped). The worker's first message is its connect report,
number 0. Nothing per call crosses the pipe.

``pool.evals(expr, **kwargs)`` evaluates a Python expression once per slave with
``client`` bound to that slave's handle (plus ``kwargs``) and returns the results in
contact order, as switchio's ``SlavePool.evals`` did::

    pool.evals("client.set_orig_cmd('park@{}:5080'.format(client.server), app_name='park')")
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from fastswitch.errors import (
    AuthenticationError,
    CommandError,
    ConfigurationError,
    ConnectError,
    ConnectionLost,
    FastSwitchError,
)

__all__ = ["ClientHandle", "SlavePool", "WorkerDied"]

_ERRORS: dict[str, type[BaseException]] = {
    c.__name__: c
    for c in (
        AuthenticationError,
        CommandError,
        ConfigurationError,
        ConnectError,
        ConnectionLost,
        FastSwitchError,
        ValueError,
        TypeError,
        KeyError,
        RuntimeError,
        TimeoutError,
    )
}


class WorkerDied(ConnectionLost):
    """The worker process of a slave exited while a request was waiting for its reply."""


def rebuild_error(name: str, message: str) -> BaseException:
    """Turn a ``(class name, message)`` pair sent by a worker back into an exception."""
    cls = _ERRORS.get(name, FastSwitchError)
    if cls is CommandError:
        return CommandError(message)
    if cls is KeyError:
        return KeyError(message)
    return cls(message)


class ClientHandle:
    """The parent-side handle of one slave: its worker process and the pipe to it.

    ``server``/``host`` is the slave's host, ``port`` its ESL port, ``index`` its position
    in the contact list. ``set_orig_cmd(...)`` takes the arguments of
    :func:`fastswitch.commands.build_originate_cmd` and ``originate_cmd`` is the template
    the worker rendered (None until set).
    """

    def __init__(
        self,
        index: int,
        host: str,
        port: int,
        password: str,
        spawner: Callable[[ClientHandle], None],
    ) -> None:
        self.index = index
        self.host = host
        self.port = port
        self.password = password
        self.process: Any = None
        self.conn: Any = None
        self.originate_cmd: str | None = None
        self.orig_cmd_args: tuple[tuple, dict] | None = None
        self.incarnation = 0
        self._spawner = spawner
        self._lock = threading.RLock()
        self._seq = 0  # request numbers (0 is the worker's connect report)

    @property
    def server(self) -> str:
        """The slave's host name (switchio's ``client.server``)."""
        return self.host

    @property
    def address(self) -> tuple[str, int]:
        return (self.host, self.port)

    def __repr__(self) -> str:
        alive = self.process is not None and self.process.is_alive()
        return f"<ClientHandle {self.host}:{self.port} worker={'alive' if alive else 'down'}>"

    # -- process management ---------------------------------------------------------------
    def attach(self, process: Any, conn: Any) -> None:
        """Bind a freshly started worker process and its pipe end."""
        with self._lock:
            old = self.conn
            self.process = process
            self.conn = conn
            self.incarnation += 1
        if old is not None:
            try:
                old.close()
            except OSError:
                pass

    def is_alive(self) -> bool:
        p = self.process
        return p is not None and p.is_alive()

    def wait_ready(self, timeout: float) -> dict[str, Any]:
        """Wait for the worker's connect report; raise ConnectError/AuthenticationError."""
        return self._recv(timeout, what="connect", seq=0)

    def _recv(self, timeout: float, what: str, seq: int) -> Any:
        """The reply numbered ``seq`` (replies to earlier requests that timed out are
        dropped, so a late reply can never answer the wrong request)."""
        conn, proc = self.conn, self.process
        deadline = time.monotonic() + timeout
        while True:
            reply = None
            try:
                if conn.poll(0.05):
                    reply = conn.recv()
            except (EOFError, OSError):
                raise WorkerDied(
                    f"worker for {self.host}:{self.port} exited during {what}"
                ) from None
            if reply is not None:
                if reply[0] == seq:
                    break
                continue  # a stale reply
            if not proc.is_alive():
                # a reply may still be sitting in the pipe
                try:
                    while conn.poll(0):
                        reply = conn.recv()
                        if reply[0] == seq:
                            break
                    else:
                        reply = None
                except (EOFError, OSError):
                    reply = None
                if reply is not None:
                    break
                raise WorkerDied(
                    f"worker for {self.host}:{self.port} exited (code {proc.exitcode}) during {what}"
                )
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"worker for {self.host}:{self.port} did not answer {what} within {timeout}s"
                )
        if reply[1] == "ok":
            return reply[2]
        raise rebuild_error(reply[2], reply[3])

    def request(self, msg: tuple, timeout: float = 10.0) -> Any:
        """Send one request (``(kind, *args)``) to the worker and return its reply
        (raises the worker's error, :class:`WorkerDied` or :class:`TimeoutError`)."""
        with self._lock:
            if self.conn is None or not self.is_alive():
                raise WorkerDied(f"worker for {self.host}:{self.port} is not running")
            self._seq += 1
            seq = self._seq
            try:
                self.conn.send((seq, msg))
            except (OSError, EOFError, BrokenPipeError):
                raise WorkerDied(f"worker for {self.host}:{self.port} is not running") from None
            return self._recv(timeout, what=repr(msg[0]), seq=seq)

    # -- configuration ----------------------------------------------------------------
    def set_orig_cmd(self, *args: Any, **kwargs: Any) -> str:
        """Set the originate command template of this slave (arguments of
        :func:`fastswitch.commands.build_originate_cmd`); returns the template. Takes effect
        in the worker at once, also while originating."""
        try:
            cmd = self.request(("set_orig_cmd", args, kwargs))
        except ConfigurationError as exc:  # name the slave the setting was meant for
            raise ConfigurationError(f"set_orig_cmd for {self.host}:{self.port}: {exc}") from None
        self.orig_cmd_args = (args, kwargs)
        self.originate_cmd = cmd
        return cmd

    def api(self, cmd: str, timeout: float = 10.0) -> str:
        """Run ``api <cmd>`` on this slave and return FreeSWITCH's reply body."""
        return self.request(("api", cmd), timeout=timeout)

    def hupall(self, cause: str = "NORMAL_CLEARING") -> None:
        """Hang up every call this slave's worker originated (by its app ids)."""
        self.request(("hupall", cause))

    def stats(self) -> dict[str, Any]:
        """Worker-side details (loaded apps, call counts, loop lag)."""
        return self.request(("stats",))


class SlavePool:
    """The slaves of an Originator, in contact order.

    ``clients`` lists the :class:`ClientHandle` s; ``evals(expr, **kwargs)`` runs a Python
    expression with ``client`` bound to each handle (and ``kwargs``) and returns the list
    of results.
    """

    def __init__(self, clients: list[ClientHandle]) -> None:
        self.clients = clients

    def __len__(self) -> int:
        return len(self.clients)

    def __iter__(self) -> Iterator[ClientHandle]:
        return iter(self.clients)

    def __getitem__(self, i: int) -> ClientHandle:
        return self.clients[i]

    @property
    def hosts(self) -> list[str]:
        return [c.host for c in self.clients]

    def evals(self, expr: str, **kwargs: Any) -> list[Any]:
        """Evaluate ``expr`` once per slave with ``client`` (and ``kwargs``) bound."""
        code = compile(expr.strip(), "<pool.evals>", "eval")
        return [eval(code, {"client": c, **kwargs}) for c in self.clients]  # noqa: S307

    def __repr__(self) -> str:
        return f"<SlavePool {[f'{c.host}:{c.port}' for c in self.clients]}>"
