"""Extract event templates from the real FreeSWITCH captures.

Run once (``python -m fastswitch.sim.extract [CAPTURES_DIR]``); the output,
``fastswitch/sim/templates/events.json.gz``, is committed as package data.

Every captured channel event becomes a template: its header list in capture
order, with the values that vary per call replaced by *slots* (``\\x01name\\x01``
markers, see :mod:`fastswitch.sim.templates`). The variables a caller sets in the
originate ``{...}`` block become one ``VARS`` block slot on the A-leg, and the
``variable_sip_h_X-*`` headers one ``XHDRS`` block slot on the B-leg, so a call
with other variables renders the same event with its own variables in place.

Each template is stored under a key
``role|name|cs|callstate|answer|app|cause|answered|disposition|nested``
(role ``A`` = outbound leg, ``B`` = inbound leg, ``-`` = no channel; ``answered``
is the leg's history, see :func:`history`;
``nested`` ``+`` for an EXECUTE(_COMPLETE) of an app started while another one, e.g.
park, runs underneath); the first
capture (in ``CAPTURE_ORDER``) that shows a key wins.
"""

from __future__ import annotations

import ast
import gzip
import json
import os
import re
import sys
from pathlib import Path
from urllib.parse import unquote_to_bytes

CAPTURE_ORDER = (
    "k_ctl_answer",
    "l_ctl_respond404",
    "m_ctl_ringready",
    "n_ctl_bert_two_sided",
    "o_hupall_by_var",
    "p_filters",
    "b_event_plain_call",
    "b_event_plain_ALL_call",
    "d_originate_fail",
    "g_bert",
    "s_sps_limit",
    "h_misc",
    "e_burst20_hupall_plain",
)
JSON_CAPTURES = ("j_heartbeat",)

OUT = Path(__file__).resolve().parent / "templates" / "events.json.gz"

# whole-value slots by header name
NAME_SLOTS = {
    "Core-UUID": "core",
    "FreeSWITCH-Hostname": "host",
    "FreeSWITCH-Switchname": "host",
    "Event-Date-Local": "dlocal",
    "Event-Date-GMT": "dgmt",
    "Event-Date-Timestamp": "ts",
    "Event-Sequence": "seq",
    "Channel-State": "cs",
    "Channel-Call-State": "callstate",
    "Answer-State": "answer",
    "Original-Channel-Call-State": "prev_callstate",
    "Channel-Call-State-Number": "callstate_num",
    "Hangup-Cause": "cause",
    "variable_hangup_cause": "cause",
    "variable_hangup_cause_q850": "q850",
    "variable_sip_hangup_disposition": "disposition",
    "Caller-Profile-Created-Time": "t_created",
    "Caller-Channel-Created-Time": "t_created",
    "Caller-Channel-Answered-Time": "t_answered",
    "Caller-Channel-Progress-Time": "t_progress",
    "Caller-Channel-Progress-Media-Time": "t_pmedia",
    "Caller-Channel-Hangup-Time": "t_hangup",
    "variable_sip_invite_stamp": "t_created",
    "Application": "app",
    "Application-Data": "app_data",
    "Application-UUID": "app_uuid",
    "Job-UUID": "job_uuid",
    "Job-Command": "job_cmd",
    "Job-Command-Arg": "job_arg",
    "API-Command": "job_cmd",
    "API-Command-Argument": "job_arg",
    "Channel-Name": "chan_name",
    "Caller-Channel-Name": "chan_name",
    "variable_channel_name": "chan_name",
    "Unique-ID": "uuid",
    "Caller-Unique-ID": "uuid",
    "Channel-Call-UUID": "uuid",
    "variable_uuid": "uuid",
    "variable_call_uuid": "uuid",
    # the app started last (FreeSWITCH never clears it; same as last_app, which only the
    # CDR events show): on an EXECUTE_COMPLETE(park) after a sendmsg app it names that app
    "variable_current_application": "last_app",
    "variable_last_app": "last_app",
    "variable_current_application_data": "last_arg",  # the data of that app
    "variable_last_arg": "last_arg",
    "variable_sip_term_status": "term_status",
    # the leg's own cause number (not mapped to Q.850: 487 for ORIGINATOR_CANCEL, capture m)
    "variable_sip_term_cause": "term_cause",
    # 487 on a cancelled A-leg, which has no sip_term_status (capture m)
    "variable_sip_invite_failure_status": "invite_failure",
    # the Reason header the far end sent, from its cause (captures b, k, l, m)
    "variable_sip_reason": "sip_reason",
    # the dialplan's regex captures: only some extensions have them (none for bert, g)
    "variable_DP_MATCH": "dp_match",
    "variable_proto_specific_hangup_cause": "proto_cause",
    "variable_session_id": "session_id",
    "variable_sip_call_id": "call_id",
    "variable_bert_stats_sync_lost": "bert_lost",
    "variable_bert_stats_sync_lost_count": "bert_lost_count",
}
# milestones: created, answered, progress, pmedia, hangup
for _v, _m in (
    ("start", "created"),
    ("profile_start", "created"),
    ("answer", "answered"),
    ("progress", "progress"),
    ("progress_media", "pmedia"),
    ("end", "hangup"),
):
    NAME_SLOTS[f"variable_{_v}_stamp"] = f"s_{_m}"
    NAME_SLOTS[f"variable_{_v}_epoch"] = f"e_{_m}"
    NAME_SLOTS[f"variable_{_v}_uepoch"] = f"t_{_m}"
DURATIONS = (
    "duration billsec progresssec answersec waitsec progress_mediasec flow_billsec "
    "mduration billmsec progressmsec answermsec waitmsec progress_mediamsec flow_billmsec "
    "uduration billusec progressusec answerusec waitusec progress_mediausec flow_billusec"
).split()
for _d in DURATIONS:
    NAME_SLOTS[f"variable_{_d}"] = f"d_{_d}"

HEARTBEAT_SLOTS = {
    "Up-Time": "uptime",
    "Uptime-msec": "uptime_msec",
    "Session-Count": "session_count",
    "Max-Sessions": "max_sessions",
    "Session-Per-Sec": "sps",
    "Session-Per-Sec-Last": "sps_last",
    "Session-Per-Sec-Max": "sps_max",
    "Session-Per-Sec-FiveMin": "sps_max",
    "Session-Since-Startup": "since_startup",
    "Session-Peak-Max": "peak",
    "Session-Peak-FiveMin": "peak",
}


def slot(name: str) -> str:
    return f"\x01{name}\x01"


def frames(data: bytes):
    """Split a capture into (headers dict, body) frames."""
    i = 0
    while i < len(data):
        j = data.find(b"\n\n", i)
        if j < 0:
            return
        hdrs = {}
        for line in data[i:j].decode().split("\n"):
            k, _, v = line.partition(": ")
            hdrs.setdefault(k, v)
        n = int(hdrs.get("Content-Length", 0))
        yield hdrs, data[j + 2 : j + 2 + n]
        i = j + 2 + n


def plain_event(body: bytes) -> tuple[list[tuple[str, str]], str | None]:
    """Decode a text/event-plain body into (header list, inner body)."""
    j = body.find(b"\n\n")
    head = body[:j].decode()
    pairs = []
    for line in head.split("\n"):
        k, _, v = line.partition(": ")
        pairs.append((k, unquote_to_bytes(v).decode("utf-8", "surrogateescape")))
    inner = None
    if pairs and pairs[-1][0] == "Content-Length":
        pairs.pop()
        inner = body[j + 2 :].decode()
    return pairs, inner


def originate_vars(txt: str) -> dict[str, list[str]]:
    """origination_uuid -> ordered names of the {} variables of that originate."""
    out = {}
    for line in txt.splitlines():
        if not line.startswith("SEND"):
            continue
        raw = ast.literal_eval(line[line.index("b'") :]).decode()
        m = re.search(r"originate \{([^}]*)\}", raw)
        if not m:
            continue
        names, uuid = [], None
        for kv in m.group(1).split(","):
            k, _, v = kv.partition("=")
            names.append(k)
            if k == "origination_uuid":
                uuid = v
        if uuid:
            out[uuid] = names
    return out


def history(d: dict[str, str]) -> str:
    """'1' answered / '0' not, then flags in order: b bert ran, e early media, m an app
    started by sendmsg is running, n a SIP response came back, p playback ran, r ringing
    (180) seen."""
    flags = "1" if d.get("Caller-Channel-Answered-Time", "0") != "0" else "0"
    if "variable_bert_stats_sync_lost" in d:
        flags += "b"
    if d.get("Caller-Channel-Progress-Media-Time", "0") != "0":
        flags += "e"
    if "variable_current_loop" in d:
        flags += "m"
    if "variable_sip_reply_host" in d or (
        d.get("Call-Direction") == "outbound" and "Caller-Network-Addr" in d
    ):
        flags += "n"
    if "variable_playback_ms" in d:
        flags += "p"
    if d.get("Caller-Channel-Progress-Time", "0") != "0":
        flags += "r"
    return flags


def key_of(role: str, pairs: list[tuple[str, str]], nested: bool = False) -> str:
    d = dict(pairs)
    name = d.get("Event-Name", "")
    if name == "CUSTOM":
        name = "CUSTOM::" + d.get("Event-Subclass", "")
    app = d.get("Application", "") if name.startswith("CHANNEL_EXECUTE") else ""
    if name == "CODEC":
        app = "read" if "channel-read-codec-name" in d else "write"
    return "|".join(
        (
            role,
            name,
            d.get("Channel-State", ""),
            d.get("Channel-Call-State", ""),
            d.get("Answer-State", ""),
            app,
            d.get("Hangup-Cause", ""),
            history(d),
            d.get("variable_sip_hangup_disposition", "")
            + ("+reason" if "variable_sip_reason" in d else ""),
            "+" if nested else "",
        )
    )


def templatize(pairs, role, uuid, dest, requri, core, block_names):
    """Replace per-call values by slots; fold the caller's variables into a block."""
    out: list[list[str]] = []
    block_at = None
    block_name = "VARS" if role == "A" else "XHDRS"
    for k, v in pairs:
        if role == "A" and k.startswith("variable_") and k[9:] in block_names:
            if block_at is None:
                block_at = len(out)
                out.append([slot(block_name), ""])
            continue
        if role == "B" and (k.startswith("variable_sip_h_X-") or k[9:] in block_names):
            # the X- headers, and variables the dialplan set (set/export): the leg's own
            if block_at is None:
                block_at = len(out)
                out.append([slot(block_name), ""])
            continue
        s = NAME_SLOTS.get(k)
        if s is not None:
            out.append([k, slot(s)])
            continue
        if dest and v == dest:
            v = slot("dest")
        elif dest and k == "variable_caller_id" and v == f'"{dest}" <{dest}>':
            v = f'"{slot("dest")}" <{slot("dest")}>'
        else:
            if requri and requri in v:
                v = v.replace(requri, slot("requri"))
            if uuid and uuid in v:
                v = v.replace(uuid, slot("uuid"))
            if core in v:
                v = v.replace(core, slot("core"))
        out.append([k, v])
    if block_at is None and role in ("A", "B"):
        anchor = "variable_sip_destination_url" if role == "A" else "variable_max_forwards"
        for i, (k, _v) in enumerate(out):
            if k == anchor:
                out.insert(i + 1, [slot(block_name), ""])
                break
    return out


def extract(captures: Path) -> dict:
    templates: dict[str, dict] = {}
    for name in CAPTURE_ORDER:
        data = (captures / f"{name}.bin").read_bytes()
        ovars = originate_vars((captures / f"{name}.txt").read_text())
        legs: dict[str, dict] = {}
        for hdrs, body in frames(data):
            if hdrs.get("Content-Type") != "text/event-plain":
                continue
            pairs, inner = plain_event(body)
            d = dict(pairs)
            core = d["Core-UUID"]
            uid = d.get("Unique-ID")
            if uid:
                role = "A" if d.get("Call-Direction") == "outbound" else "B"
                info = legs.setdefault(uid, {})
                if "Caller-Destination-Number" in d:
                    info["dest"] = d["Caller-Destination-Number"]
                if "variable_sip_req_uri" in d:
                    info["requri"] = d["variable_sip_req_uri"]
                if role == "A" and uid not in ovars and name != "d_originate_fail":
                    continue
                block = (
                    set(ovars.get(uid, ())) if role == "A" else info.setdefault("setvars", set())
                )
                # apps running on this leg (an app started on top of park is "nested")
                stack = info.setdefault("apps", [])
                ename = d.get("Event-Name")
                nested = False
                if ename == "CHANNEL_EXECUTE":
                    nested = bool(stack)
                    stack.append(d.get("Application"))
                    if role == "B" and d.get("Application") in ("set", "export"):
                        # from its EXECUTE_COMPLETE on, the variable is the leg's own
                        block.add(d.get("Application-Data", "").partition("=")[0].strip())
                elif ename == "CHANNEL_EXECUTE_COMPLETE":
                    if d.get("Application") in stack:
                        idx = len(stack) - 1 - stack[::-1].index(d.get("Application"))
                        del stack[idx]
                    nested = bool(stack)
                key = key_of(role, pairs, nested)
            else:
                role, info, block = "-", {}, set()
                key = key_of(role, pairs)
            if key in templates:
                continue
            tpl = templatize(pairs, role, uid, info.get("dest"), info.get("requri"), core, block)
            templates[key] = {"src": name, "headers": tpl, "body": inner is not None}
    for name in JSON_CAPTURES:
        data = (captures / f"{name}.bin").read_bytes()
        for hdrs, body in frames(data):
            if hdrs.get("Content-Type") != "text/event-json":
                continue
            obj = json.loads(body)
            pairs = [(k, v) for k, v in obj.items() if k not in ("_body", "Content-Length")]
            key = key_of("-", pairs)
            if key in templates:
                continue
            tpl = templatize(pairs, "-", None, None, None, obj["Core-UUID"], set())
            if obj.get("Event-Name") == "HEARTBEAT":
                tpl = [[k, slot(HEARTBEAT_SLOTS[k]) if k in HEARTBEAT_SLOTS else v] for k, v in tpl]
            templates[key] = {"src": name, "headers": tpl, "body": "_body" in obj}
    return {"version": 1, "templates": templates}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    default = os.environ.get(
        "FASTSWITCH_CAPTURES", str(Path(__file__).resolve().parents[3] / "shared" / "esl-captures")
    )
    captures = Path(argv[0] if argv else default)
    result = extract(captures)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    raw = json.dumps(result, separators=(",", ":"), sort_keys=True).encode()
    OUT.write_bytes(gzip.compress(raw, 9, mtime=0))
    print(
        f"{len(result['templates'])} templates, {len(raw)} bytes -> {OUT} ({OUT.stat().st_size} gz)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
