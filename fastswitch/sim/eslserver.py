"""The inbound event socket (mod_event_socket) of the simulated switch.

One :class:`EslConnection` per TCP client. Commands are read as mes.c reads them:
a block of lines ended by an empty line (``\\r`` ignored, leading blank lines
skipped, an optional ``Content-Length`` body), the command word matched by prefix,
case-insensitively. Replies are written at once; events go through a bounded
per-connection queue (``event_queue_limit``, FreeSWITCH's MAX_QUEUE_LEN 100,000):
while the socket is backed up, events wait there; when it is full, new events
are dropped and after ``max_missed`` (500) consecutive drops the listener is
killed with ``killed listener because of lost events``, as mes.c does.
"""

from __future__ import annotations

import asyncio
import re
from collections import deque
from typing import TYPE_CHECKING

from . import api
from .core import EVENT_NAMES
from .faults import RUDE
from .originate import originate

if TYPE_CHECKING:
    from .core import Core

AUTH_REQUEST = b"Content-Type: auth/request\n\n"
GOODBYE = b"Disconnected, goodbye.\nSee you at ClueCon! http://www.cluecon.com/\n"
LOST_EVENTS = b"killed listener because of lost events\n"
MYEVENTS = frozenset(
    """CHANNEL_ANSWER CHANNEL_APPLICATION CHANNEL_BRIDGE CHANNEL_CREATE CHANNEL_DATA
    CHANNEL_DESTROY CHANNEL_EXECUTE CHANNEL_EXECUTE_COMPLETE CHANNEL_HANGUP
    CHANNEL_HANGUP_COMPLETE CHANNEL_ORIGINATE CHANNEL_UUID CHANNEL_OUTGOING CHANNEL_PARK
    CHANNEL_PROGRESS CHANNEL_PROGRESS_MEDIA CHANNEL_STATE CHANNEL_UNBRIDGE CHANNEL_UNPARK
    DETECTED_SPEECH DTMF NOTALK TALK""".split()
)
FORMATS = ("plain", "json", "xml")
BATCH = 512


def reply(text: str, extra: str = "") -> bytes:
    return f"Content-Type: command/reply\nReply-Text: {text}\n{extra}\n".encode()


def api_response(body: str) -> bytes:
    b = body.encode("utf-8", "surrogateescape")
    return b"Content-Type: api/response\nContent-Length: %d\n\n%s" % (len(b), b)


def notice(body: bytes) -> bytes:
    return b"Content-Type: text/disconnect-notice\nContent-Length: %d\n\n%s" % (len(body), body)


class EslConnection(asyncio.Protocol):
    """One event-socket client connection."""

    def __init__(self, core: Core) -> None:
        self.core = core
        self.loop = core.loop
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.authed = False
        self.closing = False
        self.fmt = "plain"
        self.subs: set[str] = set()
        self.all = False
        #: mod_event_socket's LFLAG_EVENTS: set by a successful ``event``, cleared only by
        #: ``noevents`` (a ``nixevent`` that removes every name leaves it set)
        self.events_on = False
        self.excluded: set[str] = set()
        self.custom: set[str] = set()
        self.filters: list[tuple[str, str]] = []
        self.myevents: str | None = None
        self.filtering = False
        self.log_level = -1  # the ``log <level>`` asked for; -1: not logging (see logs.py)
        self.paused = False
        self.blocked = False
        self.pending: deque[bytes] = deque()
        self.out: list[bytes] = []
        self.flush_scheduled = False
        self.missed = 0
        self.lost = 0
        self.auth_timer: asyncio.TimerHandle | None = None

    # -- connection ----------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.transport.set_write_buffer_limits(high=4 * 1024 * 1024)  # type: ignore[union-attr]
        self.core.connections.add(self)
        if self.core.cfg.rude_rejection:
            self.write_raw(RUDE)
            self.close_after_write()
            return
        self.transport.write(AUTH_REQUEST)  # type: ignore[union-attr]
        self.auth_timer = self.loop.call_later(self.core.cfg.auth_timeout, self.abort)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        if self.auth_timer:
            self.auth_timer.cancel()
        self.core.connections.discard(self)
        self.core.remove_listener(self)
        self._stop_logging()
        self.pending.clear()
        self.out.clear()

    def _stop_logging(self) -> None:
        self.log_level = -1
        if self in self.core.loggers:
            self.core.loggers.remove(self)

    def eof_received(self) -> bool:
        self.disconnect_notice(GOODBYE)
        return True

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        self.flush_pending()

    # -- output --------------------------------------------------------------------------
    def write_raw(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self._flush()
            self.transport.write(data)

    def reply(self, data: bytes, at: int | None = None) -> None:
        """Queue a command reply with the events of this loop iteration (one write for a
        burst of commands); ``at`` puts it before the events its command produced."""
        if self.closing:
            return
        if self.paused or self.pending:
            self.write_raw(data)  # replies never wait behind queued events
            return
        if at is None or at > len(self.out):
            self.out.append(data)
        else:
            self.out.insert(at, data)
        if not self.flush_scheduled:
            self.flush_scheduled = True
            self.loop.call_soon(self._flush)

    def close_after_write(self) -> None:
        self.closing = True
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        self.closing = True
        if self.transport is not None:
            self.transport.abort()

    def disconnect_notice(self, body: bytes) -> None:
        if self.closing:
            return
        self.write_raw(notice(body))
        self.close_after_write()

    def deliver(self, frame: bytes) -> None:
        """Queue one rendered event frame for this client (bounded, like mes.c)."""
        if self.closing:
            return
        if (
            self.pending
            or self.paused
            or self.blocked
            or (self.core.stall_until and self.core.stall_until > self.loop.time())
        ):
            if len(self.pending) >= self.core.cfg.event_queue_limit:
                self.missed += 1
                self.lost += 1
                if self.missed > self.core.cfg.max_missed:
                    self.kill_lost()
                return
            self.missed = 0
            self.pending.append(frame)
            return
        self.missed = 0
        self.out.append(frame)
        if not self.flush_scheduled:
            self.flush_scheduled = True
            self.loop.call_soon(self._flush)

    def _flush(self) -> None:
        self.flush_scheduled = False
        if self.out and self.transport is not None and not self.closing:
            out, self.out = self.out, []
            self.transport.writelines(out)

    def flush_pending(self) -> None:
        if self.core.stall_until and self.core.stall_until > self.loop.time():
            return
        self._flush()
        while self.pending and not self.paused and not self.blocked and not self.closing:
            n = min(BATCH, len(self.pending))
            batch = [self.pending.popleft() for _ in range(n)]
            self.transport.writelines(batch)  # type: ignore[union-attr]

    def kill_lost(self) -> None:
        """Too many consecutive lost events: mes.c's 'killed listener' notice and close."""
        self.pending.clear()
        self.out.clear()
        self.core.remove_listener(self)
        self.disconnect_notice(LOST_EVENTS)

    # -- subscription (EventSink) ---------------------------------------------------------
    def wants(self, name: str) -> bool:
        if name.startswith("CUSTOM::"):
            return self.all or name[8:] in self.custom
        if self.all:
            return name not in self.excluded
        return name in self.subs

    def _update_filtering(self) -> None:
        """``filtering``: events must be matched against filters / the myevents uuid."""
        self.filtering = bool(self.filters) or self.myevents is not None
        self.core.subscriptions_changed()

    def passes(self, headers: dict[str, str]) -> bool:
        if self.myevents is not None and headers.get("unique-id") != self.myevents:
            return False
        if not self.filters:
            return True
        positive = False
        for h, v in self.filters:
            got = headers.get(h.lower())
            if got is None:
                continue
            neg = v.startswith("-")
            val = v[1:] if v[:1] in "+-" else v
            val = val.lstrip(" ")
            if val.startswith("/") and val.rfind("/") > 0:
                body, _, flags = val[1:].rpartition("/")
                try:
                    ok = re.search(body, got, re.I if "i" in flags else 0) is not None
                except re.error:
                    ok = False
            else:
                ok = got.lower() == val.lower()
            if ok:
                if neg:
                    return False
                positive = True
        return positive

    # -- input ---------------------------------------------------------------------------
    def data_received(self, data: bytes) -> None:
        if b"\r" in data:
            data = data.replace(b"\r", b"")
        self.buf += data
        self._process()

    def _process(self) -> None:
        buf = self.buf
        pos = 0
        n = len(buf)
        try:
            while pos < n and not self.blocked and not self.closing:
                while pos < n and buf[pos] == 10:  # leading blank lines are skipped
                    pos += 1
                end = buf.find(b"\n\n", pos)
                if end < 0:
                    return
                lines = buf[pos:end].decode("utf-8", "surrogateescape").split("\n")
                headers: dict[str, str] = {}
                for line in lines[1:]:
                    k, _, v = line.partition(":")
                    headers[k.strip().lower()] = v.strip()
                clen = int(headers.get("content-length", "0") or 0)
                if n < end + 2 + clen:
                    return
                body = bytes(buf[end + 2 : end + 2 + clen]).decode("utf-8", "surrogateescape")
                pos = end + 2 + clen
                self.command(lines[0].strip(), headers, body)
        finally:
            del buf[:pos]

    def command(self, cmd: str, headers: dict[str, str], body: str) -> None:
        low = cmd.lower()
        w = self.reply
        if low.startswith("exit") or low.startswith("..."):
            w(reply("+OK bye"))
            self.disconnect_notice(GOODBYE)
            return
        if not self.authed:
            if low.startswith("auth "):
                if cmd[5:].strip() == self.core.cfg.password:
                    self.authed = True
                    if self.auth_timer:
                        self.auth_timer.cancel()
                    w(reply("+OK accepted"))
                else:
                    w(reply("-ERR invalid"))
                    self.disconnect_notice(GOODBYE)
            elif low.startswith("userauth"):
                w(reply("-ERR invalid"))
                self.disconnect_notice(GOODBYE)
            else:
                w(reply("-ERR command not found"))
            return
        if low.startswith("filter"):
            w(reply(self._filter(cmd[6:].strip())))
        elif low.startswith("divert_events"):
            w(reply("-ERR not controlling a session."))
        elif low.startswith("sendmsg"):
            w(reply(self._sendmsg(cmd[7:].strip(), headers, body)))
        elif low.startswith("myevents"):
            w(reply(self._myevents(cmd[8:].strip())))
        elif low.startswith("linger"):
            if self.myevents is None:
                w(reply("-ERR not controlling a session"))
            else:
                arg = cmd[6:].strip()
                w(
                    reply(
                        f"+OK will linger {int(arg) if arg.isdigit() else 0} seconds"
                        if arg
                        else "+OK will linger"
                    )
                )
        elif low.startswith("nolinger"):
            w(
                reply(
                    "-ERR not controlling a session"
                    if self.myevents is None
                    else "+OK will not linger"
                )
            )
        elif low.startswith("api "):
            self._api(cmd[4:].strip())
        elif low.startswith("bgapi "):
            self._bgapi(cmd[6:].strip(), headers)
        elif low.startswith("log"):
            arg = cmd[3:].strip() or "debug"
            lvl = api._loglevel(arg)
            if lvl is None:
                w(reply("-ERR invalid log level"))
            else:
                self.log_level = int(lvl)
                if self not in self.core.loggers:
                    self.core.loggers.append(self)
                w(reply(f"+OK log level {arg} [{lvl}]"))
        elif low.startswith("nolog"):
            if self.log_level < 0:
                w(reply("-ERR not loging"))
            else:
                self._stop_logging()
                w(reply("+OK no longer logging"))
        elif low.startswith("event"):
            w(reply(self._event(cmd[5:].strip())))
        elif low.startswith("nixevent"):
            w(reply(self._nixevent(cmd[8:].strip())))
        elif low.startswith("noevents"):
            was = self.events_on
            self.events_on = False
            self.all = False
            self.subs.clear()
            self.custom.clear()
            self.excluded.clear()
            self.pending.clear()
            self.core.remove_listener(self)
            w(
                reply(
                    "+OK no longer listening for events" if was else "-ERR not listening for events"
                )
            )
        else:
            w(reply("-ERR command not found"))

    # -- command handlers ------------------------------------------------------------------
    def _event(self, arg: str) -> str:
        toks = arg.split()
        fmt = "plain"
        if toks and toks[0].lower() in FORMATS:
            fmt = toks.pop(0).lower()
        self.fmt = fmt
        any_ok = False
        custom = False
        for t in toks:
            if custom:
                self.custom.add(t)
                any_ok = True
                continue
            u = t.upper().removeprefix("SWITCH_EVENT_")
            if u == "ALL":
                self.all = True
                self.excluded.clear()
                any_ok = True
            elif u == "CUSTOM":
                custom = True
                any_ok = True
            elif u in EVENT_NAMES:
                self.subs.add(u)
                self.excluded.discard(u)
                any_ok = True
        self.core.add_listener(self)
        if not any_ok:
            return "-ERR no keywords supplied"
        self.events_on = True
        return f"+OK event listener enabled {fmt}"

    def _nixevent(self, arg: str) -> str:
        toks = arg.split()
        if not toks:
            return "-ERR no keywords supplied"
        custom = False
        for t in toks:
            if custom:
                self.custom.discard(t)
                continue
            u = t.upper().removeprefix("SWITCH_EVENT_")
            if u == "ALL":
                self.all = False
                self.subs.clear()
                self.excluded.clear()
            elif u == "CUSTOM":
                custom = True
            else:
                self.subs.discard(u)
                if self.all:
                    self.excluded.add(u)
        self.core.subscriptions_changed()
        return "+OK events nixed"

    def _filter(self, arg: str) -> str:
        if not arg:
            return "-ERR invalid syntax"
        parts = arg.split(None, 1)
        if parts[0].lower() == "delete":
            rest = parts[1] if len(parts) > 1 else ""
            h, _, v = rest.strip().partition(" ")
            v = v.strip()
            if h.lower() == "all":
                self.filters.clear()
                self._update_filtering()
                return "+OK filter deleted. [all][]"
            if v:
                self.filters = [
                    (fh, fv) for fh, fv in self.filters if not (fh.lower() == h.lower() and fv == v)
                ]
            else:
                self.filters = [(fh, fv) for fh, fv in self.filters if fh.lower() != h.lower()]
            self._update_filtering()
            return f"+OK filter deleted. [{h}][{v}]"
        if parts[0].lower() == "add":
            arg = parts[1] if len(parts) > 1 else ""
        h, _, v = arg.strip().partition(" ")
        v = v.strip()
        if not h or not v:
            return "-ERR invalid syntax"
        self.filters.append((h, v))
        self._update_filtering()
        return f"+OK filter added. [{h}]=[{v}]"

    def _sendmsg(self, uuid: str, headers: dict[str, str], body: str) -> str:
        uuid = uuid or headers.get("session-id", "") or headers.get("unique-id", "")
        leg = self.core.legs.get(uuid)
        if leg is None or leg.hungup:
            return f"-ERR invalid session id [{uuid}]"
        what = headers.get("call-command", "").lower()
        if what == "execute":
            app = headers.get("execute-app-name", "")
            arg = headers.get("execute-app-arg", "") or body
            self.loop.call_soon(leg.execute, app, arg, None, True)
        elif what == "hangup":
            cause = (headers.get("hangup-cause") or "NORMAL_CLEARING").upper()
            self.loop.call_soon(leg.hangup, cause)
        return "+OK"

    def _myevents(self, arg: str) -> str:
        toks = arg.split()
        if not toks or toks[0] not in self.core.legs:
            return "-ERR invalid uuid"
        if self.myevents is not None:
            return "-ERR aready enabled."
        self.myevents = toks[0]
        self._update_filtering()
        if len(toks) > 1 and toks[1].lower() in FORMATS:
            self.fmt = toks[1].lower()
        self.subs |= MYEVENTS
        self.core.add_listener(self)
        return "+OK Events Enabled"

    def _api(self, line: str) -> None:
        cmd, _, arg = line.partition(" ")
        fire_api = self.core.api_event(cmd, arg)
        at = len(self.out)
        self.core.current_connection = self
        try:
            result = api.execute(self.core, cmd, arg)
        finally:
            self.core.current_connection = None
        if isinstance(result, str):
            fire_api()
            self.reply(api_response(result or "-ERR no reply\n"), at)
            return
        self.blocked = True

        def done(fut: asyncio.Future[str]) -> None:
            fire_api()
            self.blocked = False
            self.write_raw(api_response(fut.result() or "-ERR no reply\n"))
            self.flush_pending()
            self._process()

        result.add_done_callback(done)

    def _bgapi(self, line: str, headers: dict[str, str]) -> None:
        job = headers.get("job-uuid") or self.core.new_uuid()
        self.reply(reply(f"+OK Job-UUID: {job}", f"Job-UUID: {job}\n"))
        cmd, _, arg = line.partition(" ")
        core = self.core
        fire_api = core.api_event(cmd, arg)

        def finish(result: str) -> None:
            fire_api()
            core.background_job(job, cmd, arg, result)

        if cmd.lower() == "originate":
            originate(core, arg, finish, job)
            return

        def run() -> None:
            result = api.execute(core, cmd, arg)
            if isinstance(result, str):
                finish(result)
            else:
                result.add_done_callback(lambda f: finish(f.result()))

        self.loop.call_soon(run)
