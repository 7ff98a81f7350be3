"""The simulated switch core: clock, event sequence, session limits and the event bus.

One :class:`Core` per simulated FreeSWITCH process. It owns the channels (legs),
the ESL listeners that receive events, the cached 20 ms clock
(``Event-Date-Timestamp`` moves in 20 ms steps, as in the captures) and the
``sessions-per-second`` / ``max-sessions`` limits, with FreeSWITCH's arithmetic
(``--tokens <= 0`` refuses, so ``sps - 1`` sessions pass per 1-second window;
``count + 1 > max`` refuses).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from . import templates
from .config import SimConfig

if TYPE_CHECKING:
    from .channel import Leg

HEAD = {
    fmt: b"Content-Length: %d\nContent-Type: text/event-" + fmt.encode() + b"\n\n"
    for fmt in templates.FORMATS
}

# Every event name FreeSWITCH knows (switch_event.c EVENT_NAMES); `event` ignores others.
EVENT_NAMES = frozenset(
    """CUSTOM CLONE CHANNEL_CREATE CHANNEL_DESTROY CHANNEL_STATE CHANNEL_CALLSTATE
    CHANNEL_ANSWER CHANNEL_HANGUP CHANNEL_HANGUP_COMPLETE CHANNEL_EXECUTE
    CHANNEL_EXECUTE_COMPLETE CHANNEL_HOLD CHANNEL_UNHOLD CHANNEL_BRIDGE CHANNEL_UNBRIDGE
    CHANNEL_PROGRESS CHANNEL_PROGRESS_MEDIA CHANNEL_OUTGOING CHANNEL_PARK CHANNEL_UNPARK
    CHANNEL_APPLICATION CHANNEL_ORIGINATE CHANNEL_UUID API LOG INBOUND_CHAN OUTBOUND_CHAN
    STARTUP SHUTDOWN PUBLISH UNPUBLISH TALK NOTALK SESSION_CRASH MODULE_LOAD MODULE_UNLOAD
    DTMF MESSAGE PRESENCE_IN NOTIFY_IN PRESENCE_OUT PRESENCE_PROBE MESSAGE_WAITING
    MESSAGE_QUERY ROSTER CODEC BACKGROUND_JOB DETECTED_SPEECH DETECTED_TONE PRIVATE_COMMAND
    HEARTBEAT TRAP ADD_SCHEDULE DEL_SCHEDULE EXE_SCHEDULE RE_SCHEDULE RELOADXML NOTIFY
    PHONE_FEATURE PHONE_FEATURE_SUBSCRIBE SEND_MESSAGE RECV_MESSAGE REQUEST_PARAMS
    CHANNEL_DATA GENERAL COMMAND SESSION_HEARTBEAT CLIENT_DISCONNECTED SERVER_DISCONNECTED
    SEND_INFO RECV_INFO RECV_RTCP_MESSAGE SEND_RTCP_MESSAGE CALL_SECURE NAT RECORD_START
    RECORD_STOP PLAYBACK_START PLAYBACK_STOP CALL_UPDATE FAILURE SOCKET_DATA MEDIA_BUG_START
    MEDIA_BUG_STOP CONFERENCE_DATA_QUERY CONFERENCE_DATA CALL_SETUP_REQ CALL_SETUP_RESULT
    CALL_DETAIL DEVICE_STATE TEXT SHUTDOWN_REQUESTED""".split()
)


# version 4 and the RFC 4122 variant, set in the random bits
_UUID_MASK = ~((0xF << 76) | (0xC << 60))
_UUID_V4 = (0x4 << 76) | (0x8 << 60)


class EventSink(Protocol):
    """What the core needs from an ESL listener."""

    fmt: str
    filtering: bool  # True when passes() must see the event's headers (filters, myevents)

    def wants(self, name: str) -> bool: ...
    def passes(self, headers: dict[str, str]) -> bool: ...
    def deliver(self, frame: bytes) -> None: ...


def event_headers(
    tpl: templates.Template, values: dict[str, str], blocks: Mapping[str, Sequence[tuple[str, str]]]
) -> dict[str, str]:
    """The decoded header values of an event, by lower-cased name (to evaluate filters)."""
    out: dict[str, str] = {}
    for k, v in tpl.headers:
        if k.startswith("\x01"):
            for n, bv in blocks.get(k[1:-1], ()):
                out.setdefault("variable_" + n.lower(), bv)
            continue
        if "\x01" in v:
            parts = v.split("\x01")
            v = "".join(values.get(p, "") if i % 2 else p for i, p in enumerate(parts))
            if not v and len(parts) == 3 and parts[1] in templates.OPTIONAL_SLOTS:
                continue  # an empty optional header is not sent
        out.setdefault(k.lower(), v)
    return out


class Core:
    """State of one simulated switch (runs inside its server process's event loop)."""

    def __init__(self, cfg: SimConfig, loop: asyncio.AbstractEventLoop) -> None:
        self.cfg = cfg
        self.loop = loop
        self.store = templates.load()
        self.rng = random.Random(cfg.seed)
        self.core_uuid = self.new_uuid()
        self.seq = 0
        self.start_time = time.time()
        self._offset_us = self.rng.randrange(20000)
        self._sec = -1
        self.tick_no = 0
        self._stamp_sec = -1
        self._stamp = ""
        self.now_us = 0
        self.time_values: dict[str, str] = {}
        self.time_url: dict[str, bytes] = {}
        self.time_json: dict[str, bytes] = {}
        self.legs: dict[str, Leg] = {}
        self.listeners: list[EventSink] = []
        #: ESL connections that asked for ``log <level>`` (see logs.py); empty = no cost
        self.loggers: list[Any] = []
        self.connections: set[Any] = set()
        self.current_connection: Any = None  # the ESL connection running an api command
        self._wanted: dict[str, list[EventSink]] = {}
        self.globals: dict[str, str] = {
            "hostname": cfg.hostname,
            "local_ip_v4": "127.0.0.1",
            "local_ip_v6": "::1",
            "switch_serial": "simulated",
            "core_uuid": self.core_uuid,
        }
        # limits and statistics
        self.sps_tokens = cfg.sps
        self.session_count = 0
        self.sessions_since_startup = 0
        self.sessions_this_second = 0
        self.sps_last = 0
        self.sps_peak = 0
        self.session_peak = 0
        self.stall_until = 0.0
        self.sip: Any = None  # siplink.SipLink, set by the server
        self.session_counter = 1
        self._timers: list[asyncio.TimerHandle] = []
        # a leg's template by the parts of its state (see Leg.fire)
        self.tpl_by_state: dict[tuple[Any, ...], templates.Template | None] = {}
        self.tick()
        self.leg_defaults = self._leg_defaults()
        self._refill_handle = loop.call_later(1.0, self._refill)
        if cfg.heartbeat_interval > 0:
            loop.call_later(cfg.heartbeat_interval, self._heartbeat)
        from . import faults

        if cfg.fault_drop_after > 0:
            loop.call_later(cfg.fault_drop_after, faults.inject, self, "drop")
        if cfg.fault_stall_after > 0 and cfg.fault_stall_for > 0:
            loop.call_later(
                cfg.fault_stall_after, faults.inject, self, f"stall {cfg.fault_stall_for}"
            )

    # -- clock -------------------------------------------------------------------------
    def tick(self) -> None:
        """Advance the cached clock (every 20 ms, as FreeSWITCH's timer thread does)."""
        t = time.time()
        off = self._offset_us
        us = int((t * 1_000_000 - off) // 20000) * 20000 + off
        if us > self.now_us:
            self.now_us = us
            self.tick_no += 1
        sec = self.now_us // 1_000_000
        tv = self.time_values
        tv["ts"] = str(self.now_us)
        if sec != self._sec:
            self._sec = sec
            tv["dlocal"] = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(sec))
            tv["dgmt"] = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(sec))
        for k, v in tv.items():
            self.time_url[k] = templates.enc_url(v)
            self.time_json[k] = templates.enc_json(v)
        self.loop.call_later(0.02, self.tick)

    def stamp(self, us: int) -> str:
        """Local time text of a µs timestamp (``variable_*_stamp``), cached per second."""
        sec = us // 1_000_000
        if sec == self._stamp_sec:
            return self._stamp
        self._stamp_sec = sec
        self._stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(sec))
        return self._stamp

    # -- sessions ------------------------------------------------------------------------
    def take_session(self) -> bool:
        """Account one new session; False when sps or max_sessions refuse it.

        As switch_core_session_request_uuid: the sps token is taken first, so a session
        that max_sessions then refuses has still used one."""
        self.sps_tokens -= 1
        if self.sps_tokens <= 0:
            return False
        if self.session_count + 1 > self.cfg.max_sessions:
            return False
        self.session_count += 1
        self.sessions_since_startup += 1
        self.sessions_this_second += 1
        if self.session_count > self.session_peak:
            self.session_peak = self.session_count
        return True

    def release_session(self) -> None:
        self.session_count -= 1

    def _refill(self) -> None:
        self.sps_tokens = self.cfg.sps
        self.sps_last = self.sessions_this_second
        self.sps_peak = max(self.sps_peak, self.sps_last)
        self.sessions_this_second = 0
        self._refill_handle = self.loop.call_later(1.0, self._refill)

    def new_uuid(self) -> str:
        """A random (version 4) uuid from the server's seeded generator."""
        h = "%032x" % (self.rng.getrandbits(128) & _UUID_MASK | _UUID_V4)
        return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"

    def _leg_defaults(self) -> templates.Encoded:
        """Slot values every new channel starts with (copied, not re-encoded, per leg)."""
        from .channel import MILESTONES

        values: dict[str, str] = {
            "core": self.core_uuid,
            "host": self.cfg.hostname,
            "call_id": "",
            "cs": "CS_NEW",
            "callstate": "DOWN",
            "prev_callstate": "DOWN",
            "callstate_num": "0",
            "answer": "ringing",
            "cause": "",
            "q850": "",
            "disposition": "",
            "term_status": "",
            "proto_cause": "",
            "term_cause": "",
            "invite_failure": "",
            "sip_reason": "",
            "dp_match": "",
            "app": "",
            "app_data": "",
            "app_uuid": "",
            "last_app": "",
            "last_arg": "",
            "bert_lost": "false",
            "bert_lost_count": "0",
            "sync_lost_percent": "0.00",
            "sync_lost_count": "0",
        }
        for m in MILESTONES:
            values["t_" + m] = "0"
            values["e_" + m] = "0"
            values["s_" + m] = ""
        return templates.Encoded(values).warm()

    # -- event bus -----------------------------------------------------------------------
    def add_listener(self, listener: EventSink) -> None:
        if listener not in self.listeners:
            self.listeners.append(listener)
        self.subscriptions_changed()

    def remove_listener(self, listener: EventSink) -> None:
        if listener in self.listeners:
            self.listeners.remove(listener)
        self.subscriptions_changed()

    def subscriptions_changed(self) -> None:
        self._wanted.clear()

    def targets(self, name: str) -> list[EventSink]:
        t = self._wanted.get(name)
        if t is None:
            t = self._wanted[name] = [lst for lst in self.listeners if lst.wants(name)]
        return t

    def emit(
        self,
        key: str,
        name: str,
        enc: templates.Encoded,
        seq: int | None = None,
        targets: list[EventSink] | None = None,
    ) -> None:
        """Create one event (takes a sequence number) and deliver it to subscribed listeners.

        ``key`` selects the template (``role|name|cs|callstate|answer|app|cause|answered|disposition|nested``),
        ``name`` is the subscription name (``CUSTOM::<subclass>`` for CUSTOM events),
        ``enc`` holds the slot values (time and sequence are filled in here unless
        ``seq`` is given, for an event created earlier).
        """
        if seq is None:
            self.seq += 1
            if targets is None:
                targets = self._wanted.get(name)
                if targets is None:
                    targets = self.targets(name)
            if not targets:
                return
            tpl = self.store.find(key)
            if tpl is not None:
                self.emit_template(tpl, enc, targets)
            return
        targets = self.targets(name)
        if not targets:
            return
        tpl = self.store.find(key)
        if tpl is None:
            return
        enc.url["seq"] = enc.json["seq"] = b"%d" % seq
        self._deliver(tpl, enc, seq, targets)

    def emit_template(
        self, tpl: templates.Template, enc: templates.Encoded, targets: list[EventSink]
    ) -> None:
        """Deliver an event created now (its sequence number, ``self.seq``, already taken)
        from its template to ``targets`` (the subscribed listeners, not empty)."""
        if enc.tick != self.tick_no:  # time slots change once per 20 ms tick
            enc.tick = self.tick_no
            enc.url.update(self.time_url)
            enc.json.update(self.time_json)
        url = enc.url
        url["seq"] = enc.json["seq"] = b"%d" % self.seq
        if len(targets) == 1 and not targets[0].filtering:  # the common case
            lst = targets[0]
            fmt = lst.fmt
            c = tpl.compiled.get(fmt) or tpl.compile(fmt)  # Template.render, inlined
            values = c.args(enc.json if fmt == "json" else url)
            frame = c.frame  # the frame head, then the event: one join
            frame[2::2] = values
            frame[0] = HEAD[fmt] % (c.size + sum(map(len, values)))
            lst.deliver(b"".join(frame))
            return
        self._deliver(tpl, enc, self.seq, targets)

    def _deliver(
        self, tpl: templates.Template, enc: templates.Encoded, seq: int, targets: list[EventSink]
    ) -> None:
        """Render and deliver to each listener whose filters pass (once per format)."""
        rendered: dict[str, bytes] = {}
        hdrs = None
        for lst in targets:
            if lst.filtering:
                if hdrs is None:
                    raw = enc.raw
                    raw.update(self.time_values)
                    raw["seq"] = str(seq)
                    hdrs = event_headers(tpl, raw, enc.blocks)
                if not lst.passes(hdrs):
                    continue
            fmt = lst.fmt
            fr = rendered.get(fmt)
            if fr is None:
                ev = tpl.render(fmt, enc.json if fmt == "json" else enc.url)
                fr = rendered[fmt] = HEAD[fmt] % len(ev) + ev
            lst.deliver(fr)

    def base_values(self) -> dict[str, str]:
        v = {"core": self.core_uuid, "host": self.cfg.hostname}
        v.update(self.time_values)
        return v

    def background_job(self, job_uuid: str, cmd: str, arg: str, result: str) -> None:
        """Fire BACKGROUND_JOB with the command's output as body."""
        if not self.targets("BACKGROUND_JOB"):
            self.seq += 1
            return
        values = self.base_values()
        values.update(job_uuid=job_uuid, job_cmd=cmd, job_arg=arg)
        enc = templates.Encoded(values)
        enc.set_body(result)
        key = templates.global_key("BACKGROUND_JOB" if arg else "BACKGROUND_JOB_NOARG")
        self.emit(key, "BACKGROUND_JOB", enc)

    def api_event(self, cmd: str, arg: str) -> Callable[[], None]:
        """Create the API event FreeSWITCH sends for every api/bgapi command.

        Its sequence number and time are taken now; it is delivered when the returned
        function is called (FreeSWITCH fires it once the command has returned).
        """
        self.seq += 1
        if not self.targets("API"):
            return _noop
        seq = self.seq
        values = self.base_values()
        values.update(job_cmd=cmd, job_arg=arg)
        key = templates.global_key("API" if arg else "API_NOARG")
        enc = templates.Encoded(values)
        return lambda: self.emit(key, "API", enc, seq=seq)

    def _heartbeat(self) -> None:
        up = time.time() - self.start_time
        values = self.base_values()
        values.update(
            uptime=uptime_text(up),
            uptime_msec=str(int(up * 1000)),
            session_count=str(self.session_count),
            max_sessions=str(self.cfg.max_sessions),
            sps=str(max(self.sps_tokens, 0)),
            sps_last=str(self.sps_last),
            sps_max=str(self.sps_peak),
            since_startup=str(self.sessions_since_startup),
            peak=str(self.session_peak),
        )
        self.emit(templates.global_key("HEARTBEAT"), "HEARTBEAT", templates.Encoded(values))
        self.loop.call_later(self.cfg.heartbeat_interval, self._heartbeat)


def _noop() -> None:
    return None


def uptime_text(up: float) -> str:
    s = int(up)
    ms = int((up - s) * 1000)
    us = int((up - s) * 1_000_000) % 1000
    parts = [
        (s // (86400 * 365), "year"),
        (s // 86400 % 365, "day"),
        (s // 3600 % 24, "hour"),
        (s // 60 % 60, "minute"),
        (s % 60, "second"),
        (ms, "millisecond"),
        (us, "microsecond"),
    ]
    return ", ".join(f"{n} {word}{'' if n == 1 else 's'}" for n, word in parts)
