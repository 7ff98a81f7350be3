"""Client, call tracking and apps against the FreeSWITCH simulator: loop-back calls through
one server and through two (remote B-legs), session-driven flows, hupall of only this
client's calls, call filters on a shared server, json events, reconnect after a drop,
malformed bytes from a live server, and memory release."""

from __future__ import annotations

import asyncio
import gc
import weakref

import pytest
from support import run_async, until

from fastswitch.apps import event_callback
from fastswitch.client import Client
from fastswitch.errors import ConnectionLost, ESLError, ESLProtocolError

pytestmark = pytest.mark.timeout(60)


run = run_async(40)


def client_for(server, **kw) -> Client:
    host, port = server.address
    kw.setdefault("reconnect", False)
    return Client(host, port, **kw)


def sip_dest(server, user="doggy") -> str:
    host, port = server.cfg.sip_address
    return f"{user}@{host}:{port}"


class HangupOnPark:
    """Hang the A-leg up as soon as it parks (answered loop-back call)."""

    def __init__(self):
        self.parked: list = []
        self.jobs: list = []

    @event_callback("CHANNEL_PARK")
    def on_park(self, sess):
        self.parked.append((sess.direction, sess.uuid))
        if sess.is_outbound():
            sess.hangup("NORMAL_CLEARING")

    @event_callback("BACKGROUND_JOB")
    def on_job(self, job):
        self.jobs.append(job)


def assert_released(c: Client) -> None:
    t = c.listener
    assert not t.calls and not t.sessions and not t.jobs and not t._by_index


@run
async def test_loopback_calls_pair_legs_and_release_memory(sim_server):
    c = client_for(sim_server)
    app = HangupOnPark()
    c.load_app(app, "app1")
    done = []
    c.listener.call_complete_hooks.append(done.append)
    await c.connect()
    c.set_orig_cmd(sip_dest(sim_server))
    jobs = [c.originate() for _ in range(20)]
    assert c.listener.originated_calls == 20 and c.listener.active_calls == 20
    await until(lambda: len(done) == 20)
    assert {call.uuid for call in done} == {j.sess_uuid for j in jobs}
    for call in done:
        assert not call.failed and not call.remote and call.lost is None and call.answered
        a, b = call.caller, call.callee
        assert a.uuid == call.uuid and b is not None and b.uuid != a.uuid
        assert b.var("sip_h_X-originating_session_uuid") == call.uuid
        assert a.app_id == b.app_id == "app1"
        assert a.hangup_cause == "NORMAL_CLEARING"
        assert call.job.result == f"+OK {call.uuid}\n"
    assert all(await asyncio.gather(*(j.future for j in jobs)))
    assert len(app.jobs) == 20 and len(app.parked) == 40
    t = c.listener
    assert t.answered_calls == 20 and t.failed_calls == 0 and t.completed_calls == 20
    assert_released(c)
    # nothing else keeps finished calls alive: memory does not grow with calls made
    refs = [weakref.ref(x) for call in done for x in (call, call.job, *call.sessions)]
    done.clear()
    jobs.clear()
    app.jobs.clear()
    call = a = b = None
    gc.collect()
    assert refs and all(r() is None for r in refs)
    await c.close()


class CalleeParks:
    """On the callee's slave: answer nothing, just record the remote B-legs' parks."""

    def __init__(self):
        self.parked: list = []

    @event_callback("CHANNEL_PARK")
    def on_park(self, sess):
        self.parked.append(sess)


@run
async def test_two_servers_remote_b_legs(sim_cluster):
    s1, s2 = sim_cluster.servers
    c1, c2 = client_for(s1), client_for(s2)
    app1, app2 = HangupOnPark(), CalleeParks()
    c1.load_app(app1, "app1")
    c2.load_app(app2, "app1")  # the same app id on every slave, as the Originator loads it
    done1, done2 = [], []
    c1.listener.call_complete_hooks.append(done1.append)
    c2.listener.call_complete_hooks.append(done2.append)
    await c1.connect()
    await c2.connect()
    c1.set_orig_cmd(sip_dest(s2))  # s1 calls through to s2
    jobs = [c1.originate() for _ in range(5)]
    await until(lambda: len(done1) == 5 and len(done2) == 5)
    uuids = {j.sess_uuid for j in jobs}
    assert {call.uuid for call in done1} == uuids == {call.uuid for call in done2}
    for call in done1:
        assert not call.remote and [s.direction for s in call.sessions] == ["outbound"]
    for call in done2:
        assert call.remote and call.job is None and call.caller is None
        assert call.callee.var("sip_h_X-originating_session_uuid") == call.uuid
    assert c2.listener.remote_calls == 5 and c2.listener.originated_calls == 0
    assert len(app2.parked) == 5 and all(s.is_inbound() for s in app2.parked)
    assert_released(c1)
    assert_released(c2)
    await c1.close()
    await c2.close()


class Controlled:
    """Client-driven flows on the park-only ``ctl`` extension (captures k, l, m)."""

    def __init__(self, action):
        self.action = action

    @event_callback("CHANNEL_PARK")
    def on_park(self, sess):
        if sess.is_inbound():
            if self.action == "answer":
                sess.answer()
            elif self.action == "404":
                sess.respond(404)
            elif self.action == "ring_ready":
                sess.ring_ready()
        elif self.action == "answer":
            sess.hangup()

    @event_callback("CHANNEL_PROGRESS")
    def on_ringing(self, sess):
        if sess.is_outbound():  # the 180 reached the caller: cancel the call
            sess.hangup()


@pytest.mark.parametrize(
    "action, failed, caller_cause, callee_cause",
    [
        ("answer", False, "NORMAL_CLEARING", "NORMAL_CLEARING"),
        ("404", True, "UNALLOCATED_NUMBER", "UNALLOCATED_NUMBER"),
        ("ring_ready", True, "NORMAL_CLEARING", "ORIGINATOR_CANCEL"),
    ],
)
@run
async def test_session_driven_flows(sim_server, action, failed, caller_cause, callee_cause):
    c = client_for(sim_server)
    c.load_app(Controlled(action), "ctl")
    done = []
    c.listener.call_complete_hooks.append(done.append)
    await c.connect()
    c.set_orig_cmd(sip_dest(sim_server, "ctl"))
    c.originate()
    await until(lambda: done)
    (call,) = done
    assert call.failed is failed
    assert call.caller.hangup_cause == caller_cause
    assert call.callee.hangup_cause == callee_cause
    if action == "ring_ready":
        assert call.caller.progress_time is not None and not call.answered
    if failed:
        assert call.job.cause == caller_cause
        assert c.listener.failed_jobs == {caller_cause: 1}
    assert_released(c)
    await c.close()


class JustPark:
    @event_callback("CHANNEL_PARK")
    def on_park(self, sess):
        pass


@run
async def test_hupall_hangs_up_only_this_apps_calls(sim_server):
    c = client_for(sim_server)
    c.load_app(JustPark, "app1")
    c.load_app(JustPark, "app2")
    done = []
    c.listener.call_complete_hooks.append(done.append)
    await c.connect()
    c.set_orig_cmd(sip_dest(sim_server))
    for app_id in ("app1", "app1", "app2"):
        c.originate(app_id=app_id)
    await until(lambda: c.listener.answered_calls == 3 and c.listener.active_sessions == 6)
    replies = await c.hupall(app_id="app1")
    assert replies[0].startswith("+OK hangup all channels matching [fastswitch_client]=[app1]")
    await until(lambda: len(done) == 2)
    assert {call.app_id for call in done} == {"app1"}
    assert c.listener.active_calls == 1
    await c.hupall()
    await until(lambda: len(done) == 3)
    assert done[-1].app_id == "app2"
    assert_released(c)
    await c.close()


@run
async def test_call_filter_on_a_shared_server(sim_server):
    mine = client_for(sim_server, call_filter=True)
    other = client_for(sim_server, call_filter=True)
    mine.load_app(HangupOnPark(), "mine")
    other.load_app(HangupOnPark(), "other")
    seen: list[tuple[str, str | None]] = []
    mine.event_hooks.append(lambda ev, now: seen.append((ev.name, ev.get("Unique-ID"))))
    done_mine, done_other = [], []
    mine.listener.call_complete_hooks.append(done_mine.append)
    other.listener.call_complete_hooks.append(done_other.append)
    await mine.connect()
    await other.connect()
    for c in (mine, other):
        c.set_orig_cmd(sip_dest(sim_server))
    mine_jobs = [mine.originate() for _ in range(3)]
    for _ in range(3):
        other.originate()
    await until(lambda: len(done_mine) == 3 and len(done_other) == 3)
    mine_legs = {s.uuid for call in done_mine for s in call.sessions}
    other_legs = {s.uuid for call in done_other for s in call.sessions}
    assert len(mine_legs) == 6 and len(other_legs) == 6
    channel_uuids = {u for name, u in seen if name != "BACKGROUND_JOB"}
    assert channel_uuids and channel_uuids <= mine_legs  # nothing of the other client's calls
    assert mine.listener.remote_calls == 0 and other.listener.remote_calls == 0
    assert {j.sess_uuid for j in mine_jobs} == {call.uuid for call in done_mine}
    await mine.close()
    await other.close()


@run
async def test_json_events(sim_server):
    c = client_for(sim_server, event_format="json", keep_events=True)
    c.load_app(HangupOnPark(), "app1")
    done = []
    c.listener.call_complete_hooks.append(done.append)
    await c.connect()
    c.set_orig_cmd(sip_dest(sim_server))
    c.originate()
    await until(lambda: done)
    (call,) = done
    # keep_events: the latest event (and the latest with variables) stay on the session
    assert call.caller.last_event.format == "json" and call.callee is not None
    assert call.caller.var_event is not None and call.caller.event is None
    assert call.caller.var("sip_hangup_disposition") is not None
    assert not call.failed
    await c.close()


class ReadsDuringDispatch(HangupOnPark):
    """Reads headers of the event being dispatched (and checks it is the one)."""

    def __init__(self):
        super().__init__()
        self.read: list = []

    @event_callback("CHANNEL_PARK")
    def on_park(self, sess):
        assert sess.event is not None and sess.event.name == "CHANNEL_PARK"
        self.read.append((sess.get("Event-Name"), sess.get("Caller-Context"), sess.var("uuid")))
        super().on_park(sess)


@run
async def test_sessions_keep_no_event_after_dispatch(sim_server):
    c = client_for(sim_server)
    app = ReadsDuringDispatch()
    c.load_app(app, "app1")
    done = []
    c.listener.call_complete_hooks.append(done.append)
    await c.connect()
    c.set_orig_cmd(sip_dest(sim_server))
    c.originate()
    await until(lambda: done)
    (call,) = done
    a, b = call.caller, call.callee
    assert len(app.read) == 2
    for name, context, uuid in app.read:
        assert name == "CHANNEL_PARK" and context and uuid in (a.uuid, b.uuid)
    for s in (a, b):
        assert s.event is None and s.last_event is None and s.var_event is None
        # headers of dispatched events are gone; the extracted ones are answered from fields
        assert s.get("Caller-Context") is None and s.var("uuid", "x") == "x"
        assert s.get("Unique-ID") == s.uuid and s.get("Call-Direction") == s.direction
        assert s.get("Hangup-Cause") == s.hangup_cause == "NORMAL_CLEARING"
        assert s.var("sip_h_X-originating_session_uuid") == call.uuid
        assert s.var("sip_h_X-fastswitch_client") == "app1"
    assert b.sip_term_status == "200" == b.var("sip_term_status")  # the BYE's answer
    assert_released(c)
    await c.close()


@run
async def test_reconnect_after_the_server_drops(sim_server):
    c = client_for(sim_server, reconnect=True, backoff=(0.02, 0.2))
    c.load_app(JustPark, "app1")
    lost_reports = []
    c.disconnect_hooks.append(lambda cl, cause, counts: lost_reports.append(counts))
    done = []
    c.listener.call_complete_hooks.append(done.append)
    await c.connect()
    c.set_orig_cmd(sip_dest(sim_server))
    await c.originate()  # the job is done: only the call's two legs are up
    await until(lambda: c.listener.active_sessions == 2 and c.listener.answered_calls == 1)
    with pytest.raises(ConnectionLost):  # the fault aborts our own connection too
        await c.api("sim fault drop")
    await c.wait_connected()
    assert c.connections == 2 and lost_reports == [(1, 2, 0)]
    (lost,) = done
    assert lost.lost.startswith("lost") and lost.failed
    # subscriptions were re-issued: a new call is tracked to the end
    app = HangupOnPark()
    c.load_app(app, "app2")
    c.originate(app_id="app2")
    await until(lambda: len(done) == 2)
    assert done[1].lost is None and done[1].callee is not None
    await c.hupall()
    await c.close()


@run
async def test_malformed_bytes_from_a_live_server(sim_server):
    c = client_for(sim_server)
    await c.connect()
    pending = c.api("status")
    with pytest.raises(ESLError):
        await c.api("sim fault malformed")  # the garbage comes before this reply
    # the command sent before resolves either way (its reply may precede the garbage)
    res = (await asyncio.gather(pending, return_exceptions=True))[0]
    assert isinstance(res, (str, ESLProtocolError))
    assert isinstance(c.last_error, ESLProtocolError)
    assert f"{c.host}:{c.port}" in str(c.last_error)
    assert not c.connected


@run
async def test_close_completes_calls_still_up_as_lost(sim_server):
    c = client_for(sim_server)
    c.load_app(JustPark, "app1")
    done = []
    c.listener.call_complete_hooks.append(done.append)
    await c.connect()
    c.set_orig_cmd(sip_dest(sim_server))
    c.originate()
    c.originate()
    await until(lambda: c.listener.answered_calls == 2 and c.listener.active_sessions == 4)
    await c.close()
    assert len(done) == 2 and all(call.lost == "lost: client closed" for call in done)
    assert c.listener.failed_calls == 2 and c.listener.lost_calls == 2
    assert_released(c)


def test_runs_on_uvloop(sim_server):
    uvloop = pytest.importorskip("uvloop")

    async def main():
        assert isinstance(asyncio.get_running_loop(), uvloop.Loop)
        c = client_for(sim_server)
        c.load_app(HangupOnPark(), "app1")
        done = []
        c.listener.call_complete_hooks.append(done.append)
        await c.connect()
        c.set_orig_cmd(sip_dest(sim_server))
        for _ in range(10):
            c.originate()
        await until(lambda: len(done) == 10)
        assert all(call.callee is not None and not call.failed for call in done)
        assert_released(c)
        await c.close()

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(asyncio.wait_for(main(), 30))


class BertSync:
    def __init__(self):
        self.synced: list = []

    @event_callback("mod_bert::in_sync")
    def in_sync(self, sess):
        self.synced.append(sess)
        if sess.is_outbound():
            sess.hangup()


@pytest.mark.parametrize("sim_server", [{"bert_sync_delay": 0.05}], indirect=True)
@run
async def test_custom_subclass_callbacks(sim_server):
    """CUSTOM mod_bert::in_sync events (no variable_* headers) reach the app that owns
    the call, with the leg's Session."""
    c = client_for(sim_server)
    app = BertSync()
    c.load_app(app, "bert1")
    done = []
    c.listener.call_complete_hooks.append(done.append)
    await c.connect()
    c.set_orig_cmd(sip_dest(sim_server, "bert"), app_name="bert_test")
    c.originate()
    await until(lambda: done)
    (call,) = done
    assert call.caller in app.synced
    assert all(s.call is call and s.app_id == "bert1" for s in app.synced)
    assert_released(c)
    await c.close()


@run
async def test_session_variable_media_and_park_commands(sim_server):
    c = client_for(sim_server)
    c.load_app(JustPark, "app1")
    await c.connect()
    c.set_orig_cmd(sip_dest(sim_server))
    job = c.originate()
    await job
    await until(lambda: c.listener.active_sessions == 2)
    call = job.call
    b = call.callee
    assert await b.getvar("fs_test_var") is None  # _undef_
    await b.setvar("fs_test_var", "v1")
    assert await b.getvar("fs_test_var") == "v1"
    assert (await b.broadcast("tone_stream://%(100,0,800)")).startswith("+OK")
    assert (await b.playback("tone_stream://%(100,0,800)")) == "+OK"
    assert (await b.park()).startswith("+OK")
    assert b.var("sip_h_X-fastswitch_client") == "app1" and b.is_inbound()
    done = []
    c.listener.call_complete_hooks.append(done.append)
    call.hangup()
    await until(lambda: done)
    assert done == [call] and call.caller.hangup_cause == "NORMAL_CLEARING"
    await c.close()


class Chain:
    """An app that originates its own follow-up calls (switchio#61)."""

    def prepost(self, client, listener, follow_ups=2):
        self.client = client
        self.left = follow_ups
        self.completed = []
        listener.call_complete_hooks.append(self.on_complete)
        yield
        listener.call_complete_hooks.remove(self.on_complete)

    def on_complete(self, call):
        if call.app_id != "chain":
            return
        self.completed.append(call)
        if self.left:
            self.left -= 1
            self.client.originate(app_id="chain")

    @event_callback("CHANNEL_PARK")
    def on_park(self, sess):
        if sess.is_outbound():
            sess.hangup()


@run
async def test_an_app_originates_further_calls(sim_server):
    c = client_for(sim_server)
    app = Chain()
    c.load_app(app, "chain", ppkwargs={"follow_ups": 2})
    await c.connect()
    c.set_orig_cmd(sip_dest(sim_server))
    c.originate(app_id="chain")
    await until(lambda: len(app.completed) == 3)
    assert c.listener.originated_calls == 3 and len({x.uuid for x in app.completed}) == 3
    assert all(x.callee is not None and not x.failed for x in app.completed)
    await c.close()  # unloads the app: its teardown removes the hook
    assert app.on_complete not in c.listener.call_complete_hooks
