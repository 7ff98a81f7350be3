"""Simulator fidelity against the captures: hangup cause numbers, Reason headers, the
running app, headers FreeSWITCH never sends empty, ``\\,`` in originate variables, the
session limits' arithmetic, ``show channels as json`` and the ``bert`` extension.

Each test drives a simulated server over loopback ESL (127.0.0.1) and checks what
the captures in ``../shared/esl-captures`` show for the same situation.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_sim_features import SUBSCRIBE, Esl, doggy

from fastswitch.commands import quote_value
from fastswitch.esl import Event, Frame, Parser
from fastswitch.sim import SimServer

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def server() -> Iterator[SimServer]:
    with SimServer(port=0, heartbeat_interval=0.0, seed=11) as s:
        yield s


@pytest.fixture
def esl(server: SimServer) -> Iterator[LogEsl]:
    c = LogEsl(server.address)
    try:
        yield c
    finally:
        c.api("hupall NORMAL_CLEARING")
        c.api("fsctl max_sessions 4000")
        c.api("fsctl sps 1000")
        c.api("sim refill")
        c.close()


def one(events: list[Event], name: str, uuid_: str, **match: str) -> Event:
    found = [
        e
        for e in events
        if e.name == name and e.unique_id == uuid_ and all(e.get(k) == v for k, v in match.items())
    ]
    assert len(found) == 1, (name, match, [(e.name, e.get("Application")) for e in events])
    return found[0]


def answered_call(esl: Esl, server: SimServer, dest: str = "doggy") -> tuple[str, str]:
    """A parked, answered loopback call: (A uuid, B uuid)."""
    esl.command(SUBSCRIBE)
    u = esl.originate(doggy(server, dest))
    assert esl.job() == f"+OK {u}\n"
    esl.wait(lambda _: esl.count("CHANNEL_PARK", **{"Unique-ID": u}) == 1)
    _, b = esl.legs(u)
    return u, b[0].unique_id


def no_empty_values(events: list[Event]) -> None:
    empty = [(e.name, e.call_direction, k) for e in events for k in e.keys() if e.get(k) == ""]
    assert not empty, empty


# -- 1. Q.850 numbers, 2. the Reason header -----------------------------------------------------


@pytest.mark.parametrize(
    "cause,q850,reason",
    [
        # capture k: ALLOTTED_TIMEOUT (602) -> q850 16, B gets SIP;cause=802
        ("ALLOTTED_TIMEOUT", "16", 'SIP;cause=802;text="ALLOTTED_TIMEOUT"'),
        ("NORMAL_CLEARING", "16", 'Q.850;cause=16;text="NORMAL_CLEARING"'),  # captures b, o
        ("USER_BUSY", "17", 'Q.850;cause=17;text="USER_BUSY"'),
    ],
)
def test_hangup_cause_q850_and_far_end_reason(
    esl: Esl, server: SimServer, cause: str, q850: str, reason: str
) -> None:
    u, b = answered_call(esl, server)
    assert esl.api(f"uuid_kill {u} {cause}") == "+OK\n"
    esl.wait_count("CHANNEL_DESTROY", 2)
    a_hc = one(esl.events, "CHANNEL_HANGUP_COMPLETE", u)
    assert a_hc.hangup_cause == cause
    assert a_hc.var("hangup_cause_q850") == q850
    assert a_hc.var("sip_hangup_disposition") == "send_bye"
    # the leg that sent the BYE has no SIP outcome of its own (capture k's A-leg)
    for name in ("sip_term_status", "sip_term_cause", "sip_reason", "proto_specific_hangup_cause"):
        assert a_hc.var(name) is None, name
    b_hc = one(esl.events, "CHANNEL_HANGUP_COMPLETE", b)
    assert b_hc.hangup_cause == "NORMAL_CLEARING"
    assert b_hc.var("hangup_cause_q850") == "16"
    assert b_hc.var("sip_term_cause") == "16"
    assert b_hc.var("sip_term_status") == "200"
    assert b_hc.var("sip_reason") == reason
    no_empty_values(esl.events)


def test_cancelled_inbound_leg_q850_and_term_cause(esl: Esl, server: SimServer) -> None:
    """Capture m: uuid_kill A while the parked B-leg rings."""
    esl.command(SUBSCRIBE)
    u = esl.originate(doggy(server, "ctl"))
    esl.wait(lambda _: len(esl.legs(u)[1]) >= 1 and esl.count("CHANNEL_PARK") >= 1)
    b = esl.legs(u)[1][0].unique_id
    esl.command(f"sendmsg {b}\ncall-command: execute\nexecute-app-name: ring_ready")
    esl.wait(lambda _: esl.count("CHANNEL_PROGRESS", **{"Unique-ID": u}) == 1)
    assert esl.api(f"uuid_kill {u}") == "+OK\n"
    esl.wait_count("CHANNEL_DESTROY", 2)
    b_hc = one(esl.events, "CHANNEL_HANGUP_COMPLETE", b)
    assert b_hc.hangup_cause == "ORIGINATOR_CANCEL"
    assert b_hc.var("hangup_cause_q850") == "16"  # 487 > INTERWORKING
    assert b_hc.var("sip_term_cause") == "487"
    assert b_hc.var("sip_term_status") == "487"
    assert b_hc.var("sip_invite_failure_status") == "487"
    assert b_hc.var("sip_reason") == 'Q.850;cause=16;text="NORMAL_CLEARING"'
    # 3. the A-leg: sip_invite_failure_status=487 and no empty SIP headers
    a_hc = one(esl.events, "CHANNEL_HANGUP_COMPLETE", u)
    assert a_hc.var("sip_hangup_disposition") == "send_cancel"
    assert a_hc.var("sip_invite_failure_status") == "487"
    assert "variable_sip_term_status" not in a_hc
    assert "variable_proto_specific_hangup_cause" not in a_hc
    # FreeSWITCH keeps the last app's name: ring_ready on B (the unanswered A-leg never
    # ran one, so it has none)
    assert b_hc.var("current_application") == "ring_ready"
    assert "variable_current_application" not in a_hc
    no_empty_values(esl.events)


# -- 3. the running app, empty headers -----------------------------------------------------


def test_current_application_is_the_last_app_started(esl: Esl, server: SimServer) -> None:
    """Capture l: respond 404 on the parked B-leg."""
    esl.command(SUBSCRIBE)
    u = esl.originate(doggy(server, "ctl"))
    esl.wait(lambda _: esl.count("CHANNEL_PARK") >= 1)
    b = esl.legs(u)[1][0].unique_id
    esl.command(
        f"sendmsg {b}\ncall-command: execute\nexecute-app-name: respond\nexecute-app-arg: 404"
    )
    assert esl.job() == "-ERR UNALLOCATED_NUMBER\n"
    esl.wait_count("CHANNEL_DESTROY", 2)
    park_done = one(esl.events, "CHANNEL_EXECUTE_COMPLETE", b, Application="park")
    assert park_done.var("current_application") == "respond"
    for name in ("CHANNEL_HANGUP_COMPLETE", "CHANNEL_DESTROY"):
        ev = one(esl.events, name, b)
        assert ev.var("current_application") == "respond"
        assert ev.var("current_application_data") == "404"
    a_hc = one(esl.events, "CHANNEL_HANGUP_COMPLETE", u)
    assert a_hc.var("sip_reason") == 'Q.850;cause=1;text="UNALLOCATED_NUMBER"'
    assert a_hc.var("sip_term_cause") == "1"
    assert a_hc.var("sip_invite_failure_status") == "404"
    assert "variable_current_application" not in a_hc  # no app ever ran on it
    no_empty_values(esl.events)


def test_hangup_complete_keeps_the_app_name(esl: Esl, server: SimServer) -> None:
    """Captures k and n: HANGUP_COMPLETE/DESTROY name park (or the app run on top of it)."""
    u, b = answered_call(esl, server)
    esl.command(f"sendmsg {u}\ncall-command: execute\nexecute-app-name: bert_test")
    esl.wait(lambda _: esl.count("CHANNEL_EXECUTE", Application="bert_test") == 1)
    esl.api(f"uuid_kill {u}")
    esl.wait_count("CHANNEL_DESTROY", 2)
    for name in ("CHANNEL_HANGUP_COMPLETE", "CHANNEL_DESTROY"):
        assert one(esl.events, name, u).var("current_application") == "bert_test"
        assert one(esl.events, name, b).var("current_application") == "park"
    no_empty_values(esl.events)


@pytest.mark.parametrize("fmt", ["plain", "json", "xml"])
def test_no_empty_header_in_any_format(server: SimServer, fmt: str) -> None:
    """Unanswered, refused and unreachable legs: FreeSWITCH leaves empty headers out."""
    c = Esl(server.address)
    try:
        c.command(SUBSCRIBE.replace("event plain", f"event {fmt}"))
        c.parser = Parser()
        u1 = c.originate(doggy(server, "ctl"))
        c.originate(doggy(server, "nosuchuser"))
        c.originate("sofia/external/doggy@127.0.0.1:1", originate_timeout="1")
        c.wait(lambda _: len(c.legs(u1)[1]) >= 1)
        c.api(f"uuid_kill {u1}")
        c.wait_count("BACKGROUND_JOB", 3)
        time.sleep(0.2)
        c._fill(0.1)
        assert c.events
        for e in c.events:
            if fmt == "json":
                obj = json.loads(e.raw)
                assert all(v != "" for v in obj.values()), obj
            elif fmt == "plain":
                assert b": \n" not in e.raw
            else:
                assert not [k for k in e.keys() if e.get(k) == ""]
    finally:
        c.api("hupall NORMAL_CLEARING")
        c.close()


# -- 4. escaped commas in originate variables ---------------------------------------------------


def test_escaped_comma_in_originate_variable(esl: Esl, server: SimServer) -> None:
    esl.command(SUBSCRIBE)
    u = str(uuid.uuid4())
    tag = quote_value("a,b")
    assert tag == "a\\,b"
    block = f"origination_uuid={u},sip_h_X-originating_session_uuid={u},sip_h_X-Tag={tag}"
    assert esl.command(f"bgapi originate {{{block}}}{doggy(server)} &park()").startswith("+OK")
    assert esl.job() == f"+OK {u}\n"
    a, b = esl.legs(u)
    create = next(e for e in b if e.name == "CHANNEL_CREATE")
    assert create.var("sip_h_X-Tag") == "a,b"
    assert b"\nvariable_sip_h_X-Tag: a,b\n" in create.raw  # `,` is not url-encoded
    assert "variable_b" not in create
    assert next(e for e in a if e.name == "CHANNEL_CREATE").var("sip_h_X-Tag") == "a,b"


# -- 5. sessions-per-second accounting ---------------------------------------------------------


def test_max_sessions_refusal_still_uses_an_sps_token(esl: Esl, server: SimServer) -> None:
    """switch_core_session_request_uuid takes the sps token before the max_sessions check."""
    esl.command("event plain BACKGROUND_JOB")
    for _attempt in range(3):  # a 1-second refill may fall inside the sequence: retry
        esl.events.clear()
        assert esl.api("fsctl sps 4") == "+OK sessions per second: 4\n"
        esl.api("sim refill")
        assert esl.api("fsctl max_sessions 0") == "+OK max sessions: 0\n"
        for _ in range(2):
            esl.originate(doggy(server))
        esl.wait_count("BACKGROUND_JOB", 2)
        tokens = json.loads(esl.api("sim stats")).get("sps_tokens")
        esl.api("fsctl max_sessions 4000")
        esl.originate(doggy(server))  # A-leg: the last token that passes; B-leg: refused
        esl.wait_count("BACKGROUND_JOB", 3)
        after = json.loads(esl.api("sim stats")).get("sps_tokens")
        if tokens is not None and after > tokens:
            continue  # refilled meanwhile
        bodies = [e.body for e in esl.events if e.name == "BACKGROUND_JOB"]
        assert bodies[:2] == ["-ERR DESTINATION_OUT_OF_ORDER\n"] * 2
        # 4 tokens - 2 used by the refusals: the A-leg takes the last one that passes
        # (--tokens <= 0 refuses), the B-leg is refused with a 503
        assert bodies[2] == "-ERR NORMAL_TEMPORARY_FAILURE\n"
        assert tokens == 2, "each refused originate used a token"
        return
    pytest.fail("the sps window refilled during every attempt")


# -- 6. show channels as json -----------------------------------------------------------------


def _capture_json_rows(captures_dir: Path) -> tuple[str, list[dict[str, str]]]:
    body = ""
    for f in Parser().feed((captures_dir / "h_misc.bin").read_bytes()):
        if f.content_type == "api/response" and f.body.startswith(b'{"row_count":2'):
            body = f.body.decode()
    assert body, "capture h has a show channels as json with two rows"
    return body, json.loads(body)["rows"]


def test_show_channels_as_json_matches_capture(
    esl: Esl, server: SimServer, captures_dir: Path
) -> None:
    cap_body, cap_rows = _capture_json_rows(captures_dir)
    assert esl.api("show channels as json") == '{"row_count": 0}\n'
    answered_call(esl, server)
    esl.wait_count("CHANNEL_PARK", 2)
    body = esl.api("show channels as json")
    assert body.endswith("}]}") and cap_body.endswith("}]}")
    rows = json.loads(body)["rows"]
    varying = {"uuid", "created", "created_epoch", "name", "hostname", "call_uuid"}
    assert [list(r) for r in rows] == [list(r) for r in cap_rows]  # columns in order
    for got, cap in zip(rows, cap_rows, strict=True):
        assert {k: v for k, v in got.items() if k not in varying} == {
            k: v for k, v in cap.items() if k not in varying
        }
    assert [r["initial_cid_name"] for r in rows] == ["", "0000000000"]


# -- 7. the bert extension ------------------------------------------------------------------


def test_bert_extension_sets_its_timeout_first(esl: Esl, server: SimServer) -> None:
    """Capture g: set bert_timeout_ms=5000, answer, bert_test on the inbound leg."""
    esl.command(SUBSCRIBE)
    u = esl.originate(doggy(server, "bert"), app="&bert_test()")
    assert esl.job() == f"+OK {u}\n"
    esl.wait(lambda _: esl.count("CHANNEL_EXECUTE", Application="bert_test") == 2)
    _, b = esl.legs(u)
    apps = [(e.name, e.get("Application")) for e in b if e.name.startswith("CHANNEL_EXECUTE")]
    assert apps[:3] == [
        ("CHANNEL_EXECUTE", "set"),
        ("CHANNEL_EXECUTE_COMPLETE", "set"),
        ("CHANNEL_EXECUTE", "answer"),
    ]
    assert b[0].name == "CHANNEL_CREATE" and "variable_DP_MATCH" not in b[-1]
    done = next(e for e in b if e.name == "CHANNEL_EXECUTE_COMPLETE")
    assert done.get("Application-Data") == "bert_timeout_ms=5000"
    assert done.var("bert_timeout_ms") == "5000"


# -- 8. log/data (capture i) -------------------------------------------------------------


class LogEsl(Esl):
    """The test client, with the ``log/data`` messages kept apart from the replies."""

    def __init__(self, address: tuple[str, int]) -> None:
        self.logs: list[Frame] = []
        super().__init__(address)

    def _fill(self, timeout: float) -> None:
        super()._fill(timeout)
        logs = [f for f in self.frames if f.content_type == "log/data"]
        if logs:
            self.logs += logs
            self.frames = [f for f in self.frames if f.content_type != "log/data"]


def header_names(f: Frame) -> list[str]:
    head = f.raw.split(b"\n\n", 1)[0].decode()
    return [line.partition(":")[0] for line in head.split("\n")]


def log_texts(c: LogEsl) -> list[tuple[str, str]]:
    """(User-Data, body) of every log line received."""
    return [(f.get("User-Data", ""), f.body.decode()) for f in c.logs]


def _capture_logs(captures_dir: Path) -> list[Frame]:
    frames = Parser().feed((captures_dir / "i_log.bin").read_bytes())
    logs = [f for f in frames if f.content_type == "log/data"]
    assert len(logs) == 19
    return logs


def _logged_call(c: LogEsl, server: SimServer) -> tuple[str, str]:
    """Capture i's call: answered, parked, then uuid_kill on the A-leg; (A, B) uuids."""
    a, b = answered_call(c, server)
    assert c.api(f"uuid_kill {a}") == "+OK\n"
    c.wait_count("CHANNEL_DESTROY", 2)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and not any(
        u == b and "Close Channel" in t for u, t in log_texts(c)
    ):
        c._fill(0.05)
    return a, b


def test_log_7_sends_the_channel_lifecycle_as_log_data(
    esl: LogEsl, server: SimServer, captures_dir: Path
) -> None:
    cap = _capture_logs(captures_dir)
    cap_names = header_names(cap[0])
    assert cap_names == [
        "Content-Type",
        "Content-Length",
        "Log-Level",
        "Text-Channel",
        "Log-File",
        "Log-Func",
        "Log-Line",
        "User-Data",
    ]
    assert esl.command("log 7") == "+OK log level 7 [7]"
    a, b = _logged_call(esl, server)
    mine = [f for f in esl.logs if f.get("User-Data") in (a, b)]
    assert mine
    for f in mine:
        assert header_names(f) == cap_names
        assert int(f.get("Content-Length")) == len(f.body)
        assert f.body.endswith(b"\n")
    texts = log_texts(esl)
    a_name = next(t for u, t in texts if u == a and "New Channel" in t).split()[-2]
    b_name = next(t for u, t in texts if u == b and "New Channel" in t).split()[-2]
    for u, name in ((a, a_name), (b, b_name)):
        lines = [t for uu, t in texts if uu == u]
        wanted = [
            f"New Channel {name} [{u}]\n",
            f"Channel [{name}] has been answered\n",
            f"EXECUTE [depth=0] {name} park()\n",
            f"Hangup {name} [CS_EXECUTE] [NORMAL_CLEARING]\n",
            f"({name}) Ended\n",
            f"Close Channel {name} [CS_DESTROY]\n",
        ]
        found = [next((i for i, t in enumerate(lines) if t.endswith(w)), -1) for w in wanted]
        assert -1 not in found and found == sorted(found), (u, lines)
    # the body format, and the source of each line as the capture has it
    by_kind: dict[tuple[str, bool], set[tuple[str | None, ...]]] = {}
    for f in cap + mine:
        body = f.body.decode()
        kind = next(
            (
                k
                for k in ("New Channel", "has been answered", "Hangup", "Ended", "Close")
                if k in body
            ),
            "EXECUTE" if body.startswith("EXECUTE") else None,
        )
        if kind is None:
            continue
        inbound = f.get("User-Data") in (b, "2ed7af60-ceb4-44f2-af33-362fb1ed8ace")
        src = tuple(
            f.get(h) for h in ("Log-Level", "Text-Channel", "Log-File", "Log-Func", "Log-Line")
        )
        by_kind.setdefault((kind, inbound), set()).add(src)
    assert all(len(v) == 1 for v in by_kind.values()), by_kind
    stamp = re.compile(
        r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{6} \d+\.\d\d% \[(NOTICE|INFO)\] \S+:\d+ "
    )
    for f in mine:
        body = f.body.decode()
        assert body.startswith("EXECUTE [depth=0] ") or stamp.match(body), body
    # nolog: no more log lines
    assert esl.command("nolog") == "+OK no longer logging"
    assert esl.command("nolog") == "-ERR not loging"
    n = len(esl.logs)
    answered_call(esl, server)
    esl.api("hupall NORMAL_CLEARING")
    esl.wait_count("CHANNEL_DESTROY", 4)
    esl._fill(0.2)
    assert len(esl.logs) == n


def test_log_5_sends_no_info_lines(esl: LogEsl, server: SimServer) -> None:
    assert esl.command("log notice") == "+OK log level notice [5]"
    a, b = _logged_call(esl, server)
    levels = {f.get("Log-Level") for f in esl.logs}
    assert levels == {"5"}
    texts = [t for _, t in log_texts(esl)]
    assert not any(t.startswith("EXECUTE") or "[INFO]" in t for t in texts)
    assert sum("New Channel" in t for t in texts) == 2
    assert any(u == a and "Hangup" in t for u, t in log_texts(esl))
    assert esl.command("log 5") == "+OK log level 5 [5]"


def test_no_log_data_without_log(esl: Esl, server: SimServer) -> None:
    answered_call(esl, server)
    assert not [f for f in esl.frames if f.content_type == "log/data"]
