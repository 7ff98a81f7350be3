"""Simulator throughput: looped-back calls/s and events/s of one simulated FreeSWITCH.

A minimal raw-socket client (it only splits frames and counts event names) subscribes
to the minimal call-tracking set of capture q (CHANNEL_CREATE, CHANNEL_ANSWER,
CHANNEL_PARK, CHANNEL_HANGUP_COMPLETE, BACKGROUND_JOB: 9 events per call, real sizes),
sends ``bgapi originate`` in batches of 500 to the server's own SIP address (``doggy``:
answer + park on the inbound leg), waits for both legs to park, hangs them up with
``hupall`` and waits for both HANGUP_COMPLETEs. Reported in ``extra_info``:

* ``calls_per_s`` / ``events_per_s`` / ``mb_per_s``: wall clock, client on the same box;
* ``calls_per_cpu_s``: calls per CPU-second of the simulator process (psutil), i.e. what
  one core sustains, the figure that does not depend on what else runs on the machine
  (target: well above 2,000, so that the simulator never limits an engine benchmark).

Each figure is the median round (3 rounds; 2,000 calls each with ``--quick``).

``test_render_events_per_s`` times event rendering alone (in process, no sockets).

    python -m pytest benchmarks/test_bench_sim.py --quick --benchmark-columns=median,rounds
"""

from __future__ import annotations

import asyncio
import os
import socket
import statistics
import time
import uuid
from collections.abc import Iterator

import psutil
import pytest

from fastswitch.sim import SimServer
from fastswitch.sim.config import SimConfig
from fastswitch.sim.core import Core
from fastswitch.sim.siplink import SipLink

EVENTS = os.environ.get(
    "SIMB_EVENTS",
    "CHANNEL_CREATE CHANNEL_ANSWER CHANNEL_PARK CHANNEL_HANGUP_COMPLETE BACKGROUND_JOB",
)
BATCH = 500


class Counter:
    """Frame splitter that counts events by name (the cheapest honest client)."""

    def __init__(self) -> None:
        self.buf = b""
        self.frames = 0
        self.bytes = 0
        self.names: dict[bytes, int] = {}

    def feed(self, data: bytes) -> None:
        self.bytes += len(data)
        buf = self.buf + data
        pos = 0
        n = len(buf)
        while True:
            end = buf.find(b"\n\n", pos)
            if end < 0:
                break
            head = buf[pos:end]
            clen = 0
            i = head.find(b"Content-Length: ")
            if i >= 0:
                j = head.find(b"\n", i)
                clen = int(head[i + 16 : j if j >= 0 else len(head)])
            if end + 2 + clen > n:
                break
            body_start = end + 2
            if head.find(b"text/event-plain") >= 0:
                k = buf.find(b"Event-Name: ", body_start, body_start + 200)
                if k >= 0:
                    e = buf.find(b"\n", k)
                    name = buf[k + 12 : e]
                    self.names[name] = self.names.get(name, 0) + 1
            self.frames += 1
            pos = body_start + clen
        self.buf = buf[pos:]

    def count(self, name: bytes) -> int:
        return self.names.get(name, 0)


@pytest.fixture(scope="module")
def server() -> Iterator[SimServer]:
    with SimServer(port=0, heartbeat_interval=0.0, sps=10**7, max_sessions=10**7, seed=1) as s:
        yield s


def run_calls(server: SimServer, calls: int) -> dict[str, float]:
    proc = psutil.Process(server.pid)
    sock = socket.create_connection(server.address, timeout=30)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    c = Counter()

    def pump(pred) -> None:  # type: ignore[no-untyped-def]
        end = time.monotonic() + 120
        while not pred():
            if time.monotonic() > end:
                raise TimeoutError(f"stuck: {c.names}")
            data = sock.recv(1 << 20)
            if not data:
                raise ConnectionError("simulator closed the connection")
            c.feed(data)

    sip = "{}:{}".format(*server.sip_address)
    try:
        sock.sendall(b"auth ClueCon\n\nevent plain " + EVENTS.encode() + b"\n\n")
        pump(lambda: c.frames >= 3)
        base_frames, base_bytes = c.frames, c.bytes
        cpu0 = sum(proc.cpu_times()[:2])
        t0 = time.perf_counter()
        done = 0
        while done < calls:
            n = min(BATCH, calls - done)
            cmds = []
            for _ in range(n):
                u = str(uuid.uuid4())
                cmds.append(
                    f"bgapi originate {{origination_uuid={u},fastswitch_client=app1,"
                    f"sip_h_X-fastswitch_client=app1,sip_h_X-originating_session_uuid={u},"
                    f"originate_timeout=60}}sofia/external/doggy@{sip} &park()\n\n".encode()
                )
            sock.sendall(b"".join(cmds))
            target = 2 * (done + n)
            pump(lambda t=target: c.count(b"CHANNEL_PARK") >= t)
            sock.sendall(b"api hupall NORMAL_CLEARING\n\n")
            pump(lambda t=target: c.count(b"CHANNEL_HANGUP_COMPLETE") >= t)
            done += n
        wall = time.perf_counter() - t0
        cpu = sum(proc.cpu_times()[:2]) - cpu0
    finally:
        sock.close()
    events = sum(c.names.values())
    return {
        "calls": calls,
        "calls_per_s": calls / wall,
        "events_per_s": events / wall,
        "events_per_call": events / calls,
        "mb_per_s": (c.bytes - base_bytes) / wall / 1e6,
        "avg_event_bytes": (c.bytes - base_bytes) / max(c.frames - base_frames, 1),
        "sim_cpu_s": cpu,
        "calls_per_cpu_s": calls / cpu if cpu > 0 else 0.0,
    }


def test_looped_back_calls_per_s(benchmark, server: SimServer, request) -> None:  # type: ignore[no-untyped-def]
    quick = request.config.getoption("--quick", default=False)
    calls = 2000 if quick else 10000
    results: list[dict[str, float]] = []
    benchmark.pedantic(lambda: results.append(run_calls(server, calls)), rounds=3, iterations=1)
    median = {k: statistics.median(r[k] for r in results) for k in results[0]}
    benchmark.extra_info.update({k: round(v, 1) for k, v in median.items()})
    assert median["events_per_call"] == pytest.approx(9, abs=0.01)
    assert 2000 < median["avg_event_bytes"] < 9000


def test_render_events_per_s(benchmark) -> None:  # type: ignore[no-untyped-def]
    """Event rendering alone: one call's minimal-set events rendered for one listener."""

    class Sink:
        fmt = "plain"

        def __init__(self) -> None:
            self.n = 0

        def wants(self, name: str) -> bool:
            return name in EVENTS.split()

        filtering = False

        def passes(self, headers: dict[str, str]) -> bool:
            return True

        def deliver(self, frame: bytes) -> None:
            self.n += 1

    loop = asyncio.new_event_loop()
    try:
        core = Core(SimConfig(port=0, heartbeat_interval=0, sps=10**9, max_sessions=10**9), loop)
        SipLink(core).own = "127.0.0.1:1"
        sink = Sink()
        core.add_listener(sink)
        legs = []

        def setup_call() -> None:
            from fastswitch.sim.originate import originate

            u = str(uuid.uuid4())
            originate(
                core,
                f"{{origination_uuid={u}}}sofia/external/doggy@127.0.0.1:1 &park()",
                lambda r: None,
            )
            loop.run_until_complete(asyncio.sleep(0.01))
            legs.extend(core.legs.values())

        setup_call()
        leg = legs[0]
        n = 20000  # ~0.1-0.3 s a round: shorter rounds are mostly timer noise

        def render() -> None:
            for _ in range(n):
                leg.fire("CHANNEL_PARK")

        start = sink.n
        benchmark.pedantic(render, rounds=3, iterations=1)
        per_round = (sink.n - start) / 3
        benchmark.extra_info["events_per_round"] = per_round
        benchmark.extra_info["events_per_s"] = round(per_round / benchmark.stats.stats.median)
        assert per_round == n
    finally:
        loop.close()
