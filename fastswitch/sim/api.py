"""The API commands of the simulated switch (``api <cmd>`` / ``bgapi <cmd>``).

:func:`execute` returns the command's raw output (str), or a Future for the
commands that take time (a synchronous ``originate``). Reply texts follow the
captures byte for byte where they show them; unknown commands answer
``-ERR <cmd> Command not found!\\n``.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from . import faults
from .channel import Leg, sched_hangup
from .config import SimConfig, str2cause
from .core import uptime_text
from .originate import originate

if TYPE_CHECKING:
    from .core import Core

VERSION = "1.11.3-dev+git~20260821T141014Z~cc93a683ca~64bit"
VERSION_TEXT = f"FreeSWITCH Version {VERSION} (git cc93a68 2026-08-21 14:10:14Z 64bit)\n"
NO_CHANNEL = "-ERR No such channel!\n"
SHOW_CHANNEL_COLS = (
    "uuid,direction,created,created_epoch,name,state,cid_name,cid_num,ip_addr,dest,application,"
    "application_data,dialplan,context,read_codec,read_rate,read_bit_rate,write_codec,write_rate,"
    "write_bit_rate,secure,hostname,presence_id,presence_data,accountcode,callstate,callee_name,"
    "callee_num,callee_direction,call_uuid,sent_callee_name,sent_callee_num,initial_cid_name,"
    "initial_cid_num,initial_ip_addr,initial_dest,initial_dialplan,initial_context"
).split(",")
SHOW_CALLS_COLS = (
    "uuid,direction,created,created_epoch,name,state,cid_name,cid_num,ip_addr,dest,presence_id,"
    "presence_data,accountcode,callstate,callee_name,callee_num,callee_direction,call_uuid,hostname,"
    "sent_callee_name,sent_callee_num,b_uuid,b_direction,b_created,b_created_epoch,b_name,b_state,"
    "b_cid_name,b_cid_num,b_ip_addr,b_dest,b_presence_id,b_presence_data,b_accountcode,b_callstate,"
    "b_callee_name,b_callee_num,b_callee_direction,b_sent_callee_name,b_sent_callee_num,"
    "call_created_epoch"
).split(",")
LOG_LEVELS = ["CONSOLE", "ALERT", "CRIT", "ERR", "WARNING", "NOTICE", "INFO", "DEBUG"]


def execute(core: Core, cmd: str, arg: str) -> str | asyncio.Future[str]:
    """Run one API command and return its output."""
    fn = COMMANDS.get(cmd.lower())
    if fn is None:
        return f"-ERR {cmd} Command not found!\n"
    return fn(core, arg.strip())


def _leg(core: Core, uuid: str) -> Leg | None:
    leg = core.legs.get(uuid.strip())
    return leg if leg is not None and not leg.hungup else None


def cmd_originate(core: Core, arg: str) -> asyncio.Future[str]:
    fut: asyncio.Future[str] = core.loop.create_future()

    def done(result: str) -> None:
        if not fut.done():
            fut.set_result(result)

    originate(core, arg, done)
    return fut


def cmd_uuid_kill(core: Core, arg: str) -> str:
    parts = arg.split()
    leg = _leg(core, parts[0]) if parts else None
    if leg is None:
        return NO_CHANNEL
    cause = parts[1].upper() if len(parts) > 1 else "NORMAL_CLEARING"
    leg.hangup(cause)
    return "+OK\n"


def cmd_uuid_answer(core: Core, arg: str) -> str:
    leg = _leg(core, arg.split()[0]) if arg else None
    if leg is None:
        return NO_CHANNEL
    leg.answer_call()
    return "+OK\n"


def cmd_uuid_pre_answer(core: Core, arg: str) -> str:
    leg = _leg(core, arg.split()[0]) if arg else None
    if leg is None:
        return NO_CHANNEL
    leg.pre_answer()
    return "+OK\n"


def cmd_uuid_ring_ready(core: Core, arg: str) -> str:
    leg = _leg(core, arg.split()[0]) if arg else None
    if leg is None:
        return NO_CHANNEL
    leg.ring_ready()
    return "+OK\n"


def cmd_uuid_broadcast(core: Core, arg: str) -> str:
    parts = arg.split()
    leg = _leg(core, parts[0]) if parts else None
    if leg is None or len(parts) < 2:
        return "-ERR invalid uuid\n" if leg is None else "-USAGE: <uuid> <path> [aleg|bleg|both]\n"
    path = parts[1]
    app, _, aarg = path.partition("::")
    if aarg:
        leg.execute(app, aarg.replace(" ", " "))
    else:
        leg.execute("playback", path)
    return "+OK Message sent\n"


def cmd_uuid_setvar(core: Core, arg: str) -> str:
    parts = arg.split(None, 2)
    if len(parts) < 2:
        return "-USAGE: <uuid> <var> [value]\n"
    leg = _leg(core, parts[0])
    if leg is None:
        return NO_CHANNEL
    name = parts[1]
    value = parts[2] if len(parts) > 2 else None
    if "=" in name and value is None:
        name, _, value = name.partition("=")
    leg.setvar(name, value)
    return "+OK\n"


def cmd_uuid_setvar_multi(core: Core, arg: str) -> str:
    parts = arg.split(None, 1)
    if len(parts) < 2:
        return "-USAGE: <uuid> <var>=<value>;<var>=<value>...\n"
    leg = _leg(core, parts[0])
    if leg is None:
        return NO_CHANNEL
    for kv in parts[1].split(";"):
        k, _, v = kv.partition("=")
        if k:
            leg.setvar(k.strip(), v)
    return "+OK\n"


def cmd_uuid_getvar(core: Core, arg: str) -> str:
    parts = arg.split()
    if len(parts) < 2:
        return "-USAGE: <uuid> <var>\n"
    leg = _leg(core, parts[0])
    if leg is None:
        return NO_CHANNEL
    v = leg.getvar(parts[1])
    return "_undef_" if v is None else v


def cmd_uuid_exists(core: Core, arg: str) -> str:
    return "true" if _leg(core, arg) is not None else "false"


def cmd_uuid_park(core: Core, arg: str) -> str:
    leg = _leg(core, arg)
    if leg is None:
        return NO_CHANNEL
    if not any(a[0] == "park" for a in leg.apps):
        leg.execute("park")
    return "+OK\n"


def cmd_uuid_dump(core: Core, arg: str) -> str:
    parts = arg.split()
    leg = _leg(core, parts[0]) if parts else None
    if leg is None:
        return NO_CHANNEL
    key = f"{leg.role}|CHANNEL_PARK|{leg.cs}|{leg.callstate}|{leg.answer}|||{1 if leg.t['answered'] else 0}||"
    tpl = core.store.find(key)
    if tpl is None:
        return NO_CHANNEL
    leg.enc.url.update(core.time_url)
    leg.enc.url["seq"] = b"%d" % core.seq
    text = tpl.render("plain", leg.enc.url).decode("utf-8", "surrogateescape")
    text = text.replace("Event-Name: CHANNEL_PARK", "Event-Name: CHANNEL_DATA", 1)
    if len(parts) > 1 and parts[1] == "json":
        out = {}
        for line in text.splitlines():
            k, _, v = line.partition(": ")
            if k:
                out.setdefault(k, v)
        return json.dumps(out)
    return text


def cmd_sched_hangup(core: Core, arg: str) -> str:
    parts = arg.split()
    if len(parts) < 2:
        return "-USAGE: [+]<time> <uuid> [<cause>]\n"
    leg = _leg(core, parts[1])
    if leg is None:
        return NO_CHANNEL
    sched_hangup(leg, " ".join([parts[0], *parts[2:]]))
    return "+OK\n"


def cmd_hupall(core: Core, arg: str) -> str:
    """``hupall [cause] [var value]`` as mod_commands parses it: at most three words (the
    value is the rest of the line), the cause by name or number (an unknown one hangs up
    with MANAGER_REQUEST), and one variable to match."""
    parts = arg.split(None, 2)
    cause = (str2cause(parts[0]) if parts else None) or "MANAGER_REQUEST"
    var = parts[1] if len(parts) == 3 else None
    val = parts[2] if var is not None else None
    for leg in list(core.legs.values()):
        if leg.hungup:
            continue
        if var is None or leg.getvar(var) == val:
            leg.hangup(cause)
    if var is not None:
        return f"+OK hangup all channels matching [{var}]=[{val}] with cause: {cause}\n"
    return f"+OK hangup all channels with cause {cause}\n"


def _row(leg: Leg, core: Core) -> dict[str, str]:
    created = leg.t["created"] // 1_000_000
    app = leg.apps[-1] if leg.apps else ("", "", "", False)
    a = leg.role == "A"
    return {
        "uuid": leg.uuid,
        "direction": leg.direction,
        "created": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(created)),
        "created_epoch": str(created),
        "name": leg.chan_name,
        "state": leg.cs,
        "cid_name": leg.dest if a else "0000000000",
        "cid_num": leg.dest if a else "0000000000",
        "ip_addr": "" if a else "127.0.0.1",
        "dest": leg.dest,
        "application": app[0],
        "application_data": app[1],
        "dialplan": "" if a else "XML",
        "context": leg.context,
        "read_codec": "PCMU" if leg.answer in ("answered", "early") else "",
        "read_rate": "8000" if leg.answer in ("answered", "early") else "",
        "read_bit_rate": "64000" if leg.answer in ("answered", "early") else "",
        "write_codec": "PCMU" if leg.answer in ("answered", "early") else "",
        "write_rate": "8000" if leg.answer in ("answered", "early") else "",
        "write_bit_rate": "64000" if leg.answer in ("answered", "early") else "",
        "secure": "",
        "hostname": core.cfg.hostname,
        "presence_id": "",
        "presence_data": "",
        "accountcode": "",
        "callstate": leg.callstate,
        "callee_name": "",
        "callee_num": "0000000000" if a else "",
        "callee_direction": "RECV" if a else "",
        "call_uuid": leg.uuid if a else "",
        "sent_callee_name": "",
        "sent_callee_num": "",
        "initial_cid_name": "" if a else "0000000000",
        "initial_cid_num": "0000000000",
        "initial_ip_addr": "" if a else "127.0.0.1",
        "initial_dest": leg.dest,
        "initial_dialplan": "" if a else "XML",
        "initial_context": leg.context,
    }


def cmd_show(core: Core, arg: str) -> str:
    words = arg.split()
    if not words:
        return "-USAGE: codec|endpoint|application|api|dialplan|file|timer|calls [count]|channels [count|like <match string>]|calls|detailed_calls|bridged_calls|detailed_bridged_calls|aliases|complete|chat|management|modules|nat_map|say|interfaces|interface_types|tasks|limits|status\n"
    what = words[0].lower()
    as_json = len(words) >= 3 and words[-2].lower() == "as" and words[-1].lower() == "json"
    legs = [leg for leg in core.legs.values() if not leg.hungup]
    if what in ("channels", "calls", "detailed_calls", "bridged_calls"):
        calls = what != "channels"
        cols = SHOW_CALLS_COLS if calls else SHOW_CHANNEL_COLS
        rows = []
        for leg in legs:
            r = _row(leg, core)
            rows.append({c: r.get(c, "") for c in cols})
        if len(words) > 1 and words[1].lower() == "count":
            return f"\n{len(rows)} total.\n"
        if as_json:
            if not rows:
                return '{"row_count": 0}\n'
            # no trailing newline once there are rows (capture h: the body ends "}]}")
            return json.dumps({"row_count": len(rows), "rows": rows}, separators=(",", ":"))
        if not rows:
            return "\n0 total.\n"
        lines = [",".join(cols)] + [",".join(r[c] for c in cols) for r in rows]
        return "\n".join(lines) + f"\n\n{len(rows)} total.\n"
    return f"-ERR Cannot find {what}!\n" if what else "-ERR\n"


def cmd_status(core: Core, arg: str) -> str:
    up = time.time() - core.start_time
    cfg = core.cfg
    return (
        f"UP {uptime_text(up)}\n"
        "FreeSWITCH (Version 1.11.3-dev git cc93a68 2026-08-21 14:10:14Z 64bit) is ready\n"
        f"{core.sessions_since_startup} session(s) since startup\n"
        f"{core.session_count} session(s) - peak {core.session_peak}, last 5min {core.session_peak} \n"
        f"{core.sps_last} session(s) per Sec out of max {cfg.sps}, peak {core.sps_peak}, last 5min {core.sps_peak} \n"
        f"{cfg.max_sessions} session(s) max\n"
        "min idle cpu 0.00/95.00\n"
        "Current Stack Size/Max 240K/8192K\n"
    )


def cmd_version(core: Core, arg: str) -> str:
    if arg.strip() == "short":
        return "1.11.3\n"
    return VERSION_TEXT


def cmd_fsctl(core: Core, arg: str) -> str:
    parts = arg.split()
    if not parts:
        return "-USAGE: [recover|send_sighup|hupall|pause [inbound|outbound]|resume [inbound|outbound]|shutdown [cancel|elegant|asap|now|restart]|sps|sps_peak_reset|sync_clock|sync_clock_when_idle|reclaim_mem|max_sessions|min_dtmf_duration [num]|max_dtmf_duration [num]|default_dtmf_duration [num]|min_idle_cpu|loglevel [level]|debug_level [level]|mdns_resolve [enable|disable]]\n"
    what = parts[0].lower()
    cfg = core.cfg
    if what == "sps":
        if len(parts) > 1:
            cfg.sps = int(parts[1])
        return f"+OK sessions per second: {cfg.sps}\n"
    if what == "last_sps":
        return f"+OK last sessions per second: {core.sps_last}\n"
    if what == "max_sessions":
        if len(parts) > 1:
            cfg.max_sessions = int(parts[1])
        return f"+OK max sessions: {cfg.max_sessions}\n"
    if what == "loglevel":
        lvl = _loglevel(parts[1]) if len(parts) > 1 else core.globals.get("_loglevel", "7")
        if lvl is None:
            return "-ERR syntax error, log level not set!\n"
        core.globals["_loglevel"] = lvl
        return f"+OK log level: {LOG_LEVELS[int(lvl)]} [{lvl}]\n"
    if what == "verbose_events":
        if len(parts) > 1:
            core.globals["_verbose"] = (
                "on" if parts[1].lower() in ("on", "true", "yes", "1") else "off"
            )
        return f"+OK verbose_events is {core.globals.get('_verbose', 'off')} \n"
    if what == "hupall":
        return cmd_hupall(core, " ".join(parts[1:]))
    return "+OK\n"


def _loglevel(text: str) -> str | None:
    t = text.strip().upper()
    if t.isdigit() and 0 <= int(t) <= 7:
        return t
    names = {"WARN": "WARNING", "ERROR": "ERR"}
    t = names.get(t, t)
    return str(LOG_LEVELS.index(t)) if t in LOG_LEVELS else None


def cmd_console(core: Core, arg: str) -> str:
    parts = arg.split()
    if parts and parts[0].lower() == "loglevel":
        lvl = _loglevel(parts[1]) if len(parts) > 1 else "7"
        if lvl is None:
            return "-ERR syntax error, console log level not set!\n"
        return f"+OK console log level set to {LOG_LEVELS[int(lvl)]}\n"
    if parts and parts[0].lower() == "colorize":
        return "+OK\n"
    return "-USAGE: loglevel [level]|colorize [on|toggle|off]\n"


def cmd_sofia(core: Core, arg: str) -> str:
    host, port = core.cfg.sip_address
    if arg.strip().split()[:1] != ["status"]:
        return "-ERR Usage: sofia status\n"
    rule = "=" * 97
    rows = [
        f"{'Name':>25}\t{'Type':>7}\t{'Data':>42}\tState",
        rule,
        f"{host:>25}\t{'alias':>7}\t{'internal':>42}\tALIASED",
        f"{'external':>25}\t{'profile':>7}\t{'sip:mod_sofia@' + host + ':' + str(port):>42}\tRUNNING (0)",
        f"{'internal':>25}\t{'profile':>7}\t{'sip:mod_sofia@' + host + ':' + str(port - 20):>42}\tRUNNING (0)",
        rule,
        "2 profiles 1 alias",
    ]
    return "\n".join(rows) + "\n"


def cmd_global_getvar(core: Core, arg: str) -> str:
    name = arg.strip()
    if not name:
        return "".join(f"{k}={v}\n" for k, v in core.globals.items() if not k.startswith("_"))
    return core.globals.get(name, "")


def cmd_global_setvar(core: Core, arg: str) -> str:
    name, _, value = arg.partition("=")
    if not name.strip():
        return "-USAGE: <var>=<value>\n"
    core.globals[name.strip()] = value.strip()
    return "+OK\n"


def cmd_eval(core: Core, arg: str) -> str:
    return arg


def cmd_sim(core: Core, arg: str) -> str:
    """``sim`` (show settings), ``sim <setting> <value>``, ``sim fault <name> [arg]``,
    ``sim stats``, ``sim refill`` (sessions-per-second budget back to full now)."""
    parts = arg.split(None, 1)
    if not parts:
        return json.dumps(core.cfg.to_dict(), sort_keys=True, default=str) + "\n"
    name = parts[0]
    value = parts[1] if len(parts) > 1 else ""
    if name == "fault":
        return faults.inject(core, value)
    if name == "refill":  # refill the sessions-per-second budget now (tests, tools)
        core.sps_tokens = core.cfg.sps
        return f"+OK sessions per second budget {core.sps_tokens}\n"
    if name == "stats":
        return (
            json.dumps(
                {
                    "sessions": core.session_count,
                    "since_startup": core.sessions_since_startup,
                    "sequence": core.seq,
                    "listeners": len(core.listeners),
                    "sip_calls": core.sip.calls if core.sip else 0,
                    "sps_tokens": core.sps_tokens,
                }
            )
            + "\n"
        )
    if name not in {f for f in SimConfig.__dataclass_fields__}:
        return f"-ERR unknown setting {name}\n"
    try:
        new = core.cfg.set(name, value)
    except (ValueError, KeyError) as e:
        return f"-ERR invalid value for {name}: {e}\n"
    if name == "seed":
        core.rng.seed(new)
    return f"+OK {name}={json.dumps(new, default=str)}\n"


COMMANDS: dict[str, Callable[[Core, str], str | asyncio.Future[str]]] = {
    "originate": cmd_originate,
    "uuid_kill": cmd_uuid_kill,
    "uuid_answer": cmd_uuid_answer,
    "uuid_pre_answer": cmd_uuid_pre_answer,
    "uuid_ring_ready": cmd_uuid_ring_ready,
    "uuid_broadcast": cmd_uuid_broadcast,
    "uuid_setvar": cmd_uuid_setvar,
    "uuid_setvar_multi": cmd_uuid_setvar_multi,
    "uuid_getvar": cmd_uuid_getvar,
    "uuid_exists": cmd_uuid_exists,
    "uuid_park": cmd_uuid_park,
    "uuid_dump": cmd_uuid_dump,
    "sched_hangup": cmd_sched_hangup,
    "hupall": cmd_hupall,
    "show": cmd_show,
    "status": cmd_status,
    "version": cmd_version,
    "fsctl": cmd_fsctl,
    "console": cmd_console,
    "sofia": cmd_sofia,
    "global_getvar": cmd_global_getvar,
    "global_setvar": cmd_global_setvar,
    "eval": cmd_eval,
    "sim": cmd_sim,
}
