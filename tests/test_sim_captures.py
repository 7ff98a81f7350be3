"""Replay the real FreeSWITCH captures' command scripts against the simulator.

For each capture, the ``SEND`` lines of ``<name>.txt`` are sent to a fresh
simulated server, each one once the simulator has sent as many messages as
FreeSWITCH had when the command was originally sent (``rx_offset``). What comes
back is compared with ``<name>.bin``: the sequence of content types, reply texts,
api bodies, the event names in order per leg, the BACKGROUND_JOB results, the
set of header names of every event and the values of the headers that do not vary
between runs (:data:`VALUE_HEADERS`). Only values that legitimately vary are
normalised (UUIDs, times, sequence numbers, host names, ports).
"""

from __future__ import annotations

import ast
import re
import socket
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from fastswitch.esl import Event, Frame, Parser
from fastswitch.sim import SimServer

pytestmark = pytest.mark.timeout(60)

UUID_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


@dataclass
class Send:
    t: float
    rx_offset: int
    data: bytes


def read_script(path: Path) -> list[Send]:
    out = []
    for line in path.read_text().splitlines():
        m = re.match(r"SEND t=([\d.]+) rx_offset=(\d+) bytes=\d+ (b'.*')$", line)
        if m:
            out.append(Send(float(m.group(1)), int(m.group(2)), ast.literal_eval(m.group(3))))
    return out


def parse_all(data: bytes) -> list[Frame]:
    return Parser().feed(data)


@dataclass
class Replay:
    frames: list[Frame] = field(default_factory=list)
    closed: bool = False


def replay(
    address: tuple[str, int],
    script: list[Send],
    capture: list[Frame],
    step_timeout: float = 5.0,
    honor_gaps: bool = False,
) -> Replay:
    """Drive the simulator with the capture's commands, paced by the capture's messages
    (and, with ``honor_gaps``, by its pauses of a second or more, for the sps refills)."""
    ends = [f.offset + len(f.raw) for f in capture]
    result = Replay()
    parser = Parser()
    bmap: dict[str, str] = {}
    cap_b = _b_legs_by_key(capture)
    sock = socket.create_connection(address, timeout=5)
    sock.settimeout(0.05)

    def pump(until: float, need: int) -> None:
        while len(result.frames) < need and time.monotonic() < until and not result.closed:
            try:
                data = sock.recv(1 << 20)
            except TimeoutError:
                continue
            if not data:
                result.closed = True
                break
            result.frames.extend(parser.feed(data))

    try:
        prev_t = 0.0
        for s in script:
            need = sum(1 for e in ends if e <= s.rx_offset)
            pump(time.monotonic() + step_timeout, need)
            gap = s.t - prev_t
            if honor_gaps and gap >= 1.0:
                end = time.monotonic() + min(gap, 1.3)
                pump(end, 1 << 30)
            prev_t = s.t
            # B-leg uuids differ: translate the capture's to the simulator's
            for key, sim_uuid in _b_legs_by_key(result.frames).items():
                if key in cap_b:
                    bmap[cap_b[key]] = sim_uuid
            data = s.data
            for cap_uuid, sim_uuid in bmap.items():
                data = data.replace(cap_uuid.encode(), sim_uuid.encode())
            sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        pump(time.monotonic() + step_timeout, len(capture))
        pump(time.monotonic() + 0.3, 1 << 30)
    finally:
        sock.close()
    return result


def _b_legs_by_key(frames: list[Frame]) -> dict[str, str]:
    """B-leg uuid by the A-leg uuid it carries (or by order of first appearance)."""
    out: dict[str, str] = {}
    seen: set[str] = set()
    for f in frames:
        if not f.is_event:
            continue
        ev = f.event
        if ev.call_direction == "inbound" and ev.unique_id not in seen:
            seen.add(ev.unique_id)
            a = ev.var("sip_h_X-originating_session_uuid")
            out[a or f"#{len(out)}"] = ev.unique_id
    return out


def leg_labels(frames: list[Frame]) -> dict[str, str]:
    """uuid -> 'A:<a uuid>' / 'B:<a uuid>' (or 'B#n' without the correlation header).

    A-legs whose uuid FreeSWITCH chose (no origination_uuid) are 'A#n' in order.
    """
    labels: dict[str, str] = {}
    for key, b in _b_legs_by_key(frames).items():
        labels[b] = "B:" + key if not key.startswith("#") else "B" + key
    n = 0
    for f in frames:
        if f.is_event and f.event.unique_id and f.event.call_direction == "outbound":
            u = f.event.unique_id
            if u not in labels:
                chosen = f.event.var("origination_uuid") == u
                labels[u] = "A:" + u if chosen else f"A#{n}"
                n += 0 if chosen else 1
    return labels


def ev_name(f: Frame) -> str:
    ev = f.event
    return f"CUSTOM::{ev.subclass}" if ev.name == "CUSTOM" else ev.name


def norm(text: str) -> str:
    return UUID_RE.sub("U", text)


def replies(frames: list[Frame]) -> list[tuple[str, str]]:
    out = []
    for f in frames:
        if f.is_event:
            continue
        if f.content_type == "api/response":
            out.append((f.content_type, api_shape(f.body.decode())))
        elif f.content_type == "log/data":
            continue
        else:
            out.append((f.content_type, norm(f.reply_text or f.body.decode())))
    return out


def api_shape(body: str) -> str:
    """api bodies exactly when deterministic; otherwise their shape."""
    body = norm(body)
    if body.startswith("UP "):
        lines = [re.sub(r"\d+ (\w+?)s?\b", r"N \1", line) for line in body.splitlines()]
        return "\n".join(re.sub(r"[\d.]+", "N", line) for line in lines)
    if body.startswith("Event-Name: CHANNEL_DATA"):
        return "CHANNEL_DATA"
    if body.startswith(("uuid,", '{"row_count":')) and not body.startswith('{"row_count": 0'):
        return body.split("\n")[0][:60] if body.startswith("uuid,") else '{"row_count":N'
    if "Name\t" in body:
        return re.sub(r" +", " ", re.sub(r"\d+", "N", body))
    return body


def per_leg(frames: list[Frame]) -> dict[str, list[str]]:
    labels = leg_labels(frames)
    out: dict[str, list[str]] = {}
    for f in frames:
        if f.is_event and f.event.unique_id:
            out.setdefault(labels[f.event.unique_id], []).append(ev_name(f))
    return out


def global_order(frames: list[Frame]) -> list[str]:
    labels = leg_labels(frames)
    out = []
    for f in frames:
        if f.is_event:
            u = f.event.unique_id
            out.append(f"{labels[u][0] if u else '-'}.{ev_name(f)}")
    return out


def job_results(frames: list[Frame]) -> Counter[str]:
    return Counter(
        api_shape(f.event.body or "")
        for f in frames
        if f.is_event and f.event.name == "BACKGROUND_JOB"
    )


# set by the ACK to the 200 OK, which races with the inbound leg's first events
ACK_RACE = frozenset({"variable_sip_cseq", "variable_sip_to_tag"})


def per_event(frames: list[Frame], read: Callable[[Event], Any]) -> dict[tuple[str, str, int], Any]:
    """(leg, event, n-th of that event on the leg) -> ``read(event)``, for every event."""
    labels = leg_labels(frames)
    seen: Counter[tuple[str, str]] = Counter()
    out = {}
    for f in frames:
        if not f.is_event:
            continue
        ev = f.event
        label = labels.get(ev.unique_id, "-") if ev.unique_id else "-"
        k = (label, ev_name(f))
        out[(label, ev_name(f), seen[k])] = read(ev)
        seen[k] += 1
    return out


def header_sets(frames: list[Frame]) -> dict[tuple[str, str, int], frozenset[str]]:
    """(leg, event, n-th of that event on the leg) -> header names (minus ACK races)."""
    return per_event(frames, lambda ev: frozenset(ev.keys()) - ACK_RACE)


# headers whose values are the same in every run of a scenario (causes, states, SIP
# outcome, the running app): compared value for value
VALUE_HEADERS = (
    "Hangup-Cause",
    "variable_hangup_cause",
    "variable_hangup_cause_q850",
    "variable_sip_term_cause",
    "variable_sip_reason",
    "variable_sip_term_status",
    "variable_sip_invite_failure_status",
    "variable_proto_specific_hangup_cause",
    "variable_sip_hangup_disposition",
    "variable_current_application",
    "variable_current_application_data",
    "variable_last_app",
    "variable_DP_MATCH",
    "Application",
    "Answer-State",
    "Channel-Call-State",
    "Channel-State",
    "variable_endpoint_disposition",
)


RFC2822_RE = re.compile(r"\w{3}, \d\d \w{3} \d{4} \d\d:\d\d:\d\d [+-]\d{4}")


def value_shape(value: str | None) -> str | None:
    """A header value with the parts that vary per run (uuids, dates) normalised."""
    return None if value is None else RFC2822_RE.sub("DATE", norm(value))


def header_values(frames: list[Frame]) -> dict[tuple[str, str, int], dict[str, str | None]]:
    """(leg, event, n-th of that event on the leg) -> the VALUE_HEADERS values."""
    return per_event(frames, lambda ev: {h: value_shape(ev.get(h)) for h in VALUE_HEADERS})


def assert_values_match(capture: list[Frame], sim: list[Frame]) -> None:
    cap, got = header_values(capture), header_values(sim)
    diffs = {
        (k, h): (cap[k][h], got[k][h])
        for k in cap
        if k in got
        for h in VALUE_HEADERS
        if cap[k][h] != got[k][h]
    }
    assert not diffs, diffs


def run_capture(captures_dir: Path, name: str, **cfg: object) -> tuple[list[Frame], Replay]:
    capture = parse_all((captures_dir / f"{name}.bin").read_bytes())
    script = read_script(captures_dir / f"{name}.txt")
    settings = {"port": 0, "heartbeat_interval": 0.0, "seed": 7, **cfg}
    with SimServer(**settings) as server:
        got = replay(server.address, script, capture, honor_gaps=name == "s_sps_limit")
    return capture, got


def assert_headers_match(capture: list[Frame], sim: list[Frame]) -> None:
    cap, got = header_sets(capture), header_sets(sim)
    assert cap.keys() == got.keys()
    diffs = {k: (sorted(cap[k] - got[k]), sorted(got[k] - cap[k])) for k in cap if cap[k] != got[k]}
    assert not diffs, diffs


# -- deterministic captures: everything in order ------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "a_auth_api",
        "f_bad_password",
        "f_cmd_before_auth",
        "f_exit",
        "b_event_plain_call",
        "b_event_plain_ALL_call",
        "c_event_json_call",
        "g_bert",
        "k_ctl_answer",
        "l_ctl_respond404",
    ],
)
def test_capture_replays_exactly(captures_dir: Path, name: str) -> None:
    capture, got = run_capture(captures_dir, name)
    assert got.closed, "the simulator must close the socket after the disconnect notice"
    assert [f.content_type for f in got.frames] == [f.content_type for f in capture]
    assert replies(got.frames) == replies(capture)
    assert global_order(got.frames) == global_order(capture)
    assert job_results(got.frames) == job_results(capture)
    assert_headers_match(capture, got.frames)
    assert_values_match(capture, got.frames)


# -- captures whose interleaving depends on timing: per-leg order and sets ----------------


@pytest.mark.parametrize(
    "name,cfg",
    [
        ("d_originate_fail", {"routes": {"127.0.0.1:5999": "unreachable"}, "dialplan": "vanilla"}),
        ("h_misc", {}),
        ("m_ctl_ringready", {}),
        ("n_ctl_bert_two_sided", {}),
        ("o_hupall_by_var", {}),
        ("p_filters", {}),
        ("s_sps_limit", {}),
    ],
)
def test_capture_replays_per_leg(captures_dir: Path, name: str, cfg: dict[str, object]) -> None:
    capture, got = run_capture(captures_dir, name, **cfg)
    assert got.closed
    assert Counter(f.content_type for f in got.frames) == Counter(f.content_type for f in capture)
    assert Counter(replies(got.frames)) == Counter(replies(capture))
    assert per_leg(got.frames) == per_leg(capture)
    assert job_results(got.frames) == job_results(capture)
    assert_headers_match(capture, got.frames)
    assert_values_match(capture, got.frames)
