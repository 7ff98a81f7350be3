"""Client against loopback ESL servers: replayed FreeSWITCH captures and scripted edge cases
(auth, refused, api/bgapi, sendmsg wire format, subscriptions and filters, garbage,
connection lost with commands pending, reconnect)."""

from __future__ import annotations

import asyncio
import logging
import socket
import sys
from pathlib import Path

import pytest

from fastswitch.apps import event_callback
from fastswitch.client import Client, make_uuid_factory
from fastswitch.errors import (
    AuthenticationError,
    CommandError,
    ConnectError,
    ConnectionLost,
    ESLProtocolError,
)
from fastswitch.esl import Frame

sys.path.insert(0, str(Path(__file__).parent))
from replay_server import CLOSE, ReplayServer, ScriptServer, api_response, reply  # noqa: E402
from support import run_async
from support import until as until_true

pytestmark = pytest.mark.timeout(30)


run = run_async(20)


def ok_server(api=None, bgapi=None) -> ScriptServer:
    """+OK to auth and every command; ``api(cmd)`` / ``bgapi(cmd)`` produce other replies."""

    def respond(i: int, cmd: bytes):
        text = cmd.decode()
        if text.startswith("auth"):
            return reply("+OK accepted")
        if text.startswith("api ") and api is not None:
            return api(text)
        if text.startswith("bgapi ") and bgapi is not None:
            return bgapi(text)
        if text.startswith("api "):
            return api_response("+OK\n")
        if text.startswith("exit"):
            return [reply("+OK bye"), CLOSE]
        return reply("+OK")

    return ScriptServer(respond)


# -- connect / auth ---------------------------------------------------------------------------
@run
async def test_auth_and_api_replay(captures_dir):
    async with ReplayServer(captures_dir / "a_auth_api", answer_events=True) as srv:
        c = Client(port=srv.port, reconnect=False)
        await c.connect()
        assert c.connected and c.connections == 1
        status = await c.api("status")
        assert status.startswith("UP ") and "FreeSWITCH" in status
        channels = await c.api("show channels")
        assert channels == "\n0 total.\n"
        assert srv.received[0] == srv.expected(0) == b"auth ClueCon"
        assert srv.received[1].startswith(b"event plain ")
        assert srv.received[2:4] == [srv.expected(1), srv.expected(2)]
        await c.close()
        assert not c.connected


@run
async def test_bad_password_names_host_port(captures_dir):
    async with ReplayServer(captures_dir / "f_bad_password") as srv:
        c = Client(port=srv.port, password="WrongPassword", reconnect=False)
        with pytest.raises(AuthenticationError) as ei:
            await c.connect()
        assert f"127.0.0.1:{srv.port}" in str(ei.value) and "-ERR invalid" in str(ei.value)
        assert srv.received == [srv.expected(0)]
        assert not c.connected


@run
async def test_refused_connection_names_host_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    c = Client(port=port, reconnect=False)
    with pytest.raises(ConnectError) as ei:
        await c.connect(timeout=2)
    assert f"127.0.0.1:{port}" in str(ei.value)


@run
async def test_connect_timeout_when_server_is_silent():
    async with ScriptServer(lambda i, c: None, greeting=b"") as srv:
        c = Client(port=srv.port, reconnect=False)
        with pytest.raises(ConnectError) as ei:
            await c.connect(timeout=0.2)
        assert "timed out" in str(ei.value) and f"127.0.0.1:{srv.port}" in str(ei.value)


@run
async def test_drop_during_setup_fails_connect_without_background_retries():
    async with ScriptServer(lambda i, c: reply("+OK accepted") if i == 0 else CLOSE) as srv:
        c = Client(port=srv.port, reconnect=True)
        with pytest.raises(ConnectionLost, match=f"127.0.0.1:{srv.port}"):
            await c.connect(timeout=5)
        assert not c.connected and c.connections == 0 and c._reconnect_task is None


@run
async def test_userauth():
    async with ok_server() as srv:
        c = Client(port=srv.port, user="load@example.com", password="s3cret", reconnect=False)
        await c.connect()
        assert srv.received[0] == b"userauth load@example.com:s3cret"
        await c.connect()  # already connected: no second connection
        assert srv.connections == 1 and c.connections == 1
        await c.close()


@run
async def test_rude_rejection_is_a_connect_error():
    body = b"Access Denied, go away.\n"
    greeting = b"Content-Type: text/rude-rejection\nContent-Length: %d\n\n" % len(body) + body

    class Rude(ScriptServer):
        async def _serve(self, reader, writer):
            writer.write(greeting)
            await writer.drain()
            writer.close()

    async with Rude(lambda i, c: None) as srv:
        c = Client(port=srv.port, reconnect=False)
        with pytest.raises(ConnectError) as ei:
            await c.connect(timeout=2)
        assert "Access Denied" in str(ei.value)


# -- api / bgapi / sendmsg ---------------------------------------------------------------------
@run
async def test_api_error_raw_and_nocheck():
    def api(text):
        if "nosuch" in text:
            return api_response("-ERR nosuchcommand Command not found!\n")
        return api_response("127.0.0.1")

    async with ok_server(api=api) as srv:
        c = await Client(port=srv.port, reconnect=False).connect()
        with pytest.raises(CommandError) as ei:
            await c.api("nosuchcommand foo")
        assert ei.value.reply == "-ERR nosuchcommand Command not found!"
        assert ei.value.command == "nosuchcommand foo"
        body = await c.api("nosuchcommand foo", errcheck=False)
        assert body == "-ERR nosuchcommand Command not found!\n"
        frame = await c.api("global_getvar local_ip_v4", raw=True)
        assert isinstance(frame, Frame) and frame.body == b"127.0.0.1"
        # a command that would be two on the wire is refused (it would shift the FIFO)
        with pytest.raises(ValueError):
            c.api("status\n\nbgapi status")
        with pytest.raises(ValueError):
            c.cmd("event plain ALL\n\nnoevents")
        with pytest.raises(ValueError):
            await c.bgapi("status\napi status")
        # replies are matched FIFO even when several commands are in flight
        futs = [c.api("a"), c.api("nosuch"), c.api("b")]
        res = await asyncio.gather(*futs, return_exceptions=True)
        assert res[0] == "127.0.0.1" and isinstance(res[1], CommandError) and res[2] == "127.0.0.1"
        await c.close()


@run
async def test_failed_originates_are_logged_and_counted(captures_dir, caplog):
    """Replay d: every failure arrives as a BACKGROUND_JOB -ERR; the calls complete,
    the causes are counted, the seed's log line is written, nothing is left tracked."""
    sessions = [
        "4590311e-8398-489c-94f4-9fdad6d7b3bf",
        "e33c565c-d3b5-4d63-9857-666119b3c456",
        "e67e480a-5230-4935-a230-fa73c64b43d9",
        "4d71e3a5-c1cb-4f0a-a608-5259aee63bab",
        "9dd3b389-da07-419d-8f81-fe25de960fd6",
        "b7215cca-561f-4bd8-930f-ecebc0f2a12a",
    ]
    jobs = [
        "5215f494-2f81-4d57-a513-8b8c26abb033",
        "af6af18d-6a56-4c4e-b0e8-4ed6e6902c65",
        "ece46fd0-2bc6-4e15-ac2b-f8f5bdeb61e8",
        "fa55dfab-dfa6-4479-97a1-4e5101f19adc",
        "2658c26c-c518-48ee-bd65-a6c1bc57fec2",
        "11111111-2222-3333-4444-555555555555",
    ]
    ids = iter([x for pair in zip(sessions, jobs, strict=True) for x in pair])
    caplog.set_level(logging.ERROR, logger="fastswitch.listener")
    async with ReplayServer(captures_dir / "d_originate_fail") as srv:
        c = Client(port=srv.port, reconnect=False, uuid_func=lambda: next(ids))
        done, failed = [], []
        c.listener.call_complete_hooks.append(done.append)
        c.listener.job_failed_hooks.append(failed.append)
        await c.connect()
        c.set_orig_cmd("doggy@127.0.0.1:5999")
        for _ in sessions:
            c.originate()
        job = await c.bgapi("nosuchcommand foo", job_uuid="165ca418-6a6c-479c-b20d-c72d4ba142c4")
        with pytest.raises(CommandError):
            await c.api("nosuchcommand foo")
        with pytest.raises(CommandError) as ei:
            await c.api("originate sofia/external/nosuchuser3@127.0.0.1:5080 &park()")
        assert ei.value.reply == "-ERR NO_ROUTE_DESTINATION"
        with pytest.raises(CommandError, match="No such channel"):
            await c.api("uuid_kill 00000000-0000-0000-0000-000000000000")
        with pytest.raises(CommandError) as ei:
            await job
        assert "nosuchcommand" in ei.value.reply
        await c.noevents()
        await srv.close()
    assert sorted(call.uuid for call in done) == sorted(sessions)
    assert all(call.failed and call.lost is None for call in done)
    assert {call.uuid: call.job.cause for call in done} == {
        sessions[0]: "NORMAL_TEMPORARY_FAILURE",
        sessions[1]: "NO_ROUTE_DESTINATION",
        sessions[2]: "NORMAL_CLEARING",
        sessions[3]: "USER_BUSY",
        sessions[4]: "CHAN_NOT_IMPLEMENTED",
        sessions[5]: "NO_ROUTE_DESTINATION",
    }
    t = c.listener
    assert t.failed_jobs["NO_ROUTE_DESTINATION"] == 2 and t.failed_jobs["USER_BUSY"] == 1
    assert t.failed_calls == 6 and len(failed) == 7
    assert not t.calls and not t.sessions and not t.jobs
    msgs = [r.getMessage() for r in caplog.records]
    assert (
        f"Job '{jobs[3]}' corresponding to session '{sessions[3]}' failed with:\n-ERR USER_BUSY"
        in msgs
    )


@run
async def test_bgapi_uses_our_job_uuid_and_resolves(captures_dir):
    """The bgapi command carries our Job-UUID header (capture h shows FS echoing it)."""

    def bgapi(text):
        ju = text.split("Job-UUID: ")[1]
        body = "+OK done\n"
        ev = (
            "Event-Name: BACKGROUND_JOB\n"
            f"Job-UUID: {ju}\nJob-Command: status\nContent-Length: {len(body)}\n\n{body}"
        )
        return [
            f"Content-Type: command/reply\nReply-Text: +OK Job-UUID: {ju}\nJob-UUID: {ju}\n\n".encode(),
            f"Content-Length: {len(ev)}\nContent-Type: text/event-plain\n\n{ev}".encode(),
        ]

    async with ok_server(bgapi=bgapi) as srv:
        c = await Client(port=srv.port, reconnect=False).connect()
        job = await c.bgapi("status", job_uuid="0f0f0f0f-0000-4000-8000-000000000001")
        assert await job == "+OK done\n"
        assert job.result == "+OK done\n" and not job.failed
        assert srv.received[-1] == b"bgapi status\nJob-UUID: 0f0f0f0f-0000-4000-8000-000000000001"
        # same wire form as the command FreeSWITCH accepted in capture h
        h = ReplayServer(captures_dir / "h_misc")
        assert h.expected(14) == srv.received[-1]
        await c.close()


@run
async def test_refused_bgapi_fails_the_job_and_its_call():
    async with ok_server(bgapi=lambda t: reply("-ERR permission denied")) as srv:
        c = await Client(port=srv.port, reconnect=False).connect()
        done = []
        c.listener.call_complete_hooks.append(done.append)
        with pytest.raises(CommandError, match="permission denied"):
            await c.bgapi("status")
        c.set_orig_cmd("x@127.0.0.1")
        job = c.originate()
        with pytest.raises(CommandError, match="permission denied"):
            await job
        assert done == [job.call] and job.call.failed and job.failed
        assert c.listener.failed_jobs == {"permission denied": 2}
        assert c.listener.failed_calls == 1 and not c.listener.jobs and not c.listener.calls
        await c.close()


@run
async def test_sendmsg_wire_format_matches_capture(captures_dir):
    h = ReplayServer(captures_dir / "h_misc")
    async with ok_server() as srv:
        c = await Client(port=srv.port, reconnect=False).connect()
        u = "71457b9b-6bab-41d9-8927-96a4e26e6e70"
        assert await c.sendmsg(u, "execute", "playback", "tone_stream://%(200,0,800)") == "+OK"
        await c.sendmsg(u, "hangup", cause="NORMAL_CLEARING")
        assert srv.received[-2] == h.expected(20)
        assert srv.received[-1] == h.expected(21)
        await c.execute(u, "ring_ready")
        assert (
            srv.received[-1]
            == (f"sendmsg {u}\ncall-command: execute\nexecute-app-name: ring_ready").encode()
        )
        await c.close()


@run
async def test_hupall_commands_match_capture(captures_dir):
    o = ReplayServer(captures_dir / "o_hupall_by_var")
    accepted = {o.expected(i) for i in range(len(o.sends))}
    async with ok_server() as srv:
        c = await Client(port=srv.port, reconnect=False).connect()

        class App:
            pass

        c.load_app(App, "app1")
        c.load_app(App, "app2")
        n = len(srv.received)
        await c.hupall()
        sent = srv.received[n:]
        assert sent == [
            b"api hupall NORMAL_CLEARING fastswitch_client app1",
            b"api hupall NORMAL_CLEARING sip_h_X-fastswitch_client app1",
            b"api hupall NORMAL_CLEARING fastswitch_client app2",
            b"api hupall NORMAL_CLEARING sip_h_X-fastswitch_client app2",
        ]
        assert sent[0] in accepted and sent[3] in accepted  # the forms FS accepted in o
        await c.close()


# -- subscriptions and filters -------------------------------------------------------------------
class BertLike:
    @event_callback("CHANNEL_PARK")
    def park(self, sess):
        pass

    @event_callback("mod_bert::lost_sync", "CHANNEL_CALLSTATE")
    def lost(self, sess):
        pass


@run
async def test_minimal_subscription_and_call_filters():
    async with ok_server() as srv:
        c = Client(port=srv.port, reconnect=False, call_filter=True)
        c.load_app(BertLike, "app1")
        await c.connect()
        cmds = [r.decode() for r in srv.received]
        assert cmds[1] == (
            "event plain BACKGROUND_JOB CHANNEL_ANSWER CHANNEL_CALLSTATE CHANNEL_CREATE "
            "CHANNEL_HANGUP_COMPLETE CHANNEL_PARK CUSTOM mod_bert::lost_sync"
        )
        filters = set(cmds[2:])
        assert filters == {
            "filter variable_fastswitch_client app1",
            "filter variable_sip_h_X-fastswitch_client app1",
            # events without variable_* headers need their own filter (capture p)
            "filter Event-Name BACKGROUND_JOB",
            "filter Event-Name CHANNEL_CALLSTATE",
            "filter Event-Subclass mod_bert::lost_sync",
        }
        assert "verbose_events" not in " ".join(cmds)
        # a second app subscribes only to what is new, and filters its own id
        n = len(srv.received)

        class Destroy:
            @event_callback("CHANNEL_DESTROY")
            def d(self, sess):
                pass

        c.load_app(Destroy, "app2")
        await c.api("status")
        new = [r.decode() for r in srv.received[n:]]
        assert new[0] == "event plain CHANNEL_DESTROY"
        assert set(new[1:3]) == {
            "filter variable_fastswitch_client app2",
            "filter variable_sip_h_X-fastswitch_client app2",
        }
        assert c.listener.final_event == "CHANNEL_DESTROY"
        await c.close()


@run
async def test_caller_id_correlation_filter():
    async with ok_server() as srv:
        c = Client(
            port=srv.port,
            reconnect=False,
            call_filter=True,
            correlation="caller_id",
            cid_prefix="99",
        )
        await c.connect()
        assert b"filter Caller-Caller-ID-Number /^99/" in srv.received
        await c.close()


@run
async def test_filter_commands_match_capture(captures_dir):
    p = ReplayServer(captures_dir / "p_filters")
    async with ok_server() as srv:
        c = Client(port=srv.port, reconnect=False, event_format="json")
        await c.connect()
        assert srv.received[1].startswith(b"event json ")
        await c.filter("variable_fastswitch_client", "app1")
        await c.filter_delete("variable_fastswitch_client", "app1")
        await c.filter_delete("Unique-ID")
        await c.filter_delete("all")
        await c.unsubscribe(["HEARTBEAT"])  # not subscribed: nothing sent
        await c.subscribe(["HEARTBEAT"])
        await c.unsubscribe(["HEARTBEAT"])
        got = srv.received[2:]
        assert got[:4] == [p.expected(2), p.expected(8), p.expected(12), p.expected(13)]
        assert got[4:] == [b"event json HEARTBEAT", b"nixevent HEARTBEAT"]
        await c.close()


# -- failures ------------------------------------------------------------------------------------
@run
async def test_garbage_is_a_clean_protocol_error():
    def api(text):
        return b"this is not ESL at all\n\n"

    async with ok_server(api=api) as srv:
        c = await Client(port=srv.port, reconnect=False).connect()
        c.set_orig_cmd("x@127.0.0.1")
        job = c.originate()
        fut = c.api("status")
        with pytest.raises(ESLProtocolError) as ei:
            await fut
        assert f"127.0.0.1:{srv.port}" in str(ei.value)
        with pytest.raises(ConnectionLost):
            await job
        assert not c.connected
        with pytest.raises(ConnectionLost, match="malformed"):
            c.api("status")  # not connected any more: fails at once, never hangs


@run
async def test_garbage_before_auth():
    async with ScriptServer(lambda i, c: None, greeting=b"\x00\x01garbage\n\n") as srv:
        c = Client(port=srv.port, reconnect=False)
        with pytest.raises(ESLProtocolError) as ei:
            await c.connect(timeout=5)
        assert f"127.0.0.1:{srv.port}" in str(ei.value)


@run
async def test_connection_lost_fails_every_pending_command():
    # answers auth and the subscription, then never again
    async with ScriptServer(lambda i, c: reply("+OK") if i < 2 else None) as srv:
        c = await Client(port=srv.port, reconnect=False).connect()
        lost = []
        c.disconnect_hooks.append(lambda cl, cause, counts: lost.append((cause, counts)))
        done = []
        c.listener.call_complete_hooks.append(done.append)
        c.set_orig_cmd("x@127.0.0.1")
        futs = [c.api("status"), c.api("show channels"), c.cmd("event plain HEARTBEAT")]
        jobs = [c.originate(app_id="a"), c.originate(app_id="a")]
        while len(srv.received) < 7:
            await asyncio.sleep(0.005)
        srv.drop_all()
        res = await asyncio.gather(*futs, *(j.future for j in jobs), return_exceptions=True)
        assert all(isinstance(r, ConnectionLost) for r in res), res
        assert f"127.0.0.1:{srv.port}" in str(res[0])
        assert len(done) == 2 and all(call.lost and call.lost.startswith("lost") for call in done)
        assert all(call.failed for call in done) and c.listener.lost_calls == 2
        assert lost and lost[0][1] == (2, 0, 2)
        assert not c.listener.calls and not c.listener.jobs


@run
async def test_reconnect_reissues_subscriptions_and_filters():
    async with ok_server() as srv:
        c = Client(port=srv.port, reconnect=True, backoff=(0.01, 0.05))
        c.load_app(BertLike, "app1")
        connected = asyncio.Event()
        c.connect_hooks.append(lambda cl: connected.set())
        lost_calls = []
        c.listener.call_complete_hooks.append(lost_calls.append)
        await c.connect()
        await c.filter("Unique-ID", "abc")
        first = [r for r in srv.received]
        c.set_orig_cmd("x@127.0.0.1")
        c.originate()
        connected.clear()
        srv.drop_all()
        await connected.wait()
        assert c.connected and c.connections == 2 and srv.connections == 2
        again = [i for i, r in enumerate(srv.received) if r == b"auth ClueCon"]
        assert len(again) == 2
        second = srv.received[again[1] :]
        assert second[0] == b"auth ClueCon"
        assert second[1] == first[1]  # the same event subscription
        assert b"filter Unique-ID abc" in second
        assert len(lost_calls) == 1 and lost_calls[0].lost.startswith("lost")
        assert (await c.api("status")) == "+OK\n"
        await c.close()
        assert not c.connected


def test_uuid_factory_is_unique_and_uuid_shaped():
    f = make_uuid_factory()
    ids = {f() for _ in range(10000)}
    assert len(ids) == 10000
    import uuid

    for u in list(ids)[:10]:
        assert str(uuid.UUID(u)) == u


@run
async def test_close_while_reconnecting_stops_retrying():
    srv = ok_server()
    await srv.start()
    c = Client(port=srv.port, reconnect=True, backoff=(0.01, 0.02))
    failures = []
    c.disconnect_hooks.append(lambda cl, cause, counts: failures.append(cause))
    await c.connect()
    await srv.close()  # the server goes away for good
    srv.drop_all()
    await until_true(lambda: failures and c._reconnect_task is not None)
    task = c._reconnect_task
    await asyncio.sleep(0.05)  # a few refused attempts
    assert not task.done() and not c.connected
    await c.close()
    await asyncio.gather(task, return_exceptions=True)
    assert task.cancelled() and not c.connected
