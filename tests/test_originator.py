"""The Originator engine against simulated slaves: rate, limit, max_sessions, hold time,
app weights, calls routed between slaves, a worker killed mid-run, rejected calls,
connection errors and shared-memory clean-up."""

from __future__ import annotations

import logging
import math
import os
import signal

import numpy as np
import pytest
from support import free_port, shm_exists, wait_for

from fastswitch import AuthenticationError, ConnectError, get_originator
from fastswitch.apps import event_callback
from fastswitch.apps.park import Park
from fastswitch.originator import STOPPED
from fastswitch.sim import SimConfig, SimServer

pytestmark = pytest.mark.timeout(90)


@pytest.fixture(scope="module")
def slaves():
    """Three simulated slaves; each test sets what it needs over ESL (``api sim ...``)."""
    servers, cfgs = [], []
    try:
        for i in range(3):
            cfg = SimConfig(
                port=0,
                sip_port=0,
                seed=10 + i,
                heartbeat_interval=0.0,
                sps=20000,
                max_sessions=20000,
            )
            server = SimServer(cfg)
            server.start()
            servers.append(server)
            cfgs.append(cfg)
        yield list(zip(servers, cfgs, strict=True))
    finally:
        for s in servers:
            s.stop()


@pytest.fixture
def make(tmp_path):
    """Build Originators that are always shut down, and check no /dev/shm block is left."""
    made = []

    def build(contacts, **kw):
        o = get_originator(contacts, run_dir=tmp_path / f"run{len(made)}", **kw)
        made.append(o)
        return o

    yield build
    for o in made:
        o.shutdown()
        assert not o.is_alive()
        assert not shm_exists(o._cb.name)


def _dest(cfg: SimConfig, user: str = "doggy") -> str:
    return f"{user}@{cfg.sip_host}:{cfg.sip_port}"


def _api(address: tuple[str, int], cmd: str) -> str:
    """Run one ``api`` command on a slave over a connection of its own."""
    import asyncio

    from fastswitch.client import Client

    async def run() -> str:
        client = Client(*address, reconnect=False)
        await client.connect()
        try:
            return await client.api(cmd)
        finally:
            await client.close()

    return asyncio.run(run())


def _cdr(o):
    df = o.measurers.stores.CDR
    return df[df["row_kind"] == "call"]


def test_rate_is_even_and_accurate(slaves, make):
    (s0, c0), (s1, c1), _ = slaves
    rate = 200
    o = make([s0.address, s1.address], rate=rate, limit=10_000, duration=0.3)
    o.pool.evals("client.set_orig_cmd(dest)", dest=_dest(c0))
    o.load_app(Park)
    o.start()
    assert wait_for(lambda: o.total_originated_sessions >= 500, 20)
    o.stop()
    assert o.waitwhile(timeout=20)
    df = _cdr(o)
    assert len(df) == o.total_originated_sessions
    assert not df["failed"].any()
    # each worker offers rate/2 evenly. A call is never sent before it is due (call k at
    # t0 + k/share at the earliest), the catch-up rule keeps the count on that line (only a
    # loop stall longer than a second drops calls), and the typical gap is 1/share.
    share = rate / 2
    for _w, g in df.groupby("worker"):
        t = np.sort(g["job_launch"].to_numpy())
        k = np.arange(len(t))
        assert (t - t[0] >= k / share - 0.01).all(), "a call went out before it was due"
        expected = (t[-1] - t[0]) * share + 1
        assert 0.9 * expected <= len(t) <= expected + 2, (len(t), expected)
        assert np.median(np.diff(t)) == pytest.approx(1 / share, rel=0.25)
    # hence no burst at second boundaries: no second holds more than its share of calls
    t = np.sort(df["job_launch"].to_numpy())
    counts = np.bincount(np.floor(t - t[0]).astype(int))
    assert counts.max() <= rate + 4


def test_limit_max_sessions_and_calls_across_slaves(slaves, make):
    (s0, c0), (s1, c1), (s2, c2) = slaves
    o = make([s0.address, s1.address, s2.address], rate=300, limit=25, max_sessions=150)
    o.duration = 0.4
    # the SUT routes each slave's calls to the next slave: every call has its legs apart
    nxt = {0: c1, 1: c2, 2: c0}
    for i, client in enumerate(o.pool.clients):
        client.set_orig_cmd(_dest(nxt[i]))
    o.load_app(Park)
    o.start()
    peak = 0

    def done() -> bool:
        nonlocal peak
        peak = max(peak, o.count_calls())
        return o.state == "STOPPED" and o.count_calls() == 0

    assert wait_for(done, 30, period=0.01)
    assert 0 < peak <= 25
    assert o.total_originated_sessions == 150
    df = _cdr(o)
    assert len(df) == 150
    assert not df["failed"].any()
    # the B-leg rows written by the other workers were merged into their calls
    assert df["callee_create"].notna().all()
    assert df["call_uuid"].is_unique
    # concurrency from the records (originate to the A-leg's hangup: the originating
    # worker counts a call at least that long) never exceeded the limit
    ev = [(t, 1) for t in df["job_launch"]] + [(t, -1) for t in df["caller_hangup"]]
    ev.sort(key=lambda x: (x[0], x[1]))
    level = top = 0
    for _t, d in ev:
        level += d
        top = max(top, level)
    assert 15 <= top <= 25


def test_hold_time_counts_from_answer(slaves, make):
    (s0, c0), _, _ = slaves
    o = make([s0.address], rate=20, limit=100, max_sessions=10, duration=1.0)
    o.pool.clients[0].set_orig_cmd(_dest(c0))
    o.pool.clients[0].api("sim answer_delay 0.5")
    try:
        o.load_app(Park)
        o.start()
        assert o.waitforstate("STOPPED", timeout=20)
        assert o.waitwhile(timeout=20)
    finally:
        o.pool.clients[0].api("sim answer_delay 0")
    df = _cdr(o)
    assert len(df) == 10
    held = df["caller_hangup"] - df["caller_answer"]
    rang = df["caller_answer_fs"] - df["caller_create_fs"]  # the slave's own clock
    # the A-leg lives `duration` after its answer (not hung up at once, not from create)
    assert (held >= 0.95).all(), held.tolist()
    assert (held < 5).all(), held.tolist()
    assert (rang >= 0.4).all(), rang.tolist()
    assert set(df["hangup_cause"]) == {"NORMAL_CLEARING"}


def test_early_media_call_ends_at_its_hold_time(slaves, make):
    """A callee that only sends early media (183, ``pre_answer``) never answers, yet the
    originate succeeds: the hold time then counts from that success, so such calls end and
    free their limit slot instead of ringing forever."""

    class EarlyMedia:  # no hooks, no timers of its own: only the worker can end the call
        @event_callback("CHANNEL_PARK")
        def on_park(self, sess):
            if sess.direction == "inbound" and not sess.answered:
                sess.execute("pre_answer")

    (s0, c0), _, _ = slaves
    o = make([s0.address], rate=20, limit=100, max_sessions=4, duration=1.0)
    o.pool.clients[0].set_orig_cmd(_dest(c0, "ctl"))
    o.load_app(EarlyMedia)
    o.start()
    assert o.waitforstate(STOPPED, timeout=10)
    assert o.waitwhile(lambda: o.count_calls() > 0, timeout=10), repr(o)
    df = _cdr(o)
    assert len(df) == 4
    assert df["caller_answer"].isna().all()  # never answered
    assert (df["job_result"].str.startswith("+OK")).all(), df["job_result"].tolist()
    held = df["caller_hangup"] - df["job_launch"]
    assert (held >= 0.95).all() and (held < 5).all(), held.tolist()


def test_apps_get_the_settings_hooks(slaves, make, tmp_path):
    """switchio's app hooks: ``__setduration__``, ``__setrate__`` and ``__setlimit__`` are
    called in the worker when the app is loaded and when the settings change while running
    (rate and limit: this slave's share)."""
    (s0, c0), (s1, c1), _ = slaves
    seen = tmp_path / "hooks.txt"

    class Recorder(Park):
        def __setduration__(self, value):
            with open(seen, "a") as f:
                f.write(f"duration {value}\n")

        def __setrate__(self, value):
            with open(seen, "a") as f:
                f.write(f"rate {value}\n")

        def __setlimit__(self, value):
            with open(seen, "a") as f:
                f.write(f"limit {value}\n")

    def lines() -> set[str]:
        return set(seen.read_text().splitlines()) if seen.exists() else set()

    o = make([s0.address, s1.address], rate=10, limit=40, duration=3.0)
    o.pool.evals("client.set_orig_cmd(dest)", dest=_dest(c0))
    o.load_app(Recorder)
    assert wait_for(lambda: "duration 3.0" in lines(), 5), lines()
    o.start()
    assert wait_for(lambda: {"rate 5.0", "limit 20.0"} <= lines(), 5), lines()
    o.rate, o.limit, o.duration = 30, 100, 2.0
    assert wait_for(lambda: {"rate 15.0", "limit 50.0", "duration 2.0"} <= lines(), 5), lines()
    o.hupall()


def test_ringback_callee_follows_the_duration(slaves, make):
    """CalleeRingback without ``callee_hup_after``: the ringing callee hangs up after the
    Originator's duration (switchio's ``__setduration__``); a given value wins."""
    from fastswitch.apps.blockers import CalleeRingback

    app = CalleeRingback()
    app.__setduration__(7.5)
    assert app.callee_hup_after == 7.5
    app.prepost(None, None, callee_hup_after=2)
    app.__setduration__(30)
    assert app.callee_hup_after == 2.0
    app.__setduration__(math.inf)
    assert app.caller_hup_after == math.inf

    (s0, c0), _, _ = slaves
    o = make([s0.address], rate=20, limit=100, max_sessions=3, duration=1.0)
    o.pool.clients[0].set_orig_cmd(_dest(c0, "ctl"))
    o.load_app(CalleeRingback, ppkwargs={"ring_response": "ring_ready"})
    o.start()
    assert o.waitforstate(STOPPED, timeout=10)
    # ring_ready (180) never completes the originate: only the callee's hangup ends it
    assert o.waitwhile(lambda: o.count_calls() > 0, timeout=10), repr(o)
    df = _cdr(o)
    assert len(df) == 3
    rang = df["callee_hangup"] - df["callee_create"]
    assert (rang >= 0.9).all() and (rang < 5).all(), rang.tolist()


def test_app_weights_mix(slaves, make):
    (s0, c0), (s1, c1), _ = slaves
    from fastswitch.apps.bert import Bert
    from fastswitch.apps.blockers import CalleeBlockonInvite, CalleeRingback

    o = make([s0.address, s1.address], rate=1000, limit=2000, max_sessions=3000, duration=0.3)
    # each slave calls itself; lift FreeSWITCH's sessions-per-second throttle (1000 by
    # default, both legs count) as switchio's Originator did
    for client, cfg in zip(o.pool.clients, (c0, c1), strict=True):
        client.set_orig_cmd(_dest(cfg, "ctl"))
    assert o.pool.evals("client.api('fsctl sps 10000')") == ["+OK sessions per second: 10000\n"] * 2
    o.load_app(
        CalleeRingback,
        ppkwargs={"caller_hup_after": 0.3, "ring_response": "ring_ready"},
        weight=33,
    )
    o.load_app(CalleeBlockonInvite, ppkwargs={"response": 404}, weight=33)
    o.load_app(Bert, weight=34)
    o.start()
    assert o.waitforstate("STOPPED", timeout=30)
    assert o.waitwhile(timeout=30)
    df = _cdr(o)
    assert len(df) == 3000
    share = df["fastswitch_app"].value_counts(normalize=True) * 100
    assert abs(share["CalleeRingback"] - 33) <= 2
    assert abs(share["CalleeBlockOnInvite"] - 33) <= 2
    assert abs(share["Bert"] - 34) <= 2
    # each app's flow ran: 404 -> UNALLOCATED_NUMBER, ringing caller hung up, Bert answered
    by_app = df.groupby("fastswitch_app")
    assert set(by_app.get_group("CalleeBlockOnInvite")["hangup_cause"]) == {"UNALLOCATED_NUMBER"}
    assert by_app.get_group("CalleeRingback")["caller_answer"].isna().all()
    assert by_app.get_group("Bert")["caller_answer"].notna().all()
    assert o.failures.get("UNALLOCATED_NUMBER") == len(by_app.get_group("CalleeBlockOnInvite"))


def test_rejected_calls_counted_by_cause_and_logged(slaves, make, caplog):
    (s0, c0), _, _ = slaves
    caplog.set_level(logging.INFO, logger="fastswitch")
    o = make([s0.address], rate=100, limit=100, max_sessions=200, duration=0.2)
    o.pool.clients[0].set_orig_cmd(_dest(c0))
    o.pool.clients[0].api("sim reject_mix 486=0.5")
    try:
        o.load_app(Park)
        o.start()
        assert o.waitforstate("STOPPED", timeout=20)
        assert o.waitwhile(timeout=20)
    finally:
        o.pool.clients[0].api("sim reject_mix 486=0")
    df = _cdr(o)
    busy = int((df["hangup_cause"] == "USER_BUSY").sum())
    assert 40 <= busy <= 160
    assert o.failures == {"USER_BUSY": busy}
    assert o.stats()["failed"] == busy
    logged = [
        r.getMessage()
        for r in caplog.records
        if r.levelno == logging.ERROR and r.getMessage().endswith("failed with:\n-ERR USER_BUSY")
    ]
    assert logged and logged[0].startswith("Job '")
    rec = next(r for r in caplog.records if r.getMessage() in logged)
    assert rec.name == "fastswitch.EventListener"  # logged in the worker, reached the parent


def test_worker_killed_is_detected_and_restarted(slaves, make, caplog):
    (s0, c0), (s1, c1), _ = slaves
    caplog.set_level(logging.INFO, logger="fastswitch")
    o = make([s0.address, s1.address], rate=100, limit=1000, duration=0.3)
    o.pool.evals("client.set_orig_cmd(dest)", dest=_dest(c0))
    o.load_app(Park)
    o.start()
    assert wait_for(lambda: o.total_originated_sessions >= 50, 10)
    victim = o.pool.clients[0]
    old_pid = victim.process.pid
    os.kill(old_pid, signal.SIGKILL)
    assert wait_for(lambda: any("died" in m for m in caplog.messages), 5)
    died = next(m for m in caplog.messages if "died" in m)
    assert f"{s0.address[0]}:{s0.address[1]}" in died and "-9" in died
    assert wait_for(lambda: any("restarted" in m for m in caplog.messages), 20)
    assert victim.is_alive() and victim.process.pid != old_pid
    # the restarted worker originates again and the run goes on
    before = o.total_originated_sessions
    assert wait_for(lambda: o._cb.counters(0)["originated"] >= 10, 10)
    assert o.total_originated_sessions > before
    assert o.state == "ORIGINATING"
    # hard_hupall: stop and clear every channel on every slave
    o.hard_hupall()
    assert o.state == "STOPPED"
    assert wait_for(lambda: o.count_calls() == 0, 15)
    assert all(c.api("show channels count").strip() == "0 total." for c in o.pool.clients)


def test_app_defined_in_a_function_ships_by_value(slaves, make):
    (s0, c0), _, _ = slaves

    class Busy:  # a local class: cloudpickle must send it by value
        @event_callback("CHANNEL_PARK")
        def on_park(self, sess):
            if sess.direction == "inbound":
                sess.respond(486)

    o = make([s0.address], rate=50, limit=10, max_sessions=5)
    o.pool.clients[0].set_orig_cmd(_dest(c0, "ctl"))
    o.load_app(Busy)
    o.start()
    assert o.waitforstate(STOPPED, timeout=10)
    assert o.waitwhile(timeout=10)
    assert o.failures == {"USER_BUSY": 5}


def test_settings_live_and_validation(slaves, make):
    (s0, c0), _, _ = slaves
    o = make([s0.address], rate=50, limit=1000)
    assert o.duration == 30.0 and o.auto_duration
    o.rate = 100
    assert o.duration == 20.0
    o.duration = 2
    assert not o.auto_duration
    o.limit = 10
    assert o.duration == 2
    assert math.isinf(o.max_sessions)
    with pytest.raises(Exception, match="rate"):
        o.rate = 0
    with pytest.raises(TypeError):
        get_originator([s0.address], bogus=1)
    with pytest.raises(ValueError, match="unknown state"):
        o.waitforstate("RUNNING", timeout=0)

    class Broken:
        def prepost(self, client, listener, **kw):
            raise ValueError(f"bad settings {sorted(kw)}")

    # an app whose set-up fails in the workers fails load_app in the parent, all or nothing
    with pytest.raises(ValueError, match=r"bad settings \['x'\]"):
        o.load_app(Broken, ppkwargs={"x": 1})
    assert o.apps == {}
    assert o.pool.clients[0].stats()["apps"] == {}
    assert o.load_app(Park, weight=3) == "Park" and o.apps == {"Park": 3}


def _our_blocks(owner: int | None = None) -> set[str]:
    """Names of the fastswitch control blocks in /dev/shm created by process ``owner``
    (default: this one), recognised by their magic and owner pid."""
    import struct

    from fastswitch.control import H_OWNER_PID, MAGIC

    owner = os.getpid() if owner is None else owner
    out = set()
    for n in os.listdir("/dev/shm"):
        try:
            with open("/dev/shm/" + n, "rb") as f:
                head = f.read(8 * (H_OWNER_PID + 1))
        except OSError:
            continue
        if len(head) < 8 * (H_OWNER_PID + 1):
            continue
        vals = struct.unpack(f"{H_OWNER_PID + 1}d", head)
        if vals[0] == MAGIC and vals[H_OWNER_PID] == owner:
            out.add(n)
    return out


def test_unreachable_and_bad_password_name_the_slave(slaves, tmp_path):
    (s0, _c0), _, _ = slaves
    before = _our_blocks()
    dead = free_port()
    with pytest.raises(ConnectError, match=f"127.0.0.1:{dead}"):
        get_originator([s0.address, ("127.0.0.1", dead)], run_dir=tmp_path / "a")
    host, port = s0.address
    with pytest.raises(AuthenticationError, match=f"{host}:{port}"):
        get_originator([(host, port)], password="WrongPassword", run_dir=tmp_path / "b")
    # the failed constructions released their control blocks
    assert _our_blocks() - before == set()


SCRIPT = """
import sys
from fastswitch import get_originator
from fastswitch.apps import event_callback


class Reject:  # lives in __main__: the workers get it by value
    @event_callback("CHANNEL_PARK")
    def on_park(self, sess):
        if sess.direction == "inbound":
            sess.respond(486)


# no `if __name__ == "__main__":` guard on purpose
host, port, dest, run_dir = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
o = get_originator([(host, port)], rate=20, limit=5, max_sessions=4, run_dir=run_dir)
o.pool.clients[0].set_orig_cmd(dest)
o.load_app(Reject)
o.start()
assert o.waitforstate("STOPPED", timeout=20)
assert o.waitwhile(timeout=20)
print("FAILURES", sorted(o.failures.items()))
# no shutdown(): the interpreter's exit must clean up
"""


def test_script_app_in_main_without_guard(slaves, tmp_path):
    import subprocess
    import sys

    (s0, c0), _, _ = slaves
    script = tmp_path / "dial.py"
    script.write_text(SCRIPT)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    args = [sys.executable, str(script), *map(str, s0.address), _dest(c0, "ctl")]
    with subprocess.Popen(
        [*args, str(tmp_path / "run")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    ) as proc:
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err[-3000:]
    assert "FAILURES [('USER_BUSY', 4)]" in out
    # the seed-format log lines of the script reached its stderr
    assert "[INFO] fastswitch.Originator@['127.0.0.1'] originator.py:" in err
    # the interpreter's exit released the script's control block
    assert _our_blocks(proc.pid) == set()


def test_bert_fails_calls_that_lose_sync(slaves, make):
    (s0, c0), _, _ = slaves
    from fastswitch.apps.bert import Bert

    o = make([s0.address], rate=20, limit=10, max_sessions=4, duration=6)
    client = o.pool.clients[0]
    client.set_orig_cmd(_dest(c0, "ctl"))
    client.api("sim bert_sync_delay 0.2")
    client.api("sim bert_lost_sync_prob 1")
    try:
        o.load_app(Bert)
        o.start()
        assert o.waitforstate("STOPPED", timeout=10)
        assert o.waitwhile(timeout=10)  # well before the 6 s hold time
    finally:
        client.api("sim bert_lost_sync_prob 0")
        client.api("sim bert_sync_delay 1.0")
    df = _cdr(o)
    assert len(df) == 4
    assert set(df["app_verdict"]) == {"bert lost_sync"}
    assert df["failed"].all()
    assert df["caller_answer"].notna().all() and df["callee_answer"].notna().all()
    assert (df["caller_hangup"] - df["caller_answer"] < 5).all()
    assert o.failures == {"MEDIA_TIMEOUT": 4}


def test_bert_settings_reach_the_legs(slaves, make):
    """Bert's switchio settings: the callee rings (``ring_response``) for ``prd`` seconds
    before answering, and mod_bert variables given as keywords are set on the legs: with
    ``bert_timeout_ms=500`` and a sync that takes 3 s, mod_bert times out."""
    (s0, c0), _, _ = slaves
    from fastswitch.apps.bert import Bert

    o = make([s0.address], rate=20, limit=10, max_sessions=3, duration=8)
    client = o.pool.clients[0]
    client.set_orig_cmd(_dest(c0, "ctl"))
    client.api("sim bert_sync_delay 3.0")
    try:
        o.load_app(
            Bert, ppkwargs={"ring_response": "ring_ready", "prd": 0.4, "bert_timeout_ms": 500}
        )
        o.start()
        assert o.waitforstate("STOPPED", timeout=10)
        assert o.waitwhile(timeout=10)  # well before the 8 s hold time
    finally:
        client.api("sim bert_sync_delay 1.0")
    df = _cdr(o)
    assert len(df) == 3
    assert set(df["app_verdict"]) == {"bert timeout"}
    assert ((df["callee_answer"] - df["callee_create"]) >= 0.35).all()
    assert ((df["caller_hangup"] - df["caller_answer"]) < 3).all()
    with pytest.raises(ValueError, match="ring_response"):
        Bert().prepost(None, None, ring_response="answer")


def test_slave_connection_drop_recovers(slaves, make, caplog):
    (s0, c0), (s1, c1), _ = slaves
    caplog.set_level(logging.INFO, logger="fastswitch")
    o = make([s0.address, s1.address], rate=100, limit=1000, duration=5)
    for client, cfg in zip(o.pool.clients, (c0, c1), strict=True):
        client.set_orig_cmd(_dest(cfg))
    o.load_app(Park)
    o.start()
    assert wait_for(lambda: o.slave_stats()[0]["originated"] >= 20, 10)
    # drop the worker's ESL connection to slave 0 (asked over a connection of our own,
    # which 'others' spares)
    assert "fault drop injected on 1 connection" in _api(s0.address, "sim fault drop others")
    # the worker reconnects by itself and slave 0 takes calls again
    assert wait_for(lambda: any("reconnected" in m for m in caplog.messages), 10)
    before = o.slave_stats()[0]["originated"]
    assert wait_for(lambda: o.slave_stats()[0]["originated"] >= before + 20, 10)
    assert o.pool.clients[0].is_alive()
    # the calls up when the connection dropped were closed as lost in the records ...
    df = o.measurers.stores.CDR
    lost = set(df.loc[df["lost"].notna(), "call_uuid"])
    assert lost and set(df.loc[df["lost"].notna(), "slave"]) == {f"{s0.address[0]}:{s0.address[1]}"}
    # ... and hung up on the slave (a reconnected worker clears what it lost track of)
    channels = o.pool.clients[0].api("show channels")
    up = {line.split(",", 1)[0] for line in channels.splitlines()[1:] if "," in line}
    assert up and not (lost & up)
    o.hupall()
    assert wait_for(lambda: o.count_calls() == 0, 15)
