"""Issue 9: faults, bad input and overload never lose a CDR or hang a run.

Every run here ends with the same check (:func:`check_run`): the CDR files, read back
with :func:`fastswitch.measure.load_run`, hold exactly one caller row per call offered
minus the calls the Originator reported as unrecorded (rows that died with a crashed
worker), and the summary reports that same count. Slaves are simulated FreeSWITCH
servers (fastswitch.sim) on the loopback; faults are injected over ESL
(``api sim fault ...``) or by killing processes.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from support import free_port, wait_for

from fastswitch import control as C
from fastswitch import get_originator
from fastswitch.apps import event_callback
from fastswitch.apps.park import Park
from fastswitch.client import Client
from fastswitch.errors import ConfigurationError, ConnectError
from fastswitch.measure import cdr_path, load_run, read_stream
from fastswitch.sim import SimConfig, SimServer

pytestmark = pytest.mark.timeout(60)

FAST = dict(heartbeat_interval=0.0, sps=20000, max_sessions=20000)


def api(address: tuple[str, int], cmd: str) -> str:
    """Run one ``api`` command on a slave over a connection of its own (which the
    simulator's ``fault ... others`` spares)."""

    async def run() -> str:
        client = Client(*address, reconnect=False)
        await client.connect()
        try:
            return await client.api(cmd)
        finally:
            await client.close()

    return asyncio.run(run())


def dest(server: SimServer, user: str = "doggy") -> str:
    """An originate destination that loops back to ``server`` itself."""
    host, port = server.sip_address
    return f"{user}@{host}:{port}"


def slave(server: SimServer) -> str:
    return f"{server.address[0]}:{server.address[1]}"


def our_blocks(owner: int | None = None) -> set[str]:
    """fastswitch control blocks in /dev/shm created by process ``owner`` (default: us)."""
    import struct

    owner = os.getpid() if owner is None else owner
    out = set()
    for n in os.listdir("/dev/shm"):
        try:
            with open("/dev/shm/" + n, "rb") as f:
                head = f.read(8 * (C.H_OWNER_PID + 1))
        except OSError:
            continue
        if len(head) == 8 * (C.H_OWNER_PID + 1):
            vals = struct.unpack(f"{C.H_OWNER_PID + 1}d", head)
            if vals[0] == C.MAGIC and vals[C.H_OWNER_PID] == owner:
                out.add(n)
    return out


def check_run(run_dir: Path) -> dict:
    """The invariant of issue 9 on a finished run; returns the run's summary.

    rows == calls offered - calls reported unrecorded, the summary's ``unrecorded`` is the
    sum of the parent's crash reports, every caller row is a distinct call, and every row
    of a call the workers stopped following says why (``lost``)."""
    run = load_run(run_dir)
    s = run.summary()
    totals = run.settings["totals"]
    incidents = run.settings.get("incidents", [])
    reported = sum(i.get("unrecorded", 0) for i in incidents if i["kind"] == "worker_died")
    assert totals["unrecorded"] == reported
    assert s["unrecorded"] == reported
    assert s["offered_total"] == totals["originated"]
    assert s["offered"] == totals["originated"] - totals["unrecorded"], (s["offered"], totals)
    calls = run.cdr_table.filter(
        run.cdr_table.column("row_kind").to_numpy(zero_copy_only=False) != "callee"
    )
    uuids = calls.column("call_uuid").to_pylist()
    assert len(set(uuids)) == len(uuids)
    for reason in s["lost_by_reason"]:
        assert reason.startswith("lost: ")
    return s


@pytest.fixture(scope="module")
def slaves():
    """Two simulated slaves shared by the tests (each restores what it changes)."""
    servers = []
    try:
        for i in range(2):
            servers.append(SimServer(SimConfig(port=0, sip_port=0, seed=40 + i, **FAST)).start())
        yield servers
    finally:
        for s in servers:
            s.stop()


@pytest.fixture
def victims():
    """Simulated slaves on fixed ports, so a test can kill one and start it again."""
    made: list[SimServer] = []

    def build() -> SimServer:
        cfg = SimConfig(port=free_port(), sip_port=free_port(), seed=len(made), **FAST)
        s = SimServer(cfg).start()
        made.append(s)
        return s

    yield build
    for s in made:
        s.stop()


def kill_sim(server: SimServer) -> SimServer:
    """SIGKILL a simulator process (the host died); return a not-yet-started twin on the
    same ports."""
    os.kill(server.pid, signal.SIGKILL)
    server.stop(timeout=2)
    return SimServer(server.cfg)


@pytest.fixture
def make(tmp_path):
    """Build Originators that are always shut down; afterwards none of their worker
    processes (every pid seen, restarts included) and no control block of theirs is left."""
    made = []

    def build(contacts, **kw):
        kw.setdefault("run_dir", tmp_path / f"run{len(made)}")
        o = get_originator(contacts, **kw)
        made.append(o)
        return o

    yield build
    for o in made:
        track_pids(o)
        o.shutdown()
        assert not o.is_alive()
        orphans = [pid for pid in o._test_pids if running(pid)]
        assert not orphans, orphans
    assert not our_blocks()


def running(pid: int) -> bool:
    """True while process ``pid`` exists and is not a zombie."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def track_pids(o) -> None:
    """Remember the current worker pids of ``o`` (checked for orphans at the end)."""
    pids = getattr(o, "_test_pids", set())
    for h in o.pool.clients:
        if h.process is not None and h.process.pid is not None:
            pids.add(h.process.pid)
    o._test_pids = pids


def start_park(o, servers) -> None:
    for h, s in zip(o.pool.clients, servers, strict=True):
        h.set_orig_cmd(dest(s))
    o.load_app(Park)
    o.start()
    track_pids(o)


def finish(o) -> dict:
    """Stop, hang up, shut down, and check the run's invariant."""
    o.hupall()
    assert wait_for(lambda: o.count_calls() == 0, 15)
    track_pids(o)
    run_dir = o.run_dir
    o.shutdown()
    return check_run(run_dir)


def incidents(o) -> list[dict]:
    return load_run(o.run_dir).settings.get("incidents", [])


# --------------------------------------------------------------------------------------------
# Slave lost mid-run
# --------------------------------------------------------------------------------------------


def test_slave_killed_calls_lost_share_moves_and_it_resumes(slaves, victims, make, caplog):
    """A slave's process is killed mid-run: its calls are recorded as lost with the reason,
    the other slave takes the whole rate, the worker reconnects with backoff and offers
    again when the slave returns; the parent logs down/up and records them."""
    caplog.set_level(logging.INFO, logger="fastswitch")
    stable, victim = slaves[0], victims()
    o = make(
        [stable.address, victim.address],
        rate=80,
        limit=400,
        duration=3,
        client_options={"backoff": (0.05, 0.5)},
    )
    start_park(o, [stable, victim])
    assert wait_for(lambda: o.slave_stats()[1]["originated"] >= 40, 10)
    twin = kill_sim(victim)
    assert wait_for(lambda: any(f"slave {slave(victim)} is down" in m for m in caplog.messages), 5)
    # the survivor carries the whole rate and limit while the slave is away
    assert wait_for(lambda: o.slave_stats()[0]["rate"] == 80 and o.slave_stats()[1]["rate"] == 0, 5)
    assert wait_for(lambda: o.slave_stats()[0]["limit"] == 400, 5)
    stuck = o.slave_stats()[1]["originated"]
    survivor = o.slave_stats()[0]["originated"]
    assert wait_for(lambda: o.slave_stats()[0]["originated"] >= survivor + 40, 10)
    assert o.slave_stats()[1]["originated"] == stuck  # nothing offered to a dead slave
    assert any("reconnect attempt" in m and slave(victim) in m for m in caplog.messages)
    twin.start()
    try:
        assert wait_for(
            lambda: any(f"slave {slave(victim)} is up again" in m for m in caplog.messages), 10
        )
        assert wait_for(lambda: o.slave_stats()[1]["originated"] >= stuck + 20, 10)
        assert wait_for(lambda: o.slave_stats()[1]["rate"] == 40, 5)
        assert o.pool.clients[1].process.pid in o._test_pids  # the same worker went on
        s = finish(o)
    finally:
        twin.stop()
    lost_slaves = {name for name, g in s["per_slave"].items() if g["lost"]}
    assert lost_slaves == {slave(victim)}
    assert s["lost"] > 0 and all("lost: connection to" in r for r in s["lost_by_reason"])
    assert s["unrecorded"] == 0
    assert s["incidents"]["slave_down"] >= 1 and s["incidents"]["slave_up"] >= 1
    assert load_run(o.run_dir).settings["totals"]["lost"] == s["lost"]


# --------------------------------------------------------------------------------------------
# Worker crash
# --------------------------------------------------------------------------------------------


def test_worker_sigkill_keeps_flushed_rows_and_counts_the_rest(slaves, make, caplog, tmp_path):
    """SIGKILL a worker: the parent notices within a second, the other slave goes on, the
    worker restarts; every batch flushed before the crash reads back, and the calls whose
    rows died with it are counted (parent log, settings.json, summary)."""
    caplog.set_level(logging.INFO, logger="fastswitch")
    o = make([s.address for s in slaves], rate=100, limit=1000, duration=1.0)
    start_park(o, slaves)
    assert wait_for(lambda: o.slave_stats()[0]["completed"] >= 100, 15)
    victim = o.pool.clients[0]
    pid = victim.process.pid
    t_kill = time.time()
    os.kill(pid, signal.SIGKILL)
    assert wait_for(lambda: any("died" in r.getMessage() for r in caplog.records), 5)
    died = next(r for r in caplog.records if "died" in r.getMessage())
    assert died.created - t_kill < 1.0  # seen at the next monitor tick (0.1 s)
    assert slave(slaves[0]) in died.getMessage()
    # the other worker kept offering meanwhile, and the dead one is restarted
    other = o.slave_stats()[1]["originated"]
    assert wait_for(lambda: o.slave_stats()[1]["originated"] > other + 20, 10)
    assert wait_for(lambda: any("restarted" in m for m in caplog.messages), 20)
    track_pids(o)
    assert victim.process.pid != pid
    assert wait_for(lambda: o.slave_stats()[0]["originated"] >= 20, 10)
    # the dead incarnation's file: every flushed batch is intact
    crash = next(i for i in incidents(o) if i["kind"] == "worker_died")
    rows = read_stream(cdr_path(o.run_dir, 0))
    assert rows.num_rows > 0
    assert crash["recorded"] == sum(k != "callee" for k in rows.column("row_kind").to_pylist())
    assert crash["unrecorded"] == crash["offered"] - crash["recorded"] > 0
    assert crash["slave"] == slave(slaves[0]) and crash["exitcode"] == -9
    assert o.stats()["unrecorded"] == crash["unrecorded"]
    s = finish(o)
    assert s["unrecorded"] == crash["unrecorded"]
    assert s["incidents"]["worker_died"] == 1 and s["incidents"]["worker_restarted"] == 1
    run = load_run(o.run_dir)
    text = run.format_summary()
    assert f"unrecorded (rows lost with a crashed worker): {crash['unrecorded']}" in text
    fig = run.plot()
    labels = {ln.get_label() for ln in fig.axes[2].lines}
    assert {"worker died", "worker restarted"} <= labels  # on the run's timeline
    page = run.report_html(tmp_path / "report.html").read_text()
    assert "<h2>Incidents</h2>" in page and f"<td>{crash['unrecorded']}</td>" in page


# --------------------------------------------------------------------------------------------
# Bad frames from FreeSWITCH
# --------------------------------------------------------------------------------------------


FRAME_FAULTS = [
    ("malformed", "sent a malformed ESL stream"),
    ("oversized", "sent a malformed ESL stream"),
    ("rude", "rejected the connection"),
    ("disconnect", "The system is being shut down"),
]


def test_bad_frames_mid_run_reset_only_that_connection(slaves, make, caplog):
    """A malformed frame, an oversized one, a rude rejection and a disconnect notice, one
    after the other on slave 0's connection mid-run: each is a clear error naming the
    slave, the connection comes back and offers again, slave 1 and the worker processes
    are untouched."""
    caplog.set_level(logging.INFO, logger="fastswitch")
    o = make([s.address for s in slaves], rate=60, limit=400, duration=1.0)
    start_park(o, slaves)
    pids = [h.process.pid for h in o.pool.clients]
    cb = o._cb
    for n, (fault, words) in enumerate(FRAME_FAULTS, 1):
        base = o.slave_stats()[0]["originated"]
        assert wait_for(lambda b=base: o.slave_stats()[0]["originated"] >= b + 10, 10)
        caplog.clear()
        reply = api(slaves[0].address, f"sim fault {fault} others")
        assert "injected on 1 connection" in reply
        assert wait_for(lambda n=n: cb.get(0, C.W_DISCONNECTS) == n, 10), fault
        assert wait_for(lambda: cb.get(0, C.W_CONNECTED) == 1, 10), fault
        errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
        assert any(words in m and slave(slaves[0]) in m for m in errors), (fault, errors)
        again = o.slave_stats()[0]["originated"]
        assert wait_for(lambda a=again: o.slave_stats()[0]["originated"] >= a + 10, 10), fault
    assert cb.get(1, C.W_DISCONNECTS) == 0
    assert [h.process.pid for h in o.pool.clients] == pids
    s = finish(o)
    assert s["incidents"]["slave_down"] == len(FRAME_FAULTS)
    assert {n for n, g in s["per_slave"].items() if g["lost"]} <= {slave(slaves[0])}
    assert s["unrecorded"] == 0


# --------------------------------------------------------------------------------------------
# Slow consumers and event floods
# --------------------------------------------------------------------------------------------


def test_stalled_event_stream_sheds_before_the_queue_overflows(slaves, make, caplog):
    """FreeSWITCH stops delivering events to us (a stalled host, a slow network): the
    worker stops offering on that slave well before the slave's event queue (sized so that
    the calls due during the stall would overflow it) fills, reports it, the other slave
    takes the rate, and offering resumes once events flow again."""
    caplog.set_level(logging.INFO, logger="fastswitch")
    s0 = slaves[0]
    # 100 cps for 4 s at ~7 events per parked call would queue ~2800 events: over 2000
    api(s0.address, "sim event_queue_limit 2000")
    api(s0.address, "sim max_missed 50")
    try:
        o = make([s.address for s in slaves], rate=200, limit=2000, duration=20)
        start_park(o, slaves)
        assert wait_for(lambda: o.slave_stats()[0]["originated"] >= 50, 10)
        api(s0.address, "sim fault stall 4 others")
        assert wait_for(lambda: o._cb.get(0, C.W_SHED) == 1, 5)
        assert wait_for(lambda: o.slave_stats()[1]["rate"] == 200, 5)
        assert any("shedding load on" in m and slave(s0) in m for m in caplog.messages)
        assert any("sheds load" in m and slave(s0) in m for m in caplog.messages)
        shed_at = o.slave_stats()[0]["originated"]
        # events flow again after the stall: the worker catches up and offers again
        assert wait_for(lambda: o._cb.get(0, C.W_SHED) == 0, 15)
        assert wait_for(lambda: o.slave_stats()[0]["originated"] >= shed_at + 20, 10)
        # the queue never overflowed: the listener was never killed, no connection lost
        assert o._cb.get(0, C.W_KILLED) == 0 and o._cb.get(0, C.W_DISCONNECTS) == 0
        # memory stayed bounded: the tracked calls are the live ones, nothing else
        st = o.pool.clients[0].stats()
        assert st["tracked_calls"] <= st["active"] + st["sessions"] + 1
        s = finish(o)
    finally:
        api(s0.address, "sim event_queue_limit 100000")
        api(s0.address, "sim max_missed 500")
    assert s["incidents"]["shedding"] >= 1 and s["incidents"].get("listener_killed", 0) == 0
    assert s["lost"] == 0


class SlowApp:
    """Parks calls, but spends 10 ms of the worker's loop on every parked leg (a slow
    consumer: the worker keeps up with about 50 cps, not 80)."""

    @event_callback("CHANNEL_PARK")
    def on_park(self, sess):
        time.sleep(0.01)


def test_worker_that_cannot_keep_up_sheds_and_memory_stays_bounded(slaves, make, caplog):
    """A worker whose own loop cannot keep up (app callbacks too slow for the rate) sheds
    work: it skips the originates it cannot make, the parent reports it at capacity and
    moves part of its share to the other slave; FreeSWITCH's event queue never overflows
    (no listener killed, no disconnect) and the worker's memory stays bounded."""
    caplog.set_level(logging.INFO, logger="fastswitch")
    s0 = slaves[0]
    api(s0.address, "sim event_queue_limit 20000")
    api(s0.address, "sim max_missed 50")
    try:
        o = make([s.address for s in slaves], rate=160, limit=5000, duration=30, shed_lag=1.0)
        o.pool.clients[0].set_orig_cmd(dest(s0))
        o.pool.clients[1].set_orig_cmd(dest(slaves[1]))
        o.load_app(SlowApp)
        track_pids(o)
        rss0 = psutil.Process(o.pool.clients[0].process.pid).memory_info().rss
        o.start()
        assert wait_for(
            lambda: any(
                slave(s0) in m and ("is at capacity" in m or "sheds load" in m)
                for m in caplog.messages
            ),
            20,
        )
        # its share moved: the slow worker's rate share is below the other's
        assert wait_for(lambda: o.slave_stats()[0]["rate"] < o.slave_stats()[1]["rate"], 5)
        assert o.rate == 160  # the cluster rate itself is untouched
        time.sleep(2)
        rss = psutil.Process(o.pool.clients[0].process.pid).memory_info().rss
        assert rss - rss0 < 100 * 2**20, (rss0, rss)
        assert o._cb.get(0, C.W_KILLED) == 0 and o._cb.get(0, C.W_DISCONNECTS) == 0
        s = finish(o)
    finally:
        api(s0.address, "sim event_queue_limit 100000")
        api(s0.address, "sim max_missed 500")
    assert s["incidents"].get("at_capacity", 0) + s["incidents"].get("shedding", 0) >= 1
    assert s["lost"] == 0


def test_killed_listener_is_reported_and_recovers(slaves, make, caplog):
    """With shedding off, a stalled stream overflows the slave's event queue and
    FreeSWITCH kills the listener ("killed listener because of lost events"): the worker
    and the parent say so, the report counts it, the calls are recorded as lost for that
    reason and the worker reconnects."""
    caplog.set_level(logging.INFO, logger="fastswitch")
    s0 = slaves[0]
    api(s0.address, "sim event_queue_limit 300")
    api(s0.address, "sim max_missed 20")
    try:
        o = make([s0.address], rate=100, limit=2000, duration=20, shed_after=0, shed_lag=0)
        start_park(o, [s0])
        assert wait_for(lambda: o.slave_stats()[0]["originated"] >= 20, 10)
        api(s0.address, "sim fault stall 5 others")
        assert wait_for(lambda: o._cb.get(0, C.W_KILLED) == 1, 10)
        assert wait_for(lambda: o._cb.get(0, C.W_CONNECTED) == 1, 10)
        assert any("killed our listener because of lost events" in m for m in caplog.messages)
        # the parent reports it from its monitor tick, which may come after the reconnect
        assert wait_for(
            lambda: any("killed the listener" in m and slave(s0) in m for m in caplog.messages), 5
        )
        s = finish(o)
    finally:
        api(s0.address, "sim event_queue_limit 100000")
        api(s0.address, "sim max_missed 500")
    assert s["incidents"]["listener_killed"] == 1
    assert any("killed listener because of lost events" in r for r in s["lost_by_reason"])
    assert load_run(o.run_dir).settings["totals"]["killed"] == 1


# --------------------------------------------------------------------------------------------
# Throttling by FreeSWITCH
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "limit_cmd, restore",
    [("fsctl sps 11", "fsctl sps 20000"), ("fsctl max_sessions 10", "fsctl max_sessions 20000")],
    ids=["sps", "max_sessions"],
)
def test_throttling_counted_by_cause_warned_and_rate_kept(slaves, make, caplog, limit_cmd, restore):
    """The slave's sessions-per-second or max-sessions limit refuses most calls (-ERR
    DESTINATION_OUT_OF_ORDER): the refusals are counted by cause in the counters and the
    CDR, the user gets a warning naming the slave and the limit, and the rate stays."""
    caplog.set_level(logging.INFO, logger="fastswitch")
    s0 = slaves[0]
    api(s0.address, limit_cmd)  # sps 11: 5 looped-back calls a second; 10 sessions: 5 calls
    try:
        o = make([s0.address], rate=50, limit=500, max_sessions=150, duration=0.5)
        start_park(o, [s0])
        assert o.waitforstate("STOPPED", timeout=20)
        assert o.waitwhile(timeout=20)
        refused = o.failures.get("DESTINATION_OUT_OF_ORDER", 0)
        assert refused > 50
        assert o.rate == 50 and o.slave_stats()[0]["rate"] == 50
        warned = [
            r.getMessage()
            for r in caplog.records
            if r.levelno == logging.WARNING and "DESTINATION_OUT_OF_ORDER" in r.getMessage()
        ]
        assert warned and slave(s0) in warned[0] and "sessions-per-second" in warned[0]
        assert "rate stays at 50" in warned[0]
        failures = dict(o.failures)
        s = finish(o)
    finally:
        api(s0.address, restore)
    assert s["offered"] == 150
    assert s["failed_by_cause"] == failures
    assert s["incidents"]["throttled"] >= 1


# --------------------------------------------------------------------------------------------
# Bad configuration
# --------------------------------------------------------------------------------------------


def test_bad_configuration_fails_at_once_naming_slave_and_setting(slaves, tmp_path):
    before = our_blocks()
    addr = slaves[0].address
    with pytest.raises(ConnectError, match="no-such-host.invalid:8021"):
        get_originator(
            [addr, "no-such-host.invalid:8021"], run_dir=tmp_path / "a", connect_timeout=3
        )
    with pytest.raises(ConfigurationError, match=f"duplicate contact {addr[0]}:{addr[1]}"):
        get_originator([addr, f"{addr[0]}:{addr[1]}"], run_dir=tmp_path / "b")
    for bad in (0, -5):
        with pytest.raises(ConfigurationError, match="rate must be"):
            get_originator([addr], rate=bad, run_dir=tmp_path / "c")
    for bad in (0, -1, 2.5):
        with pytest.raises(ConfigurationError, match="limit must be"):
            get_originator([addr], limit=bad, run_dir=tmp_path / "d")
    assert our_blocks() - before == set()


@pytest.mark.parametrize(
    "kwargs",
    [{"endpoint": "bogus"}, {"caller_id": "it's me"}],
    ids=["unknown-endpoint", "unbalanced-quote"],
)
def test_command_freeswitch_rejects_stops_the_run_naming_slave(slaves, make, caplog, kwargs):
    """An originate command FreeSWITCH rejects for every call (an unknown endpoint, an
    unbalanced quote that breaks the call URL: -ERR CHAN_NOT_IMPLEMENTED): after a few
    calls the worker stops offering, the parent logs a ConfigurationError naming the slave
    and the command and stops the run; the calls made are recorded as failed by cause."""
    caplog.set_level(logging.INFO, logger="fastswitch")
    s0 = slaves[0]
    o = make([s0.address], rate=50, limit=100, duration=1)
    o.pool.clients[0].set_orig_cmd(dest(s0), **kwargs)
    o.load_app(Park)
    o.start()
    track_pids(o)
    assert o.waitforstate("STOPPED", timeout=10)
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert any(
        "ConfigurationError" in m
        and slave(s0) in m
        and "rejects the originate command" in m
        and o.pool.clients[0].originate_cmd in m
        for m in errors
    ), errors
    assert 5 <= o.stats()["originated"] <= 15  # it stopped after a few, not at the limit
    assert set(o.failures) == {"CHAN_NOT_IMPLEMENTED"}
    s = finish(o)
    assert s["failed_by_cause"] == {"CHAN_NOT_IMPLEMENTED": s["offered"]}
    assert s["incidents"]["originate_rejected"] == 1


def test_template_error_and_usage_reply_are_clear_errors(slaves, make):
    """A value that breaks the command template (a lone brace) fails set_orig_cmd at once,
    naming the slave; a command FreeSWITCH cannot parse (-USAGE) fails its job with the
    cause USAGE instead of leaving the call pending forever."""
    s0 = slaves[0]
    o = make([s0.address], rate=10, limit=10)
    with pytest.raises(ConfigurationError, match=f"{slave(s0)}.*stray"):
        o.pool.clients[0].set_orig_cmd(dest(s0), caller_id="{oops")
    assert o.pool.clients[0].originate_cmd is None

    async def usage() -> tuple[bool, str | None, int]:
        async with Client(*s0.address, reconnect=False) as c:
            job = await c.bgapi("originate sofia/external/doggy@127.0.0.1:1")
            with pytest.raises(Exception, match="USAGE"):
                await asyncio.wait_for(job.future, 5)
            return job.failed, job.cause, len(c.listener.jobs)

    assert asyncio.run(usage()) == (True, "USAGE", 0)


# --------------------------------------------------------------------------------------------
# User code raising, Ctrl-C, SIGTERM
# --------------------------------------------------------------------------------------------


def test_app_callback_raising_does_not_stop_the_run(slaves, make, caplog):
    """An app callback that raises: the error is logged with its traceback, the calls still
    end and are recorded, the run goes on and stops cleanly."""
    caplog.set_level(logging.INFO, logger="fastswitch")

    class Faulty:
        @event_callback("CHANNEL_PARK")
        def on_park(self, sess):
            if sess.direction == "inbound":
                raise RuntimeError("bug in user code")

    s0 = slaves[0]
    o = make([s0.address], rate=50, limit=100, max_sessions=30, duration=0.3)
    o.pool.clients[0].set_orig_cmd(dest(s0))
    o.load_app(Faulty)
    o.start()
    track_pids(o)
    assert o.waitforstate("STOPPED", timeout=10)
    assert o.waitwhile(timeout=10)
    assert "RuntimeError: bug in user code" in caplog.text  # with its traceback
    assert o.pool.clients[0].is_alive()
    s = finish(o)
    assert s["offered"] == 30 and s["answered"] == 30


SCRIPT = """
import os, sys, time
from fastswitch import get_originator
from fastswitch.apps.park import Park

host, port, dest, run_dir, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
o = get_originator([(host, port)], rate=50, limit=1000, duration=60, run_dir=run_dir)
o.pool.clients[0].set_orig_cmd(dest)
o.load_app(Park)
o.start()
while o.count_calls() < 20:
    time.sleep(0.05)
print("WORKERS", *[h.process.pid for h in o.pool.clients], flush=True)
print("READY", flush=True)
if mode == "raise":
    raise RuntimeError("the user's script failed")
time.sleep(60)
"""


@pytest.mark.parametrize("mode", ["sigint", "sigterm", "raise"])
def test_script_interrupted_or_raising_stops_cleanly(slaves, tmp_path, mode):
    """A script running an Originator is interrupted (Ctrl-C, SIGTERM) or raises: it exits
    by itself, hangs up its calls on the slave, flushes and closes the CDR files (totals
    recorded, invariant holds) and leaves no worker process or shared memory behind."""
    s0 = slaves[0]
    script = tmp_path / "load.py"
    script.write_text(SCRIPT)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    run_dir = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, str(script), *map(str, s0.address), dest(s0), str(run_dir), mode],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        workers = []
        for line in proc.stdout:
            if line.startswith("WORKERS"):
                workers = [int(x) for x in line.split()[1:]]
            if line.startswith("READY") or line == "":
                break
        assert workers, proc.stderr.read()[-3000:] if proc.poll() is not None else "no output"
        if mode == "sigint":
            proc.send_signal(signal.SIGINT)
        elif mode == "sigterm":
            proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode != 0  # interrupted / failed, but by its own exit path
    if mode == "raise":
        assert "the user's script failed" in err
    assert not [pid for pid in workers if running(pid)]
    assert our_blocks(proc.pid) == set()
    assert api(s0.address, "show channels count").strip() == "0 total."
    s = check_run(run_dir)
    assert s["offered"] >= 20
    assert s["lost"] == 0  # every call was hung up, not abandoned


# --------------------------------------------------------------------------------------------
# Chaos
# --------------------------------------------------------------------------------------------


def test_chaos_slaves_and_workers_killed_at_random(slaves, victims, make, caplog):
    """For 10 s at 60 cps over three slaves, kill and restart simulated slaves, SIGKILL
    workers and drop connections at random (seeded). The run keeps going, comes back to
    full strength, ends cleanly, and rows == offered - reported unrecorded."""
    import random

    caplog.set_level(logging.INFO, logger="fastswitch")
    rng = random.Random(9)
    stable = slaves[0]
    alive: dict[int, SimServer] = {1: victims(), 2: victims()}
    dead: dict[int, SimServer] = {}
    spare: list[SimServer] = []  # twins started here, stopped at the end
    o = make(
        [stable.address, alive[1].address, alive[2].address],
        rate=60,
        limit=600,
        duration=1.5,
        client_options={"backoff": (0.05, 0.5)},
    )
    start_park(o, [stable, alive[1], alive[2]])
    kills = 0
    actions = []
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            time.sleep(rng.uniform(0.5, 1.2))
            track_pids(o)
            action = rng.choice(["kill_slave", "revive", "kill_worker", "drop"])
            if action == "kill_slave" and alive:
                i = rng.choice(sorted(alive))
                dead[i] = kill_sim(alive.pop(i))
            elif action == "revive" and dead:
                i = rng.choice(sorted(dead))
                alive[i] = dead.pop(i).start()
                spare.append(alive[i])
            elif action == "kill_worker" and kills < 2:
                h = rng.choice([h for h in o.pool.clients if h.is_alive()])
                os.kill(h.process.pid, signal.SIGKILL)
                kills += 1
            elif action == "drop":
                target = rng.choice([stable, *alive.values()])
                api(target.address, "sim fault drop others")
            else:
                continue
            actions.append(action)
            assert o.state == "ORIGINATING"
        for i in sorted(dead):
            alive[i] = dead.pop(i).start()
            spare.append(alive[i])
        # back to full strength: every worker alive, connected and holding its share
        assert wait_for(lambda: all(r["alive"] and r["rate"] == 20 for r in o.slave_stats()), 30), (
            actions,
            o.slave_stats(),
        )
        track_pids(o)
        s = finish(o)
    finally:
        for srv in spare:
            srv.stop()
    assert len(actions) >= 5, actions
    assert s["incidents"].get("worker_died", 0) == kills
    if "kill_slave" in actions:
        assert s["incidents"]["slave_down"] >= actions.count("kill_slave")
    assert s["offered"] > 200
