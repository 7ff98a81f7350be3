"""The worker process: one per slave, started by the Originator with the 'spawn' context.

A worker runs its own uvloop event loop with one ESL :class:`~fastswitch.client.Client`
(call tracking and apps), and does per call, without talking to the parent:

- **rate control**: calls are offered evenly in time at this worker's rate share, with
  SIPp's catch-up rule ``due = floor(elapsed * rate) - offered`` (re-anchored whenever
  the rate or the run generation changes). The originate timer is scheduled to the next
  due time (5 ms floor: above 200 cps the calls due go out together every 5 ms, which
  halves the cost of an originate; 50 ms ceiling so setting changes are seen quickly), so
  there is no burst at second boundaries. A backlog of more than one second (the loop was
  starved) is dropped rather than sent in a burst; a call held back by the limit or the
  max_sessions cap is not owed later (the clock re-anchors).
- **limit**: ``active`` (calls originated and not complete: pending jobs + live calls)
  never exceeds this worker's limit share; ``originated`` never exceeds its max_sessions
  cap (both shares written by the parent into the control block).
- **hold time**: when an originated A-leg answers, it joins the 5 ms slot in which its
  hold time (``duration`` in the control block at answer time) ends; one loop timer per
  slot hangs the slot's A-legs up with ``api uuid_kill <uuid>`` (NORMAL_CLEARING), at
  most 5 ms late. O(1) per call.
- **records**: the CDR app (fastswitch.apps.cdr) writes one row per call through a
  :class:`~fastswitch.measure.CDRWriter`; a :class:`~fastswitch.measure.CounterWriter`
  gets one row per second.
- **live counters** (active calls, sessions, originated, answered, failed by cause,
  pending jobs, heartbeat) are written into the control block every 50 ms.

Configuration that changes rarely arrives on the pipe as request/reply pairs (see
:mod:`fastswitch.pool`): ``set_orig_cmd``, ``load_app`` (cloudpickled class),
``unload_app``, ``hupall``, ``api``, ``flush``, ``stats``, ``shutdown``. The first message
the worker sends is its connect report.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import signal
import time
import traceback
from typing import Any

from fastswitch import control as C
from fastswitch.commands import client_var
from fastswitch.control import ORIGINATING, ControlBlock, cause_index
from fastswitch.models import error_cause

__all__ = ["main", "Worker"]

_HEARTBEAT_PERIOD = 0.05
_IDLE_TICK = 0.02
_MAX_TICK = 0.05
_MIN_TICK = 0.005  # above 200 cps calls go out in 5 ms batches (one loop pass, fewer wake-ups)
_HOLD_SLOT = 0.005  # hold timers are grouped into 5 ms slots: one TimerHandle per slot
#: Originate results that say the command itself is wrong (not the callee, not a limit).
_BAD_COMMAND_CAUSES = frozenset(
    {"CHAN_NOT_IMPLEMENTED", "INVALID_PROFILE", "INVALID_GATEWAY", "INVALID_URL", "USAGE"}
)
#: Consecutive such failures (and no call that got further) before the worker stops.
_BAD_COMMAND_RUN = 5


def _ignore(fut: asyncio.Future) -> None:
    if not fut.cancelled():
        fut.exception()


def _err(exc: BaseException, seq: int = 0) -> tuple[int, str, str, str]:
    return (seq, "error", type(exc).__name__, str(exc) or type(exc).__name__)


class Worker:
    """The engine of one worker process (see the module docstring)."""

    def __init__(
        self,
        index: int,
        host: str,
        port: int,
        password: str,
        shm_name: str,
        conn: Any,
        run_dir: str,
        opts: dict[str, Any],
    ) -> None:
        from fastswitch.client import Client
        from fastswitch.log import get_logger

        self.index = index
        self.host = host
        self.port = port
        self.conn = conn
        self.run_dir = run_dir
        self.opts = opts
        self.incarnation = int(opts.get("incarnation", 1))
        self.cb = ControlBlock.attach(shm_name)
        self.d = self.cb.d
        self.b = self.cb.base(index)
        self.log = get_logger("fastswitch.Worker", host)
        self.client = Client(
            host,
            port,
            password,
            event_format=opts.get("event_format", "plain"),
            connect_timeout=float(opts.get("connect_timeout", 5.0)),
            reconnect=opts.get("reconnect", True),
            **opts.get("client_options", {}),
        )
        self.listener = self.client.listener
        self.listener.log = get_logger("fastswitch.EventListener", host)  # the seed's name
        self.loop: asyncio.AbstractEventLoop | None = None
        self.done: asyncio.Future | None = None
        # counters (this incarnation)
        self.active = 0
        self.originated = 0
        self.answered = 0
        self.failed = 0
        self.completed = 0
        self.has_cmd = False
        self.max_gap = 0.0
        self.cdr_writer: Any = None
        self.counter_writer: Any = None
        # rate clock
        self._gen = -1.0
        self._rate = -1.0
        self._t0 = 0.0
        self._sent0 = 0
        self._lag = 0
        self._last_sent = 0.0
        self._tick_handle: asyncio.TimerHandle | None = None
        self._hb_handle: asyncio.TimerHandle | None = None
        self._sec_handle: asyncio.TimerHandle | None = None
        self._warned_no_cmd = False
        self._warned_lag = 0.0
        self._dispatch = self.listener.dispatch
        self._holds: dict[int, list[str]] = {}  # hold-timer slot -> A-leg uuids to hang up
        #: (duration, rate share, limit share) last passed to the apps' hooks
        self._app_settings: tuple[float, float, float] | None = None
        # faults and shedding
        self.lost = 0  # calls completed as lost (the connection dropped)
        self.disconnects = 0
        self.killed = 0  # disconnects FreeSWITCH made because we lost events
        self.shedding = False
        self.sheds = 0
        self.shed_after = float(opts.get("shed_after", 1.0))  # s of event silence after an offer
        self.shed_lag = float(opts.get("shed_lag", 2.0))  # s the event stream may lag behind
        self._shed_at = 0.0
        self._last_offer_rx = 0.0  # time.time() of the latest originate
        self._first_offer_rx = 0.0  # time.time() of the first originate since the last event
        self._delay_min = math.inf  # smallest event delay seen (clock offset + wire)
        self._connected_at = 0.0
        self._calm_since = 0.0
        self._bad_run = 0  # consecutive originates rejected as a bad command
        self._terminating = False
        self.bad_cmd: str | None = None  # why the command was rejected, once it was

    # -- set-up ------------------------------------------------------------------------------
    async def run(self) -> None:
        loop = self.loop = asyncio.get_running_loop()
        self.done = loop.create_future()
        d, b = self.d, self.b
        d[b + C.W_PID] = os.getpid()
        d[b + C.W_HEARTBEAT] = time.monotonic()
        try:
            await self.client.connect()
        except BaseException as exc:  # ConnectError, AuthenticationError, ...
            self.conn.send(_err(exc))
            return
        try:
            self._setup()
        except BaseException as exc:
            self.log.exception("worker set-up failed")
            self.conn.send(_err(exc))
            await self.client.close()
            return
        d[b + C.W_CONNECTED] = 1.0
        self._connected_at = time.time()
        # the first counters row warms pyarrow up (its first conversion takes a while):
        # done before reporting ready, so the loop is responsive once the parent goes on
        self._per_second()
        self._heartbeat()
        self.conn.send((0, "ok", {"pid": os.getpid(), "host": self.host, "port": self.port}))
        loop.add_reader(self.conn.fileno(), self._on_pipe)
        try:
            loop.add_signal_handler(signal.SIGTERM, self._on_sigterm)
        except (NotImplementedError, RuntimeError, ValueError):
            pass
        self._tick()
        try:
            await self.done
        finally:
            await self._close()

    def _setup(self) -> None:
        from fastswitch.measure import CounterWriter, cdr_path, counters_path

        listener = self.listener
        listener.call_complete_hooks.append(self._on_complete)
        listener.job_failed_hooks.append(self._on_job_failed)
        listener.dispatch = self._on_dispatch
        self.client.connect_hooks.append(self._on_connect)
        self.client.disconnect_hooks.append(self._on_disconnect)
        suffix = "" if self.incarnation == 1 else f"r{self.incarnation}"
        cpath = cdr_path(self.run_dir, self.index)
        kpath = counters_path(self.run_dir, self.index)
        if suffix:
            cpath = cpath.with_name(f"cdr-{self.index}{suffix}.arrows")
            kpath = kpath.with_name(f"counters-{self.index}{suffix}.arrows")
        self._load_cdr(cpath)
        self.counter_writer = CounterWriter(kpath, worker=self.index)

    def _load_cdr(self, path: Any) -> None:
        """The CDR recorder (always on): this worker builds each call's row with the CDR
        app's ``row()`` in its own completion hook, so the failure verdict it counts by
        cause is the one the CDR records."""
        from fastswitch.apps.cdr import CDR
        from fastswitch.measure import CDR_COLUMNS, CDRWriter

        self.cdr_writer = CDRWriter(path)
        self.cdr = CDR(self.cdr_writer, f"{self.host}:{self.port}", self.index)
        self.cdr.listener = self.listener  # sampled counters; completion comes from us
        self._failed_col = CDR_COLUMNS.index("failed")
        self._cause_col = CDR_COLUMNS.index("hangup_cause")

    def _on_connect(self, client: Any) -> None:
        if client.connections > 1:
            # after a reconnection the calls this worker left on the slave have no hold
            # timer and no tracking any more: end them (A-legs carrying our app ids; their
            # B-legs follow). Written before any new originate, so only orphans match.
            self.log.warning(
                "reconnected to %s:%d; clearing the calls left over", self.host, self.port
            )
            cvar = client_var(client.var_prefix)
            for app_id in client.apps.apps:
                fut = client.api(f"hupall NORMAL_CLEARING {cvar} {app_id}", errcheck=False)
                fut.add_done_callback(_ignore)
        self._connected_at = time.time()
        self.d[self.b + C.W_CONNECTED] = 1.0

    def _on_disconnect(self, client: Any, cause: BaseException, lost: tuple) -> None:
        d, b = self.d, self.b
        if d is None:
            return
        d[b + C.W_CONNECTED] = 0.0
        self.disconnects += 1
        d[b + C.W_DISCONNECTS] = self.disconnects
        text = str(cause)
        if "lost events" in text:
            # FreeSWITCH's event queue for us overflowed (a slow consumer, research §6.1)
            self.killed += 1
            d[b + C.W_KILLED] = self.killed
            self.log.error(
                "%s:%d killed our listener because of lost events (we read too slowly); "
                "%d calls lost, reconnecting",
                self.host,
                self.port,
                lost[0],
            )
        else:
            self.log.error(
                "lost the connection to %s:%d (%s); %d calls lost, reconnecting",
                self.host,
                self.port,
                text,
                lost[0],
            )
        self._set_shedding(False, "")
        self._delay_min = math.inf  # a new connection may run on another path

    def _on_sigterm(self) -> None:
        """SIGTERM (e.g. sent to the whole process group): stop offering, hang up this
        worker's calls, then close the client and the CDR files like a shutdown request."""
        if self.done is None or self.done.done() or self._terminating:
            return
        self._terminating = True  # _tick offers nothing more
        self.log.warning("SIGTERM: hanging up our calls and stopping")

        async def stop() -> None:
            ids = [a for a in self.client.apps.apps if a != "__cdr__"]
            try:
                async with asyncio.timeout(2.0):
                    await asyncio.gather(*(self.client.hupall(app_id=a) for a in ids))
            except Exception as exc:  # not connected, timed out: the calls end as lost
                self.log.warning("hupall at SIGTERM failed: %s", exc)
            if not self.done.done():
                self.done.set_result(None)

        self.loop.create_task(stop())

    # -- pipe ------------------------------------------------------------------------------
    def _on_pipe(self) -> None:
        try:
            seq, msg = self.conn.recv()
        except (EOFError, OSError):
            # the parent went away: stop
            self.loop.remove_reader(self.conn.fileno())
            if not self.done.done():
                self.done.set_result(None)
            return
        self.loop.create_task(self._handle(seq, msg))

    async def _handle(self, seq: int, msg: tuple) -> None:
        kind = msg[0]
        try:
            result = await self._do(kind, msg)
        except BaseException as exc:
            if kind not in ("api",):
                self.log.error("%s failed: %s", kind, exc)
            reply: tuple = _err(exc, seq)
        else:
            reply = (seq, "ok", result)
        try:
            self.conn.send(reply)
        except (OSError, EOFError):
            pass
        if kind == "shutdown" and not self.done.done():
            self.done.set_result(None)

    async def _do(self, kind: str, msg: tuple) -> Any:
        client = self.client
        if kind == "set_orig_cmd":
            _, args, kwargs = msg
            cmd = client.set_orig_cmd(*args, **kwargs)
            self.has_cmd = True
            self._bad_run = 0
            self.bad_cmd = None
            self.d[self.b + C.W_BADCMD] = 0.0
            self.d[self.b + C.W_HAS_CMD] = 1.0
            return cmd
        if kind == "load_app":
            import cloudpickle

            _, blob, app_id, ppkwargs, weight = msg
            app = cloudpickle.loads(blob)
            loaded = client.load_app(app, app_id=app_id, ppkwargs=ppkwargs, weight=weight)
            self._app_settings = None
            self._apply_app_settings()
            return loaded
        if kind == "unload_app":
            client.unload_app(msg[1])
            return None
        if kind == "hupall":
            ids = [a for a in client.apps.apps if a != "__cdr__"]
            futs = [client.hupall(msg[1], app_id=a) for a in ids]
            await asyncio.gather(*futs)
            return None
        if kind == "api":
            return await client.api(msg[1])
        if kind == "flush":
            if self.cdr_writer is not None:
                self.cdr_writer.flush()
            if self.counter_writer is not None:
                self.counter_writer.flush()
            return None
        if kind == "stats":
            return {
                "apps": {a.app_id: a.weight for a in client.apps.apps.values()},
                "active": self.active,
                "originated": self.originated,
                "answered": self.answered,
                "failed": self.failed,
                "completed": self.completed,
                "sessions": self.listener.active_sessions,
                "tracked_calls": self.listener.active_calls,
                "failed_jobs": dict(self.listener.failed_jobs),
                "max_heartbeat_gap": self.max_gap,
            }
        if kind == "shutdown":
            return None
        raise ValueError(f"unknown worker request {kind!r}")

    # -- originate loop (hot path) ------------------------------------------------------------
    def _tick(self) -> None:
        loop = self.loop
        d, b = self.d, self.b
        now = loop.time()
        delay = _IDLE_TICK
        if d[C.H_STATE] == ORIGINATING and d[b + C.W_ENABLED]:
            rate = d[b + C.W_RATE]
            gen = d[C.H_GENERATION]
            if gen != self._gen:  # (re)start: the first call goes at once
                self._gen = gen
                self._rate = rate
                self._anchor(now)
                self._record_counters()
            elif rate != self._rate:  # new rate: keep the phase, next call 1/rate after the last
                self._rate = rate
                self._anchor(max(now, self._last_sent + 1.0 / rate) if rate > 0 else now)
                self._record_counters()
            client = self.client
            # a full socket buffer (the slave stopped reading) holds offers back; the
            # rate clock keeps running and catches up (at most a second) once it drains
            if (
                rate > 0
                and self.has_cmd
                and client.connected
                and client.writable
                and not self.shedding
                and self.bad_cmd is None
                and not self._terminating
            ):
                delay = self._offer(now, rate)
            elif not self.has_cmd and not self._warned_no_cmd:
                self._warned_no_cmd = True
                self.log.error("ConfigurationError: you must first set an originate command")
        else:
            self._gen = -1.0  # re-anchor when offering resumes
        self._tick_handle = loop.call_at(now + delay, self._tick)

    def _anchor(self, t0: float) -> None:
        # one call is due at t0, then one every 1/rate
        self._t0 = t0
        self._sent0 = self.originated

    def _offer(self, now: float, rate: float) -> float:
        d, b = self.d, self.b
        x = (now - self._t0) * rate
        due = (int(x) if x >= 0 else -1) + 1 - (self.originated - self._sent0)
        if due <= 0:
            self._lag = 0
        else:
            if due > rate + 1:
                # more than a second behind (the loop was starved): drop, don't burst
                if now - self._warned_lag > 10:
                    self._warned_lag = now
                    self.log.warning(
                        "originate loop %.1fs behind at %g cps; skipping the backlog",
                        due / rate,
                        rate,
                    )
                self._anchor(now)
                due = 1
            self._lag = due - 1
            room = min(d[b + C.W_LIMIT] - self.active, d[b + C.W_MAX] - self.originated)
            n = due if due <= room else int(max(room, 0))
            originate = self.client.originate
            sent = 0
            try:
                while sent < n:
                    originate()
                    sent += 1
            except Exception as exc:  # ConnectionLost, ConfigurationError
                self.log.warning("originate failed: %s", exc)
            self.originated += sent
            self.active += sent
            if sent:
                self._last_sent = now
                wall = time.time()
                if self._last_offer_rx <= self.client.last_event_rx:
                    self._first_offer_rx = wall  # the first offer since the latest event
                self._last_offer_rx = wall
                # at once, not at the next heartbeat: a crash right after must not hide
                # offers from the parent's count of calls without a CDR row, and a parent
                # that sees them offered (max_sessions reached) must see them active too
                d[b + C.W_ACTIVE] = self.active
                d[b + C.W_ORIGINATED] = self.originated
            if sent < due:
                # held back by limit / max_sessions (or an error): nothing is owed later;
                # poll for room at the call interval
                self._lag = 0
                self._anchor(now)
                delay = 1.0 / rate
                return (
                    _MIN_TICK * 2
                    if delay < _MIN_TICK * 2
                    else (_MAX_TICK if delay > _MAX_TICK else delay)
                )
        delay = self._t0 + (self.originated - self._sent0) / rate - now
        return _MIN_TICK if delay < _MIN_TICK else (_MAX_TICK if delay > _MAX_TICK else delay)

    # -- call events -------------------------------------------------------------------------
    def _on_dispatch(self, name: str, app_id: str | None, obj: Any) -> None:
        if name == "CHANNEL_ANSWER":
            if obj.direction == "outbound" and not obj.call.remote:
                self.answered += 1
                self._hold(obj.uuid)
        elif name == "BACKGROUND_JOB" and not obj.failed:
            # the originate succeeded without an answer (the callee sent early media, 183):
            # the call is established all the same, so its hold time starts now; without
            # this, a call ringing forever on early media would hold a limit slot forever
            call = obj.call
            if call is not None and not call.remote:
                caller = call.caller
                if caller is not None and not caller.answered and not caller.hungup:
                    self._hold(caller.uuid)
        self._dispatch(name, app_id, obj)

    def _hold(self, uuid: str) -> None:
        """Hang up A-leg ``uuid`` once the call's duration has passed (O(1): the call joins
        the 5 ms slot its hangup falls in)."""
        dur = self.d[C.H_DURATION]
        if 0 < dur < math.inf:
            key = math.ceil((self.loop.time() + dur) / _HOLD_SLOT)
            slot = self._holds.get(key)
            if slot is None:
                slot = self._holds[key] = []
                self.loop.call_at(key * _HOLD_SLOT, self._hold_expired, key)
            slot.append(uuid)  # not the Session: an ended call is freed at once

    def _hold_expired(self, key: int) -> None:
        """Hang up the A-legs whose hold time ended in this slot (at most 5 ms late)."""
        api = self.client.api
        sessions = self.listener.sessions
        for uuid in self._holds.pop(key, ()):
            sess = sessions.get(uuid)
            if sess is None or sess.hungup:
                continue  # the call already ended
            try:
                api(f"uuid_kill {uuid}", errcheck=False).add_done_callback(_ignore)
            except Exception:
                return  # not connected: these calls are lost anyway

    def _on_job_failed(self, job: Any) -> None:
        """Stop offering on this slave when FreeSWITCH rejects the originate command itself
        (``-ERR CHAN_NOT_IMPLEMENTED`` for an unknown endpoint, ``-USAGE`` for a syntax
        error) for ``_BAD_COMMAND_RUN`` calls in a row: every further call would fail the
        same way. The parent reports it; ``set_orig_cmd`` starts over."""
        if job.call is None or job.call.remote:
            return
        text = (job.result or "").strip()
        if not text:
            exc = job._exc
            text = getattr(exc, "reply", None) or str(exc or "")
        cause = error_cause(text)
        if cause not in _BAD_COMMAND_CAUSES:
            self._bad_run = 0
            return
        self._bad_run += 1
        if self._bad_run >= _BAD_COMMAND_RUN and self.bad_cmd is None:
            self.bad_cmd = cause
            self.d[self.b + C.W_BADCMD] = 1.0
            self.log.error(
                "ConfigurationError: %s:%d rejects the originate command (%d calls in a row "
                "failed with %s); not offering calls there until it is set again. Command: %s",
                self.host,
                self.port,
                self._bad_run,
                text.splitlines()[0][:200] if text else cause,
                self.client.originate_cmd,
            )

    def _on_complete(self, call: Any) -> None:
        if not call.remote:
            self.active -= 1
            self.completed += 1
        row = self.cdr.row(call)
        self.cdr_writer.append(row)
        if call.remote:
            return
        if call.lost:
            self.lost += 1
        elif not row[self._failed_col]:
            self._bad_run = 0  # a call went through: the command is fine
        if row[self._failed_col]:
            self.failed += 1
            cause = row[self._cause_col] or ("LOST" if call.lost else None)
            self.d[self.b + C.W_CAUSES + cause_index(cause)] += 1

    # -- periodic ------------------------------------------------------------------------------
    def _heartbeat(self) -> None:
        d, b = self.d, self.b
        if d is None:
            return
        now = time.monotonic()
        gap = now - d[b + C.W_HEARTBEAT]
        if gap > self.max_gap:
            self.max_gap = gap  # the longest the loop went without a heartbeat
        d[b + C.W_HEARTBEAT] = now
        d[b + C.W_ACTIVE] = self.active
        d[b + C.W_SESSIONS] = self.listener.active_sessions
        d[b + C.W_ORIGINATED] = self.originated
        d[b + C.W_ANSWERED] = self.answered
        d[b + C.W_FAILED] = self.failed
        d[b + C.W_PENDING] = len(self.listener.jobs)
        d[b + C.W_COMPLETED] = self.completed
        d[b + C.W_BACKLOG] = self._lag
        d[b + C.W_REMOTE] = self.listener.active_calls - self.active
        d[b + C.W_STATE] = d[C.H_STATE]
        d[b + C.W_LOST] = self.lost
        if self.shed_after > 0 or self.shed_lag > 0:
            self._check_shedding()
        self._apply_app_settings()
        w = self.cdr_writer
        if w is not None:
            w.maybe_flush()
        self._hb_handle = self.loop.call_later(_HEARTBEAT_PERIOD, self._heartbeat)

    def _apply_app_settings(self) -> None:
        """Pass changed load settings to the apps' switchio hooks (within a heartbeat)."""
        d, b = self.d, self.b
        if d is None:
            return
        settings = (d[C.H_DURATION], d[b + C.W_RATE], d[b + C.W_LIMIT])
        if settings != self._app_settings:
            self._app_settings = settings
            duration, rate, limit = settings
            self.client.apps.apply_settings(rate, limit, duration)

    def _check_shedding(self) -> None:
        """Shed load (offer no new calls on this slave) while our event stream stalls or
        lags, so FreeSWITCH's per-listener queue (100,000 events) never overflows.

        - stalled: an originate went out more than ``shed_after`` s ago and no event has
          arrived since (counted from the first originate after the latest event) (FreeSWITCH emits CHANNEL_CREATE at once for every originate);
        - lagging: the latest event's delay (receive time - Event-Date-Timestamp) exceeds
          the smallest delay seen on this connection by more than ``shed_lag`` s.

        Offering resumes once events have flowed for a second with the delay under half
        ``shed_lag`` (or none was owed). A worker whose own loop is too slow also falls
        behind its originate clock, skips that backlog and is reported at capacity by the
        parent (which moves part of its share): offers follow what it can handle.
        """
        client = self.client
        if not client.connected:
            return
        now = time.time()
        rx = client.last_event_rx
        delay = client.event_delay
        if delay == delay:  # not NaN
            if delay < self._delay_min:
                self._delay_min = delay
            # a second without events: nothing is queued for us (a stall is caught below)
            lag = delay - self._delay_min if now - rx < 1.0 else 0.0
        else:
            lag = 0.0
        since = max(rx, self._connected_at)
        stalled = (
            self.shed_after > 0
            and self._first_offer_rx > since
            and now - self._first_offer_rx > self.shed_after
        )
        lagging = self.shed_lag > 0 and lag > self.shed_lag
        if not self.shedding:
            if stalled or lagging:
                why = (
                    f"no event for {now - since:.1f}s since an originate"
                    if stalled
                    else f"events arrive {lag:.1f}s late"
                )
                self._set_shedding(True, why)
        else:
            # hysteresis: events must have flowed on time (or not been owed at all) for a
            # whole second before offering resumes, so one quick read does not end it
            calm = rx > self._shed_at and not lagging and lag < max(self.shed_lag, 0.2) / 2
            if not calm:
                self._calm_since = 0.0
            elif not self._calm_since:
                self._calm_since = now
            elif now - self._calm_since >= 1.0:
                self._set_shedding(False, f"events flow again ({lag:.1f}s behind)")

    def _set_shedding(self, on: bool, why: str) -> None:
        if on == self.shedding:
            return
        self.shedding = on
        d, b = self.d, self.b
        self._calm_since = 0.0
        if on:
            self.sheds += 1
            self._shed_at = time.time()
            self.log.warning(
                "shedding load on %s:%d: %s; offering no new calls there until it catches up",
                self.host,
                self.port,
                why,
            )
        elif why:
            self.log.warning("%s:%d caught up: %s; offering again", self.host, self.port, why)
        if d is not None:
            d[b + C.W_SHED] = 1.0 if on else 0.0
            d[b + C.W_SHEDS] = self.sheds

    def _per_second(self) -> None:
        if self.d is None:
            return
        self._record_counters()
        self._sec_handle = self.loop.call_later(1.0, self._per_second)

    def _record_counters(self) -> None:
        """One counters row (every second, and at once when offering starts or the rate
        share changes, so the run's target line steps where the setting changed)."""
        d, b = self.d, self.b
        try:
            self.counter_writer.record(
                offered=self.originated,
                answered=self.answered,
                failed=self.failed,
                active_calls=self.active,
                active_sessions=self.listener.active_sessions,
                rate_target=d[b + C.W_RATE],
                limit_target=min(d[b + C.W_LIMIT], 2**53),
            )
        except Exception:
            self.log.exception("writing the counters failed")

    # -- tear-down ------------------------------------------------------------------------------
    async def _close(self) -> None:
        for h in (self._tick_handle, self._hb_handle, self._sec_handle):
            if h is not None:
                h.cancel()
        try:
            self.loop.remove_reader(self.conn.fileno())
        except Exception:
            pass
        try:
            await self.client.close()
        except Exception:
            self.log.exception("closing the client failed")
        for w in (self.cdr_writer, self.counter_writer):
            if w is not None:
                try:
                    w.close()
                except Exception:
                    self.log.exception("closing %r failed", w)
        self.release()

    def release(self) -> None:
        """Mark this worker disconnected and unmap the control block (idempotent)."""
        if self.d is not None:
            self.d[self.b + C.W_CONNECTED] = 0.0
            self.d = None
            self.cb.close()


def main(
    index: int,
    host: str,
    port: int,
    password: str,
    shm_name: str,
    conn: Any,
    log_queue: Any,
    run_dir: str,
    opts: dict[str, Any],
) -> None:
    """Entry point of a worker process (target of ``multiprocessing.Process``)."""
    from fastswitch.log import RateLimitedQueueHandler

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when we stop
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    handler = RateLimitedQueueHandler(log_queue, max_per_sec=int(opts.get("log_max_per_sec", 50)))
    root.addHandler(handler)
    root.setLevel(int(opts.get("log_level", logging.INFO)))
    try:
        import uvloop

        loop = uvloop.new_event_loop()
    except ImportError:  # pragma: no cover - uvloop is a dependency
        loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    worker = None
    try:
        worker = Worker(index, host, port, password, shm_name, conn, run_dir, opts)
        prof_dir = os.environ.get("FASTSWITCH_WORKER_PROFILE")
        if prof_dir:  # developer aid: cProfile the whole worker into <dir>/worker-<i>.prof
            import cProfile

            prof = cProfile.Profile()
            try:
                prof.runcall(loop.run_until_complete, worker.run())
            finally:
                prof.dump_stats(os.path.join(prof_dir, f"worker-{index}-{os.getpid()}.prof"))
        else:
            loop.run_until_complete(worker.run())
    except BaseException as exc:
        try:
            conn.send(_err(exc))
        except Exception:
            pass
        logging.getLogger("fastswitch.Worker").error(
            "worker for %s:%d crashed:\n%s", host, port, traceback.format_exc()
        )
    finally:
        if worker is not None:
            worker.release()
        handler.flush()
        try:
            loop.close()
        except Exception:
            pass
