"""The ESL connection and the :class:`Client` built on it.

:class:`ESLProtocol` is an :class:`asyncio.Protocol`: ``data_received`` feeds the bytes
to :class:`fastswitch.esl.Parser` and handles every complete frame at once (no awaits per
line or per frame). Replies (``command/reply``, ``api/response``) are matched to commands
in FIFO order; events go to the client's :class:`~fastswitch.listener.CallTracker`, which
updates Sessions/Calls and runs the app callbacks.

:class:`Client` adds authentication, commands (``api``, ``bgapi``, ``sendmsg``, ``event``,
``filter`` ...), originate with call tracking, app loading, and reconnection with
backoff. Commands are written synchronously and return futures, so call-flow code can
fire them from a sync callback and ``await`` them only when it needs the reply;
:meth:`Client.originate` never awaits.

The client uses the running event loop (the worker installs uvloop; a harness may use its
own loop).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import re
import time
import uuid as _uuid
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

from fastswitch.apps import AppRegistry
from fastswitch.commands import build_originate_cmd, client_var
from fastswitch.errors import (
    AuthenticationError,
    CommandError,
    ConfigurationError,
    ConnectError,
    ConnectionLost,
    ESLError,
    ESLProtocolError,
)
from fastswitch.esl import Event, Frame, Parser
from fastswitch.listener import TRACKER_EVENTS, CallTracker
from fastswitch.models import Call, Job

__all__ = ["Client", "ESLProtocol", "make_uuid_factory", "uuid_str_factory", "NO_VARS_EVENTS"]

log = logging.getLogger("fastswitch.client")

_time = time.time

#: Events that carry no ``variable_*`` headers: with call filtering on they need an
#: ``Event-Name`` filter of their own or FreeSWITCH drops them (capture p).
NO_VARS_EVENTS = frozenset(
    (
        "BACKGROUND_JOB",
        "CHANNEL_CALLSTATE",
        "CHANNEL_STATE",
        "CHANNEL_OUTGOING",
        "HEARTBEAT",
        "RE_SCHEDULE",
        "CUSTOM",
    )
)

# reply modes
_TEXT = 0  # reply text / body, -ERR raises CommandError
_TEXT_NOCHECK = 1  # reply text / body as is
_FRAME = 2  # the Frame itself


def make_uuid_factory() -> Callable[[], str]:
    """Return a fast generator of unique uuid-shaped strings.

    A random 74-bit prefix (per factory) followed by a 48-bit counter: unique within the
    factory, collision-free across factories in practice, and about 10x cheaper than
    ``str(uuid.uuid4())``.
    """
    h = _uuid.uuid4().hex
    head = f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{'89ab'[int(h[16], 16) & 3]}{h[17:20]}-"
    counter = itertools.count(int(h[20:], 16) & 0xFFFF_FFFF)
    mask = 0xFFFF_FFFF_FFFF

    def uuid_str() -> str:
        return f"{head}{next(counter) & mask:012x}"

    return uuid_str


#: The default origination-uuid / Job-UUID generator.
uuid_str_factory = make_uuid_factory()


#: The body of FreeSWITCH's notice when it drops a slow listener (mod_event_socket).
_LOST_EVENTS = b"killed listener because of lost events"


def _reply_text(frame: Frame) -> str:
    if frame.content_type == "api/response":
        return frame.body.decode("utf-8", "replace")
    return frame.reply_text or ""


class ESLProtocol(asyncio.Protocol):
    """One ESL connection: framing, the FIFO of pending replies, auth request, events."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.addr = client.addr
        self.parser = Parser()
        self.transport: asyncio.Transport | None = None
        self.pending: deque[Any] = deque()
        loop = client.loop
        assert loop is not None
        self.auth_request: asyncio.Future = loop.create_future()
        self.closed: asyncio.Future = loop.create_future()
        self.disconnect_notice: str | None = None
        self.error: ESLError | None = None
        self._prev = self._last = b""  # the last two reads
        self.paused = False
        #: commands written in this pass of the loop, sent as one write by _flush
        self._wbuf: list[bytes] = []

    # -- asyncio.Protocol ------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self._prev, self._last = self._last, data  # for _notice_in_stream
        try:
            frames = self.parser.feed(data)
        except ESLProtocolError as exc:
            self._garbage(exc)
            return
        now = _time()
        client = self.client
        on_event = client._on_event
        last_event = None
        for frame in frames:
            try:
                if frame.is_event:
                    last_event = frame.event
                    on_event(last_event, now)
                else:
                    self._on_frame(frame)
            except ESLProtocolError as exc:
                # a well-framed event whose body does not decode (bad JSON/XML): the stream
                # is corrupt (e.g. FreeSWITCH's disconnect notice written into the middle
                # of an event frame): a protocol error on this connection, like garbage
                self._garbage(exc)
                return
            except Exception:
                log.exception("%s: error while handling %r", self.addr, frame)
        if last_event is not None:
            # how far behind FreeSWITCH the event stream runs (once per read, not per
            # event), counted when this read is handled: a slow consumer's own lag counts
            done = _time()
            client.last_event_rx = done
            ts = last_event.timestamp
            if ts:
                client.event_delay = done - ts * 1e-6

    def eof_received(self) -> bool | None:
        return None  # close the transport

    def _notice_in_stream(self) -> str:
        """FreeSWITCH writes its 'killed listener because of lost events' notice from
        another thread than the one writing events, so it can land inside an event frame
        (research §6.1), where the parser cannot see it as a frame: look for it in the last
        bytes read, so that the reason is not lost with the frame."""
        tail = self._prev[-len(_LOST_EVENTS) :] + self._last
        return _LOST_EVENTS.decode() if _LOST_EVENTS in tail else ""

    def connection_lost(self, exc: Exception | None) -> None:
        hidden = "" if self.disconnect_notice else self._notice_in_stream()
        if hidden:
            note = f" (FreeSWITCH: {hidden})"
            if self.error is not None and note not in str(self.error):
                if isinstance(self.error, ESLProtocolError):
                    base = str(self.error)
                    suffix = f" (at byte offset {self.error.offset})"
                    if base.endswith(suffix):
                        base = base[: -len(suffix)]
                    err: ESLError = ESLProtocolError(base + note, self.error.offset)
                else:
                    err = type(self.error)(str(self.error) + note)
                err.__cause__ = self.error.__cause__
                self.error = err
            elif self.error is None:
                self.disconnect_notice = hidden
        if self.error is not None:
            cause: ESLError = self.error
        else:
            why = self.disconnect_notice or (str(exc) if exc else "closed by the server")
            cause = ConnectionLost(f"connection to {self.addr} lost: {why.strip()}")
            if exc is not None:
                cause.__cause__ = exc
            self.error = cause
        self.transport = None
        self.fail_pending(cause)
        if not self.auth_request.done():
            self.auth_request.set_exception(cause)
            self.auth_request.exception()  # retrieved: connect() reports it
        if not self.closed.done():
            self.closed.set_result(cause)
        self.client._connection_lost(self, cause)

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        self.client._resume_writing()

    # -- frames ----------------------------------------------------------------------------
    def _on_frame(self, frame: Frame) -> None:
        ct = frame.content_type
        if ct == "command/reply" or ct == "api/response":
            if not self.pending:
                log.warning("%s: unexpected reply %r", self.addr, _reply_text(frame)[:200])
                return
            entry = self.pending.popleft()
            if type(entry) is Job:
                text = frame.reply_text or ""
                if text.startswith("-ERR"):
                    self.client.listener.fail_job(
                        entry, CommandError(text, f"bgapi job {entry.uuid}"), _time()
                    )
                return
            fut, cmd, mode = entry
            if fut.done():
                return
            if mode == _FRAME:
                fut.set_result(frame)
                return
            text = _reply_text(frame)
            if mode == _TEXT and text.startswith("-ERR"):
                fut.set_exception(CommandError(text.strip(), cmd))
            else:
                fut.set_result(text)
        elif ct == "auth/request":
            if not self.auth_request.done():
                self.auth_request.set_result(frame)
        elif ct == "text/disconnect-notice":
            if frame.get("Content-Disposition") == "linger":
                return
            self.disconnect_notice = frame.body.decode("utf-8", "replace") or "disconnect notice"
        elif ct == "text/rude-rejection":
            text = frame.body.decode("utf-8", "replace").strip()
            self.error = ConnectError(f"{self.addr} rejected the connection: {text}")
        elif ct == "log/data":
            hooks = self.client.log_hooks
            for hook in hooks:
                hook(frame)
        else:
            # not a frame FreeSWITCH sends: say so (once per type), keep the connection
            if ct not in self.client._unexpected_types:
                self.client._unexpected_types.add(ct)
                log.error(
                    "%s: unexpected ESL frame of Content-Type %r ignored (%d bytes)",
                    self.addr,
                    ct,
                    len(frame.raw),
                )

    def _garbage(self, exc: ESLProtocolError) -> None:
        msg = str(exc)
        suffix = f" (at byte offset {exc.offset})"
        if msg.endswith(suffix):
            msg = msg[: -len(suffix)]
        err = ESLProtocolError(f"{self.addr} sent a malformed ESL stream: {msg}", exc.offset)
        err.__cause__ = exc
        log.error("%s", err)
        self.error = err
        t = self.transport
        if t is not None:
            t.abort()  # connection_lost follows and fails everything with `err`

    # -- writing ---------------------------------------------------------------------------
    def fail_pending(self, exc: BaseException) -> None:
        """Fail every command waiting for its reply with ``exc``."""
        pending = self.pending
        while pending:
            entry = pending.popleft()
            if type(entry) is Job:
                continue  # the tracker fails jobs (lose_all)
            fut = entry[0]
            if not fut.done():
                fut.set_exception(exc)

    def _check(self) -> asyncio.Transport:
        t = self.transport
        if t is None or t.is_closing():
            raise self.error or ConnectionLost(f"not connected to {self.addr}")
        return t

    def command(
        self, text: str, mode: int = _TEXT, cmd: str | None = None, end: str = "\n\n"
    ) -> asyncio.Future:
        """Write ``text`` + ``end`` (the blank-line terminator); future of its reply."""
        self._check()
        fut = self.client.loop.create_future()  # type: ignore[union-attr]
        self.pending.append((fut, cmd or text, mode))
        self._write((text + end).encode())
        return fut

    def send_job(self, text: str, job: Job) -> None:
        """Write a bgapi command whose reply only confirms ``job``."""
        self._check()
        self.pending.append(job)
        self._write(text.encode())

    def _write(self, data: bytes) -> None:
        """Queue ``data``; every command queued in one pass of the loop (an originate
        burst, the hangups of one hold slot, the apps' replies to one read) leaves in one
        ``write``, so one system call and one wake-up of the server instead of one each.
        The FIFO of replies is unchanged: commands keep their order."""
        buf = self._wbuf
        if not buf:
            self.client.loop.call_soon(self._flush)  # type: ignore[union-attr]
        buf.append(data)

    def _flush(self) -> None:
        buf = self._wbuf
        if not buf:
            return
        data = buf[0] if len(buf) == 1 else b"".join(buf)
        buf.clear()
        t = self.transport
        if t is not None and not t.is_closing():
            t.write(data)


class Client:
    """An ESL client for one FreeSWITCH slave, with call tracking and apps.

    ``Client(host, port=8021, password='ClueCon', loop=None, event_format='plain')``;
    further keyword options: ``user`` (``userauth user@domain``), ``reconnect`` (True:
    forever, an int: that many attempts, False/0: never), ``backoff`` (first and longest
    delay between attempts, seconds), ``connect_timeout``, ``var_prefix``
    (``'fastswitch'``), ``correlation`` (``'uuid'``: by the X-originating_session_uuid
    header; ``'caller_id'``: by the call index in the caller-id number, for SUTs that
    strip X- headers), ``cid_prefix`` (digits before the call index), ``call_filter``
    (install ``filter`` commands so only this client's calls are delivered on a shared
    server), ``track_remote`` (track B-legs other workers originated as remote calls;
    turn off when several workers share one slave), ``events`` (extra subscriptions),
    ``uuid_func``, ``keep_events`` (False: a tracked session refers to an event only while
    it is dispatched to the apps, its fields hold what is read later; True: each session
    also keeps its ``last_event`` / ``var_event``, ~5 KB each per leg, for harnesses).

    Hooks: ``connect_hooks`` (``f(client)``, after every (re)connection),
    ``disconnect_hooks`` (``f(client, cause, (calls, sessions, jobs) lost)``),
    ``event_hooks`` (``f(event, recv_time)`` for every event), ``log_hooks``
    (``f(frame)`` for ``log/data``).
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 8021,
        password: str = "ClueCon",
        loop: asyncio.AbstractEventLoop | None = None,
        event_format: str = "plain",
        *,
        user: str | None = None,
        reconnect: bool | int = True,
        backoff: tuple[float, float] = (0.05, 5.0),
        connect_timeout: float = 5.0,
        var_prefix: str = "fastswitch",
        correlation: str = "uuid",
        cid_prefix: str = "",
        call_filter: bool = False,
        track_remote: bool = True,
        events: Iterable[str] = (),
        uuid_func: Callable[[], str] | None = None,
        keep_events: bool = False,
    ) -> None:
        if event_format not in ("plain", "json"):
            raise ValueError("event_format must be 'plain' or 'json'")
        if call_filter and correlation == "caller_id" and not cid_prefix:
            log.warning(
                "%s:%s: call_filter with caller-id correlation needs a cid_prefix, else B-legs "
                "without X- headers are filtered out",
                host,
                port,
            )
        self.host = host
        self.port = int(port)
        self.addr = f"{host}:{self.port}"
        self.password = password
        self.user = user
        self.loop = loop
        self.event_format = event_format
        self.reconnect = reconnect
        self.backoff = backoff
        self.connect_timeout = connect_timeout
        self.var_prefix = var_prefix
        self.correlation = correlation
        self.cid_prefix = cid_prefix
        self.call_filter = call_filter
        self.uuid_func = uuid_func or uuid_str_factory

        self.listener = CallTracker(
            self, var_prefix=var_prefix, correlation=correlation, keep_events=keep_events
        )
        self.apps = AppRegistry()
        self.listener.dispatch = self.apps.dispatch
        self.listener.track_remote = track_remote

        self.connect_hooks: list[Callable[[Client], Any]] = []
        self.disconnect_hooks: list[Callable[[Client, BaseException, tuple], Any]] = []
        self.event_hooks: list[Callable[[Event, float], Any]] = []
        self.log_hooks: list[Callable[[Frame], Any]] = []

        self._proto: ESLProtocol | None = None
        self._extra_events: set[str] = set(events)
        self._subscribed: set[str] = set()
        self._user_filters: list[tuple[str, str]] = []
        self._auto_filters: set[tuple[str, str]] = set()
        self._orig_cmd: str | None = None
        self._app_cycle: list[str] = []
        self._app_pos = 0
        self._index = itertools.count(1)
        self._closing = False
        self._opening = False
        self._reconnect_task: asyncio.Task | None = None
        self._connected_ev: asyncio.Event | None = None
        self._writable: asyncio.Event | None = None
        self.connections = 0  # successful (re)connections so far
        self.last_event_rx = 0.0  # time.time() an event last arrived
        # receive time minus FreeSWITCH's Event-Date-Timestamp of the latest event (includes
        # any clock offset between the hosts: compare it with its own minimum)
        self.event_delay = math.nan
        self._unexpected_types: set[str] = set()
        self.last_error: BaseException | None = None  # why the last connection ended

    def __repr__(self) -> str:
        state = "connected" if self.connected else "disconnected"
        return f"<Client {self.addr} {state} calls={self.listener.active_calls}>"

    # -- properties --------------------------------------------------------------------------
    @property
    def server(self) -> str:
        """The slave's host name (switchio's ``client.server``)."""
        return self.host

    @property
    def connected(self) -> bool:
        """True while an authenticated connection is up."""
        p = self._proto
        return p is not None and p.transport is not None and not p.transport.is_closing()

    @property
    def writable(self) -> bool:
        """False while the socket's write buffer is above its high-water mark."""
        p = self._proto
        return p is not None and not p.paused

    @property
    def events(self) -> set[str]:
        """The event names this client subscribes to (tracker + apps + extra)."""
        return set(TRACKER_EVENTS) | self.apps.event_names | self._extra_events

    # -- connection ------------------------------------------------------------------------------
    async def connect(self, timeout: float | None = None) -> Client:
        """Connect, authenticate, subscribe and install filters.

        Raises :class:`ConnectError` (refused, unreachable, timed out) or
        :class:`AuthenticationError`, both naming ``host:port``.
        """
        if self.connected:
            return self
        if self.loop is None:
            self.loop = asyncio.get_running_loop()
        self._closing = False
        timeout = self.connect_timeout if timeout is None else timeout
        await self._open(timeout)
        return self

    async def _open(self, timeout: float) -> None:
        loop = self.loop
        assert loop is not None
        proto = ESLProtocol(self)
        self._opening = True
        try:
            async with asyncio.timeout(timeout):
                try:
                    await loop.create_connection(lambda: proto, self.host, self.port)
                except OSError as exc:
                    raise ConnectError(
                        f"cannot connect to ESL at {self.addr}: {exc.strerror or exc}"
                    ) from exc
                try:
                    await proto.auth_request
                except ConnectionLost as exc:
                    raise ConnectError(
                        f"{self.addr} closed the connection before asking for auth: {exc}"
                    ) from exc
                if self.user:
                    auth = f"userauth {self.user}:{self.password}"
                    what = f"user {self.user!r}"
                else:
                    auth = f"auth {self.password}"
                    what = "the password"
                try:
                    reply = await proto.command(auth, _TEXT_NOCHECK, cmd="auth")
                except ConnectionLost as exc:
                    raise AuthenticationError(
                        f"{self.addr} dropped the connection during auth: {exc}"
                    ) from exc
                if not reply.startswith("+OK"):
                    raise AuthenticationError(f"{self.addr} refused {what}: {reply.strip()}")
                self._proto = proto
                await self._setup(proto)
        except TimeoutError:
            if self._proto is proto:
                self._proto = None
            self._abort(proto)
            raise ConnectError(
                f"timed out after {timeout:g}s connecting to ESL at {self.addr}"
            ) from None
        except BaseException:
            if self._proto is proto:
                self._proto = None
            self._abort(proto)
            raise
        finally:
            self._opening = False
        self.connections += 1
        if self._connected_ev is not None:
            self._connected_ev.set()
        log.info("connected to %s", self.addr)
        for hook in self.connect_hooks:
            try:
                hook(self)
            except Exception:
                log.exception("connect hook %r failed", hook)

    @staticmethod
    def _abort(proto: ESLProtocol) -> None:
        t = proto.transport
        if t is not None:
            t.abort()

    async def _setup(self, proto: ESLProtocol) -> None:
        """Subscribe and filter (also after a reconnection)."""
        self._subscribed = set()
        self._auto_filters = set()
        futs = self._sync_subscriptions(proto)
        for h, v in self._user_filters:
            futs.append(proto.command(f"filter {h} {v}"))
        if futs:
            await asyncio.gather(*futs)

    def _sync_subscriptions(self, proto: ESLProtocol | None = None) -> list[asyncio.Future]:
        """Write ``event``/``filter`` commands for what is wanted but not yet installed."""
        proto = proto or self._proto
        if proto is None or proto.transport is None:
            return []
        futs: list[asyncio.Future] = []
        wanted = self.events
        new = wanted - self._subscribed
        if new:
            futs.append(proto.command(self._event_command(new)))
            self._subscribed |= new
        listener = self.listener
        listener.final_event = (
            "CHANNEL_DESTROY"
            if "CHANNEL_DESTROY" in self._subscribed
            else "CHANNEL_HANGUP_COMPLETE"
        )
        listener.originate_from_create = "CHANNEL_ORIGINATE" not in self._subscribed
        if self.call_filter:
            for f in sorted(self._filters_for(self._subscribed) - self._auto_filters):
                futs.append(proto.command(f"filter {f[0]} {f[1]}"))
                self._auto_filters.add(f)
        return futs

    def _event_command(self, names: Iterable[str]) -> str:
        plain = sorted(n for n in names if "::" not in n and n != "CUSTOM")
        custom = sorted(n for n in names if "::" in n)
        parts = ["event", self.event_format, *plain]
        if custom or "CUSTOM" in names:
            parts.append("CUSTOM")
            parts.extend(custom)
        return " ".join(parts)

    def _filters_for(self, names: Iterable[str]) -> set[tuple[str, str]]:
        cvar = client_var(self.var_prefix)
        out: set[tuple[str, str]] = set()
        for app_id in self.listener.app_ids:
            out.add((f"variable_{cvar}", app_id))
            out.add((f"variable_sip_h_X-{cvar}", app_id))
        if self.correlation == "caller_id" and self.cid_prefix:
            # B-legs whose X- headers the SUT stripped: match the call index (a PCRE filter)
            out.add(("Caller-Caller-ID-Number", f"/^{re.escape(self.cid_prefix)}/"))
        for n in names:
            if "::" in n:
                out.add(("Event-Subclass", n))
            elif n in NO_VARS_EVENTS:
                out.add(("Event-Name", n))
        return out

    def _connection_lost(self, proto: ESLProtocol, cause: ESLError) -> None:
        if proto is not self._proto:
            return
        self._proto = None
        self.last_error = cause
        if self._opening:
            return  # _open() fails with the cause; its caller decides about retrying
        if self._connected_ev is not None:
            self._connected_ev.clear()
        if self._writable is not None:
            self._writable.set()
        if self._closing:
            self.listener.lose_all("client closed")
            return
        lost = self.listener.lose_all(str(cause))
        log.warning("%s; lost track of %d calls (%d sessions, %d jobs)", cause, *lost)
        for hook in self.disconnect_hooks:
            try:
                hook(self, cause, lost)
            except Exception:
                log.exception("disconnect hook %r failed", hook)
        if self.reconnect and self.loop is not None and not self.loop.is_closed():
            self._reconnect_task = self.loop.create_task(self._reconnect_loop())

    async def _reconnect_loop(self) -> None:
        attempts = math.inf if self.reconnect is True else int(self.reconnect)
        delay, longest = self.backoff
        n = 0
        while not self._closing and n < attempts:
            n += 1
            await asyncio.sleep(delay)
            if self._closing:
                return
            try:
                await self._open(self.connect_timeout)
            except (ESLError, OSError) as exc:
                log.warning("%s: reconnect attempt %d failed: %s", self.addr, n, exc)
                delay = min(delay * 2, longest)
                continue
            log.info("%s: reconnected after %d attempt(s)", self.addr, n)
            return
        if not self._closing:
            log.error("%s: giving up reconnecting after %d attempts", self.addr, n)

    async def wait_connected(self) -> None:
        """Wait until an authenticated connection is up (e.g. after a reconnection)."""
        if self.connected:
            return
        if self._connected_ev is None:
            self._connected_ev = asyncio.Event()
        await self._connected_ev.wait()

    async def drain(self) -> None:
        """Wait until the socket accepts writes again (after :attr:`writable` went False)."""
        if self.writable or self._proto is None:
            return
        if self._writable is None:
            self._writable = asyncio.Event()
        self._writable.clear()
        await self._writable.wait()

    def _resume_writing(self) -> None:
        if self._writable is not None:
            self._writable.set()

    async def close(self, timeout: float = 2.0) -> None:
        """Send ``exit``, close the socket, run the apps' teardowns. Calls still up are
        completed as lost ("client closed")."""
        self._closing = True
        task = self._reconnect_task
        if task is not None and not task.done():
            task.cancel()
        proto = self._proto
        if proto is not None and proto.transport is not None:
            try:
                async with asyncio.timeout(timeout):
                    try:
                        await proto.command("exit", _TEXT_NOCHECK)
                    except ESLError:
                        pass
                    if proto.transport is not None:
                        proto.transport.close()
                    await proto.closed
            except TimeoutError:
                self._abort(proto)
        if self._proto is not None:
            self._proto = None
            self.listener.lose_all("client closed")
        self.apps.unload_all()

    async def __aenter__(self) -> Client:
        if not self.connected:
            await self.connect()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    # -- events -------------------------------------------------------------------------------
    def _on_event(self, ev: Event, now: float) -> None:
        self.listener.handle(ev, now)
        if self.event_hooks:
            for hook in self.event_hooks:
                hook(ev, now)

    # -- commands ------------------------------------------------------------------------------
    def _conn(self) -> ESLProtocol:
        p = self._proto
        if p is None:
            why = f" (last error: {self.last_error})" if self.last_error is not None else ""
            raise ConnectionLost(f"not connected to {self.addr}{why}")
        return p

    def api(self, cmd: str, *, errcheck: bool = True, raw: bool = False) -> asyncio.Future:
        """Send ``api <cmd>``; the future resolves to the response body (``str``).

        A body starting with ``-ERR`` raises :class:`CommandError` unless
        ``errcheck=False``; ``raw=True`` resolves to the :class:`Frame` itself.
        """
        if "\n" in cmd:
            raise ValueError(f"an api command is one line: {cmd!r}")
        mode = _FRAME if raw else (_TEXT if errcheck else _TEXT_NOCHECK)
        return self._conn().command("api " + cmd, mode, cmd)

    def cmd(self, text: str, *, errcheck: bool = True) -> asyncio.Future:
        """Send any ESL command (a line, optionally followed by ``Name: value`` header
        lines); resolves to its Reply-Text (or api body)."""
        text = text.strip("\n")
        if "\n\n" in text or not text.strip():
            raise ValueError(f"an ESL command may not contain a blank line: {text!r}")
        return self._conn().command(text, _TEXT if errcheck else _TEXT_NOCHECK)

    async def bgapi(self, cmd: str, job_uuid: str | None = None) -> Job:
        """Send ``bgapi <cmd>`` with our own ``Job-UUID`` header; return its Job once
        FreeSWITCH accepted it (CommandError if refused). ``await job`` (or
        ``job.future``) gives the result body when the BACKGROUND_JOB arrives."""
        if "\n" in cmd:
            raise ValueError(f"a bgapi command is one line: {cmd!r}")
        proto = self._conn()
        ju = job_uuid or self.uuid_func()
        job = Job(ju, None, _time(), self.loop)
        self.listener.add_job(job)
        try:
            await proto.command(f"bgapi {cmd}\nJob-UUID: {ju}", _TEXT, f"bgapi {cmd}")
        except CommandError as exc:
            self.listener.fail_job(job, exc, _time())
            raise
        return job

    def bgapi_nowait(self, cmd: str, job_uuid: str | None = None) -> Job:
        """Send ``bgapi <cmd>`` without waiting for the reply; return the tracked Job."""
        proto = self._conn()
        ju = job_uuid or self.uuid_func()
        job = Job(ju, None, _time(), self.loop)
        self.listener.add_job(job)
        proto.send_job(f"bgapi {cmd}\nJob-UUID: {ju}\n\n", job)
        return job

    def sendmsg(
        self,
        uuid: str,
        command: str = "execute",
        app: str | None = None,
        arg: str | None = None,
        *,
        cause: str | None = None,
        loops: int | None = None,
        event_lock: bool = False,
    ) -> asyncio.Future:
        """Send ``sendmsg <uuid>`` (``call-command: execute`` with ``execute-app-name``
        / ``execute-app-arg``, or ``hangup`` with ``hangup-cause``)."""
        lines = [f"sendmsg {uuid}", f"call-command: {command}"]
        body = None
        if command == "execute":
            if not app:
                raise ValueError("sendmsg execute needs an app name")
            lines.append(f"execute-app-name: {app}")
            if arg is not None and arg != "":
                arg = str(arg)
                if "\n" in arg:
                    body = arg
                else:
                    lines.append(f"execute-app-arg: {arg}")
            if loops is not None:
                lines.append(f"loops: {int(loops)}")
        elif command == "hangup":
            lines.append(f"hangup-cause: {cause or 'NORMAL_CLEARING'}")
        if event_lock:
            lines.append("event-lock: true")
        if body is not None:
            data = body.encode()
            lines.append("content-type: text/plain")
            lines.append(f"content-length: {len(data)}")
            text = "\n".join(lines) + "\n\n" + body
            return self._conn().command(text, _TEXT, f"sendmsg {uuid} {app}", end="")
        return self._conn().command("\n".join(lines), _TEXT, f"sendmsg {uuid} {app or command}")

    def execute(self, uuid: str, app: str, arg: str | None = None) -> asyncio.Future:
        """Run a dialplan application on a channel (``sendmsg`` execute)."""
        return self.sendmsg(uuid, "execute", app, arg)

    async def subscribe(self, names: Iterable[str]) -> None:
        """Add event subscriptions (``event <format> ...``; ``'mod_x::y'`` is a CUSTOM
        subclass). Kept across reconnections."""
        self._extra_events.update(names)
        futs = self._sync_subscriptions()
        if futs:
            await asyncio.gather(*futs)

    async def unsubscribe(self, names: Iterable[str]) -> None:
        """Remove extra subscriptions (``nixevent``); the tracker's and apps' stay."""
        names = set(names) - set(TRACKER_EVENTS) - self.apps.event_names
        self._extra_events -= names
        drop = names & self._subscribed
        if drop and self._proto is not None:
            plain = sorted(n for n in drop if "::" not in n)
            custom = sorted(n for n in drop if "::" in n)
            text = " ".join(["nixevent", *plain, *(["CUSTOM", *custom] if custom else [])])
            self._subscribed -= drop
            await self._conn().command(text)

    def noevents(self) -> asyncio.Future:
        """Stop all events on this connection (``noevents``)."""
        self._subscribed = set()
        return self._conn().command("noevents")

    def filter(self, header: str, value: str) -> asyncio.Future:
        """Add an event filter (``filter <header> <value>``; filters OR together).
        Kept across reconnections."""
        self._user_filters.append((header, value))
        return self._conn().command(f"filter {header} {value}")

    def filter_delete(self, header: str, value: str | None = None) -> asyncio.Future:
        """Delete a filter (``filter delete <header> [<value>]``; ``'all'`` deletes all)."""
        if header == "all":
            self._user_filters.clear()
            self._auto_filters.clear()
        else:
            self._user_filters = [
                f for f in self._user_filters if not (f[0] == header and value in (None, f[1]))
            ]
        text = f"filter delete {header}" + (f" {value}" if value is not None else "")
        return self._conn().command(text)

    def linger(self, seconds: int | None = None) -> asyncio.Future:
        """``linger [seconds]`` (only meaningful on a connection controlling a session)."""
        return self._conn().command("linger" + (f" {int(seconds)}" if seconds is not None else ""))

    def exit(self) -> asyncio.Future:
        """Send ``exit`` (FS replies ``+OK bye`` and closes); see also :meth:`close`."""
        self._closing = True
        return self._conn().command("exit", _TEXT_NOCHECK)

    # -- originate -------------------------------------------------------------------------------
    def set_orig_cmd(self, dest_url: str, **kwargs: Any) -> str:
        """Build and keep the originate template (see
        :func:`~fastswitch.commands.build_originate_cmd`; ``uuid_str`` is filled per
        call and may not be given). With ``correlation='caller_id'`` the caller-id
        number carries ``{cid_prefix}{call_index}``."""
        if "uuid_str" in kwargs:
            raise ConfigurationError("uuid_str is filled per call; do not pass it to set_orig_cmd")
        kwargs.setdefault("var_prefix", self.var_prefix)
        if self.correlation == "caller_id":
            kwargs.setdefault("origination_caller_id_number", "{call_index}")
        template = build_originate_cmd(dest_url, **kwargs)
        if "\n" in template:
            raise ConfigurationError(f"the originate command must be one line: {template!r}")
        _check_template(template)
        self._orig_cmd = template
        return template

    @property
    def originate_cmd(self) -> str | None:
        """The originate template set with :meth:`set_orig_cmd` (None if unset)."""
        return self._orig_cmd

    @originate_cmd.setter
    def originate_cmd(self, template: str) -> None:
        self._orig_cmd = template

    def originate(
        self,
        app_id: str | None = None,
        uuid_func: Callable[[], str] | None = None,
        rep_fields: dict[str, Any] | None = None,
    ) -> Job:
        """Originate one call with the template; returns its Job at once.

        Fills ``{uuid_str}``, ``{app_id}``, ``{call_index}`` and ``rep_fields``,
        registers the Call (and Job) with the tracker, writes ``bgapi originate ...``
        with our ``Job-UUID`` header. Never awaits; O(1).
        """
        template = self._orig_cmd
        if template is None:
            raise ConfigurationError("you must first set an originate command")
        proto = self._conn()
        if app_id is None:
            cyc = self._app_cycle
            if cyc:
                app_id = cyc[self._app_pos]
                self._app_pos = (self._app_pos + 1) % len(cyc)
            else:
                app_id = "default"
        uid = (uuid_func or self.uuid_func)()
        index = f"{self.cid_prefix}{next(self._index)}"
        if rep_fields:
            cmd = template.format(uuid_str=uid, app_id=app_id, call_index=index, **rep_fields)
        else:
            cmd = template.format(uuid_str=uid, app_id=app_id, call_index=index)
        ju = self.uuid_func()
        call = Call(uid, app_id, None, False, index if self.correlation == "caller_id" else None)
        job = Job(ju, uid, _time(), self.loop, call)
        call.job = job
        self.listener.expect(call, job)
        proto.send_job(f"bgapi {cmd}\nJob-UUID: {ju}\n\n", job)
        return job

    async def hupall(self, cause: str = "NORMAL_CLEARING", app_id: str | None = None) -> list[str]:
        """Hang up this client's calls only: per app id (or just ``app_id``)
        ``hupall <cause> fastswitch_client <id>`` (A-legs) and
        ``hupall <cause> sip_h_X-fastswitch_client <id>`` (both legs, incl. B-legs of
        calls other workers sent here). Returns FreeSWITCH's replies."""
        cvar = client_var(self.var_prefix)
        ids = [app_id] if app_id is not None else (list(self.apps.apps) or ["default"])
        futs = []
        for i in ids:
            futs.append(self.api(f"hupall {cause} {cvar} {i}"))
            futs.append(self.api(f"hupall {cause} sip_h_X-{cvar} {i}"))
        return list(await asyncio.gather(*futs))

    # -- apps ------------------------------------------------------------------------------------
    def load_app(
        self,
        app: Any,
        app_id: str | None = None,
        ppkwargs: dict[str, Any] | None = None,
        weight: int = 1,
    ) -> str:
        """Load an app (class or instance) under ``app_id`` (default: its class name);
        ``weight`` sets its share of originates made with ``app_id=None``. Subscribes to
        the app's events at once when connected. Returns the app id."""
        if app_id is None:
            name = app.__name__ if isinstance(app, type) else type(app).__name__
            app_id, n = name, 1
            while app_id in self.apps:
                n += 1
                app_id = f"{name}{n}"
        if not app_id or any(c in app_id for c in " ,{}'\n"):
            raise ConfigurationError(
                f"invalid app id {app_id!r}: no spaces, commas, braces or quotes"
            )
        self.apps.load(app, app_id, self, self.listener, ppkwargs, weight)
        self.listener.app_ids.add(app_id)
        self._rebuild_cycle()
        for fut in self._sync_subscriptions():
            fut.add_done_callback(_log_setup_failure)
        return app_id

    def unload_app(self, app_id: str) -> None:
        """Unload an app (runs its teardown); its calls keep being tracked."""
        self.apps.unload(app_id)
        self.listener.app_ids.discard(app_id)
        self._rebuild_cycle()

    def _rebuild_cycle(self) -> None:
        """Smooth weighted round-robin over the loaded apps (gcd-reduced weights)."""
        weights = {a.app_id: a.weight for a in self.apps.apps.values() if a.weight > 0}
        if not weights:
            self._app_cycle = []
            self._app_pos = 0
            return
        g = 0
        for w in weights.values():
            g = math.gcd(g, w)
        weights = {k: w // g for k, w in weights.items()}
        total = sum(weights.values())
        current = dict.fromkeys(weights, 0)
        cycle = []
        for _ in range(total):
            for k, w in weights.items():
                current[k] += w
            best = max(current, key=current.__getitem__)
            current[best] -= total
            cycle.append(best)
        self._app_cycle = cycle
        self._app_pos = 0


def _check_template(template: str) -> None:
    """Fail now, not at every originate, when ``str.format`` cannot fill ``template`` (a
    lone brace in a value). Unknown ``{name}`` placeholders are left for ``rep_fields``."""
    try:
        template.format(uuid_str="u", app_id="a", call_index="1")
    except KeyError as exc:
        name = str(exc.args[0]) if exc.args else ""
        if name.isidentifier():
            return  # a rep_fields placeholder, filled per call
        raise ConfigurationError(
            f"the originate command has a stray '{{' or '}}' (near {name!r}); "
            f"double literal braces: {template!r}"
        ) from None
    except (ValueError, IndexError) as exc:
        raise ConfigurationError(
            f"the originate command is not a valid template ({exc}); "
            f"double literal braces: {template!r}"
        ) from None


def _log_setup_failure(fut: asyncio.Future) -> None:
    if not fut.cancelled() and fut.exception() is not None:
        log.error("subscription command failed: %s", fut.exception())
