"""The ``originate`` API command: dial-string parsing and A-leg creation.

Syntax (``commands.c``/``switch_ivr_originate.c``)::

    originate <call url> <exten>|&<app>(<args>) [<dialplan>] [<context>] [<cid_name>] [<cid_num>] [<timeout>]

Call URL: ``<ultra-global>``, ``{global vars}``, ``[leg vars]`` then
``sofia/<profile>/<user>@<host>[:<port>][;fs_path=...]``. Only the first leg of a
``,``/``|`` list is dialled. Any other endpoint gives ``-ERR CHAN_NOT_IMPLEMENTED``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING
from urllib.parse import unquote

from .channel import Job, Leg, dialplan
from .config import reject_cause

if TYPE_CHECKING:
    from .core import Core


_SOFIA_RE = re.compile(r"sofia/([^/]+)/(.*)$")
_APP_RE = re.compile(r"&([^(\s]+)(?:\(([^)]*)\)?)?")


# switch_separate_string's escapes: a backslash before a quote, the delimiter (space) or
# a backslash escapes it; \n \r \t \s become the character; before anything else
# (``\,`` in ``{var=a\,b}``) the backslash stays, for the variable parser
_UNESCAPE = {"'": "'", '"': '"', " ": " ", "\\": "\\", "n": "\n", "r": "\r", "t": "\t", "s": " "}


def split_args(text: str) -> list[str]:
    """Split on spaces honouring single quotes and backslash escapes (switch_separate_string)."""
    if "'" not in text and "\\" not in text:
        return text.split()
    out: list[str] = []
    cur: list[str] = []
    quote = False
    i = 0
    has = False
    while i < len(text):
        c = text[i]
        if c == "\\" and i + 1 < len(text):
            nxt = text[i + 1]
            esc = _UNESCAPE.get(nxt)
            cur.append(esc if esc is not None else c + nxt)
            has = True
            i += 2
            continue
        if c == "'":
            quote = not quote
            has = True
        elif c == " " and not quote:
            if has:
                out.append("".join(cur))
            cur, has = [], False
        else:
            cur.append(c)
            has = True
        i += 1
    if has:
        out.append("".join(cur))
    return out


def parse_vars(text: str) -> list[tuple[str, str]]:
    """``a=1,b='x y',c=a\\,b`` -> ordered pairs (``^^<d>`` changes the delimiter)."""
    if "'" not in text and "\\" not in text and not text.startswith("^^"):
        out0 = []
        for p in text.split(","):
            if p:
                k, _, v = p.partition("=")
                out0.append((k.strip(), v.strip()))
        return out0
    delim = ","
    if text.startswith("^^") and len(text) > 2:
        delim, text = text[2], text[3:]
    out: list[tuple[str, str]] = []
    cur: list[str] = []
    quote = False
    i = 0
    parts: list[str] = []
    while i < len(text):
        c = text[i]
        if c == "\\" and i + 1 < len(text) and text[i + 1] == delim:
            cur.append(delim)
            i += 2
            continue
        if c == "'":
            quote = not quote
        elif c == delim and not quote:
            parts.append("".join(cur))
            cur = []
            i += 1
            continue
        cur.append(c)
        i += 1
    parts.append("".join(cur))
    for p in parts:
        if not p:
            continue
        k, _, v = p.partition("=")
        v = v.strip()
        if len(v) >= 2 and v[0] == "'" and v[-1] == "'":
            v = v[1:-1]
        out.append((k.strip(), v))
    return out


@dataclass
class Dial:
    """A parsed originate command."""

    variables: list[tuple[str, str]] = field(default_factory=list)
    endpoint: str = ""
    profile: str = ""
    user: str = ""
    hostport: str = ""
    fs_path: str = ""
    app: str | None = None
    app_arg: str = ""
    exten: str | None = None
    context: str = "default"
    timeout: int = 60
    error: str | None = None

    def var(self, name: str) -> str | None:
        for k, v in reversed(self.variables):
            if k == name:
                return v
        return None


def parse_originate(arg: str) -> Dial:
    d = Dial()
    args = split_args(arg)
    if len(args) < 2:
        d.error = "-USAGE: <call url> <exten>|&<application_name>(<app_args>) [<dialplan>] [<context>] [<cid_name>] [<cid_num>] [<timeout_sec>]\n"
        return d
    url = args[0]
    while url and url[0] in "<{[":
        close = {"<": ">", "{": "}", "[": "]"}[url[0]]
        j = url.find(close)
        if j < 0:
            break
        d.variables.extend(parse_vars(url[1:j]))
        url = url[j + 1 :]
    url = (
        re.split(r"[,|]", url, maxsplit=1)[0]
        if not url.startswith("sofia/")
        else url.split("|")[0].split(",")[0]
    )
    d.endpoint = url
    m = _SOFIA_RE.match(url)
    if m:
        d.profile = m.group(1)
        rest = m.group(2)
        if d.profile == "gateway":
            gw, _, num = rest.partition("/")
            d.user, d.hostport = num, gw
        else:
            params = ""
            if ";" in rest:
                rest, _, params = rest.partition(";")
            user, _, hp = rest.rpartition("@")
            if not user:
                user, hp = hp, ""
            d.user = user.removeprefix("sip:")
            if hp and ":" not in hp:
                hp += ":5060"
            d.hostport = hp
            mm = re.search(r"fs_path=([^;]+)", params)
            if mm:
                d.fs_path = unquote(mm.group(1))
    target = args[1]
    if target.startswith("&"):
        mm = _APP_RE.match(target)
        if mm:
            d.app = mm.group(1)
            d.app_arg = mm.group(2) or ""
    else:
        d.exten = target
    if len(args) > 3 and args[3] != "undef":
        d.context = args[3]
    if len(args) > 6 and args[6] != "undef":
        try:
            d.timeout = int(args[6])
        except ValueError:
            pass
    t = d.var("originate_timeout")
    if t:
        try:
            d.timeout = int(t)
        except ValueError:
            pass
    return d


def originate(core: Core, arg: str, on_done: Callable[[str], None], job_uuid: str = "") -> None:
    """Start an originate; ``on_done`` gets ``+OK <uuid>\\n`` or ``-ERR <CAUSE>\\n`` later."""
    d = parse_originate(arg)
    loop = core.loop
    if d.error:
        loop.call_soon(on_done, d.error)
        return
    if not d.profile or not d.hostport:
        loop.call_soon(on_done, "-ERR CHAN_NOT_IMPLEMENTED\n")
        return
    uuid = d.var("origination_uuid") or core.new_uuid()
    if uuid in core.legs or not core.take_session():
        loop.call_soon(on_done, "-ERR DESTINATION_OUT_OF_ORDER\n")
        return
    chan = (
        f"sofia/{d.profile}/{d.user}@{d.hostport}"
        if d.profile != "gateway"
        else f"sofia/gateway/{d.hostport}/{d.user}"
    )
    leg = Leg(core, uuid, "A", d.user, chan, f"{d.user}@{d.hostport}", d.variables, d.context)
    leg.job = Job(job_uuid, "originate", arg, on_done)
    if d.app is not None:
        leg.app_after_answer = (d.app, d.app_arg)
    elif d.exten:
        leg.app_after_answer = ("\x00dialplan", d.exten)
    leg.set_state("CS_NONE", fire=False)
    leg.fire("CHANNEL_OUTGOING")
    leg.set_state("CS_INIT")
    leg.fire("CHANNEL_CREATE")
    leg.fire("CHANNEL_ORIGINATE")
    leg.set_state("CS_ROUTING")
    leg.later(d.timeout, _no_answer, leg)
    if core.sip.unreachable(d):
        # nothing listens there: sofia gets a 503 at once (ICMP), still in CS_ROUTING
        leg.hangup("NORMAL_TEMPORARY_FAILURE", "recv_refuse", term_status="503")
        return
    pdd = core.cfg.post_dial_delay
    if pdd <= 0 and not core.cfg.reject_mix and core.sip.is_local(d.hostport):
        # loop-back through this very server: the inbound leg is created (or refused by
        # the session limits, a 503) before anything else happens, as in capture s
        if not core.take_session():
            leg.history += "n"  # the 503 is a SIP response (unlike an unreachable port)
            leg.hangup("NORMAL_TEMPORARY_FAILURE", "recv_refuse", term_status="503")
            return
        leg.set_state("CS_CONSUME_MEDIA")
        core.sip.invite(leg, d, session_taken=True)
        return
    leg.set_state("CS_CONSUME_MEDIA")
    if pdd > 0:
        leg.later(pdd, _dial, leg, d)
    else:
        _dial(leg, d)


def _no_answer(leg: Leg) -> None:
    if leg.job is not None and not leg.job.done:
        leg.hangup("NO_ANSWER")


def _dial(leg: Leg, d: Dial) -> None:
    """Send the INVITE: apply the SUT's reject mix, then route it."""
    if leg.hungup:
        return
    core = leg.core
    mix = core.cfg.reject_mix
    if mix:
        r = core.rng.random()
        acc = 0.0
        for code, p in mix.items():
            acc += p
            if r < acc:
                status, cause = reject_cause(code)
                if status:
                    reason = str(code).lower().endswith("q")
                    leg.hangup(cause, "recv_refuse", term_status=str(status), reason=reason)
                return  # "noanswer": ring until originate_timeout
    core.sip.invite(leg, d)


def dialplan_steps(dest: str, core: Core) -> list[tuple[str, str]]:
    return dialplan(dest, core)
