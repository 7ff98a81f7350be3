"""Apps runtime and call tracking over replayed client-driven call flows (captures k, l,
m): callbacks get the right Session, session commands go out exactly as FreeSWITCH
accepted them, legs pair into calls, memory is released; plus remote B-legs,
caller-id correlation, errors in callbacks, prepost teardown and the app registry."""

from __future__ import annotations

import asyncio
import logging
import sys
from pathlib import Path

import pytest

from fastswitch.apps import AppRegistry, all_apps, event_callback, event_names_of, get_app, register
from fastswitch.client import Client
from fastswitch.esl import Parser

sys.path.insert(0, str(Path(__file__).parent))
from replay_server import ReplayServer  # noqa: E402
from support import run_async, until

pytestmark = pytest.mark.timeout(30)

K_A, K_B, K_JOB = (
    "d98f36c4-f9c2-4173-b79a-65318d69b9e4",
    "8a7643e3-cb6c-480e-b4c1-17e5f309ae4a",
    "40e938ae-b741-439f-ba0b-b0ddcbccbd51",
)


run = run_async(20)


def feeder(*ids):
    it = iter(ids)
    return lambda: next(it)


class AnswerThenHangup:
    """Flow k: answer the parked B-leg, hang the A-leg up 1 s after it parks."""

    def __init__(self):
        self.seen: list[tuple[str, str, str]] = []
        self.jobs = []

    @event_callback("CHANNEL_PARK")
    def on_park(self, sess):
        self.seen.append(("PARK", sess.direction, sess.uuid))
        if sess.is_inbound():
            sess.answer()
        else:
            sess.sched_hangup(1)

    @event_callback("CHANNEL_ANSWER")
    def on_answer(self, sess):
        self.seen.append(("ANSWER", sess.direction, sess.uuid))

    @event_callback("BACKGROUND_JOB")
    def on_job(self, job):
        self.jobs.append(job)


def assert_released(client):
    t = client.listener
    assert not t.calls and not t.sessions and not t.jobs and not t._by_index
    assert t.active_calls == 0 and t.active_sessions == 0


def b_leg_first(srv: ReplayServer) -> None:
    """Reorder the events after the originate so the B-leg's come before the A-leg's
    (same bytes, same length: the replay offsets stay valid)."""
    start, end = srv.offsets[2], srv.offsets[3]
    frames = Parser().feed(srv.data[start:end])
    a = [f.raw for f in frames if f.is_event and f.event.unique_id == K_A]
    rest = [f.raw for f in frames if not (f.is_event and f.event.unique_id == K_A)]
    assert len(a) == 2 and len(rest) == 5  # reply + 4 B-leg events
    srv.data = srv.data[:start] + b"".join(rest + a) + srv.data[end:]


@pytest.mark.parametrize("order", ["captured", "b_leg_first"])
@run
async def test_flow_k_uuid_answer(captures_dir, order):
    srv = ReplayServer(captures_dir / "k_ctl_answer")
    if order == "b_leg_first":
        b_leg_first(srv)
    async with srv:
        c = Client(port=srv.port, reconnect=False, uuid_func=feeder(K_A, K_JOB))
        app = AnswerThenHangup()
        app_id = c.load_app(app, "app1")
        done = []
        c.listener.call_complete_hooks.append(done.append)
        await c.connect()
        c.set_orig_cmd("ctl@127.0.0.1:5080")
        job = c.originate()
        assert job.call.uuid == K_A and c.listener.calls[K_A] is job.call  # known before send
        assert await job == f"+OK {K_A}\n"
        await until(lambda: done)
        # the commands FreeSWITCH accepted, byte for byte, but for the caller-id name
        # variable (tests/test_commands.py: the captured spelling had no effect)
        assert srv.received[2].split(b"\n")[0] == srv.expected(2).replace(
            b"originate_caller_id_name=", b"origination_caller_id_name="
        )
        assert srv.received[2].endswith(f"\nJob-UUID: {K_JOB}".encode())
        assert srv.received[3:5] == [srv.expected(3), srv.expected(4)]
        await c.close()
    (call,) = done
    assert app_id == "app1" and call.app_id == "app1" and not call.remote and not call.failed
    assert call.caller.uuid == K_A and call.callee.uuid == K_B
    assert call.first is (call.callee if order == "b_leg_first" else call.caller)
    assert [s.app_id for s in call.sessions] == ["app1", "app1"]
    assert app.seen[:2] == [("PARK", "inbound", K_B), ("ANSWER", "inbound", K_B)]
    assert ("PARK", "outbound", K_A) in app.seen
    assert app.jobs == [job] and call.job is job
    a, b = call.caller, call.callee
    assert a.hangup_cause == "ALLOTTED_TIMEOUT" and b.hangup_cause == "NORMAL_CLEARING"
    # no CHANNEL_ORIGINATE subscribed: the A-leg's originate time is its CREATE
    assert a.originate_time == a.create_time and b.originate_time is None
    assert a.answered and b.answered and call.answered
    for s in (a, b):
        assert s.create_time <= s.answer_time <= s.hangup_time
        assert s.create_fs_time < s.hangup_fs_time
        assert s.var("fastswitch_client") in ("app1", None)
        assert s.var("sip_h_X-fastswitch_client") == "app1"
    assert c.listener.answered_calls == 1 and c.listener.completed_calls == 1
    assert_released(c)


class Respond404:
    @event_callback("CHANNEL_PARK")
    def on_park(self, sess):
        if sess.is_inbound():
            sess.respond(404)


@run
async def test_flow_l_respond_404(captures_dir, caplog):
    caplog.set_level(logging.ERROR, logger="fastswitch.listener")
    a, job_uuid = "e4de17f2-9226-44a8-ac80-b0ec8b6ef8e4", "b8b2a84f-f5c0-4c49-bc1c-359072eb43c6"
    async with ReplayServer(captures_dir / "l_ctl_respond404") as srv:
        c = Client(port=srv.port, reconnect=False, uuid_func=feeder(a, job_uuid))
        c.load_app(Respond404, "app1")
        done, failed = [], []
        c.listener.call_complete_hooks.append(done.append)
        c.listener.job_failed_hooks.append(failed.append)
        await c.connect()
        c.set_orig_cmd("ctl@127.0.0.1:5080")
        c.originate()
        await until(lambda: done)
        assert srv.received[3] == srv.expected(3)  # sendmsg execute respond 404
        await c.close()
    (call,) = done
    assert call.failed and call.job.cause == "UNALLOCATED_NUMBER"
    assert [s.hangup_cause for s in call.sessions] == ["UNALLOCATED_NUMBER"] * 2
    assert not call.answered and failed == [call.job]
    assert c.listener.failed_jobs == {"UNALLOCATED_NUMBER": 1}
    assert (
        f"Job '{job_uuid}' corresponding to session '{a}' failed with:\n-ERR UNALLOCATED_NUMBER"
        in [r.getMessage() for r in caplog.records]
    )
    assert_released(c)


class EarlyThenCancel:
    """Flow m: ring_ready (call 1) or pre_answer (call 2) on the B-leg, then kill the A-leg."""

    def __init__(self):
        self.n = 0

    @event_callback("CHANNEL_PARK")
    def on_park(self, sess):
        if sess.is_inbound():
            self.n += 1
            if self.n == 1:
                sess.ring_ready()
            else:
                sess.pre_answer()
            sess.call.caller.hangup()


@run
async def test_flow_m_ring_ready_and_pre_answer(captures_dir):
    ids = feeder(
        "e818c622-8675-43ee-a767-12b14d53d952",
        "a6dff4a6-2053-45b5-93af-7c31ee939646",
        "82b4cabb-e9e8-483a-b95b-143218f44376",
        "cdb5565d-44a4-487c-873c-19616655d0c9",
    )
    async with ReplayServer(captures_dir / "m_ctl_ringready") as srv:
        extra = ["CHANNEL_PROGRESS", "CHANNEL_PROGRESS_MEDIA"]
        c = Client(port=srv.port, reconnect=False, uuid_func=ids, events=extra)
        c.load_app(EarlyThenCancel, "app1")
        done = []
        c.listener.call_complete_hooks.append(done.append)
        await c.connect()
        c.set_orig_cmd("ctl@127.0.0.1:5080")
        c.originate()
        await until(lambda: len(done) == 1)
        c.originate()
        await until(lambda: len(done) == 2)
        await c.close()
    sent = srv.received
    assert sent[3] == srv.expected(3)  # sendmsg execute ring_ready
    assert sent[4] == srv.expected(4)  # api uuid_kill A
    assert sent[6] == srv.expected(6)  # sendmsg execute pre_answer
    assert sent[7] == srv.expected(7)
    ring, early = done
    assert ring.failed and ring.job.cause == "NORMAL_CLEARING"
    assert ring.callee.hangup_cause == "ORIGINATOR_CANCEL"
    assert ring.callee.progress_time is not None and not ring.answered
    # pre_answer: a bgapi originate counts early media as success
    assert not early.failed and early.job.result.startswith("+OK 82b4cabb")
    assert early.caller.progress_time is not None and not early.answered
    assert_released(c)


@pytest.mark.parametrize("track_remote", [True, False])
@run
async def test_remote_b_leg_is_its_own_call(captures_dir, track_remote):
    """The B-leg of a call originated elsewhere (here: by nobody on this client) with one
    of our app ids is tracked as a remote call; the foreign A-leg is ignored. With
    track_remote=False (workers sharing a slave) it is ignored too."""
    async with ReplayServer(captures_dir / "k_ctl_answer") as srv:
        c = Client(port=srv.port, reconnect=False, track_remote=track_remote)
        app = AnswerThenHangup()
        c.load_app(app, "app1")
        done = []
        c.listener.call_complete_hooks.append(done.append)
        await c.connect()
        # take the originate's step with a harmless command (its reply is a bgapi reply)
        assert (await c.cmd("noevents")).startswith("+OK Job-UUID")
        if track_remote:
            await until(lambda: len(srv.received) >= 4)  # the app answered the B-leg
        else:
            await c.api(f"uuid_answer {K_B}")  # nobody tracks the B-leg: do the app's step
        await c.api(f"sched_hangup +1 {K_A}")  # the capture's next command
        if track_remote:
            await until(lambda: done)
        else:
            await c.noevents()  # the capture's last step: every event has been handled
        await c.close()
    if not track_remote:
        assert done == [] and app.seen == [] and c.listener.remote_calls == 0
        assert_released(c)
        return
    (call,) = done
    assert call.remote and call.uuid == K_A and call.job is None
    assert [s.uuid for s in call.sessions] == [K_B] and call.callee.app_id == "app1"
    assert ("PARK", "outbound", K_A) not in app.seen  # not our A-leg: not dispatched
    assert c.listener.remote_calls == 1 and c.listener.originated_calls == 0
    assert_released(c)


def strip_x_headers(data: bytes) -> bytes:
    # a SUT that drops X- headers; the B-leg's caller-id number carries the call index
    data = data.replace(b"variable_sip_h_X-", b"variable_sip_h_Y-")
    return data.replace(
        b"Caller-Caller-ID-Number: 0000000000", b"Caller-Caller-ID-Number: 0000000001"
    )


@run
async def test_caller_id_correlation_pairs_without_x_headers(captures_dir):
    srv = ReplayServer(captures_dir / "k_ctl_answer")
    srv.data = strip_x_headers(srv.data)
    async with srv:
        c = Client(
            port=srv.port,
            reconnect=False,
            correlation="caller_id",
            cid_prefix="000000000",
            uuid_func=feeder(K_A, K_JOB),
        )
        c.load_app(AnswerThenHangup, "app1")
        done = []
        c.listener.call_complete_hooks.append(done.append)
        await c.connect()
        cmd = c.set_orig_cmd("ctl@127.0.0.1:5080")
        assert "origination_caller_id_number={call_index}" in cmd
        job = c.originate()
        assert job.call.index == "0000000001"
        await until(lambda: len(srv.received) >= 3)
        assert b",origination_caller_id_number=0000000001}" in srv.received[2]
        await until(lambda: done)
        await c.close()
    (call,) = done
    assert call.caller.uuid == K_A and call.callee.uuid == K_B
    assert call.callee.app_id == "app1"  # from the call: the B-leg has no X- header left
    assert_released(c)


class Boom:
    def __init__(self):
        self.after = []

    @event_callback("CHANNEL_PARK")
    def explode(self, sess):
        raise RuntimeError("app bug")

    @event_callback("CHANNEL_PARK")
    async def later(self, sess):
        await asyncio.sleep(0)
        self.after.append(sess.uuid)
        if sess.is_inbound():
            await sess.answer()  # awaitable session commands


@run
async def test_callback_errors_are_logged_and_dispatch_goes_on(captures_dir, caplog):
    async with ReplayServer(captures_dir / "k_ctl_answer") as srv:
        c = Client(port=srv.port, reconnect=False, uuid_func=feeder(K_A, K_JOB))
        boom = Boom()
        c.load_app(boom, "app1")
        other = AnswerThenHangup()
        c.load_app(other, "app2")  # a second app: must not see app1's calls
        done = []
        c.listener.call_complete_hooks.append(done.append)
        await c.connect()
        c.set_orig_cmd("ctl@127.0.0.1:5080")
        c.originate(app_id="app1")
        await until(lambda: len(boom.after) == 2)
        # the A-leg hangup is not automatic here: send the capture's next command
        await c.api(f"sched_hangup +1 {K_A}")
        await until(lambda: done)
        await c.close()
    errors = [r for r in caplog.records if "callback" in r.getMessage()]
    assert len(errors) == 2 and all(r.exc_info for r in errors)
    assert "app bug" in caplog.text
    assert set(boom.after) == {K_A, K_B}
    assert other.seen == [] and other.jobs == []


class Fixture:
    events: list[str] = []

    def prepost(self, client, listener, greeting="hi"):
        Fixture.events.append(f"setup {greeting} {type(client).__name__} {listener.active_calls}")
        yield
        Fixture.events.append("teardown")

    @event_callback("mod_bert::lost_sync")
    def lost(self, sess):
        pass


def test_registry_prepost_and_event_names():
    Fixture.events = []
    reg = AppRegistry()
    c = Client(reconnect=False)
    reg.load(Fixture, "f1", c, c.listener, {"greeting": "yo"})
    assert Fixture.events == ["setup yo Client 0"]
    assert reg.event_names == {"mod_bert::lost_sync"} == event_names_of(Fixture)
    with pytest.raises(ValueError):
        reg.load(Fixture, "f1", c, c.listener)
    reg.unload("f1")
    assert Fixture.events[-1] == "teardown" and reg.event_names == set()
    with pytest.raises(TypeError):
        event_callback()


def test_weighted_app_choice_is_exact():
    c = Client(reconnect=False)

    class A:
        pass

    class B:
        pass

    c.load_app(A, weight=1)
    c.load_app(B, weight=3)
    c.load_app(A, "A_off", weight=0)
    assert sorted(c._app_cycle) == ["A", "B", "B", "B"]
    assert c.load_app(A) == "A2"


def test_app_registry_by_name():
    @register(name="TestOnlyApp")
    class TestOnlyApp:
        pass

    assert get_app("TestOnlyApp") is TestOnlyApp
    assert "TestOnlyApp" in all_apps()
    assert get_app("fastswitch.client:Client") is Client
    with pytest.raises(KeyError, match="no app named"):
        get_app("NoSuchApp")
