"""Client benchmark: events/s one ESL connection dispatches to app callbacks, end to end
from a socket, plain vs json, against the frame-boundary floor on the same socket.

A flood server (its own process, blocking sockets) speaks just enough ESL (auth, event,
filter, api) and, on ``api bench_flood <format>``, writes a stream of real FreeSWITCH
events: capture e (20 loop-back calls, 840 events of 2-9 KB: CHANNEL_*, CALL_UPDATE,
BACKGROUND_JOB) in its plain or json twin, repeated with every uuid replaced (same length,
so Content-Length holds) up to >= 100,000 events (10,000 with ``--quick``).

Three readers of the same stream:

- ``floor``: an asyncio Protocol finding frame boundaries only (blank line, then skip
  Content-Length), no headers decoded: what reading the socket costs;
- ``plain`` / ``json``: :class:`fastswitch.client.Client` with an app subscribed to every
  event name of the capture; the calls are registered with the tracker beforehand (as
  ``originate`` would), so every channel event goes through the parser, the call tracker
  and into an app callback.

Figures: events/s (wall, median of rounds) and events per client CPU-second (this
process's CPU time, less sensitive to the shared machine), plus the ratio to the floor.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import re
import socket
import tempfile
import threading
import time
import uuid as _uuid
from pathlib import Path
from typing import Any

import pytest
from _support import REPO, is_quick, median, save_results

pytestmark = pytest.mark.timeout(600)

CAPTURE = "e_burst20_hupall_{fmt}.bin"
UUID_RE = re.compile(rb"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
APP_ID = "bench"

_DATA: dict[str, Any] = {}


def _captures() -> Path | None:
    for cand in (os.environ.get("FASTSWITCH_CAPTURES"), REPO.parent / "shared" / "esl-captures"):
        if cand and (Path(cand) / "README.md").exists():
            return Path(cand)
    return None


# -- the stream -----------------------------------------------------------------------------
def build_stream(fmt: str, target_events: int, seed: int = 8) -> tuple[bytes, int, list[str]]:
    """``(bytes, number of events, A-leg uuids)``: capture e's events in ``fmt`` repeated
    with fresh uuids until ``target_events`` events."""
    from fastswitch import _pyesl

    cap = _captures()
    if cap is None:
        pytest.skip("ESL captures not found (set FASTSWITCH_CAPTURES)")
    data = (cap / CAPTURE.format(fmt=fmt)).read_bytes()
    frames = [f for f in _pyesl.Parser().feed(data) if f.is_event]
    a_legs = [
        f.event.unique_id.encode()
        for f in frames
        if f.event.name == "CHANNEL_CREATE" and f.event.call_direction == "outbound"
    ]
    one = b"".join(f.raw for f in frames)
    reps = -(-target_events // len(frames))
    rng = _uuid.uuid4().int ^ seed
    parts: list[bytes] = []
    calls: list[str] = []
    for r in range(reps):
        mapping: dict[bytes, bytes] = {}

        def sub(m: re.Match[bytes], mapping: dict[bytes, bytes] = mapping, r: int = r) -> bytes:
            u = m.group(0)
            new = mapping.get(u)
            if new is None:
                new = str(_uuid.UUID(int=(rng + r * 1_000_003 + len(mapping)) % 2**128)).encode()
                mapping[u] = new
            return new

        parts.append(UUID_RE.sub(sub, one))
        calls += [mapping[a].decode() for a in a_legs]
    return b"".join(parts), len(frames) * reps, calls


# -- the flood server (child process) -------------------------------------------------------
def _reply(text: str) -> bytes:
    return f"Content-Type: command/reply\nReply-Text: {text}\n\n".encode()


def _api(text: str) -> bytes:
    b = text.encode()
    return b"Content-Type: api/response\nContent-Length: %d\n\n" % len(b) + b


def _serve_conn(sock: socket.socket, streams: dict[str, bytes]) -> None:
    with sock:
        sock.sendall(b"Content-Type: auth/request\n\n")
        buf = b""
        while True:
            try:
                data = sock.recv(65536)
            except OSError:
                return
            if not data:
                return
            buf += data
            while b"\n\n" in buf:
                cmd, _, buf = buf.partition(b"\n\n")
                text = cmd.decode().strip()
                if text.startswith("api bench_flood"):
                    fmt = text.split()[-1]
                    sock.sendall(_api("+OK flooding\n"))
                    sock.sendall(streams[fmt])
                elif text.startswith("api "):
                    sock.sendall(_api("+OK\n"))
                elif text.startswith("auth"):
                    sock.sendall(_reply("+OK accepted"))
                elif text.startswith("event"):
                    sock.sendall(_reply(f"+OK event listener enabled {text.split()[1]}"))
                elif text.startswith("exit"):
                    sock.sendall(_reply("+OK bye"))
                    return
                else:
                    sock.sendall(_reply("+OK"))


def _flood_main(paths: dict[str, str], conn: Any) -> None:  # pragma: no cover - child
    streams = {k: Path(p).read_bytes() for k, p in paths.items()}
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    conn.send(srv.getsockname()[1])
    srv.settimeout(0.2)
    while not conn.poll():
        try:
            s, _ = srv.accept()
        except TimeoutError:
            continue
        s.settimeout(None)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
        threading.Thread(target=_serve_conn, args=(s, streams), daemon=True).start()
    srv.close()


class FloodServer:
    """The flood server process; ``port`` once started; a context manager."""

    def __init__(self, streams: dict[str, bytes]) -> None:
        self._dir = tempfile.TemporaryDirectory(prefix="fastswitch-flood-")
        self.paths = {}
        for k, b in streams.items():
            p = Path(self._dir.name) / f"{k}.bin"
            p.write_bytes(b)
            self.paths[k] = str(p)
        self.port = 0
        self.proc: Any = None

    def __enter__(self) -> FloodServer:
        ctx = multiprocessing.get_context("spawn")
        parent, child = ctx.Pipe()
        self._conn = parent
        self.proc = ctx.Process(target=_flood_main, args=(self.paths, child), daemon=True)
        self.proc.start()
        if not parent.poll(20):
            self.__exit__()
            raise RuntimeError("flood server did not start")
        self.port = parent.recv()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.proc is not None:
            with contextlib.suppress(OSError):
                self._conn.send("stop")
            self.proc.join(3)
            if self.proc.is_alive():
                self.proc.kill()
                self.proc.join(3)
            self.proc = None
        self._dir.cleanup()


# -- readers ----------------------------------------------------------------------------------
class FloorProtocol(asyncio.Protocol):
    """Frame boundaries only: find the blank line, read Content-Length, skip the body."""

    def __init__(self, expected: int, done: asyncio.Future) -> None:
        self.buf = b""
        self.events = 0
        self.expected = expected
        self.done = done

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        buf = self.buf + data if self.buf else data
        pos = 0
        n = len(buf)
        events = 0
        while True:
            end = buf.find(b"\n\n", pos)
            if end < 0:
                break
            i = buf.find(b"Content-Length: ", pos, end)
            body = int(buf[i + 16 : buf.find(b"\n", i, end + 1)]) if i >= 0 else 0
            stop = end + 2 + body
            if stop > n:
                break
            if buf.find(b"text/event-", pos, end) >= 0:
                events += 1
            pos = stop
        self.buf = buf[pos:]
        self.events += events
        if self.events >= self.expected and not self.done.done():
            self.done.set_result(time.perf_counter())


async def read_floor(port: int, fmt: str, expected: int) -> tuple[float, float]:
    """(wall seconds, CPU seconds) to read the flood's frames."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future = loop.create_future()
    transport, _ = await loop.create_connection(
        lambda: FloorProtocol(expected, done), "127.0.0.1", port
    )
    await asyncio.sleep(0.05)
    c0, t0 = time.process_time(), time.perf_counter()
    transport.write(f"auth ClueCon\n\napi bench_flood {fmt}\n\n".encode())
    t1 = await asyncio.wait_for(done, 120)
    c1 = time.process_time()
    transport.close()
    return t1 - t0, c1 - c0


def make_app(names: list[str], counter: list[int]) -> type:
    """An app with a callback for each event name; each callback bumps ``counter[0]``."""
    from fastswitch.apps import event_callback

    ns: dict[str, Any] = {}
    for i, name in enumerate(names):

        @event_callback(name)
        def cb(self: Any, sess: Any) -> None:
            counter[0] += 1

        ns[f"on_{i}"] = cb
    return type("BenchApp", (), ns)


async def read_client(
    port: int, fmt: str, expected: int, calls: list[str], names: list[str]
) -> tuple[float, float, int]:
    """(wall s, CPU s, app callbacks run) for a fastswitch Client to dispatch the flood."""
    from fastswitch.client import Client
    from fastswitch.models import Call

    loop = asyncio.get_running_loop()
    done: asyncio.Future = loop.create_future()
    seen = [0]
    callbacks = [0]

    def hook(ev: Any, now: float) -> None:
        seen[0] += 1
        if seen[0] >= expected and not done.done():
            done.set_result(time.perf_counter())

    client = Client("127.0.0.1", port, event_format=fmt, reconnect=False)
    await client.connect()
    try:
        client.load_app(make_app(names, callbacks), app_id=APP_ID)
        await asyncio.sleep(0.05)
        listener = client.listener
        for u in calls:
            listener.expect(Call(u, app_id=APP_ID), None)
        client.event_hooks.append(hook)
        c0, t0 = time.process_time(), time.perf_counter()
        await client.api(f"bench_flood {fmt}")
        t1 = await asyncio.wait_for(done, 300)
        c1 = time.process_time()
    finally:
        await client.close()
    return t1 - t0, c1 - c0, callbacks[0]


def _loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop

        return uvloop.new_event_loop()
    except ImportError:  # pragma: no cover
        return asyncio.new_event_loop()


def test_client_dispatch_rate(request: pytest.FixtureRequest) -> None:
    """events/s through Client -> CallTracker -> app callbacks, plain vs json vs floor."""
    from fastswitch import _pyesl

    quick = is_quick(request.config)
    target = 10_000 if quick else 100_000
    rounds = 3 if quick else 5
    streams, counts, calls = {}, {}, {}
    for fmt in ("plain", "json"):
        streams[fmt], counts[fmt], calls[fmt] = build_stream(fmt, target)
    cap = _captures()
    assert cap is not None
    names = sorted(
        {
            f.event.name
            for f in _pyesl.Parser().feed((cap / CAPTURE.format(fmt="plain")).read_bytes())
            if f.is_event and f.event.name != "BACKGROUND_JOB"
        }
    )
    res: dict[str, Any] = {"events": counts, "calls": len(calls["plain"]), "rounds": rounds}
    loop = _loop()
    try:
        with FloodServer(streams) as srv:
            raw: dict[str, list[tuple[float, float, int]]] = {
                "floor-plain": [],
                "floor-json": [],
                "plain": [],
                "json": [],
            }
            for _ in range(rounds):  # interleaved: drifts in the machine's load hit all alike
                for fmt in ("plain", "json"):
                    w, c = loop.run_until_complete(read_floor(srv.port, fmt, counts[fmt]))
                    raw[f"floor-{fmt}"].append((w, c, 0))
                    w, c, cbs = loop.run_until_complete(
                        read_client(srv.port, fmt, counts[fmt], calls[fmt], names)
                    )
                    raw[fmt].append((w, c, cbs))
    finally:
        loop.close()
    out: dict[str, Any] = {}
    for key, runs in raw.items():
        n = counts[key.split("-")[-1]]
        out[key] = {
            "events_per_s": median(n / w for w, _c, _k in runs),
            "events_per_cpu_s": median(n / c for _w, c, _k in runs if c > 0),
            "us_per_event_cpu": median(c / n * 1e6 for _w, c, _k in runs),
            "callbacks_per_round": runs[0][2],
        }
    for fmt in ("plain", "json"):
        floor = out[f"floor-{fmt}"]
        out[fmt]["x_floor_wall"] = out[fmt]["events_per_s"] / floor["events_per_s"]
        out[fmt]["x_floor_cpu"] = out[fmt]["events_per_cpu_s"] / floor["events_per_cpu_s"]
    out["json"]["x_plain"] = out["json"]["events_per_s"] / out["plain"]["events_per_s"]
    res["readers"] = out
    _DATA.update(res)
    save_results("client", _DATA, quick)
    print()
    for key, r in out.items():
        print(
            f"  {key:12s} {r['events_per_s']:>10,.0f} events/s  "
            f"{r['events_per_cpu_s']:>10,.0f} events/CPU-s  callbacks/round {r['callbacks_per_round']}"
        )
    # every channel event of a registered call reaches the app (DESTROY after the call
    # completed is dropped by design; BACKGROUND_JOB is not an app event here)
    assert out["plain"]["callbacks_per_round"] > 0.8 * counts["plain"]
    assert out["json"]["callbacks_per_round"] > 0.8 * counts["json"]
