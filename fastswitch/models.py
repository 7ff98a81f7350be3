"""The call model: :class:`Session` (one channel), :class:`Call` (the legs of one
originate), :class:`Job` (one ``bgapi`` command).

Objects are small (``__slots__``) and hold no events: the call tracker extracts the few
values it, the worker and the shipped apps read later (times, answer / hangup state,
hangup cause, the SIP statuses of the hangup) into plain fields when an event arrives,
and a Session refers to an event only while that event is being dispatched to the apps
(``Session.event``). A kept event would cost ~5 KB per leg (its raw frame bytes); the
fields cost a few dozen bytes. ``Client(keep_events=True)`` keeps ``last_event`` /
``var_event`` for harnesses that want the events themselves. Times come in two flavours: ``*_time`` is the worker's
receive time (``time.time()`` when the event's bytes arrived) and ``*_fs_time`` is
FreeSWITCH's ``Event-Date-Timestamp`` in seconds (FS moves it in 20 ms steps).

Session call-control methods send commands the captures show FreeSWITCH accepting
(``uuid_answer``, ``uuid_kill``, ``sched_hangup``, ``uuid_broadcast``, ``uuid_setvar``,
``uuid_getvar``, ``uuid_park``, ``uuid_bridge``, ``sendmsg`` execute). They write
immediately and return an awaitable future: a sync app callback may ignore it (a
failure is then logged), a coroutine may ``await`` it.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fastswitch.client import Client
    from fastswitch.esl import Event

__all__ = ["Session", "Call", "Job", "error_cause", "KNOWN_HEADERS"]

log = logging.getLogger("fastswitch.models")

# Events that carry no ``variable_*`` headers: reading variables falls back to the
# latest event that had them.
_NO_VARS = frozenset(
    ("CHANNEL_CALLSTATE", "CHANNEL_STATE", "CUSTOM", "CHANNEL_OUTGOING", "HEARTBEAT")
)


#: Headers :meth:`Session.get` answers from the session's fields once no event is at hand
#: (header -> attribute; ``call_uuid`` is ``call.uuid``). A tracker adds its own app id
#: variables (``variable_<prefix>_client``, ``variable_sip_h_X-<prefix>_client``).
KNOWN_HEADERS: dict[str, str] = {
    "Unique-ID": "uuid",
    "Call-Direction": "direction",
    "Hangup-Cause": "hangup_cause",
    "variable_sip_term_status": "sip_term_status",
    "variable_sip_invite_failure_status": "sip_invite_failure_status",
    "variable_sip_h_X-originating_session_uuid": "call_uuid",
    "variable_fastswitch_client": "app_id",
    "variable_sip_h_X-fastswitch_client": "app_id",
}


def _log_failure(fut: asyncio.Future) -> None:
    if fut.cancelled():
        return
    exc = fut.exception()  # marks it retrieved: no "never retrieved" noise
    if exc is not None:
        log.warning("session command failed: %s", exc)


class Session:
    """One FreeSWITCH channel (a call leg) seen through its events.

    Attributes: ``uuid``, ``direction`` (``'outbound'`` for a leg we originated,
    ``'inbound'`` for a leg that reached a slave), ``app_id``, ``call``, ``answered``,
    ``hungup``, ``hangup_cause``, ``sip_term_status`` / ``sip_invite_failure_status``
    (``variable_sip_term_status`` / ``variable_sip_invite_failure_status`` of the latest
    hangup event that had them); receive times ``create_time``, ``originate_time``,
    ``progress_time``, ``answer_time``, ``hangup_time``, ``destroy_time`` and the
    matching ``*_fs_time`` stamps (``None`` until seen).

    ``event`` is the event being dispatched to the apps (None otherwise: the tracker
    keeps no event after its dispatch). ``last_event`` / ``var_event`` (the latest event
    and the latest one with channel variables) are None unless the client was made with
    ``keep_events=True``. See :meth:`get` for what header reads return.
    """

    __slots__ = (
        "uuid",
        "direction",
        "app_id",
        "call",
        "client",
        "event",
        "last_event",
        "var_event",
        "known",
        "answered",
        "hungup",
        "hangup_cause",
        "sip_term_status",
        "sip_invite_failure_status",
        "create_time",
        "create_fs_time",
        "originate_time",
        "originate_fs_time",
        "progress_time",
        "progress_fs_time",
        "answer_time",
        "answer_fs_time",
        "hangup_time",
        "hangup_fs_time",
        "destroy_time",
        "destroy_fs_time",
        "__weakref__",
    )

    def __init__(
        self,
        uuid: str,
        direction: str | None,
        app_id: str | None,
        call: Call | None,
        client: Client | None,
        event: Event | None = None,
        known: dict[str, str] | None = None,
    ) -> None:
        self.uuid = uuid
        self.direction = direction
        self.app_id = app_id
        self.call = call
        self.client = client
        self.event: Event | None = None
        # an event given here is kept (the tracker passes one only with keep_events)
        self.last_event = event
        self.var_event = event
        self.known = KNOWN_HEADERS if known is None else known
        self.answered = False
        self.hungup = False
        self.hangup_cause: str | None = None
        self.sip_term_status: str | None = None
        self.sip_invite_failure_status: str | None = None
        self.create_time: float | None = None
        self.create_fs_time: float | None = None
        self.originate_time: float | None = None
        self.originate_fs_time: float | None = None
        self.progress_time: float | None = None
        self.progress_fs_time: float | None = None
        self.answer_time: float | None = None
        self.answer_fs_time: float | None = None
        self.hangup_time: float | None = None
        self.hangup_fs_time: float | None = None
        self.destroy_time: float | None = None
        self.destroy_fs_time: float | None = None

    def __repr__(self) -> str:
        return (
            f"<Session {self.uuid} {self.direction} app={self.app_id!r} cause={self.hangup_cause}>"
        )

    # -- event data --------------------------------------------------------------------
    def update(self, event: Event) -> None:
        """Keep ``event`` as the latest one (``keep_events`` mode; the call tracker does
        this itself)."""
        self.last_event = event
        if event.name not in _NO_VARS:
            self.var_event = event

    def get(self, header: str, default: Any = None) -> Any:
        """A header of the session's events, as far as they are still known.

        In order: the event being dispatched (``event``, while an app callback runs for
        it), the kept ``last_event`` / ``var_event`` (``keep_events=True`` only), then the
        values the tracker extracted (:data:`KNOWN_HEADERS`: ``Unique-ID``,
        ``Call-Direction``, ``Hangup-Cause``, the SIP statuses of the hangup, the call's
        originating-session uuid and the app id variables). Anything else is ``default``
        once its event was dispatched: ``await sess.getvar(name)`` asks FreeSWITCH.
        """
        ev = self.event
        if ev is not None:
            v = ev.get(header)
            if v is not None:
                return v
        ev = self.last_event
        if ev is not None:
            v = ev.get(header)
            if v is not None:
                return v
            ev = self.var_event
            if ev is not None:
                v = ev.get(header)
                if v is not None:
                    return v
        attr = self.known.get(header)
        if attr is None:
            return default
        if attr == "call_uuid":
            v = self.call.uuid if self.call is not None else None
        else:
            v = getattr(self, attr)
        return default if v is None else v

    def var(self, name: str, default: Any = None) -> Any:
        """A channel variable (``variable_<name>``): see :meth:`get` for which are known
        after their event's dispatch."""
        return self.get("variable_" + name, default)

    def is_inbound(self) -> bool:
        """True for a leg that arrived at a slave (the B-leg of a loop-back call)."""
        return self.direction == "inbound"

    def is_outbound(self) -> bool:
        """True for a leg a slave originated (the A-leg)."""
        return self.direction == "outbound"

    # -- call control --------------------------------------------------------------------
    def _client(self) -> Client:
        if self.client is None:
            raise RuntimeError(f"session {self.uuid} is not bound to a client")
        return self.client

    def _api(self, cmd: str) -> asyncio.Future:
        fut = self._client().api(cmd)
        fut.add_done_callback(_log_failure)
        return fut

    def _sendmsg(self, app: str, arg: str | None = None) -> asyncio.Future:
        fut = self._client().sendmsg(self.uuid, "execute", app, arg)
        fut.add_done_callback(_log_failure)
        return fut

    def answer(self) -> asyncio.Future:
        """Answer the channel (``uuid_answer``)."""
        return self._api(f"uuid_answer {self.uuid}")

    def hangup(self, cause: str | None = None) -> asyncio.Future:
        """Hang the channel up (``uuid_kill <uuid> [cause]``; FreeSWITCH's default cause
        is NORMAL_CLEARING)."""
        if cause:
            return self._api(f"uuid_kill {self.uuid} {cause}")
        return self._api(f"uuid_kill {self.uuid}")

    def park(self) -> asyncio.Future:
        """Park the channel (``uuid_park``)."""
        return self._api(f"uuid_park {self.uuid}")

    def playback(self, path: str) -> asyncio.Future:
        """Play a file or tone stream on the channel (sendmsg execute ``playback``)."""
        return self._sendmsg("playback", path)

    def broadcast(self, path: str, leg: str = "aleg") -> asyncio.Future:
        """Play ``path`` to the channel (``uuid_broadcast <uuid> <path> <leg>``)."""
        return self._api(f"uuid_broadcast {self.uuid} {path} {leg}")

    def bridge(self, other: Session | str) -> asyncio.Future:
        """Bridge to another channel (a Session or a uuid: ``uuid_bridge``) or dial a
        dial string (sendmsg execute ``bridge <dial string>``, anything with a ``/``)."""
        if isinstance(other, Session):
            return self._api(f"uuid_bridge {self.uuid} {other.uuid}")
        if "/" in other:
            return self._sendmsg("bridge", other)
        return self._api(f"uuid_bridge {self.uuid} {other}")

    def sched_hangup(self, secs: float, cause: str | None = None) -> asyncio.Future:
        """Hang up ``secs`` seconds from now (``sched_hangup +N``; 1 s resolution in FS;
        without a cause FS uses ALLOTTED_TIMEOUT)."""
        cmd = f"sched_hangup +{int(round(secs))} {self.uuid}"
        if cause:
            cmd = f"{cmd} {cause}"
        return self._api(cmd)

    def respond(self, code: int | str) -> asyncio.Future:
        """Answer an unanswered inbound leg with a SIP response (sendmsg ``respond <code>``)."""
        return self._sendmsg("respond", str(code))

    def ring_ready(self) -> asyncio.Future:
        """Send 180 Ringing (sendmsg execute ``ring_ready``)."""
        return self._sendmsg("ring_ready")

    def pre_answer(self) -> asyncio.Future:
        """Send 183 with early media (sendmsg execute ``pre_answer``)."""
        return self._sendmsg("pre_answer")

    def setvar(self, name: str, value: Any) -> asyncio.Future:
        """Set a channel variable (``uuid_setvar``)."""
        return self._api(f"uuid_setvar {self.uuid} {name} {value}")

    def setvars(self, variables: dict[str, Any]) -> asyncio.Future:
        """Set several channel variables in one command (``uuid_setvar_multi``); names
        and values may not contain ``;``, ``=`` or spaces."""
        return self._api(
            f"uuid_setvar_multi {self.uuid} " + ";".join(f"{k}={v}" for k, v in variables.items())
        )

    async def getvar(self, name: str) -> str | None:
        """Read a channel variable from FreeSWITCH (``uuid_getvar``); None when unset."""
        value = (await self._client().api(f"uuid_getvar {self.uuid} {name}")).rstrip("\n")
        return None if value == "_undef_" else value

    def execute(self, app: str, arg: str | None = None) -> asyncio.Future:
        """Run a dialplan application on the channel (sendmsg ``execute``)."""
        return self._sendmsg(app, arg)


class Call:
    """The legs of one call, keyed by the originating session's uuid.

    ``sessions`` lists the legs in the order they appeared (the caller first when it
    arrived first); ``caller`` is the outbound leg we originated, ``callee`` the inbound
    one. ``job`` is the originate's Job (None for a remote call), ``app_id`` the app the
    call belongs to, ``remote`` is True for a B-leg originated by another worker,
    ``index`` is the call index (caller-id correlation), ``failed`` is True when the
    originate failed, ``lost`` names why the call could no longer be followed (None when
    it was followed to the end). ``vars`` is a free dict for apps.
    """

    __slots__ = (
        "uuid",
        "sessions",
        "job",
        "app_id",
        "remote",
        "index",
        "failed",
        "lost",
        "answered",
        "live",
        "done",
        "_vars",
        "__weakref__",
    )

    def __init__(
        self,
        uuid: str,
        app_id: str | None = None,
        job: Job | None = None,
        remote: bool = False,
        index: str | None = None,
    ) -> None:
        self.uuid = uuid
        self.sessions: list[Session] = []
        self.job = job
        self.app_id = app_id
        self.remote = remote
        self.index = index
        self.failed = False
        self.lost: str | None = None
        self.answered = False
        self.live = 0  # legs created and not yet ended
        self.done = False
        self._vars: dict[str, Any] | None = None

    def __repr__(self) -> str:
        flags = " remote" if self.remote else ""
        return f"<Call {self.uuid} app={self.app_id!r} legs={len(self.sessions)}{flags}>"

    @property
    def vars(self) -> dict[str, Any]:
        """A free dict for apps (created on first use)."""
        if self._vars is None:
            self._vars = {}
        return self._vars

    @property
    def first(self) -> Session | None:
        """The first leg seen."""
        return self.sessions[0] if self.sessions else None

    @property
    def last(self) -> Session | None:
        """The latest leg seen."""
        return self.sessions[-1] if self.sessions else None

    @property
    def caller(self) -> Session | None:
        """The outbound (originated) leg, if seen on this slave."""
        for s in self.sessions:
            if s.direction == "outbound":
                return s
        return None

    @property
    def callee(self) -> Session | None:
        """The inbound leg, if seen on this slave."""
        for s in self.sessions:
            if s.direction == "inbound":
                return s
        return None

    def get_peer(self, sess: Session) -> Session | None:
        """The other leg of a two-leg call."""
        for s in self.sessions:
            if s is not sess:
                return s
        return None

    def hangup(self, cause: str | None = None) -> asyncio.Future | None:
        """Hang up the first leg (the far leg follows by BYE/CANCEL)."""
        first = self.first
        return first.hangup(cause) if first is not None else None


def error_cause(text: str) -> str | None:
    """The cause of a FreeSWITCH error reply: ``'-ERR USER_BUSY'`` -> ``'USER_BUSY'``,
    ``'-USAGE: <call url> ...'`` -> ``'USAGE'`` (a command FreeSWITCH could not parse)."""
    text = text.strip()
    if text.startswith("-ERR"):
        return text[4:].strip() or None
    if text.startswith("-"):
        word = text[1:].split(None, 1)[0] if text[1:].strip() else ""
        return word.rstrip(":") or None
    return None


class Job:
    """One ``bgapi`` command whose result comes later in a BACKGROUND_JOB event.

    ``uuid`` is the Job-UUID we chose, ``sess_uuid`` the originate's session uuid (for
    an originate), ``launch_time`` when it was sent, ``result`` the body FreeSWITCH
    returned (``'+OK <uuid>\\n'`` / ``'-ERR <CAUSE>\\n'``; None while pending),
    ``failed`` whether it starts with ``-ERR``, ``cause`` the text after ``-ERR``,
    ``call`` the Call it originates. ``future`` resolves to ``result`` (or fails with
    :class:`~fastswitch.errors.CommandError` for ``-ERR``); it is created on first use.
    """

    __slots__ = (
        "uuid",
        "sess_uuid",
        "launch_time",
        "done_time",
        "result",
        "failed",
        "call",
        "_fut",
        "_loop",
        "_exc",
        "__weakref__",
    )

    def __init__(
        self,
        uuid: str,
        sess_uuid: str | None = None,
        launch_time: float = 0.0,
        loop: asyncio.AbstractEventLoop | None = None,
        call: Call | None = None,
    ) -> None:
        self.uuid = uuid
        self.sess_uuid = sess_uuid
        self.launch_time = launch_time
        self.done_time: float | None = None
        self.result: str | None = None
        self.failed = False
        self.call = call
        self._fut: asyncio.Future | None = None
        self._loop = loop
        self._exc: BaseException | None = None

    def __repr__(self) -> str:
        state = "pending" if not self.done() else ("failed" if self.failed else "ok")
        return f"<Job {self.uuid} {state} sess={self.sess_uuid}>"

    def done(self) -> bool:
        """True once the result (or a failure) is known."""
        return self.result is not None or self._exc is not None

    @property
    def cause(self) -> str | None:
        """The hangup cause of a failed originate (``-ERR USER_BUSY`` -> ``USER_BUSY``)."""
        r = self.result
        if r is None or not self.failed:
            return None
        return error_cause(r)

    @property
    def future(self) -> asyncio.Future:
        """A future resolving to the result body (CommandError for ``-ERR``)."""
        fut = self._fut
        if fut is None:
            loop = self._loop or asyncio.get_running_loop()
            fut = self._fut = loop.create_future()
            if self.done():
                self._settle(fut)
        return fut

    def _settle(self, fut: asyncio.Future) -> None:
        if fut.done():
            return
        if self._exc is not None:
            fut.set_exception(self._exc)
        elif self.failed:
            from fastswitch.errors import CommandError

            fut.set_exception(CommandError((self.result or "").strip(), f"bgapi job {self.uuid}"))
        else:
            fut.set_result(self.result)

    def set_result(self, body: str, when: float) -> None:
        """Record the BACKGROUND_JOB body (called by the call tracker)."""
        self.result = body
        # '-ERR <CAUSE>', and FreeSWITCH's other refusals ('-USAGE: ...' for a command it
        # cannot parse): every FreeSWITCH error reply starts with '-'
        self.failed = body.startswith("-")
        self.done_time = when
        if self._fut is not None:
            self._settle(self._fut)

    def set_exception(self, exc: BaseException, when: float | None = None) -> None:
        """Fail the job without a result (rejected bgapi, connection lost)."""
        self._exc = exc
        self.failed = True
        self.done_time = when
        if self._fut is not None:
            self._settle(self._fut)

    def __await__(self):
        return self.future.__await__()
