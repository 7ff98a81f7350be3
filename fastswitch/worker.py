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
from fastswitch.control import ORIGINATING, ControlBlock, cause_index

__all__ = ["main", "Worker"]

_HEARTBEAT_PERIOD = 0.05
_IDLE_TICK = 0.02
_MAX_TICK = 0.05
_MIN_TICK = 0.005  # above 200 cps calls go out in 5 ms batches (one loop pass, fewer wake-ups)
_HOLD_SLOT = 0.005  # hold timers are grouped into 5 ms slots: one TimerHandle per slot


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
        # the first counters row warms pyarrow up (its first conversion takes a while):
        # done before reporting ready, so the loop is responsive once the parent goes on
        self._per_second()
        self._heartbeat()
        self.conn.send((0, "ok", {"pid": os.getpid(), "host": self.host, "port": self.port}))
        loop.add_reader(self.conn.fileno(), self._on_pipe)
        self._tick()
        try:
            await self.done
        finally:
            await self._close()

    def _setup(self) -> None:
        from fastswitch.measure import CounterWriter, cdr_path, counters_path

        listener = self.listener
        listener.call_complete_hooks.append(self._on_complete)
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
            for app_id in client.apps.apps:
                fut = client.api(
                    f"hupall NORMAL_CLEARING fastswitch_client {app_id}", errcheck=False
                )
                fut.add_done_callback(_ignore)
        self.d[self.b + C.W_CONNECTED] = 1.0

    def _on_disconnect(self, client: Any, cause: BaseException, lost: tuple) -> None:
        self.d[self.b + C.W_CONNECTED] = 0.0

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
            self.d[self.b + C.W_HAS_CMD] = 1.0
            return cmd
        if kind == "load_app":
            import cloudpickle

            _, blob, app_id, ppkwargs, weight = msg
            app = cloudpickle.loads(blob)
            return client.load_app(app, app_id=app_id, ppkwargs=ppkwargs, weight=weight)
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
            elif rate != self._rate:  # new rate: keep the phase, next call 1/rate after the last
                self._rate = rate
                self._anchor(max(now, self._last_sent + 1.0 / rate) if rate > 0 else now)
            client = self.client
            # a full socket buffer (the slave stopped reading) holds offers back; the
            # rate clock keeps running and catches up (at most a second) once it drains
            if rate > 0 and self.has_cmd and client.connected and client.writable:
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
                dur = self.d[C.H_DURATION]
                if 0 < dur < math.inf:
                    # O(1): the call joins the 5 ms slot its hangup falls in
                    key = math.ceil((self.loop.time() + dur) / _HOLD_SLOT)
                    slot = self._holds.get(key)
                    if slot is None:
                        slot = self._holds[key] = []
                        self.loop.call_at(key * _HOLD_SLOT, self._hold_expired, key)
                    slot.append(obj.uuid)  # not the Session: an ended call is freed at once
        self._dispatch(name, app_id, obj)

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

    def _on_complete(self, call: Any) -> None:
        if not call.remote:
            self.active -= 1
            self.completed += 1
        row = self.cdr.row(call)
        self.cdr_writer.append(row)
        if call.remote:
            return
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
        w = self.cdr_writer
        if w is not None:
            w.maybe_flush()
        self._hb_handle = self.loop.call_later(_HEARTBEAT_PERIOD, self._heartbeat)

    def _per_second(self) -> None:
        d, b = self.d, self.b
        if d is None:
            return
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
        self._sec_handle = self.loop.call_later(1.0, self._per_second)

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
