"""SimServer / SimCluster: simulated FreeSWITCH servers, each in its own process.

Each server runs in a ``multiprocessing`` *spawn* child with its own uvloop event
loop, an ESL listener (``host:port``) and a SIP stand-in listener
(``sip_host:sip_port``). ``port=0`` lets the OS choose free ports (the SIP port
too, unless given); ``.address`` / ``.sip_address`` report what is listening.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import multiprocessing
import os
import signal
from typing import Any

from fastswitch._spawn import start_process

from .config import SimConfig


def _serve(cfg: SimConfig, conn: Any) -> None:  # pragma: no cover - runs in the child
    """Child process entry: run one simulated switch until told to stop."""
    try:
        import uvloop

        loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    except ImportError:
        loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        core, servers = loop.run_until_complete(_start(cfg, loop))
    except Exception as e:  # report start-up errors (port in use ...) to the parent
        conn.send(("error", f"{type(e).__name__}: {e}"))
        conn.close()
        return
    _manual_gc(loop)
    conn.send(("ok", cfg.address, cfg.sip_address, os.getpid()))
    stop = loop.create_future()

    def on_parent() -> None:
        try:
            conn.recv()
        except (EOFError, OSError):
            pass
        if not stop.done():
            stop.set_result(None)

    loop.add_reader(conn.fileno(), on_parent)
    loop.add_signal_handler(signal.SIGTERM, lambda: stop.done() or stop.set_result(None))
    loop.run_until_complete(stop)
    loop.remove_reader(conn.fileno())
    for s in servers:
        s.close()
    core.sip.close()
    for c in list(core.connections):
        c.abort()
    loop.run_until_complete(asyncio.sleep(0))
    loop.close()
    with contextlib.suppress(OSError):
        conn.send(("stopped",))


GC_INTERVAL = 5.0


def _manual_gc(loop: asyncio.AbstractEventLoop) -> None:  # pragma: no cover - in the child
    """Collect garbage every ``GC_INTERVAL`` seconds instead of every 700 allocations.

    Calls free their legs by reference counting; what the automatic collector did
    at thousands of calls/s was traverse the in-flight calls' objects over and over
    (5-10% of the simulator's CPU). The templates, loaded by now, are frozen out of
    every collection.
    """
    gc.collect()
    gc.freeze()
    gc.disable()

    def collect() -> None:
        gc.collect()
        loop.call_later(GC_INTERVAL, collect)

    loop.call_later(GC_INTERVAL, collect)


async def _start(cfg: SimConfig, loop: asyncio.AbstractEventLoop) -> tuple[Any, list[Any]]:
    from .core import Core
    from .eslserver import EslConnection
    from .siplink import SipLink

    core = Core(cfg, loop)
    link = SipLink(core)
    await link.start()
    sip_server = link.server
    assert sip_server is not None
    cfg.sip_port = sip_server.sockets[0].getsockname()[1]
    link.own = "{}:{}".format(*cfg.sip_address)
    esl = await loop.create_server(
        lambda: EslConnection(core), cfg.host, cfg.port, reuse_address=True, backlog=128
    )
    cfg.port = esl.sockets[0].getsockname()[1]
    return core, [esl]


class SimServer:
    """One simulated FreeSWITCH in its own process.

    ``SimServer(cfg)`` or ``SimServer(port=0, answer_delay=0.1, ...)``; ``start()``
    returns once both listeners accept connections; ``stop()`` ends the process.
    Usable as a context manager.
    """

    def __init__(self, cfg: SimConfig | None = None, **kwargs: Any) -> None:
        if cfg is None:
            cfg = SimConfig(**kwargs)
        elif kwargs:
            cfg = dataclasses.replace(cfg, **kwargs)
        self.cfg = cfg
        self.proc: multiprocessing.process.BaseProcess | None = None
        self._conn: Any = None
        self.address: tuple[str, int] = cfg.address
        self.sip_address: tuple[str, int] = cfg.sip_address
        self.pid: int | None = None

    def start(self, timeout: float = 20.0) -> SimServer:
        """Start the process; return when it listens (RuntimeError if it cannot)."""
        if self.proc is not None:
            return self
        ctx = multiprocessing.get_context("spawn")
        parent, child = ctx.Pipe()
        self.proc = ctx.Process(
            target=_serve,
            args=(self.cfg, child),
            daemon=True,
            name=f"fastswitch-sim-{self.cfg.port}",
        )
        start_process(self.proc)
        child.close()
        self._conn = parent
        if not parent.poll(timeout):
            self.stop()
            raise RuntimeError(
                f"simulator on {self.cfg.host}:{self.cfg.port} did not start in {timeout}s"
            )
        try:
            msg = parent.recv()
        except EOFError:
            self.stop()
            raise RuntimeError(
                f"simulator on {self.cfg.host}:{self.cfg.port} died at start-up"
            ) from None
        if msg[0] != "ok":
            self.stop()
            raise RuntimeError(f"simulator on {self.cfg.host}:{self.cfg.port} failed: {msg[1]}")
        self.address = tuple(msg[1])  # type: ignore[assignment]
        self.sip_address = tuple(msg[2])  # type: ignore[assignment]
        self.pid = msg[3]
        self.cfg.port, self.cfg.sip_port = self.address[1], self.sip_address[1]
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the process (politely, then by force)."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if self._conn is not None:
            with contextlib.suppress(OSError, BrokenPipeError):
                self._conn.send("stop")
        proc.join(timeout)
        if proc.is_alive():
            proc.terminate()
            proc.join(timeout)
        if proc.is_alive():
            proc.kill()
            proc.join(timeout)
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.is_alive()

    def __enter__(self) -> SimServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<SimServer esl={self.address[0]}:{self.address[1]} sip={self.sip_address[0]}:{self.sip_address[1]} running={self.running}>"


class SimCluster:
    """Several simulated servers on consecutive ports (or consecutive 127.0.0.x hosts).

    ``SimCluster(count=3, port=8021)`` listens on 8021-8023 (SIP 5080-5082);
    ``SimCluster(count=3, spread_hosts=True)`` on 127.0.0.1-3, same ports;
    ``port=0`` picks free ports. Servers start in parallel.
    """

    def __init__(self, count: int = 2, spread_hosts: bool = False, **kwargs: Any) -> None:
        base = SimConfig(**kwargs)
        self.servers: list[SimServer] = []
        host_parts = base.host.split(".")
        for i in range(count):
            changes: dict[str, Any] = {}
            if spread_hosts:
                h = ".".join([*host_parts[:3], str(int(host_parts[3]) + i)])
                changes.update(host=h, sip_host=h)
            elif base.port:
                changes.update(
                    port=base.port + i, sip_port=(base.sip_port or 0) + i if base.sip_port else 0
                )
            else:
                changes.update(sip_port=0)
            if base.seed is not None:
                changes["seed"] = base.seed + i
            self.servers.append(SimServer(dataclasses.replace(base, **changes)))

    def start(self, timeout: float = 30.0) -> SimCluster:
        try:
            for s in self.servers:
                s.start(timeout)
        except Exception:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        for s in self.servers:
            s.stop()

    @property
    def addresses(self) -> list[tuple[str, int]]:
        return [s.address for s in self.servers]

    @property
    def sip_addresses(self) -> list[tuple[str, int]]:
        return [s.sip_address for s in self.servers]

    def __len__(self) -> int:
        return len(self.servers)

    def __getitem__(self, i: int) -> SimServer:
        return self.servers[i]

    def __enter__(self) -> SimCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
