"""Simulator behaviour beyond the captures: loop-back between servers, rejection mix,
session limits, hangups, run-time settings, slow consumers and fault injection.

One simulated server is shared by the module (settings are changed at run time with
``api sim ...`` and restored); tests that need more start their own.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator

import pytest

from fastswitch.errors import ESLProtocolError
from fastswitch.esl import Event, Frame, Parser
from fastswitch.sim import SimConfig, SimServer
from fastswitch.sim.pytest_plugin import sim_cluster, sim_server  # noqa: F401  (fixtures)

pytestmark = pytest.mark.timeout(60)

SUBSCRIBE = (
    "event plain CHANNEL_CREATE CHANNEL_ORIGINATE CHANNEL_PROGRESS CHANNEL_PROGRESS_MEDIA "
    "CHANNEL_ANSWER CHANNEL_PARK CHANNEL_EXECUTE CHANNEL_EXECUTE_COMPLETE CHANNEL_HANGUP "
    "CHANNEL_HANGUP_COMPLETE CHANNEL_DESTROY CHANNEL_CALLSTATE BACKGROUND_JOB "
    "CUSTOM mod_bert::in_sync mod_bert::lost_sync mod_bert::timeout"
)


class Esl:
    """A minimal synchronous ESL client over a raw socket (test helper)."""

    def __init__(self, address: tuple[str, int], password: str | None = "ClueCon") -> None:
        self.sock = socket.create_connection(address, timeout=5)
        self.parser = Parser()
        self.frames: list[Frame] = []
        self.events: list[Event] = []
        self.closed = False
        first = self.next_frame()
        assert first.content_type == "auth/request"
        if password is not None:
            assert self.command(f"auth {password}") == "+OK accepted"

    def close(self) -> None:
        self.sock.close()

    def _fill(self, timeout: float) -> None:
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(1 << 20)
        except TimeoutError:
            return
        except ConnectionResetError:
            data = b""
        if not data:
            self.closed = True
            return
        for f in self.parser.feed(data):
            if f.is_event:
                self.events.append(f.event)
            else:
                self.frames.append(f)

    def next_frame(self, timeout: float = 5.0) -> Frame:
        end = time.monotonic() + timeout
        while not self.frames:
            if self.closed or time.monotonic() > end:
                raise TimeoutError("no reply")
            self._fill(0.05)
        return self.frames.pop(0)

    def send(self, text: str) -> None:
        self.sock.sendall(text.encode() + b"\n\n")

    def command(self, text: str) -> str:
        self.send(text)
        return self.next_frame().reply_text or ""

    def api(self, text: str) -> str:
        self.send("api " + text)
        f = self.next_frame()
        assert f.content_type == "api/response"
        return f.body.decode()

    def originate(self, dest: str, app: str = "&park()", **variables: str) -> str:
        u = str(uuid.uuid4())
        vs = {"origination_uuid": u, "sip_h_X-originating_session_uuid": u, **variables}
        block = ",".join(f"{k}={v}" for k, v in vs.items())
        reply = self.command(f"bgapi originate {{{block}}}{dest} {app}")
        assert reply.startswith("+OK Job-UUID: ")
        return u

    def wait(self, pred: Callable[[list[Event]], bool], timeout: float = 5.0) -> list[Event]:
        end = time.monotonic() + timeout
        while not pred(self.events):
            if self.closed or time.monotonic() > end:
                names = [(e.name, e.unique_id) for e in self.events]
                raise TimeoutError(f"condition not met; events: {names}")
            self._fill(0.05)
        return self.events

    def count(self, name: str, **match: str) -> int:
        return sum(
            1
            for e in self.events
            if e.name == name and all(e.get(k) == v for k, v in match.items())
        )

    def wait_count(self, name: str, n: int, timeout: float = 5.0, **match: str) -> list[Event]:
        return self.wait(lambda _: self.count(name, **match) >= n, timeout)

    def job(self, timeout: float = 5.0) -> str:
        self.wait_count("BACKGROUND_JOB", 1, timeout)
        ev = next(e for e in self.events if e.name == "BACKGROUND_JOB")
        self.events.remove(ev)
        return ev.body or ""

    def legs(self, a_uuid: str) -> tuple[list[Event], list[Event]]:
        a = [e for e in self.events if e.unique_id == a_uuid]
        b = [
            e
            for e in self.events
            if e.call_direction == "inbound" and e.var("sip_h_X-originating_session_uuid") == a_uuid
        ]
        b_uuid = b[0].unique_id if b else None
        return a, [e for e in self.events if b_uuid and e.unique_id == b_uuid]


@pytest.fixture(scope="module")
def server() -> Iterator[SimServer]:
    with SimServer(port=0, heartbeat_interval=0.0, seed=3) as s:
        yield s


@pytest.fixture
def esl(server: SimServer) -> Iterator[Esl]:
    c = Esl(server.address)
    try:
        yield c
    finally:
        c.api("hupall NORMAL_CLEARING")
        for setting, value in (
            ("reject_mix", "{}"),
            ("answer_delay", "0"),
            ("post_dial_delay", "0"),
            ("bert_lost_sync_prob", "0"),
            ("event_queue_limit", "100000"),
            ("max_missed", "500"),
        ):
            c.api(f"sim {setting} {value}")
        c.api("fsctl max_sessions 4000")
        c.api("fsctl sps 1000")
        c.api("sim refill")
        c.close()


def own_sip(server: SimServer) -> str:
    return "{}:{}".format(*server.sip_address)


def doggy(server: SimServer, user: str = "doggy") -> str:
    return f"sofia/external/{user}@{own_sip(server)}"


# -- protocol ---------------------------------------------------------------------------


def test_bad_password_is_refused_and_closed(server: SimServer) -> None:
    c = Esl(server.address, password=None)
    assert c.command("auth nope") == "-ERR invalid"
    notice = c.next_frame()
    assert notice.content_type == "text/disconnect-notice"
    assert notice.body.startswith(b"Disconnected, goodbye.")
    c._fill(1.0)
    assert c.closed


def test_commands_before_auth_and_unknown_commands(server: SimServer) -> None:
    c = Esl(server.address, password=None)
    try:
        assert c.command("api status") == "-ERR command not found"
        assert c.command("auth ClueCon") == "+OK accepted"
        assert c.command("bogus") == "-ERR command not found"
        assert c.api("nosuchcommand foo") == "-ERR nosuchcommand Command not found!\n"
        assert c.api("uuid_kill 00000000-0000-0000-0000-000000000000") == "-ERR No such channel!\n"
        assert c.command("EVENT plain CHANNEL_CREATE") == "+OK event listener enabled plain"
        assert c.command("event plain NOT_AN_EVENT") == "-ERR no keywords supplied"
        assert c.command("noevents") == "+OK no longer listening for events"
        assert c.command("noevents") == "-ERR not listening for events"
        # nixevent of every name keeps the listener flag: noevents still says +OK
        assert c.command("event plain CHANNEL_CREATE") == "+OK event listener enabled plain"
        assert c.command("nixevent CHANNEL_CREATE") == "+OK events nixed"
        assert c.command("noevents") == "+OK no longer listening for events"
        assert c.command("exit") == "+OK bye"
        assert c.next_frame().content_type == "text/disconnect-notice"
    finally:
        c.close()


def test_bgapi_echoes_client_job_uuid(esl: Esl) -> None:
    esl.command("event plain BACKGROUND_JOB")
    esl.send("bgapi status\nJob-UUID: 11111111-2222-3333-4444-555555555555")
    f = esl.next_frame()
    assert f.reply_text == "+OK Job-UUID: 11111111-2222-3333-4444-555555555555"
    assert f.job_uuid == "11111111-2222-3333-4444-555555555555"
    esl.wait_count("BACKGROUND_JOB", 1)
    ev = esl.events[0]
    assert ev.job_uuid == "11111111-2222-3333-4444-555555555555"
    assert ev.get("Job-Command") == "status" and "Job-Command-Arg" not in ev
    assert (ev.body or "").startswith("UP ")


@pytest.mark.parametrize("fmt", ["json", "xml"])
def test_event_formats(esl: Esl, server: SimServer, fmt: str) -> None:
    assert (
        esl.command(f"event {fmt} CHANNEL_PARK BACKGROUND_JOB")
        == f"+OK event listener enabled {fmt}"
    )
    u = esl.originate(doggy(server))
    if fmt == "json":
        esl.wait_count("CHANNEL_PARK", 2)
        park = [e for e in esl.events if e.name == "CHANNEL_PARK"]
        assert {e.call_direction for e in park} == {"inbound", "outbound"}
        a = next(e for e in park if e.unique_id == u)
        assert a.var("origination_uuid") == u
        obj = json.loads(a.raw)
        assert (
            obj["Event-Name"] == "CHANNEL_PARK"
            and obj["variable_sip_h_X-originating_session_uuid"] == u
        )
        job = next(e for e in esl.events if e.name == "BACKGROUND_JOB")
        assert json.loads(job.raw)["_body"] == f"+OK {u}\n"
    else:
        end = time.monotonic() + 5
        while (
            len([f for f in esl.parser.feed(b"")]) == 0
            and time.monotonic() < end
            and len(esl.events) < 3
        ):
            esl._fill(0.05)
        assert esl.events, "no xml events"
        assert all(
            e.raw.startswith(b"<event><headers><Event-Name>") and e.raw.endswith(b"</event>")
            for e in esl.events
        )


# -- calls ----------------------------------------------------------------------------------


def test_loop_back_through_two_servers(sim_cluster) -> None:  # noqa: F811
    s0, s1 = sim_cluster.servers
    a, b = Esl(s0.address), Esl(s1.address)
    try:
        for c in (a, b):
            c.command(SUBSCRIBE)
        u = a.originate(
            f"sofia/external/doggy@{own_sip(s1)}",
            fastswitch_client="app1",
            **{"sip_h_X-fastswitch_client": "app1"},
        )
        assert a.job() == f"+OK {u}\n"
        a.wait_count("CHANNEL_PARK", 1)
        b.wait_count("CHANNEL_PARK", 1)
        # the A-leg lives on server 0 only, the B-leg on server 1 only
        assert all(e.call_direction == "outbound" for e in a.events if e.unique_id)
        binbound = [e for e in b.events if e.unique_id]
        assert binbound and all(e.call_direction == "inbound" for e in binbound)
        create = next(e for e in b.events if e.name == "CHANNEL_CREATE")
        assert create.var("sip_h_X-originating_session_uuid") == u
        assert create.var("sip_h_X-fastswitch_client") == "app1"
        assert create.var("fastswitch_client") is None
        assert create.get("Caller-Context") == "public"
        assert a.api(f"uuid_kill {u}") == "+OK\n"
        b.wait_count("CHANNEL_DESTROY", 1)
        hc = next(e for e in b.events if e.name == "CHANNEL_HANGUP_COMPLETE")
        assert (
            hc.hangup_cause == "NORMAL_CLEARING" and hc.var("sip_hangup_disposition") == "recv_bye"
        )
        assert b.api("show channels count") == "\n0 total.\n"
    finally:
        a.close()
        b.close()


def test_call_to_unknown_address_loops_back(esl: Esl) -> None:
    esl.command(SUBSCRIBE)
    u = esl.originate("sofia/external/doggy@127.0.0.1:9", app="&park()")
    assert esl.job() == f"+OK {u}\n"
    esl.wait_count("CHANNEL_PARK", 2)
    a, b = esl.legs(u)
    assert a and b


@pytest.mark.parametrize(
    "mix,result",
    [
        ("486=1", "-ERR USER_BUSY\n"),
        ("404=1", "-ERR UNALLOCATED_NUMBER\n"),
        ("404q=1", "-ERR NO_ROUTE_DESTINATION\n"),
        ("480=1", "-ERR NORMAL_CLEARING\n"),
        ("503=1", "-ERR NORMAL_TEMPORARY_FAILURE\n"),
    ],
)
def test_rejection_mix(esl: Esl, server: SimServer, mix: str, result: str) -> None:
    assert esl.api(f"sim reject_mix {mix}").startswith("+OK reject_mix=")
    esl.command(SUBSCRIBE)
    u = esl.originate(doggy(server))
    assert esl.job() == result
    esl.wait_count("CHANNEL_DESTROY", 1)
    a, b = esl.legs(u)
    assert [e.name for e in a] == [
        "CHANNEL_CREATE",
        "CHANNEL_ORIGINATE",
        "CHANNEL_HANGUP",
        "CHANNEL_CALLSTATE",
        "CHANNEL_HANGUP_COMPLETE",
        "CHANNEL_DESTROY",
    ]
    assert a[-1].var("sip_hangup_disposition") == "recv_refuse"
    assert b == []


def test_rejection_mix_proportions(esl: Esl, server: SimServer) -> None:
    esl.api("sim reject_mix 486=0.5")
    esl.command("event plain BACKGROUND_JOB")
    for _ in range(60):
        esl.originate(doggy(server))
    esl.wait_count("BACKGROUND_JOB", 60)
    busy = sum(1 for e in esl.events if e.body == "-ERR USER_BUSY\n")
    ok = sum(1 for e in esl.events if (e.body or "").startswith("+OK"))
    assert busy + ok == 60
    assert 10 <= busy <= 50


def test_no_answer_after_originate_timeout(esl: Esl, server: SimServer) -> None:
    esl.api("sim reject_mix noanswer=1")
    esl.command(SUBSCRIBE)
    u = esl.originate(doggy(server), originate_timeout="1")
    assert esl.job(timeout=5) == "-ERR NO_ANSWER\n"
    a, _ = esl.legs(u)
    assert a[-1].name in ("CHANNEL_HANGUP_COMPLETE", "CHANNEL_DESTROY")


def test_unknown_endpoint(esl: Esl) -> None:
    esl.command("event plain BACKGROUND_JOB CHANNEL_CREATE")
    esl.originate("nosuchendpoint/foo")
    assert esl.job() == "-ERR CHAN_NOT_IMPLEMENTED\n"
    assert esl.count("CHANNEL_CREATE") == 0


def test_max_sessions_limit(esl: Esl, server: SimServer) -> None:
    assert esl.api("fsctl max_sessions 3") == "+OK max sessions: 3\n"
    esl.command(SUBSCRIBE)
    uuids = [esl.originate(doggy(server)) for _ in range(3)]
    esl.wait_count("BACKGROUND_JOB", 3)
    results = {e.body for e in esl.events if e.name == "BACKGROUND_JOB"}
    assert results == {
        f"+OK {uuids[0]}\n",
        "-ERR NORMAL_TEMPORARY_FAILURE\n",
        "-ERR DESTINATION_OUT_OF_ORDER\n",
    }
    assert not [e for e in esl.events if e.unique_id == uuids[2]], "a refused A-leg has no events"
    a2, b2 = esl.legs(uuids[1])
    assert a2[-1].hangup_cause == "NORMAL_TEMPORARY_FAILURE" and b2 == []


def test_sps_limit_after_refill(esl: Esl, server: SimServer) -> None:
    assert esl.api("fsctl sps 5") == "+OK sessions per second: 5\n"
    esl.command("event plain BACKGROUND_JOB")
    time.sleep(1.1)  # one refill with the new value
    for _ in range(6):
        esl.originate(doggy(server))
    esl.wait_count("BACKGROUND_JOB", 6)
    bodies = [e.body or "" for e in esl.events if e.name == "BACKGROUND_JOB"]
    ok = sum(b.startswith("+OK") for b in bodies)
    # sps - 1 = 4 sessions pass in a second: 2 calls (both legs count); a refill may
    # fall inside the burst, which lets at most one more window through
    assert 2 <= ok <= 4
    assert "-ERR DESTINATION_OUT_OF_ORDER\n" in bodies


def test_hupall_plain_and_by_variable(esl: Esl, server: SimServer) -> None:
    esl.command(SUBSCRIBE)
    app1 = [esl.originate(doggy(server), fastswitch_client="app1") for _ in range(2)]
    app2 = [
        esl.originate(
            doggy(server), fastswitch_client="app2", **{"sip_h_X-fastswitch_client": "app2"}
        )
        for _ in range(2)
    ]
    esl.wait_count("CHANNEL_PARK", 8)
    reply = esl.api("hupall NORMAL_CLEARING fastswitch_client app1")
    assert (
        reply
        == "+OK hangup all channels matching [fastswitch_client]=[app1] with cause: NORMAL_CLEARING\n"
    )
    esl.wait_count("CHANNEL_DESTROY", 4)
    assert esl.api("show channels count") == "\n4 total.\n"
    for u in app1:
        a, b = esl.legs(u)
        assert a[-1].name == "CHANNEL_DESTROY" and b[-1].name == "CHANNEL_DESTROY"
    reply = esl.api("hupall NORMAL_CLEARING sip_h_X-fastswitch_client app2")
    assert reply.startswith("+OK hangup all channels matching [sip_h_X-fastswitch_client]=[app2]")
    esl.wait_count("CHANNEL_DESTROY", 8)
    for u in app2:
        a, b = esl.legs(u)
        assert b[-1].var("sip_hangup_disposition") == "send_bye"  # matched directly
    assert esl.api("hupall") == "+OK hangup all channels with cause MANAGER_REQUEST\n"
    # mod_commands' parsing: a cause by name in any case or by number, an unknown one is
    # MANAGER_REQUEST; the value is the rest of the line (one variable is matched)
    assert esl.api("hupall user_busy") == "+OK hangup all channels with cause USER_BUSY\n"
    assert esl.api("hupall 17") == "+OK hangup all channels with cause USER_BUSY\n"
    assert esl.api("hupall NO_SUCH_CAUSE") == (
        "+OK hangup all channels with cause MANAGER_REQUEST\n"
    )
    assert esl.api("hupall NORMAL_CLEARING a b c") == (
        "+OK hangup all channels matching [a]=[b c] with cause: NORMAL_CLEARING\n"
    )


def test_uuid_kill_with_cause_and_sched_hangup(esl: Esl, server: SimServer) -> None:
    esl.command(SUBSCRIBE)
    u1, u2 = esl.originate(doggy(server)), esl.originate(doggy(server))
    esl.wait_count("CHANNEL_PARK", 4)
    assert esl.api(f"uuid_kill {u1} USER_BUSY") == "+OK\n"
    assert esl.api(f"sched_hangup +1 {u2}") == "+OK\n"
    esl.wait_count("CHANNEL_DESTROY", 4, timeout=5)
    a1, b1 = esl.legs(u1)
    a2, b2 = esl.legs(u2)
    assert a1[-1].hangup_cause == "USER_BUSY" and b1[-1].hangup_cause == "NORMAL_CLEARING"
    assert (
        a2[-1].hangup_cause == "ALLOTTED_TIMEOUT"
        and a2[-1].var("sip_hangup_disposition") == "send_bye"
    )
    assert (
        b2[-1].hangup_cause == "NORMAL_CLEARING"
        and b2[-1].var("sip_hangup_disposition") == "recv_bye"
    )
    # whole-second scheduler: the hangup comes at the next second boundary after +1
    answered = int(a2[0].get("Event-Date-Timestamp")) // 1_000_000
    hung = int(a2[-1].get("Caller-Channel-Hangup-Time")) // 1_000_000
    assert hung - answered in (0, 1, 2)


def test_client_driven_flows(esl: Esl, server: SimServer) -> None:
    """ctl: the client answers, rings and refuses the parked inbound leg."""
    esl.command(SUBSCRIBE)
    u = esl.originate(doggy(server, "ctl"))
    esl.wait_count("CHANNEL_PARK", 1)
    _, b = esl.legs(u)
    b_uuid = b[0].unique_id
    assert (
        esl.command(f"sendmsg {b_uuid}\ncall-command: execute\nexecute-app-name: ring_ready")
        == "+OK"
    )
    esl.wait(lambda _: esl.count("CHANNEL_PROGRESS", **{"Unique-ID": u}) == 1)
    assert esl.api(f"uuid_answer {b_uuid}") == "+OK\n"
    assert esl.job() == f"+OK {u}\n"
    esl.wait(lambda _: esl.count("CHANNEL_PARK", **{"Unique-ID": u}) == 1)
    assert esl.api(f"uuid_getvar {u} fastswitch_nothing") == "_undef_"
    assert esl.api(f"uuid_setvar {u} fastswitch_x 42") == "+OK\n"
    assert esl.api(f"uuid_getvar {u} fastswitch_x") == "42"
    u2 = esl.originate(doggy(server, "ctl"))
    esl.wait(lambda _: len(esl.legs(u2)[1]) >= 1)
    b2 = esl.legs(u2)[1][0].unique_id
    esl.command(
        f"sendmsg {b2}\ncall-command: execute\nexecute-app-name: respond\nexecute-app-arg: 486"
    )
    assert esl.job() == "-ERR USER_BUSY\n"


def test_bert_two_sided_and_lost_sync(esl: Esl, server: SimServer) -> None:
    esl.api("sim bert_lost_sync_prob 1")
    esl.api("sim bert_sync_delay 0.2")
    try:
        esl.command(SUBSCRIBE)
        u = esl.originate(doggy(server, "bert"), app="&bert_test()", bert_window_ms="200")
        esl.wait_count("CUSTOM", 4, timeout=5)
        subs = [(e.subclass, e.call_direction) for e in esl.events if e.name == "CUSTOM"]
        assert subs[:2] == [("mod_bert::in_sync", "inbound"), ("mod_bert::in_sync", "outbound")]
        assert {s for s, _ in subs[2:]} == {"mod_bert::lost_sync"}
        esl.api(f"uuid_kill {u}")
        esl.wait_count("CHANNEL_HANGUP_COMPLETE", 2)
        hc = next(e for e in esl.events if e.name == "CHANNEL_HANGUP_COMPLETE" and e.unique_id == u)
        assert hc.var("bert_stats_sync_lost") == "true"
    finally:
        esl.api("sim bert_sync_delay 1.0")


def test_bert_timeout_when_far_end_does_not_run_it(esl: Esl, server: SimServer) -> None:
    esl.command(SUBSCRIBE)
    esl.originate(
        doggy(server), app="&bert_test()", bert_timeout_ms="300", bert_hangup_on_error="yes"
    )
    esl.wait_count("CUSTOM", 1, timeout=5)
    assert esl.events[-1].subclass == "mod_bert::timeout" or any(
        e.subclass == "mod_bert::timeout" for e in esl.events
    )
    esl.wait_count("CHANNEL_HANGUP_COMPLETE", 2)
    assert any(
        e.hangup_cause == "MEDIA_TIMEOUT" for e in esl.events if e.name == "CHANNEL_HANGUP_COMPLETE"
    )


def test_answer_delay_setting_at_run_time(esl: Esl, server: SimServer) -> None:
    assert esl.api("sim answer_delay 0.3") == "+OK answer_delay=0.3\n"
    assert json.loads(esl.api("sim"))["answer_delay"] == 0.3
    assert esl.api("sim no_such_setting 1").startswith("-ERR unknown setting")
    esl.command(SUBSCRIBE)
    u = esl.originate(doggy(server))
    assert esl.job() == f"+OK {u}\n"
    a, b = esl.legs(u)
    names = [e.name for e in a]
    assert names.index("CHANNEL_PROGRESS") < names.index("CHANNEL_ANSWER")
    ring = next(e for e in a if e.name == "CHANNEL_PROGRESS")
    ans = next(e for e in a if e.name == "CHANNEL_ANSWER")
    assert int(ans.get("Caller-Channel-Answered-Time")) > int(
        ring.get("Caller-Channel-Progress-Time")
    )


def test_calls_survive_client_disconnect(server: SimServer) -> None:
    c1 = Esl(server.address)
    c1.command(SUBSCRIBE)
    u = c1.originate(doggy(server))
    c1.wait_count("CHANNEL_PARK", 2)
    c1.close()
    c2 = Esl(server.address)
    try:
        assert c2.api("show channels count") == "\n2 total.\n"
        assert c2.api(f"uuid_exists {u}") == "true"
        c2.command(SUBSCRIBE)
        assert c2.api(f"uuid_kill {u}") == "+OK\n"
        c2.wait_count("CHANNEL_DESTROY", 2)
    finally:
        c2.close()


# -- slow consumers and faults ----------------------------------------------------------------


def test_slow_consumer_queue_is_bounded_and_listener_killed(esl: Esl, server: SimServer) -> None:
    victim = Esl(server.address)
    try:
        victim.command("event plain ALL")
        esl.api("sim event_queue_limit 50")
        esl.api("sim max_missed 20")
        assert esl.api("sim fault stall 5").startswith("+OK fault stall")
        for _ in range(10):  # ~40 events per call: far beyond 50 + 20
            esl.originate(doggy(server))
        victim.wait(lambda _: victim.closed or bool(victim.frames), timeout=5)
        notice = victim.next_frame()
        assert notice.content_type == "text/disconnect-notice"
        assert notice.body == b"killed listener because of lost events\n"
        victim._fill(1.0)
        assert victim.closed
        assert not [e for e in victim.events if e.unique_id], (
            "no channel event got through the stall"
        )
        stats = json.loads(esl.api("sim stats"))
        assert stats["sessions"] >= 0
    finally:
        victim.close()
        esl.api("sim fault stall 0")


@pytest.mark.parametrize("fault", ["drop", "malformed", "oversized", "rude", "disconnect"])
def test_fault_injection(server: SimServer, fault: str) -> None:
    victim = Esl(server.address)
    ctl = Esl(server.address)
    try:
        victim.command("event plain CHANNEL_CREATE")
        victim.parser = Parser(max_frame_size=16 * 1024 * 1024)
        assert ctl.api(f"sim fault {fault} others").startswith(f"+OK fault {fault}")
        if fault == "drop":
            victim._fill(2.0)
            assert victim.closed and not victim.frames
            return
        if fault in ("malformed", "oversized"):
            with pytest.raises(ESLProtocolError):
                end = time.monotonic() + 5
                while time.monotonic() < end:
                    victim._fill(0.1)
            return
        f = victim.next_frame()
        if fault == "rude":
            assert (
                f.content_type == "text/rude-rejection" and f.body == b"Access Denied, go away.\n"
            )
        else:
            assert (
                f.content_type == "text/disconnect-notice"
                and f.body == b"The system is being shut down.\n"
            )
        victim._fill(1.0)
        assert victim.closed
    finally:
        victim.close()
        ctl.close()


# -- process management and CLI -----------------------------------------------------------------


def test_server_start_failure_is_reported(server: SimServer) -> None:
    clash = SimServer(SimConfig(host=server.address[0], port=server.address[1], sip_port=0))
    with pytest.raises(RuntimeError, match="failed"):
        clash.start()
    assert not clash.running


def test_cli_runs_servers_until_interrupted() -> None:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; from fastswitch.sim import main; sys.exit(main(sys.argv[1:]))",
            "--count",
            "2",
            "--port",
            "0",
            "--heartbeat-interval",
            "0",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        lines = [proc.stdout.readline() for _ in range(2)]  # type: ignore[union-attr]
        addrs = []
        for line in lines:
            assert line.startswith("simulated FreeSWITCH: esl 127.0.0.1:"), line
            host, port = line.split()[3].rsplit(":", 1)
            addrs.append((host, int(port)))
        for addr in addrs:
            c = Esl(addr)
            assert c.api("version").startswith("FreeSWITCH Version 1.11.3")
            c.close()
    finally:
        proc.send_signal(2)
        assert proc.wait(timeout=15) == 0


@pytest.mark.parametrize(
    "sim_server", [{"hostname": "simhost", "fault_drop_after": 1.0}], indirect=True
)
def test_fixture_settings_and_scheduled_drop(sim_server: SimServer) -> None:  # noqa: F811
    c = Esl(sim_server.address)
    try:
        c.command("event plain BACKGROUND_JOB")
        assert c.api("global_getvar hostname") == "simhost"
        assert c.command("bgapi status").startswith("+OK Job-UUID: ")
        c.wait_count("BACKGROUND_JOB", 1)
        assert c.events[0].get("FreeSWITCH-Hostname") == "simhost"
        end = time.monotonic() + 4
        while not c.closed and time.monotonic() < end:
            c._fill(0.1)
        assert c.closed, "fault_drop_after aborts the connection"
        assert not c.frames, "dropped without a notice"
    finally:
        c.close()


def test_cluster_on_consecutive_loopback_hosts() -> None:
    from fastswitch.sim import SimCluster

    with SimCluster(
        count=2, spread_hosts=True, host="127.0.0.5", port=0, heartbeat_interval=0.0
    ) as cl:
        assert [a[0] for a in cl.addresses] == ["127.0.0.5", "127.0.0.6"]
        assert [a[0] for a in cl.sip_addresses] == ["127.0.0.5", "127.0.0.6"]
        a = Esl(cl[0].address)
        try:
            a.command("event plain CHANNEL_PARK BACKGROUND_JOB")
            u = a.originate("sofia/external/doggy@{}:{}".format(*cl[1].sip_address))
            assert a.job() == f"+OK {u}\n"
            b = Esl(cl[1].address)
            try:
                assert b.api("show channels count") == "\n1 total.\n"
            finally:
                b.close()
        finally:
            a.close()
