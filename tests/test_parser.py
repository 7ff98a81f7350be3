"""The ESL frame parser: both implementations, one suite.

Every test runs against the Cython extension (``fastswitch._esl``) and the pure-Python twin
(``fastswitch._pyesl``). CI builds the extension, so a missing build fails the cython
parameter instead of skipping it. Ground truth is the real FreeSWITCH captures.
"""

from __future__ import annotations

import importlib
import json
import random
import re
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fastswitch import _pyesl
from fastswitch.errors import ESLProtocolError

IMPLS = ["cython", "python"]
UUID_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
NOTICE_LEN = 67  # the disconnect-notice body that ends every capture


def _load(impl: str) -> ModuleType:
    if impl == "python":
        return _pyesl
    try:
        return importlib.import_module("fastswitch._esl")
    except ImportError as e:  # CI builds it: a missing extension is a failure, not a skip
        pytest.fail(
            f"the Cython parser fastswitch._esl is not built ({e}); build it with "
            "`pip install -e . --no-deps --no-build-isolation` or "
            "`python setup.py build_ext --inplace`"
        )


@pytest.fixture(params=IMPLS)
def esl(request: pytest.FixtureRequest) -> ModuleType:
    """The parser module under test."""
    return _load(request.param)


@pytest.fixture(scope="session")
def summaries(captures_dir: Path) -> dict[str, dict[str, Any]]:
    """summaries.json (one JSON object per line), keyed by capture name."""
    out = {}
    for line in (captures_dir / "summaries.json").read_text().splitlines():
        if line.strip():
            d = json.loads(line)
            out[d["name"]] = d
    return out


@pytest.fixture(scope="session")
def capture(captures_dir: Path):
    cache: dict[str, bytes] = {}

    def get(name: str) -> bytes:
        if name not in cache:
            cache[name] = (captures_dir / f"{name}.bin").read_bytes()
        return cache[name]

    return get


def feed_chunked(esl: ModuleType, data: bytes, sizes: list[int] | random.Random, **kw) -> list:
    """Feed ``data`` in chunks (a list of sizes, cycled, or random sizes from an rng)."""
    p = esl.Parser(**kw)
    out: list = []
    i = 0
    k = 0
    while i < len(data):
        if isinstance(sizes, random.Random):
            n = sizes.randint(1, 2 * sizes.choice((8, 300, 5000)))
        else:
            n = sizes[k % len(sizes)]
            k += 1
        out += p.feed(data[i : i + n])
        i += n
    assert p.buffered == 0
    assert p.offset == len(data)
    return out


def snapshot(frames: list) -> list[tuple]:
    """Everything observable about frames and their events (json/xml errors included)."""
    out = []
    for f in frames:
        d: tuple = (
            f.content_type,
            f.raw,
            f.body,
            f.reply_text,
            f.job_uuid,
            f.is_event,
            f.headers,
            f.get("Content-Length"),
            f.offset,
        )
        try:
            e = f.event
            if e is not None:
                d += (
                    e.format,
                    e.name,
                    e.subclass,
                    e.unique_id,
                    e.job_uuid,
                    e.other_leg_unique_id,
                    e.call_direction,
                    e.hangup_cause,
                    e.answer_state,
                    e.timestamp,
                    e.sequence,
                    e.body,
                    e.raw,
                    list(e.items()),
                    [e.getall(k) for k in e],
                    len(e),
                    e.var("sip_h_X-originating_session_uuid"),
                    e.get("no-such-header", "dflt"),
                )
        except ESLProtocolError as err:
            d += ("error", str(err), err.offset)
        out.append(d)
    return out


def outcome(esl: ModuleType, data: bytes, sizes: list[int] | None = None, **kw) -> tuple:
    """(snapshot of the frames, error message, error offset) for a stream."""
    p = esl.Parser(**kw)
    frames: list = []
    err = None
    try:
        if sizes is None:
            frames += p.feed(data)
        else:
            i = k = 0
            while i < len(data):
                n = sizes[k % len(sizes)]
                k += 1
                frames += p.feed(data[i : i + n])
                i += n
    except ESLProtocolError as e:
        frames += e.frames
        err = (str(e), e.offset)
        # the parser stays failed, with the same error
        with pytest.raises(ESLProtocolError) as again:
            p.feed(b"Content-Type: command/reply\n\n")
        assert (str(again.value), again.value.offset) == err
    return snapshot(frames), err


# ---------------------------------------------------------------------------------------
# the real captures


def _names(captures_dir: Path) -> list[str]:
    return sorted(p.stem for p in captures_dir.glob("*.bin"))


def event_key(e) -> str:
    return e.name + (" " + e.subclass if e.subclass else "")


def test_every_capture_is_known(captures_dir: Path, summaries) -> None:
    assert set(_names(captures_dir)) == set(summaries)
    assert len(summaries) >= 24


def _check_summary(frames: list, summary: dict[str, Any]) -> None:
    assert len(frames) == summary["messages"]
    assert dict(Counter(f.content_type for f in frames)) == summary["content_types"]
    assert dict(Counter(event_key(f.event) for f in frames if f.is_event)) == summary["events"]
    assert sum(len(f.raw) for f in frames) == summary["bytes"]
    last = frames[-1]
    assert last.content_type == "text/disconnect-notice"
    assert len(last.body) == NOTICE_LEN
    assert last.body.startswith(b"Disconnected, goodbye.\n")


@pytest.mark.parametrize(
    "name",
    [
        "a_auth_api",
        "b_event_plain_ALL_call",
        "b_event_plain_call",
        "c_event_json_ALL_call",
        "c_event_json_call",
        "d_originate_fail",
        "e_burst20_hupall_json",
        "e_burst20_hupall_plain",
        "f_bad_password",
        "f_cmd_before_auth",
        "f_exit",
        "g_bert",
        "h_misc",
        "i_log",
        "j_heartbeat",
        "k_ctl_answer",
        "l_ctl_respond404",
        "m_ctl_ringready",
        "n_ctl_bert_two_sided",
        "o_hupall_by_var",
        "p_filters",
        "q_load_minimal",
        "r_same_in_json",
        "s_sps_limit",
    ],
)
def test_capture_matches_summary(esl, name, capture, summaries, captures_dir: Path) -> None:
    data = capture(name)
    summary = summaries[name]
    # the .txt's own summary line agrees with summaries.json
    txt = (captures_dir / f"{name}.txt").read_text()
    line = [x for x in txt.splitlines() if x.startswith("# summary:")][-1]
    assert json.loads(line.split(":", 1)[1]) == summary
    p = esl.Parser()
    whole = p.feed(data)
    assert p.buffered == 0 and p.offset == len(data)
    _check_summary(whole, summary)
    # random chunkings give the same frames, in order
    for seed in (1, 2):
        chunked = feed_chunked(esl, data, random.Random(seed))
        assert [f.raw for f in chunked] == [f.raw for f in whole]
        assert [f.offset for f in chunked] == [f.offset for f in whole]
    assert [f.offset for f in whole] == [
        sum(len(g.raw) for g in whole[:i]) for i in range(len(whole))
    ]
    if len(data) < 20_000:  # byte by byte too
        assert snapshot(feed_chunked(esl, data, [1])) == snapshot(whole)
    else:  # every value of the first frames (the rest compared by bytes above)
        assert snapshot(feed_chunked(esl, data, random.Random(3))[:150]) == snapshot(whole[:150])


def test_twins_identical_on_every_capture(capture, captures_dir: Path) -> None:
    cy = _load("cython")
    for name in _names(captures_dir):
        data = capture(name)
        if len(data) > 400_000:
            data = data[:300_000]  # still ~100 frames; ends mid-frame on purpose
        a = cy.Parser()
        b = _pyesl.Parser()
        sa, sb = snapshot(a.feed(data)), snapshot(b.feed(data))
        assert sa == sb, name
        assert (a.buffered, a.offset) == (b.buffered, b.offset)


def test_background_job_results(esl, capture) -> None:
    frames = esl.Parser().feed(capture("d_originate_fail"))
    jobs = [f.event for f in frames if f.is_event and f.event.name == "BACKGROUND_JOB"]
    bodies = {e.body for e in jobs}
    assert {
        "-ERR NORMAL_TEMPORARY_FAILURE\n",
        "-ERR NO_ROUTE_DESTINATION\n",
        "-ERR NORMAL_CLEARING\n",
        "-ERR USER_BUSY\n",
        "-ERR CHAN_NOT_IMPLEMENTED\n",
    } <= bodies
    # the client-chosen Job-UUID comes back on the reply and on the event
    assert "11111111-2222-3333-4444-555555555555" in {e.job_uuid for e in jobs}
    replies = [f for f in frames if f.content_type == "command/reply" and f.job_uuid]
    assert "11111111-2222-3333-4444-555555555555" in {f.job_uuid for f in replies}
    for f in replies:
        assert f.reply_text == f"+OK Job-UUID: {f.job_uuid}"
    for e in jobs:
        assert e.get("Content-Length") == str(len(e.body.encode()))
        assert e.get("Job-Command") == "originate" or e.get("Job-Command") == "nosuchcommand"


@pytest.mark.parametrize("name", ["e_burst20_hupall_plain", "e_burst20_hupall_json"])
def test_burst_jobs_and_legs(esl, capture, name) -> None:
    frames = esl.Parser().feed(capture(name))
    reply_jobs = {f.job_uuid for f in frames if f.content_type == "command/reply" and f.job_uuid}
    events = [f.event for f in frames if f.is_event]
    jobs = [e for e in events if e.name == "BACKGROUND_JOB"]
    assert len(jobs) == 20 and {e.job_uuid for e in jobs} == reply_jobs
    a_legs = set()
    for e in jobs:
        m = re.fullmatch(r"\+OK (\S+)\n", e.body)
        assert m and UUID_RE.fullmatch(m.group(1))
        a_legs.add(m.group(1))
    # every B-leg carries its A-leg's uuid in the X- header variable
    creates = [e for e in events if e.name == "CHANNEL_CREATE"]
    b_legs = [e for e in creates if e.call_direction == "inbound"]
    assert len(b_legs) == 20
    assert {e.var("sip_h_X-originating_session_uuid") for e in b_legs} == a_legs
    assert {e.unique_id for e in creates if e.call_direction == "outbound"} == a_legs
    hup = [e for e in events if e.name == "CHANNEL_HANGUP_COMPLETE"]
    assert len(hup) == 40 and {e.hangup_cause for e in hup} == {"NORMAL_CLEARING"}
    assert all(
        e.getall("Hangup-Cause") == ["NORMAL_CLEARING"] * 2 for e in hup if e.format == "plain"
    )
    seqs = [e.sequence for e in events]
    # unique; arrival order may swap neighbours (events come from several FS threads)
    assert len(set(seqs)) == len(seqs) and min(seqs) > 0
    assert sum(a < b for a, b in zip(seqs, seqs[1:], strict=False)) > 0.9 * len(seqs)
    for e in events:
        assert e.timestamp > 1_700_000_000_000_000  # microseconds
        assert e.timestamp == int(e["Event-Date-Timestamp"])


@pytest.mark.parametrize("name", ["b_event_plain_call", "c_event_json_call"])
def test_one_call_values(esl, capture, name) -> None:
    frames = esl.Parser().feed(capture(name))
    events = [f.event for f in frames if f.is_event]
    assert {e.format for e in events} == {"plain" if "plain" in name else "json"}
    counts = Counter(e.name for e in events)
    assert counts["CHANNEL_STATE"] == 14 and counts["CHANNEL_CALLSTATE"] == 6
    job = next(e for e in events if e.name == "BACKGROUND_JOB")
    a_uuid = job.body.split()[1]
    create_b = next(
        e for e in events if e.name == "CHANNEL_CREATE" and e.call_direction == "inbound"
    )
    assert create_b.var("sip_h_X-originating_session_uuid") == a_uuid
    assert create_b.get("variable_sip_h_X-originating_session_uuid") == a_uuid
    assert create_b.unique_id != a_uuid
    # URL-decoded values (plain) and raw JSON strings agree
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", create_b["Event-Date-Local"])
    assert create_b["Caller-Channel-Name"] == "sofia/external/0000000000@127.0.0.1"
    assert create_b["FreeSWITCH-IPv6"] == "fd00::2"
    # multi-valued variables: rendered like plain, split by getall
    dp = next(e for e in events if "variable_DP_MATCH" in e)
    assert dp.get("variable_DP_MATCH") == "ARRAY::doggy|:doggy"
    assert dp.getall("variable_DP_MATCH") == ["doggy", "doggy"]
    # parked loopback legs are never bridged: no Other-Leg-Unique-ID in these captures
    assert all(e.other_leg_unique_id is None for e in events)
    # the Mapping protocol
    assert isinstance(create_b, Mapping)
    assert "Event-Name" in create_b and "No-Such" not in create_b and 42 not in create_b
    assert create_b["Event-Name"] == "CHANNEL_CREATE" == create_b.name
    with pytest.raises(KeyError):
        create_b["No-Such"]
    keys = list(create_b)
    assert len(keys) == len(create_b) == len(set(keys)) > 100
    assert keys[0] == "Event-Name" and "Unique-ID" in create_b.keys()
    assert dict(create_b.items())["Unique-ID"] == create_b.unique_id
    assert create_b.get("No-Such", "x") == "x" and create_b.var("no_such") is None
    assert create_b.answer_state in ("ringing", "answered", "early")
    assert create_b.body is None and job.body is not None
    assert create_b.raw == next(f for f in frames if f.event is create_b).body


def test_bert_subclass_decoded(esl, capture) -> None:
    events = [f.event for f in esl.Parser().feed(capture("g_bert")) if f.is_event]
    custom = [e for e in events if e.name == "CUSTOM"]
    assert len(custom) == 2
    assert {e.subclass for e in custom} == {"mod_bert::in_sync"}
    assert all(e.subclass is None for e in events if e.name != "CUSTOM")


def test_replies_and_notices(esl, capture) -> None:
    bad = esl.Parser().feed(capture("f_bad_password"))
    assert [f.content_type for f in bad] == [
        "auth/request",
        "command/reply",
        "text/disconnect-notice",
    ]
    assert bad[1].reply_text == "-ERR invalid" and bad[1].get("Reply-Text") == "-ERR invalid"
    assert bad[0].body == b"" and bad[0].reply_text is None and bad[0].event is None
    before = esl.Parser().feed(capture("f_cmd_before_auth"))
    assert [f.reply_text for f in before[1:3]] == ["-ERR command not found", "+OK accepted"]
    a = esl.Parser().feed(capture("a_auth_api"))
    api = [f for f in a if f.content_type == "api/response"]
    assert api[0].body.startswith(b"UP ") and api[1].body == b"\n0 total.\n"
    assert api[0].headers == {
        "Content-Type": "api/response",
        "Content-Length": str(len(api[0].body)),
    }
    h = esl.Parser().feed(capture("h_misc"))
    assert b"127.0.0.1" in [f.body for f in h]  # global_getvar: no trailing newline
    assert b"_undef_" in [f.body for f in h]
    js = next(f.event for f in h if f.content_type == "text/event-json")
    assert js.name == "BACKGROUND_JOB" and js.body.startswith("UP 0 years")
    assert js.job_uuid == "0f0f0f0f-0000-4000-8000-000000000001"
    assert "_body" not in js and js.get("Content-Length") == str(len(js.body.encode()))
    exit_ = esl.Parser().feed(capture("f_exit"))
    assert exit_[2].reply_text == "+OK bye"


def test_log_data(esl, capture) -> None:
    frames = esl.Parser().feed(capture("i_log"))
    logs = [f for f in frames if f.content_type == "log/data"]
    assert len(logs) == 19
    for f in logs:
        assert f.event is None and not f.is_event
        assert f.get("Log-Level").isdigit()
        assert len(f.body) == int(f.get("Content-Length")) > 0
        assert set(f.headers) >= {"Log-File", "Log-Func", "Log-Line", "User-Data", "Text-Channel"}


# ---------------------------------------------------------------------------------------
# synthetic frames


def fs_encode(value: str) -> bytes:
    """URL-encode a header value the way FreeSWITCH's switch_url_encode does."""
    out = bytearray()
    for b in value.encode("utf-8", "surrogateescape"):
        if b < 0x20 or b > 0x7E or chr(b) in '\r\n #%&+:;<=>?@[\\]^`{|}"':
            out += b"%%%02X" % b
        else:
            out.append(b)
    return bytes(out)


def plain_event(
    headers: list[tuple[str, str]], body: bytes | None = None, crlf: bool = False
) -> bytes:
    inner = b"".join(n.encode() + b": " + fs_encode(v) + b"\n" for n, v in headers)
    if body is not None:
        inner += b"Content-Length: %d\n\n" % len(body) + body
    else:
        inner += b"\n"
    nl = b"\r\n" if crlf else b"\n"
    return (
        b"Content-Length: %d" % len(inner)
        + nl
        + b"Content-Type: text/event-plain"
        + nl
        + nl
        + inner
    )


def frame(headers: list[tuple[str, str]], body: bytes = b"") -> bytes:
    hs = list(headers)
    if body:
        hs.append(("Content-Length", str(len(body))))
    return b"".join(n.encode() + b": " + v.encode() + b"\n" for n, v in hs) + b"\n" + body


def test_plain_event_values(esl) -> None:
    hs = [
        ("Event-Name", "CUSTOM"),
        ("Event-Subclass", "my::sub class"),
        ("Unique-ID", "u-1"),
        ("Odd", "a: b%41 + c & ü 💡"),
        ("Empty", ""),
        ("Odd", "second"),
        ("variable_multi", "ARRAY::x|:y z|:"),
        ("Event-Date-Timestamp", "123"),
        ("Event-Sequence", "x9"),
    ]
    data = plain_event(hs, body=b"+OK done\n\nwith a blank line")
    (f,) = esl.Parser().feed(data)
    e = f.event
    assert e.format == "plain" and e.name == "CUSTOM" and e.subclass == "my::sub class"
    assert e["Odd"] == "a: b%41 + c & ü 💡" and e.getall("Odd") == ["a: b%41 + c & ü 💡", "second"]
    assert e["Empty"] == "" and "Empty" in e
    assert e.getall("variable_multi") == ["x", "y z", ""]
    assert e.var("multi") == "ARRAY::x|:y z|:"
    assert e.timestamp == 123 and e.sequence == 0
    assert e.body == "+OK done\n\nwith a blank line"
    assert e.job_uuid is None and e.hangup_cause is None and e.call_direction is None
    assert e.get("Content-Length") == str(len(e.body.encode()))
    assert list(e) == [
        "Event-Name",
        "Event-Subclass",
        "Unique-ID",
        "Odd",
        "Empty",
        "variable_multi",
        "Event-Date-Timestamp",
        "Event-Sequence",
        "Content-Length",
    ]
    # raw percent sequences decode once, malformed ones are kept, '+' is not a space
    raw = b"Event-Name: X\nV: %41%4a%zz%4+%\nW: a+b%\n\n"
    (g,) = esl.Parser().feed(
        b"Content-Length: %d\nContent-Type: text/event-plain\n\n" % len(raw) + raw
    )
    assert g.event["V"] == "AJ%zz%4+%" and g.event["W"] == "a+b%"


def test_crlf_tolerated(esl) -> None:
    hs = [("Event-Name", "HEARTBEAT"), ("Unique-ID", "abc")]
    lf = plain_event(hs)
    crlf = plain_event(hs, crlf=True)
    reply = b"Content-Type: command/reply\r\nReply-Text: +OK accepted\r\n\r\n"
    frames = esl.Parser().feed(crlf + reply + lf)
    assert [f.content_type for f in frames] == [
        "text/event-plain",
        "command/reply",
        "text/event-plain",
    ]
    assert frames[1].reply_text == "+OK accepted"
    assert frames[0].event.unique_id == frames[2].event.unique_id == "abc"
    inner = b"Event-Name: X\r\nUnique-ID: u\r\n\r\n"
    (f,) = esl.Parser().feed(
        b"Content-Length: %d\nContent-Type: text/event-plain\n\n" % len(inner) + inner
    )
    assert f.event.unique_id == "u" and f.event.name == "X" and f.event.body is None


HOT_FIELDS = {
    "name": "Event-Name",
    "subclass": "Event-Subclass",
    "unique_id": "Unique-ID",
    "job_uuid": "Job-UUID",
    "other_leg_unique_id": "Other-Leg-Unique-ID",
    "call_direction": "Call-Direction",
    "hangup_cause": "Hangup-Cause",
    "answer_state": "Answer-State",
    "timestamp": "Event-Date-Timestamp",
    "sequence": "Event-Sequence",
}


def _json_event(hs: list[tuple[str, str]]) -> bytes:
    raw = orjson.dumps(dict(hs))
    return b"Content-Length: %d\nContent-Type: text/event-json\n\n" % len(raw) + raw


@pytest.mark.parametrize("fmt", ["plain", "json"])
def test_hot_fields_cached_and_consistent(esl, fmt: str) -> None:
    # near-miss names first: only an exact "Name:" line is the hot header
    hs = [
        ("Event-Names", "no"),
        ("Event-Name", "CHANNEL_HANGUP"),
        ("Unique-IDs", "no"),
        ("Other-Leg-Unique-ID", "o-1"),
        ("Event-Subclass", "a::b c"),
        ("Unique-ID", "u-1"),
        ("Call-Directions", "no"),
        ("Caller-Direction", "no"),
        ("Call-Direction", "outbound"),
        ("Job-UUID", "j-1"),
        ("Hangup-Cause", "NORMAL_CLEARING"),
        ("Answer-State", "hangup"),
        ("Event-Date-Timestamps", "9"),
        ("Event-Date-Timestamp", "1764700000123456"),
        ("Event-Sequence", "42"),
    ]
    if fmt == "plain":
        hs.append(("Unique-ID", "second"))  # the first occurrence wins
    data = plain_event(hs) if fmt == "plain" else _json_event(hs)
    (f,) = esl.Parser().feed(data)
    e = f.event
    assert e.timestamp == 1764700000123456 and e.sequence == 42
    assert e.unique_id == "u-1" and e.other_leg_unique_id == "o-1"
    assert e.call_direction == "outbound" and e.subclass == "a::b c"
    for attr, header in HOT_FIELDS.items():
        first = getattr(e, attr)
        assert getattr(e, attr) is first  # cached after the first read
        if attr in ("timestamp", "sequence"):
            assert first == int(e.get(header))
        else:
            assert e.get(header) is first or e.get(header) == first
    # absent hot headers: None / 0, also when read through get()
    (g,) = esl.Parser().feed(plain_event([("Other", "x")]))
    ev = g.event
    assert ev.name == "" and ev.unique_id is None and ev.job_uuid is None
    assert ev.timestamp == 0 and ev.sequence == 0 and ev.get("Event-Name") is None


@pytest.mark.parametrize("pad", range(0, 140, 3))
def test_line_scan_chunk_boundaries(esl, pad: int) -> None:
    """Header lines and the blank line at every offset of the 16/64-byte scan steps."""
    hs = [
        ("X-Pad", "a" * pad),
        ("Event-Name", "X"),
        ("variable_y", "v" * (pad % 70)),
        ("Unique-ID", "u"),
        ("Event-Date-Timestamp", "17"),
    ]
    for data in (plain_event(hs), plain_event(hs, b"body\n"), plain_event(hs, crlf=True)):
        (f,) = esl.Parser().feed(data)
        e = f.event
        assert (e.name, e.unique_id, e.timestamp, e.var("y")) == ("X", "u", 17, "v" * (pad % 70))
        assert outcome(esl, data) == outcome(_pyesl, data)
    # header lines ending without a blank line, with or without a last '\n'
    for tail in (b"", b"\n", b"\r\n", b"\r"):
        inner = b"X-Pad: " + b"a" * pad + b"\nUnique-ID: u\nEvent-Name: X" + tail
        data = b"Content-Length: %d\nContent-Type: text/event-plain\n\n" % len(inner) + inner
        (f,) = esl.Parser().feed(data)
        assert (f.event.name, f.event.get("Event-Name"), f.event.body) == ("X", "X", None)
        assert outcome(esl, data) == outcome(_pyesl, data)


def test_blank_lines_between_frames_skipped(esl) -> None:
    reply = frame([("Content-Type", "command/reply"), ("Reply-Text", "+OK")])
    frames = esl.Parser().feed(b"\n\r\n" + reply + b"\n\n" + reply)
    assert [f.reply_text for f in frames] == ["+OK", "+OK"]
    assert [f.offset for f in frames] == [3, 3 + len(reply) + 2]


def test_json_and_xml_events(esl) -> None:
    body = orjson.dumps(
        {
            "Event-Name": "CHANNEL_PARK",
            "Unique-ID": "u1",
            "variable_list": ["a", "b"],
            "Event-Date-Timestamp": "1796321948786666",
            "Content-Length": "3",
            "_body": "hi\n",
        }
    )
    data = b"Content-Length: %d\nContent-Type: text/event-json\n\n" % len(body) + body
    xml = (
        b"<event><headers><Event-Name>CUSTOM</Event-Name><Event-Subclass>a%3A%3Ab</Event-Subclass>"
        b"<Unique-ID>x</Unique-ID><V>1</V><V>2%20two</V></headers>"
        b"<Content-Length>5</Content-Length><body>a&lt;b\n</body></event>"
    )
    data += b"Content-Length: %d\nContent-Type: text/event-xml\n\n" % len(xml) + xml
    j, x = esl.Parser().feed(data)
    assert j.event.format == "json" and j.event.name == "CHANNEL_PARK"
    assert j.event.get("variable_list") == "ARRAY::a|:b" and j.event.getall("variable_list") == [
        "a",
        "b",
    ]
    assert j.event.timestamp == 1796321948786666 and j.event.body == "hi\n"
    assert "_body" not in list(j.event) and len(j.event) == 5
    assert x.event.format == "xml" and x.event.subclass == "a::b" and x.event.unique_id == "x"
    assert x.event.getall("V") == ["1", "2 two"] and x.event.get("V") == "ARRAY::1|:2 two"
    assert x.event.body == "a<b\n" and x.event.raw == xml


def test_bad_json_event_raises_on_access(esl) -> None:
    body = b'{"Event-Name": "X", '
    data = b"Content-Length: %d\nContent-Type: text/event-json\n\n" % len(body) + body
    (f,) = esl.Parser().feed(data)
    with pytest.raises(ESLProtocolError, match="invalid JSON"):
        f.event.name  # noqa: B018
    # invalid UTF-8 from cJSON is tolerated
    body = b'{"Event-Name":"X","v":"a\xffb"}'
    (g,) = esl.Parser().feed(
        b"Content-Length: %d\nContent-Type: text/event-json\n\n" % len(body) + body
    )
    assert g.event["v"] == "a\ufffdb"


def test_unknown_content_type_and_no_content_type(esl) -> None:
    data = frame([("Content-Type", "text/whatever"), ("X", "y")], b"body") + frame([("A", "b")])
    f, g = esl.Parser().feed(data)
    assert f.content_type == "text/whatever" and f.body == b"body" and f.event is None
    assert g.content_type == "" and g.get("A") == "b" and not g.is_event
    # utf-8 in a header and in a body counted in bytes
    body = "é💡\n".encode()
    (h,) = esl.Parser().feed(frame([("Content-Type", "api/response"), ("R", "ü")], body))
    assert h.body == body and h.get("R") == "ü"


# ---------------------------------------------------------------------------------------
# errors


REPLY = frame([("Content-Type", "command/reply"), ("Reply-Text", "+OK")])


@pytest.mark.parametrize(
    "bad, message",
    [
        (b"Content-Type: api/response\nGARBAGE LINE\n\n", "malformed header line"),
        (b"Content-Type: api/response\nContent-Length: -5\n\nhello", "negative Content-Length"),
        (b"Content-Type: api/response\nContent-Length: 12a\n\nhello", "invalid Content-Length"),
        (b"Content-Type: api/response\nContent-Length: \n\nhello", "invalid Content-Length"),
        (
            b"Content-Type: api/response\nContent-Length: 99999999999999999999999\n\n",
            "exceeds max_frame_size",
        ),
        (b"Content-Type: api/response\nContent-Length: 5000\n\n", "exceeds max_frame_size"),
    ],
)
def test_protocol_errors(esl, bad: bytes, message: str) -> None:
    stream = REPLY + REPLY + bad + REPLY
    for sizes in (None, [1], [7, 3], [len(REPLY) + 3]):
        snap, err = outcome(esl, stream, sizes, max_frame_size=4096)
        assert err is not None and message in err[0]
        assert err[1] == 2 * len(REPLY)  # offset of the bad frame, whatever the chunking
        assert len(snap) == 2  # the frames before it were delivered
    p = esl.Parser(max_frame_size=4096)
    with pytest.raises(ESLProtocolError) as info:
        p.feed(stream)
    assert info.value.offset == 2 * len(REPLY) and len(info.value.frames) == 2
    with pytest.raises(ESLProtocolError):
        p.feed(REPLY)  # still failed
    p.reset()
    assert p.buffered == 0
    (f,) = p.feed(REPLY)
    assert f.reply_text == "+OK"


def test_unterminated_header_block_is_bounded(esl) -> None:
    p = esl.Parser(max_frame_size=1000)
    p.feed(REPLY)
    with pytest.raises(ESLProtocolError, match="header block exceeds max_frame_size") as info:
        for _ in range(1000):
            p.feed(b"X-Header: " + b"v" * 40 + b"\n")
            assert p.buffered <= 1000 + 51
    assert info.value.offset == len(REPLY)
    # a huge unterminated line fed in one go fails at once too
    with pytest.raises(ESLProtocolError, match="header block exceeds"):
        esl.Parser(max_frame_size=1000).feed(b"a" * 5000)
    # and a terminated but oversized header block
    with pytest.raises(ESLProtocolError, match="max_frame_size"):
        esl.Parser(max_frame_size=100).feed(b"A: " + b"b" * 200 + b"\n\n")


def test_large_body_in_small_chunks(esl) -> None:
    body = bytes(range(256)) * 4096  # 1 MiB with every byte value, blank lines included
    data = frame([("Content-Type", "api/response")], body) + REPLY
    p = esl.Parser()
    out = []
    for i in range(0, len(data), 4096):
        out += p.feed(data[i : i + 4096])
        if not out:
            assert p.buffered == min(i + 4096, len(data))
    assert [f.content_type for f in out] == ["api/response", "command/reply"]
    assert out[0].body == body
    with pytest.raises(ValueError):
        esl.Parser(max_frame_size=0)


def test_feed_accepts_bytearray_and_memoryview(esl) -> None:
    p = esl.Parser()
    assert p.feed(b"") == []
    out = p.feed(bytearray(REPLY[:10])) + p.feed(memoryview(REPLY[10:]))
    assert [f.raw for f in out] == [REPLY]


# ---------------------------------------------------------------------------------------
# property tests (generated streams)

names = st.text(
    alphabet=st.characters(min_codepoint=33, max_codepoint=126, blacklist_characters=":"),
    min_size=1,
    max_size=20,
)
values = st.one_of(
    st.text(max_size=30),
    st.sampled_from(["", ": ", "a: b", "%41", "%zz", "ARRAY::a|:b", "ü💡", " lead", "trail "]),
)
HOT = [
    "Event-Name",
    "Unique-ID",
    "Job-UUID",
    "Hangup-Cause",
    "Event-Date-Timestamp",
    "Call-Direction",
]


@st.composite
def frames_st(draw) -> bytes:
    kind = draw(st.sampled_from(["reply", "api", "plain", "json", "log", "plain_crlf"]))
    if kind == "reply":
        return frame(
            [
                ("Content-Type", "command/reply"),
                ("Reply-Text", draw(values).replace("\n", " ").replace("\r", " ")),
            ]
        )
    if kind == "api":
        return frame([("Content-Type", "api/response")], draw(st.binary(max_size=60)))
    if kind == "log":
        return frame(
            [("Content-Type", "log/data"), ("Log-Level", "7")],
            draw(st.binary(min_size=1, max_size=40)),
        )
    hs = draw(st.lists(st.tuples(st.one_of(names, st.sampled_from(HOT)), values), max_size=12))
    body = draw(st.one_of(st.none(), st.binary(max_size=40)))
    if kind == "json":
        d: dict[str, Any] = {n: v for n, v in hs}
        if hs and draw(st.booleans()):
            d[hs[0][0]] = [v for _, v in hs]
        if body is not None:
            d["_body"] = body.decode("latin-1")
        raw = orjson.dumps(d)
        return b"Content-Length: %d\nContent-Type: text/event-json\n\n" % len(raw) + raw
    return plain_event([("Event-Name", "X"), *hs], body, crlf=kind == "plain_crlf")


streams = st.lists(frames_st(), min_size=1, max_size=8).map(b"".join)
SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(
    data=streams, cuts=st.lists(st.integers(min_value=1, max_value=200), min_size=1, max_size=10)
)
def test_any_chunking_same_frames(data: bytes, cuts: list[int]) -> None:
    for impl in IMPLS:
        esl = _load(impl)
        whole, err = outcome(esl, data)
        assert err is None
        assert outcome(esl, data, cuts) == (whole, None)


@SETTINGS
@given(data=streams)
def test_twins_identical_on_generated_streams(data: bytes) -> None:
    assert outcome(_load("cython"), data) == outcome(_pyesl, data)


@SETTINGS
@given(
    hs=st.lists(st.tuples(names, values), min_size=1, max_size=10),
    body=st.none() | st.binary(max_size=30),
)
def test_plain_values_round_trip(hs: list[tuple[str, str]], body: bytes | None) -> None:
    data = plain_event([("Event-Name", "X"), *hs], body)
    for impl in IMPLS:
        (f,) = _load(impl).Parser().feed(data)
        e = f.event
        for n, _ in hs:
            first = next(v2 for n2, v2 in [("Event-Name", "X"), *hs] if n2 == n)
            assert e.get(n) == first
        assert e.body == (None if body is None else body.decode("utf-8", "replace"))


@SETTINGS
@given(data=st.binary(max_size=300), cuts=st.lists(st.integers(1, 50), min_size=1, max_size=5))
def test_fuzz_random_bytes(data: bytes, cuts: list[int]) -> None:
    results = [outcome(_load(impl), data, cuts, max_frame_size=256) for impl in IMPLS]
    assert results[0] == results[1]


@settings(max_examples=80, deadline=None)
@given(seed=st.integers(0, 2**32 - 1))
def test_fuzz_mutated_capture(seed: int, capture) -> None:
    rng = random.Random(seed)
    src = capture("b_event_plain_call")
    start = rng.randrange(0, len(src) - 6000)
    data = bytearray(src[start : start + rng.randint(100, 6000)])
    for _ in range(rng.randint(1, 8)):
        op = rng.random()
        i = rng.randrange(len(data))
        if op < 0.5:
            data[i] = rng.choice(b"\n\r:%- 0123456789xyz\x00\xff")
        elif op < 0.75:
            del data[i : i + rng.randint(1, 20)]
        else:
            data[i:i] = rng.choice([b"\n\n", b"Content-Length: 3\n", b"%", b":", b"\r\n"])
        if not data:
            data = bytearray(b"x")
    cuts = [rng.randint(1, 700) for _ in range(4)]
    results = [outcome(_load(impl), bytes(data), cuts, max_frame_size=8192) for impl in IMPLS]
    assert results[0] == results[1]


@pytest.mark.parametrize("pure, expected", [("1", "python"), ("", "cython")])
def test_esl_selects_parser(pure: str, expected: str) -> None:
    import os
    import subprocess
    import sys

    _load("cython")  # the default is the extension: fail clearly when it is not built
    env = {**os.environ, "FASTSWITCH_PURE": pure}
    code = (
        "import fastswitch, fastswitch.esl as e; "
        "print(fastswitch.PARSER, e.PARSER, e.Parser.__module__, fastswitch.ESLProtocolError.__name__)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    ).stdout.split()
    module = "fastswitch._pyesl" if expected == "python" else "fastswitch._esl"
    assert out == [expected, expected, module, "ESLProtocolError"]
