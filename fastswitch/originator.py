"""The Originator: fastswitch's call generator (the public API in the parent process).

``get_originator(contacts, **settings)`` starts one worker process per slave (see
:mod:`fastswitch.worker`), each with its own ESL connection, event loop, rate control,
hold timers and CDR writer, and returns an :class:`Originator` once every worker has
connected (or raises :class:`~fastswitch.errors.ConnectError` /
:class:`~fastswitch.errors.AuthenticationError` naming the slave).

Load settings (all settable while running, effective within a second):

- ``rate``: calls per second offered by the whole cluster, spread evenly in time.
- ``limit``: maximum concurrent calls (erlangs) across the cluster; a call counts from
  its originate until its last leg is destroyed.
- ``max_sessions``: total calls to offer (default ``inf``); the state goes STOPPED when
  they have all been offered.
- ``duration``: the hold time. It is counted **from the A-leg's answer** (the call is
  established) by the worker's own timer, which then hangs the A-leg up (``uuid_kill``,
  NORMAL_CLEARING). ``0`` (or ``inf``) disables the automatic hangup. While
  ``auto_duration`` is on (the default unless ``duration`` is given), ``duration`` follows
  ``limit / rate + 10`` (Little's law plus a 10 s pad); setting ``duration`` turns it off.

States: ``INITIAL`` -> ``ORIGINATING`` (``start()``) -> ``STOPPED`` (``stop()``,
``hupall()``, ``max_sessions`` reached) -> ``ORIGINATING`` (``start()`` again).

Coordination with the workers goes through one shared-memory block
(:mod:`fastswitch.control`) for settings, shares and live counters, and through one pipe
per worker for rare configuration (:mod:`fastswitch.pool`). A monitor thread (every
0.1 s) watches the workers (process sentinel: a dead worker is seen at the next tick;
heartbeat: a hung one after ``heartbeat_timeout``), restarts dead ones, rebalances the
shares when a worker dies, comes back, loses or regains its slave, lags behind its rate
or gets its originate command, stops at ``max_sessions`` and logs when all calls have
ended after a hupall.
"""

from __future__ import annotations

import atexit
import logging
import math
import multiprocessing
import os
import signal
import threading
import time
import weakref
from collections.abc import Callable, Iterable
from multiprocessing.connection import wait as mp_wait
from pathlib import Path
from typing import Any

import cloudpickle

from fastswitch import control as C
from fastswitch._spawn import start_process
from fastswitch.commands import client_var
from fastswitch.control import INITIAL, ORIGINATING, STATE_NAMES, STOPPED, ControlBlock
from fastswitch.errors import ConfigurationError, ConnectError, FastSwitchError
from fastswitch.log import LogBridge, ensure_default_handler, get_logger
from fastswitch.pool import ClientHandle, SlavePool, WorkerDied

__all__ = ["Originator", "get_originator", "INITIAL", "ORIGINATING", "STOPPED", "DURATION_OFFSET"]

#: Pad (seconds) of the automatic duration ``limit / rate + DURATION_OFFSET``.
DURATION_OFFSET = 10

#: Extra keyword options passed through to the workers.
_WORKER_OPTIONS = frozenset(
    {"client_options", "log_level", "log_max_per_sec", "reconnect", "shed_after", "shed_lag"}
)

#: Monitor ticks of lag before a worker counts as at capacity, and of calm to recover.
_CAPACITY_TICKS = 3
_RECOVER_TICKS = 20

#: The originate result FreeSWITCH gives when its sps / max_sessions limit refuses a call.
_THROTTLE_CAUSE = "DESTINATION_OUT_OF_ORDER"

_live: weakref.WeakSet[Originator] = weakref.WeakSet()


def _shutdown_all() -> None:
    for o in list(_live):
        try:
            o.shutdown(timeout=2.0)
        except Exception:
            pass


atexit.register(_shutdown_all)


def _on_sigterm(signum: int, frame: Any) -> None:
    """SIGTERM in a script that left it at its default: exit through the interpreter's
    normal path (SystemExit), so the Originators shut down cleanly at exit (calls hung up,
    CDRs flushed, workers stopped, shared memory released) instead of dying on the spot.
    A second SIGTERM (during that shutdown) kills as before."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    raise SystemExit(128 + signal.SIGTERM)


def _install_sigterm() -> None:
    if threading.current_thread() is not threading.main_thread():
        return
    try:
        if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
            signal.signal(signal.SIGTERM, _on_sigterm)
    except (ValueError, OSError):  # not the main interpreter
        pass


def _fmt_num(x: float) -> str:
    """Render like the seed (Python 2 ``str(float)``: 12 significant digits)."""
    if isinstance(x, int):
        return str(x)
    if math.isinf(x):
        return "inf"
    if float(x).is_integer() and not isinstance(x, float):
        return str(int(x))
    return repr(float(f"{x:.12g}"))


def _fmt_setting(x: float) -> str:
    if isinstance(x, float) and x.is_integer() and not math.isinf(x):
        return str(int(x))
    return _fmt_num(x)


def _normalize_contacts(contacts: Any, password: str) -> list[tuple[str, int, str]]:
    if isinstance(contacts, str) or (
        isinstance(contacts, tuple) and len(contacts) >= 2 and isinstance(contacts[1], int)
    ):
        contacts = [contacts]
    out = []
    for c in contacts:
        if isinstance(c, str):
            host, _, port = c.partition(":")
            out.append((host, int(port) if port else 8021, password))
        else:
            c = tuple(c)
            host = c[0]
            port = int(c[1]) if len(c) > 1 and c[1] is not None else 8021
            pw = c[2] if len(c) > 2 and c[2] else password
            out.append((host, port, pw))
    if not out:
        raise ConfigurationError("get_originator() needs at least one slave contact")
    seen: set[tuple[str, int]] = set()
    for host, port, _pw in out:
        if not host:
            raise ConfigurationError(f"contact {host}:{port} has no host name")
        if not 0 < port < 65536:
            raise ConfigurationError(f"contact {host}:{port}: port out of range")
        if (host, port) in seen:
            raise ConfigurationError(
                f"duplicate contact {host}:{port}: each slave may be listed once "
                "(two workers on one slave would hang up each other's calls)"
            )
        seen.add((host, port))
    return out


class Originator:
    """A cluster call generator; build it with :func:`get_originator`.

    Public attributes: ``pool`` (:class:`~fastswitch.pool.SlavePool`), ``run_dir``
    (CDR/counter files), ``auto_duration``; properties ``rate``, ``limit``,
    ``max_sessions``, ``duration``, ``state``, ``originate_cmd``, ``failures``,
    ``measurers``, ``total_originated_sessions``.
    """

    def __init__(
        self,
        contacts: list[tuple[str, int, str]],
        rate: float = 30,
        limit: int = 1,
        max_sessions: float = math.inf,
        duration: float | None = None,
        auto_duration: bool | None = None,
        run_dir: str | os.PathLike | None = None,
        connect_timeout: float = 5.0,
        restart: bool = True,
        heartbeat_timeout: float = 2.0,
        event_format: str = "plain",
        monitor_period: float = 0.1,
        **worker_options: Any,
    ) -> None:
        unknown = set(worker_options) - _WORKER_OPTIONS
        if unknown:
            raise TypeError(f"unknown Originator settings: {', '.join(sorted(unknown))}")
        self._check_rate(rate)
        self._check_limit(limit)
        self.hosts = [h for h, _p, _pw in contacts]
        self.log = get_logger("fastswitch.Originator", self.hosts)
        self._rate = rate
        self._limit = limit
        self._max_sessions = max_sessions
        self.auto_duration = (duration is None) if auto_duration is None else bool(auto_duration)
        if duration is None:
            # the seed shows the initial automatic value rounded (``duration=10.03``)
            duration = round(self._auto_value(), 2)
        self._duration = duration
        self.restart = restart
        self.heartbeat_timeout = heartbeat_timeout
        self.monitor_period = monitor_period
        self.connect_timeout = connect_timeout
        self._state = INITIAL
        self._lock = threading.RLock()
        self._apps: list[
            tuple[bytes, str, dict | None, int, str]
        ] = []  # blob, id, ppkwargs, weight, name
        self._closed = False
        self._hupall_waiting = False
        self._retired: list[dict[str, float]] = [
            dict.fromkeys(C.COUNTER_FIELDS, 0.0) for _ in contacts
        ]
        self._retired_causes: list[dict[str, int]] = [{} for _ in contacts]
        self._dead: set[int] = set()
        self._restart_at: dict[int, tuple[float, float]] = {}  # index -> (not before, backoff)
        self._stale: set[int] = set()
        self._max_alloc: list[float] = [math.inf] * len(contacts)
        self._max_pool = 0.0  # max_sessions share not held by any worker yet
        self._weights: list[float] = [0.0] * len(contacts)
        self._capacity: list[int] = [0] * len(contacts)  # see _watch_capacity
        # what the monitor last saw of each worker: connected, disconnects, shedding, kills
        self._seen: list[dict[str, float]] = [
            {"connected": 1.0, "disconnects": 0.0, "shed": 0.0, "killed": 0.0, "badcmd": 0.0}
            for _ in contacts
        ]
        self._unrecorded = 0  # calls offered by crashed workers whose rows died with them
        # throttling watch: per worker, refusals counted at the last warning, and when
        self._throttle_seen: list[float] = [0.0] * len(contacts)
        self._throttle_at: list[float] = [0.0] * len(contacts)

        from fastswitch.measure import SettingsLog, new_run_dir

        if run_dir is None:
            self.run_dir = new_run_dir()
        else:
            self.run_dir = Path(run_dir)
            self.run_dir.mkdir(parents=True, exist_ok=True)
        self._settings_log = SettingsLog(self.run_dir)

        self._ctx = multiprocessing.get_context("spawn")
        self._cb = ControlBlock.create(len(contacts))
        self._cb.set_settings(rate, limit, max_sessions, self._duration)
        self._log_queue = self._ctx.Queue()
        self._bridge = LogBridge(self._log_queue)
        self._bridge.start()
        #: the channel variable carrying our app ids (``var_prefix`` of client_options)
        self._client_var = client_var(
            worker_options.get("client_options", {}).get("var_prefix", "fastswitch")
        )
        self._worker_options = dict(
            worker_options, event_format=event_format, connect_timeout=connect_timeout
        )

        handles = [ClientHandle(i, h, p, pw, self._spawn) for i, (h, p, pw) in enumerate(contacts)]
        self.pool = SlavePool(handles)
        try:
            for h in handles:
                self._spawn(h)
            errors: list[BaseException] = []
            for h in handles:
                try:
                    h.wait_ready(connect_timeout + 10.0)
                except WorkerDied as exc:
                    errors.append(ConnectError(f"could not connect to {h.host}:{h.port}: {exc}"))
                except Exception as exc:
                    errors.append(exc)
            if errors:
                raise errors[0]
        except BaseException:
            self._teardown(graceful=False)
            raise
        self._write_settings()
        self._stop_monitor = threading.Event()
        self._monitor = threading.Thread(
            target=self._monitor_loop, name="fastswitch-monitor", daemon=True
        )
        self._monitor.start()
        _live.add(self)

    # -- workers ----------------------------------------------------------------------------
    def _spawn(self, handle: ClientHandle, restarted: bool = False) -> None:
        from fastswitch.worker import main as worker_main

        parent_conn, child_conn = self._ctx.Pipe(duplex=True)
        self._cb.reset_worker(handle.index)
        proc = self._ctx.Process(
            target=worker_main,
            name=f"fastswitch-worker-{handle.index}[{handle.host}:{handle.port}]",
            args=(
                handle.index,
                handle.host,
                handle.port,
                handle.password,
                self._cb.name,
                child_conn,
                self._log_queue,
                str(self.run_dir),
                dict(
                    {"log_level": logging.getLogger("fastswitch").getEffectiveLevel()},
                    **self._worker_options,
                    restarted=restarted,
                    incarnation=handle.incarnation + 1,
                ),
            ),
            daemon=True,
        )
        start_process(proc)
        child_conn.close()
        handle.attach(proc, parent_conn)

    def _restart(self, handle: ClientHandle) -> None:
        self._spawn(handle, restarted=True)
        handle.wait_ready(self.connect_timeout + 10.0)
        for blob, app_id, ppkwargs, weight, _name in self._apps:
            handle.request(("load_app", blob, app_id, ppkwargs, weight))
            # calls the dead incarnation left on the slave have no hold timer any more:
            # end them (A-legs only: B-legs of other workers' calls are not ours to end)
            try:
                handle.api(f"hupall NORMAL_CLEARING {self._client_var} {app_id}")
            except Exception as exc:
                self.log.warning(
                    "could not clear orphaned calls on %s:%d: %s", handle.host, handle.port, exc
                )
        if handle.orig_cmd_args is not None:
            args, kwargs = handle.orig_cmd_args
            handle.set_orig_cmd(*args, **kwargs)

    def _retire(self, i: int) -> float:
        """Fold a dead incarnation's counters into the totals and free its shares."""
        cb = self._cb
        for k, v in cb.counters(i).items():
            if k in ("originated", "answered", "failed", "completed"):
                self._retired[i][k] += v
        for k, v in cb.counters(i).items():
            if k in ("lost", "disconnects", "killed", "sheds"):
                self._retired[i][k] += v
        for cause, n in cb.causes(i).items():
            self._retired_causes[i][cause] = self._retired_causes[i].get(cause, 0) + n
        self._count_unrecorded(i, cb.get(i, C.W_ORIGINATED))
        self._seen[i].update(connected=1.0, disconnects=0.0, shed=0.0, killed=0.0, badcmd=0.0)
        unused = self._max_alloc[i] - cb.get(i, C.W_ORIGINATED)
        if not math.isinf(unused) and unused > 0:
            self._max_pool += unused  # handed to the survivors by _rebalance
        self._max_alloc[i] = 0.0
        self._capacity[i] = 0
        cb.put(i, C.W_MAX, 0.0)
        cb.put(i, C.W_RATE, 0.0)
        cb.put(i, C.W_LIMIT, 0.0)
        cb.put(i, C.W_ENABLED, 0.0)
        cb.reset_worker(i)
        return unused

    def _count_unrecorded(self, i: int, offered: float) -> None:
        """A worker incarnation died: its calls with no flushed CDR row (in progress, or in
        the unflushed batch) are lost to the records. Count them from its CDR file, which
        keeps every batch flushed before the crash, and record the count in settings.json
        (``incidents``), where the report finds it."""
        from fastswitch.measure import cdr_path, read_stream

        h = self.pool.clients[i]
        path = cdr_path(self.run_dir, i)
        if h.incarnation > 1:
            path = path.with_name(f"cdr-{i}r{h.incarnation}.arrows")
        try:
            table = read_stream(path)
            kinds = table.column("row_kind").to_pylist() if table.num_rows else []
            recorded = sum(1 for k in kinds if k != "callee")
        except Exception as exc:  # an unreadable file: every offer is unrecorded
            self.log.warning("could not read %s: %s", path, exc)
            recorded = 0
        unrecorded = max(0, int(offered) - recorded)
        self._unrecorded += unrecorded
        self.log.error(
            "worker for %s:%d (incarnation %d) died: %d calls offered, %d recorded, "
            "%d lost without a CDR row",
            h.host,
            h.port,
            h.incarnation,
            int(offered),
            recorded,
            unrecorded,
        )
        self._incident(
            "worker_died",
            slave=f"{h.host}:{h.port}",
            incarnation=h.incarnation,
            exitcode=h.process.exitcode if h.process is not None else None,
            offered=int(offered),
            recorded=recorded,
            unrecorded=unrecorded,
        )

    def _incident(self, kind: str, **fields: Any) -> None:
        try:
            self._settings_log.incident(kind, **fields)
        except OSError as exc:
            self.log.warning("could not record %s in settings.json: %s", kind, exc)

    def _watch_slaves(self, handles: list[ClientHandle]) -> bool:
        """Log and record a slave going down or coming back, a worker that starts or stops
        shedding load, and FreeSWITCH killing a listener for lost events. True when a
        worker's weight may have changed."""
        cb = self._cb
        changed = False
        for h in handles:
            i = h.index
            if i in self._dead or not cb.get(i, C.W_PID):
                continue
            seen = self._seen[i]
            slave = f"{h.host}:{h.port}"
            conn = cb.get(i, C.W_CONNECTED)
            disc = cb.get(i, C.W_DISCONNECTS)
            killed = cb.get(i, C.W_KILLED)
            shed = cb.get(i, C.W_SHED)
            if killed > seen["killed"]:
                self.log.error(
                    "%s killed the listener of its worker because of lost events "
                    "(FreeSWITCH's event queue overflowed)",
                    slave,
                )
                self._incident("listener_killed", slave=slave, times=int(killed - seen["killed"]))
            if disc > seen["disconnects"] or (seen["connected"] and not conn):
                self.log.warning(
                    "slave %s is down (%d calls lost so far); its share moves to the others",
                    slave,
                    int(cb.get(i, C.W_LOST)),
                )
                self._incident("slave_down", slave=slave, lost=int(cb.get(i, C.W_LOST)))
                seen["connected"] = 0.0
                changed = True
            if conn and not seen["connected"]:
                self.log.warning("slave %s is up again; it takes its share back", slave)
                self._incident("slave_up", slave=slave)
                changed = True
            if shed != seen["shed"]:
                if shed:
                    self.log.warning(
                        "worker for %s sheds load (its events lag behind); its share moves "
                        "to the others",
                        slave,
                    )
                    self._incident("shedding", slave=slave)
                else:
                    self.log.info("worker for %s caught up; it takes its share back", slave)
                    self._incident("shedding_ended", slave=slave)
                changed = True
            bad = cb.get(i, C.W_BADCMD)
            if bad and not seen["badcmd"]:
                self.log.error(
                    "ConfigurationError: %s rejects the originate command %r (every call "
                    "fails: unknown endpoint or syntax error); no calls go to that slave "
                    "until set_orig_cmd() is called again",
                    slave,
                    h.originate_cmd,
                )
                self._incident("originate_rejected", slave=slave, command=h.originate_cmd)
                changed = True
            elif seen["badcmd"] and not bad:
                changed = True
            seen.update(connected=conn, disconnects=disc, shed=shed, killed=killed, badcmd=bad)
        if changed and self._state == ORIGINATING:
            rejected = [h for h in handles if h.index not in self._dead]
            if rejected and all(cb.get(h.index, C.W_BADCMD) for h in rejected):
                self.log.error(
                    "ConfigurationError: every slave rejects its originate command; stopping"
                )
                self._set_state(STOPPED)
        return changed

    def _watch_throttling(self, handles: list[ClientHandle], now: float) -> None:
        """Warn (at most every 5 s per slave) when a slave refuses originates the way
        FreeSWITCH does when its ``sessions-per-second`` or ``max-sessions`` limit is
        reached (``-ERR DESTINATION_OUT_OF_ORDER``, ``Throttle Error!`` in its log). The
        refusals stay counted by cause; the rate is not lowered behind the user's back."""
        cb = self._cb
        idx = C.cause_index(_THROTTLE_CAUSE)
        for h in handles:
            i = h.index
            if i in self._dead or now - self._throttle_at[i] < 5.0:
                continue
            n = cb.get(i, C.W_CAUSES + idx)
            if n < self._throttle_seen[i]:  # a restarted worker counts from 0
                self._throttle_seen[i] = 0.0
            new = n - self._throttle_seen[i]
            if new > 0:
                self._throttle_seen[i] = n
                self._throttle_at[i] = now
                self.log.warning(
                    "%s:%d refused %d originates with %s: its sessions-per-second or "
                    "max-sessions limit is reached (fsctl sps / fsctl max_sessions); the "
                    "rate stays at %s cps, refused calls are counted as failed",
                    h.host,
                    h.port,
                    int(new),
                    _THROTTLE_CAUSE,
                    _fmt_setting(self._rate),
                )
                self._incident(
                    "throttled", slave=f"{h.host}:{h.port}", cause=_THROTTLE_CAUSE, calls=int(new)
                )

    def _monitor_loop(self) -> None:
        handles = self.pool.clients
        while not self._stop_monitor.wait(self.monitor_period):
            try:
                self._monitor_tick(handles)
            except Exception:
                if not self._closed:
                    self.log.exception("monitor tick failed")

    def _monitor_tick(self, handles: list[ClientHandle]) -> None:
        if self._closed:
            return
        now = time.monotonic()
        cb = self._cb
        sentinels = {
            h.process.sentinel: h
            for h in handles
            if h.index not in self._dead and h.process is not None
        }
        ready = mp_wait(list(sentinels), timeout=0) if sentinels else []
        changed = False
        for s in ready:
            h = sentinels[s]
            with self._lock:
                if self._closed:
                    return
                self.log.error(
                    "worker for %s:%d died (exit code %s); reassigning its share",
                    h.host,
                    h.port,
                    h.process.exitcode,
                )
                self._dead.add(h.index)
                self._retire(h.index)
                changed = True
        for h in handles:
            if h.index in self._dead:
                continue
            hb = cb.get(h.index, C.W_HEARTBEAT)
            stale = hb > 0 and now - hb > self.heartbeat_timeout
            if stale and h.index not in self._stale:
                self._stale.add(h.index)
                self.log.warning(
                    "worker for %s:%d missed its heartbeat (%.1fs); moving its share",
                    h.host,
                    h.port,
                    now - hb,
                )
                changed = True
            elif not stale and h.index in self._stale:
                self._stale.discard(h.index)
                self.log.info("worker for %s:%d is responsive again", h.host, h.port)
                changed = True
            if stale and now - hb > 5 * self.heartbeat_timeout and h.is_alive():
                self.log.error("worker for %s:%d hung; killing it", h.host, h.port)
                h.process.kill()
        if self._watch_slaves(handles):
            changed = True
        if changed:
            self._rebalance(force=True)  # the survivors take the share at once
            changed = False
        if self.restart:
            for i in sorted(self._dead):
                h = handles[i]
                due, backoff = self._restart_at.get(i, (0.0, 0.5))
                if now < due or self._closed:
                    continue
                try:
                    self._restart(h)
                except Exception as exc:
                    self._restart_at[i] = (time.monotonic() + backoff, min(backoff * 2, 10.0))
                    self.log.error(
                        "restarting the worker for %s:%d failed (next try in %.1fs): %s",
                        h.host,
                        h.port,
                        backoff,
                        exc,
                    )
                    if h.is_alive():
                        h.process.kill()
                    continue
                self._restart_at.pop(i, None)
                with self._lock:
                    self._dead.discard(i)
                self.log.info("worker for %s:%d restarted", h.host, h.port)
                self._incident(
                    "worker_restarted", slave=f"{h.host}:{h.port}", incarnation=h.incarnation
                )
                changed = True
        self._watch_capacity()
        self._watch_throttling(handles, now)
        self._rebalance(force=changed)
        self._check_progress()

    def _check_progress(self) -> None:
        if self._state == ORIGINATING and not math.isinf(self._max_sessions):
            if self.total_originated_sessions >= self._max_sessions:
                self.log.info("max_sessions (%s) offered", _fmt_setting(self._max_sessions))
                self._set_state(STOPPED)
        if self._hupall_waiting and self.count_calls() == 0 and self.count_sessions() == 0:
            self._hupall_waiting = False
            self.log.info("all sessions have ended...")

    # -- shares -----------------------------------------------------------------------------
    def _worker_weights(self) -> list[float]:
        cb = self._cb
        out = []
        for h in self.pool.clients:
            i = h.index
            if (
                i in self._dead
                or i in self._stale
                or not cb.get(i, C.W_CONNECTED)
                or not cb.get(i, C.W_HAS_CMD)
                or cb.get(i, C.W_SHED)
                or cb.get(i, C.W_BADCMD)
            ):
                out.append(0.0)
                continue
            out.append(0.5 if self._capacity[i] >= _CAPACITY_TICKS else 1.0)
        return out

    def _watch_capacity(self) -> None:
        """A worker more than half a second behind its rate for ``_CAPACITY_TICKS``
        monitor ticks in a row is at capacity (its weight halves); it recovers after
        ``_RECOVER_TICKS`` ticks without lag. The hysteresis keeps shares from flapping."""
        cb = self._cb
        for h in self.pool.clients:
            i = h.index
            rate_i = cb.get(i, C.W_RATE)
            lagging = rate_i > 0 and cb.get(i, C.W_BACKLOG) > max(rate_i * 0.5, 10)
            n = self._capacity[i]
            if lagging:
                n = _CAPACITY_TICKS + _RECOVER_TICKS if n >= _CAPACITY_TICKS else n + 1
                if n == _CAPACITY_TICKS:
                    self.log.warning(
                        "%s:%d is at capacity; moving part of its share", h.host, h.port
                    )
                    self._incident("at_capacity", slave=f"{h.host}:{h.port}")
            elif n >= _CAPACITY_TICKS:
                n -= 1
                if n < _CAPACITY_TICKS:
                    n = 0
                    self.log.info("%s:%d keeps up again", h.host, h.port)
                    self._incident("keeps_up", slave=f"{h.host}:{h.port}")
            else:
                n = 0
            self._capacity[i] = n

    def _rebalance(self, force: bool = False) -> None:
        """Split rate, limit and max_sessions over the workers by weight.

        Limit raises are granted only from headroom (``limit - sum(max(cap, in use))``), so
        moving a share never lets the cluster exceed ``limit``. max_sessions caps are
        absolute per incarnation: ``originated + share of what remains``.
        """
        with self._lock:
            if self._closed:
                return
            weights = self._worker_weights()
            if not force and weights == self._weights:
                return
            self._weights = weights
            cb = self._cb
            n = len(weights)
            total = sum(weights)
            # rate
            for i, w in enumerate(weights):
                cb.put(i, C.W_RATE, self._rate * w / total if total else 0.0)
                cb.put(i, C.W_ENABLED, 1.0 if w else 0.0)
            # limit: integer split by largest remainder
            desired = _split_int(self._limit, weights)
            used = [cb.get(i, C.W_ACTIVE) for i in range(n)]
            caps = [cb.get(i, C.W_LIMIT) for i in range(n)]
            for i in range(n):
                if desired[i] < caps[i]:
                    caps[i] = desired[i]
                    cb.put(i, C.W_LIMIT, caps[i])
            headroom = self._limit - sum(max(caps[i], used[i]) for i in range(n))
            for i in range(n):
                if desired[i] > caps[i] and headroom > 0:
                    grant = min(desired[i] - caps[i], headroom)
                    headroom -= grant
                    caps[i] += grant
                    cb.put(i, C.W_LIMIT, caps[i])
            # max_sessions: caps are absolute per incarnation and only ever handed over
            # (a dead worker's unused share, an increase), so their sum stays exact
            if math.isinf(self._max_sessions):
                for i in range(n):
                    self._max_alloc[i] = math.inf
                    cb.put(i, C.W_MAX, math.inf)
            elif self._max_pool > 0 and total:
                shares = _split_int(self._max_pool, weights)
                self._max_pool -= sum(shares)
                for i in range(n):
                    if shares[i]:
                        self._max_alloc[i] += shares[i]
                        cb.put(i, C.W_MAX, self._max_alloc[i])

    def _allocate_max_sessions(self) -> None:
        """Split what is left of max_sessions over the workers by weight (exact while the
        workers do not originate: at start(), or when set while not originating)."""
        with self._lock:
            cb = self._cb
            n = len(self.pool.clients)
            if math.isinf(self._max_sessions):
                self._max_pool = 0.0
                for i in range(n):
                    self._max_alloc[i] = math.inf
                    cb.put(i, C.W_MAX, math.inf)
                return
            weights = self._worker_weights()
            orig = [cb.get(i, C.W_ORIGINATED) for i in range(n)]
            retired = sum(r["originated"] for r in self._retired)
            remaining = max(0, int(self._max_sessions - retired - sum(orig)))
            shares = _split_int(remaining, weights)
            self._max_pool = remaining - sum(shares)
            for i in range(n):
                self._max_alloc[i] = orig[i] + shares[i]
                cb.put(i, C.W_MAX, self._max_alloc[i])

    # -- settings ---------------------------------------------------------------------------
    @staticmethod
    def _check_rate(rate: float) -> None:
        if not isinstance(rate, int | float) or not rate > 0 or math.isinf(rate):
            raise ConfigurationError(
                f"rate must be a positive number of calls per second, got {rate!r}"
            )

    @staticmethod
    def _check_limit(limit: float) -> None:
        if (
            not isinstance(limit, int | float)
            or not limit >= 1
            or (not math.isinf(limit) and int(limit) != limit)
        ):
            raise ConfigurationError(
                f"limit must be a whole number of concurrent calls >= 1, got {limit!r}"
            )

    def _auto_value(self) -> float:
        return self._limit / self._rate + DURATION_OFFSET

    def _apply_auto_duration(self) -> None:
        if self.auto_duration:
            self._duration = self._auto_value()
            self._cb.duration = self._duration

    @property
    def rate(self) -> float:
        """Calls per second offered by the whole cluster."""
        return self._rate

    @rate.setter
    def rate(self, value: float) -> None:
        self._check_rate(value)
        self._rate = value
        self._apply_auto_duration()
        self._cb.set_settings(value, self._limit, self._max_sessions, self._duration)
        self._rebalance(force=True)
        self._record("rate", value)
        self._record("duration", self._duration)

    @property
    def limit(self) -> int:
        """Maximum concurrent calls (erlangs) across the cluster."""
        return self._limit

    @limit.setter
    def limit(self, value: int) -> None:
        self._check_limit(value)
        self._limit = value
        self._apply_auto_duration()
        self._cb.set_settings(self._rate, value, self._max_sessions, self._duration)
        self._rebalance(force=True)
        self._record("limit", value)
        self._record("duration", self._duration)

    @property
    def max_sessions(self) -> float:
        """Total calls to offer (``inf``: no limit); counted over the Originator's life."""
        return self._max_sessions

    @max_sessions.setter
    def max_sessions(self, value: float) -> None:
        if not value >= 0 or (not math.isinf(value) and int(value) != value):
            raise ConfigurationError(
                f"max_sessions must be a non-negative integer or inf, got {value!r}"
            )
        with self._lock:
            old = self._max_sessions
            self._max_sessions = value
            self._cb.set_settings(self._rate, self._limit, value, self._duration)
            if self._state != ORIGINATING or math.isinf(old) or math.isinf(value):
                self._allocate_max_sessions()
            elif value >= old:
                self._max_pool += value - old
            else:
                # lower the caps by the cut, never below what a worker already offered
                cut = old - value
                take = _split_int(
                    cut,
                    [
                        max(0.0, a - self._cb.get(i, C.W_ORIGINATED))
                        for i, a in enumerate(self._max_alloc)
                    ],
                )
                for i, t in enumerate(take):
                    if t:
                        self._max_alloc[i] = max(
                            self._cb.get(i, C.W_ORIGINATED), self._max_alloc[i] - t
                        )
                        self._cb.put(i, C.W_MAX, self._max_alloc[i])
        self._rebalance(force=True)
        self._record("max_sessions", value)

    max_offered = max_sessions

    @property
    def duration(self) -> float:
        """Hold time in seconds, counted from the A-leg's answer (0: no auto hangup)."""
        return self._duration

    @duration.setter
    def duration(self, value: float) -> None:
        if not value >= 0:
            raise ConfigurationError(f"duration must be >= 0, got {value!r}")
        self.auto_duration = False
        self._duration = value
        self._cb.duration = value
        self._record("duration", value)

    # -- state ------------------------------------------------------------------------------
    @property
    def state(self) -> str:
        """``'INITIAL'``, ``'ORIGINATING'`` or ``'STOPPED'``."""
        return STATE_NAMES[self._state]

    def _set_state(self, new: int) -> None:
        with self._lock:
            old = self._state
            if old == new:
                return
            self._state = new
            if new == ORIGINATING:
                self._cb.bump_generation()
            self._cb.state = new
        self._record("state", STATE_NAMES[new])
        self.log.info("State Change: '%s' -> '%s'", STATE_NAMES[old], STATE_NAMES[new])

    def check_state(self, name: str) -> bool:
        return self.state == name

    def stopped(self) -> bool:
        return self._state == STOPPED

    def start(self) -> None:
        """Start (or resume) offering calls.

        With no originate command set on any slave the error is logged (the originator
        keeps waiting); with no app loaded :class:`ConfigurationError` is raised.
        """
        self._check_open()
        if not any(h.originate_cmd for h in self.pool.clients):
            try:
                raise ConfigurationError("you must first set an originate command")
            except ConfigurationError:
                self.log.exception("'%s' failed with:", multiprocessing.current_process().name)
            return
        if not self._apps:
            raise ConfigurationError("No apps have been loaded")
        for h in self.pool.clients:
            if not h.originate_cmd:
                self.log.warning(
                    "no originate command set for %s:%d; it will not originate", h.host, h.port
                )
        if self._state == ORIGINATING:
            return
        self.log.info("starting loop thread")  # the seed's words: each worker's loop resumes
        self._hupall_waiting = False
        self._write_settings(only=("apps", "originate_cmd"))
        self._rebalance(force=True)
        self._allocate_max_sessions()
        self._set_state(ORIGINATING)

    def stop(self) -> None:
        """Stop offering calls; calls in progress end at their duration."""
        if self._state == ORIGINATING:
            self._set_state(STOPPED)
            self.log.info("stopping burst loop...")
            self.log.info("Waiting for start command...")

    def hupall(self, cause: str = "NORMAL_CLEARING") -> None:
        """Stop, then hang up every call this originator made (their A-legs, by app id)."""
        self._check_open()
        self.log.warning("Stopping all calls with hupall!")
        if self._state == ORIGINATING:  # as in the seed: only a running loop is stopped
            self._set_state(STOPPED)
            self.log.info("stopping burst loop...")
            self.log.info("Waiting for start command...")
        self._hupall_waiting = True
        self._each_worker(lambda h: h.hupall(cause))

    def hard_hupall(self) -> None:
        """Stop, then hang up every channel on every slave (plain ``hupall``)."""
        self._check_open()
        self.log.warning("Stopping all calls with hard_hupall!")
        self._set_state(STOPPED)
        self._hupall_waiting = True
        self._each_worker(lambda h: h.api("hupall NORMAL_CLEARING"))

    def _each_worker(self, fn: Callable[[ClientHandle], Any]) -> list[Any]:
        out = []
        for h in self.pool.clients:
            try:
                out.append(fn(h))
            except (WorkerDied, TimeoutError) as exc:  # one bad worker must not stop the rest
                self.log.error("%s", exc)
                out.append(None)
        return out

    def waitforstate(
        self, state: str | int, timeout: float = math.inf, period: float = 0.05
    ) -> bool:
        """Block until ``state`` (a name, or INITIAL/ORIGINATING/STOPPED) is reached;
        False on timeout."""
        name = STATE_NAMES[state] if isinstance(state, int) else str(state).upper()
        if name not in STATE_NAMES:
            raise ValueError(f"unknown state {state!r}; one of {', '.join(STATE_NAMES)}")
        return self.waitwhile(lambda: self.state != name, timeout=timeout, period=period)

    def waitwhile(
        self,
        predicate: Callable[[], bool] | None = None,
        timeout: float = math.inf,
        period: float = 0.1,
    ) -> bool:
        """Block while ``predicate()`` is true (default: calls are active or the state is
        not STOPPED); True when it became false, False on timeout."""
        if predicate is None:

            def predicate() -> bool:
                return self.count_calls() > 0 or self._state != STOPPED

        deadline = time.monotonic() + timeout
        while predicate():
            if time.monotonic() >= deadline:
                return False
            time.sleep(period)
        return True

    def is_alive(self) -> bool:
        """True while at least one worker process runs."""
        return not self._closed and any(h.is_alive() for h in self.pool.clients)

    # -- counters ---------------------------------------------------------------------------
    def _sum(self, field: int) -> float:
        cb = self._cb
        return sum(cb.get(h.index, field) for h in self.pool.clients if h.index not in self._dead)

    def count_calls(self) -> int:
        """Calls in progress across the cluster (originated, not yet ended)."""
        if self._closed:
            return 0
        return int(self._sum(C.W_ACTIVE))

    def count_sessions(self) -> int:
        """Call legs alive across the cluster."""
        if self._closed:
            return 0
        return int(self._sum(C.W_SESSIONS))

    def _total(self, key: str) -> int:
        live = 0 if self._closed else self._sum(C.COUNTER_FIELDS[key])
        return int(live + sum(r[key] for r in self._retired))

    @property
    def total_originated_sessions(self) -> int:
        """Calls offered so far (all workers, restarts included)."""
        return self._total("originated")

    def stats(self) -> dict[str, int]:
        """Cluster totals: originated, answered, failed, completed, active, sessions;
        ``lost`` (calls completed as lost when a slave connection dropped: they have a CDR
        row saying why), ``unrecorded`` (calls whose rows died with a crashed worker),
        ``disconnects`` (slave connections lost) and ``sheds`` (times a worker shed load)."""
        return {
            "originated": self._total("originated"),
            "answered": self._total("answered"),
            "failed": self._total("failed"),
            "completed": self._total("completed"),
            "active": self.count_calls(),
            "sessions": self.count_sessions(),
            "lost": self._total("lost"),
            "unrecorded": self._unrecorded,
            "disconnects": self._total("disconnects"),
            "sheds": self._total("sheds"),
        }

    def slave_stats(self) -> list[dict[str, Any]]:
        """Live counters of each slave's current worker, in contact order (``slave``,
        ``alive``, ``originated``, ``answered``, ``failed``, ``active``, ``sessions``,
        ``pending``, ``completed``, ``rate`` and ``limit`` shares)."""
        out = []
        for h in self.pool.clients:
            i = h.index
            row: dict[str, Any] = {"slave": f"{h.host}:{h.port}", "alive": h.is_alive()}
            if self._closed or i in self._dead:
                row.update(dict.fromkeys(C.COUNTER_FIELDS, 0), rate=0.0, limit=0.0)
            else:
                row.update({k: int(v) for k, v in self._cb.counters(i).items()})
                row["rate"] = self._cb.get(i, C.W_RATE)
                row["limit"] = self._cb.get(i, C.W_LIMIT)
            out.append(row)
        return out

    @property
    def failures(self) -> dict[str, int]:
        """Failed calls by hangup cause (originate ``-ERR <CAUSE>`` or hangup before answer)."""
        out: dict[str, int] = {}
        for i, h in enumerate(self.pool.clients):
            parts = [self._retired_causes[i]]
            if not self._closed and i not in self._dead:
                parts.append(self._cb.causes(h.index))
            for p in parts:
                for k, v in p.items():
                    out[k] = out.get(k, 0) + v
        return out

    # -- configuration ----------------------------------------------------------------------
    @property
    def originate_cmd(self) -> list[str | None]:
        """The originate command template of each slave (None where unset)."""
        return [h.originate_cmd for h in self.pool.clients]

    def load_app(
        self, app: Any, app_id: str | None = None, ppkwargs: dict | None = None, weight: int = 1
    ) -> str:
        """Load an app on every worker (shipped to them with cloudpickle, so apps defined in
        ``__main__`` work). Several apps share the calls by ``weight`` (a smooth weighted
        round robin). Returns the app id."""
        self._check_open()
        klass = app if isinstance(app, type) else type(app)
        app_id = app_id or klass.__name__
        if any(a[1] == app_id for a in self._apps):
            raise ConfigurationError(f"an app is already loaded with id {app_id!r}")
        if weight < 0 or int(weight) != weight:
            raise ConfigurationError(f"app weight must be a non-negative integer, got {weight!r}")
        blob = cloudpickle.dumps(app)
        loaded = []
        try:
            for h in self.pool.clients:
                h.request(("load_app", blob, app_id, ppkwargs, int(weight)))
                loaded.append(h)
        except BaseException:
            for h in loaded:
                try:
                    h.request(("unload_app", app_id))
                except Exception:
                    pass
            raise
        self._apps.append((blob, app_id, ppkwargs, int(weight), klass.__name__))
        # switchio re-applies the load settings when an app is loaded
        self._apply_auto_duration()
        self._cb.set_settings(self._rate, self._limit, self._max_sessions, self._duration)
        return app_id

    def unload_app(self, app_id: str) -> None:
        """Unload an app from every worker."""
        self._apps = [a for a in self._apps if a[1] != app_id]
        self._each_worker(lambda h: h.request(("unload_app", app_id)))

    @property
    def apps(self) -> dict[str, int]:
        """Loaded app ids and their weights."""
        return {a[1]: a[3] for a in self._apps}

    @property
    def measurers(self) -> Any:
        """:class:`fastswitch.measure.Measurers` over this run's directory (workers flush
        their CDR writers first)."""
        from fastswitch.measure import Measurers

        if not self._closed:
            self._each_worker(lambda h: h.request(("flush",)))
        return Measurers(self.run_dir)

    def _settings(self) -> dict[str, Any]:
        return {
            "contacts": [f"{h.host}:{h.port}" for h in self.pool.clients],
            "rate": self._rate,
            "limit": self._limit,
            "max_sessions": self._max_sessions,
            "duration": self._duration,
            "auto_duration": self.auto_duration,
            "apps": self.apps,
            "originate_cmd": self.originate_cmd,
            "state": self.state,
        }

    def _write_settings(self, only: tuple[str, ...] = ()) -> None:
        """Record the settings in settings.json's ``initial`` (all of them at construction;
        later only ``only``, e.g. the apps and commands, so the initial load settings and
        their change history stay as they were)."""
        data = self._settings()
        if only:
            data = {k: data[k] for k in only}
        try:
            self._settings_log.set_initial(data)
        except OSError as exc:
            self.log.warning("could not write settings.json: %s", exc)

    def _record(self, name: str, value: Any) -> None:
        try:
            self._settings_log.record(name, value)
        except OSError as exc:
            self.log.warning("could not record %s in settings.json: %s", name, exc)

    # -- lifecycle --------------------------------------------------------------------------
    def _check_open(self) -> None:
        if self._closed:
            raise FastSwitchError("this Originator was shut down")

    def shutdown(self, timeout: float = 5.0) -> None:
        """Stop, hang up remaining calls, stop the workers (they flush their CDRs) and
        release the shared memory. Idempotent; also run at interpreter exit."""
        if self._closed:
            return
        if self.count_calls() > 0:
            try:
                self.hupall()
            except Exception:
                pass
            self.waitwhile(lambda: self.count_calls() > 0, timeout=min(timeout, 3.0))
        else:
            self.stop()
        self._record_totals()
        self._teardown(graceful=True, timeout=timeout)

    def _record_totals(self) -> None:
        """Write the run's final counters into settings.json (``totals``): the report checks
        its CDR rows against them (rows == offered - unrecorded)."""
        try:
            totals: dict[str, Any] = dict(self.stats())
            totals["killed"] = self._total("killed")
            totals["failures"] = self.failures
            self._settings_log.set_totals(totals)
        except Exception as exc:  # never let the report keep the run from stopping
            self.log.warning("could not record the run's totals: %s", exc)

    def _teardown(self, graceful: bool, timeout: float = 5.0) -> None:
        self._closed = True
        _live.discard(self)
        mon = getattr(self, "_monitor", None)
        if mon is not None:
            self._stop_monitor.set()
            if mon is not threading.current_thread():
                mon.join(2.0)
        with self._lock:
            for h in self.pool.clients if hasattr(self, "pool") else []:
                if h.process is None:
                    continue
                if graceful and h.is_alive():
                    try:
                        h.request(("shutdown",), timeout=timeout)
                    except Exception:
                        pass
                h.process.join(timeout if graceful else 0.5)
                if h.process.is_alive():
                    h.process.kill()
                    h.process.join(1.0)
                if h.conn is not None:
                    h.conn.close()
        self._bridge.stop()
        try:
            self._log_queue.close()
            self._log_queue.join_thread()
        except Exception:
            pass
        # drop the queue and the bridge now: their named semaphores (/dev/shm/sem.mp-*)
        # are released with them, not whenever the Originator object is collected
        self._bridge.queue = None
        self._log_queue = None
        for h in self.pool.clients if hasattr(self, "pool") else []:
            if h.process is not None and not h.process.is_alive():
                h.process = None  # frees its sentinel fd
        self._cb.unlink()

    def __enter__(self) -> Originator:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.shutdown()

    def __repr__(self) -> str:
        return (
            f"<Originator: '{self.count_calls()}' active calls, state=[{self.state}], "
            f"rate={_fmt_setting(self._rate)} limit={_fmt_setting(self._limit)} "
            f"max_sessions={_fmt_setting(self._max_sessions)} duration={_fmt_num(float(self._duration))}>"
        )


def _split_int(total: float, weights: list[float]) -> list[float]:
    """Split ``total`` (an integer or inf) over ``weights`` by largest remainder."""
    wsum = sum(weights)
    if not wsum:
        return [0.0] * len(weights)
    if math.isinf(total):
        return [math.inf if w else 0.0 for w in weights]
    total = int(total)
    exact = [total * w / wsum for w in weights]
    base = [math.floor(x) for x in exact]
    rest = total - sum(base)
    order = sorted(range(len(weights)), key=lambda i: (-(exact[i] - base[i]), i))
    for i in order[:rest]:
        if weights[i]:
            base[i] += 1
    return [float(b) for b in base]


def get_originator(
    contacts: str | Iterable[Any], *, password: str = "ClueCon", **kwargs: Any
) -> Originator:
    """Start an Originator driving the slaves in ``contacts``.

    ``contacts`` is a host name, a list of host names (``'host'`` or ``'host:port'``), or
    of ``(host, port[, password])`` pairs (default port 8021, password ``password``).
    Keyword settings: ``rate`` (30), ``limit`` (1), ``max_sessions`` (inf), ``duration``
    (auto: ``limit / rate + 10``), ``run_dir`` (default ``./fastswitch-runs/<time>/``),
    ``connect_timeout`` (5 s), ``restart`` (True: restart dead workers),
    ``heartbeat_timeout`` (2 s: an alive worker whose loop stalls that long loses its
    share until it recovers, 5x that and it is killed; a worker that dies is seen at the
    next monitor tick, 0.1 s), ``event_format`` ('plain' or 'json'), ``client_options``
    (extra :class:`~fastswitch.client.Client` keywords), ``log_level``,
    ``log_max_per_sec`` (worker log records per second per logger and level, 50),
    ``shed_after`` (1 s: a worker that gets no event for that long after an originate
    stops offering on its slave until events flow again) and ``shed_lag`` (2 s: the same
    when events arrive that late), 0 turns either off.

    Faults are reported, never hidden: the parent logs a slave going down or up, a worker
    dying (with the calls whose CDR rows died with it), a worker shedding load, FreeSWITCH
    killing a listener for lost events, throttling and rejected originate commands, and
    records each in settings.json (``incidents``; ``totals`` at shutdown), where the
    report finds them. A SIGTERM to a script that left it at its default stops the script
    through the normal exit path, so the run is shut down cleanly.

    Every worker connects before this returns: :class:`ConnectError` /
    :class:`AuthenticationError` name the slave that cannot be used (and nothing is
    left running).
    """
    ensure_default_handler()
    _install_sigterm()
    return Originator(_normalize_contacts(contacts, password), **kwargs)
