"""Side by side: switchio (PyPI ``switchio``, the predecessor) driving the same simulated
slave as fastswitch, at rising rates, with the highest sustained rate on the same
definition (no failed call, achieved rate within 1% of the target, limit held).

switchio 0.1.0a1 does not import on Python 3.11 (``asyncio.coroutine`` and the ``loop=``
arguments are gone). The driver runs it in a child process with compatibility shims
(``asyncio.coroutine``, ``loop=`` dropped, ``inspect.getargspec``, ``pandas.np``,
``numpy.ctypeslib.prep_array``) so the shims never touch this process. A probe at 20
calls/s decides whether it can be driven at all; when it cannot (or switchio is not
installed) the result is recorded as unavailable with the reason and the test skips.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from typing import Any

import pytest
from _support import RATE_TOLERANCE, REPO, EngineRig, is_quick, save_results, search_rate

pytestmark = pytest.mark.timeout(900)

#: Simulator settings for both originators. The 50 ms ring matters for switchio: when the
#: BACKGROUND_JOB arrives in the same read as the bgapi reply, its event-loop thread blocks
#: in ``_handle_bj`` waiting for the burst thread, which waits for the reply future that
#: the blocked loop should resolve (a deadlock; real FreeSWITCH answers later than that).
SIM_SETTINGS: dict[str, Any] = {"sps": 10**6, "max_sessions": 10**6, "answer_delay": 0.05}
PROBE_RATE = 20.0
WARMUP_S = 1.0
PROBE_S = 4.0


def _shim() -> None:  # pragma: no cover - runs in the child
    import asyncio
    import functools
    import inspect
    import types

    def coroutine(fn: Any) -> Any:
        return fn if asyncio.iscoroutinefunction(fn) else types.coroutine(fn)

    asyncio.coroutine = coroutine  # type: ignore[attr-defined]

    def drop_loop(f: Any) -> Any:
        @functools.wraps(f)
        def w(*a: Any, loop: Any = None, **k: Any) -> Any:
            return f(*a, **k)

        return w

    for name in ("wait_for", "wait", "sleep", "gather"):
        setattr(asyncio, name, drop_loop(getattr(asyncio, name)))

    class Queue(asyncio.Queue):
        def __init__(self, maxsize: int = 0, *, loop: Any = None) -> None:
            super().__init__(maxsize)

    class Event(asyncio.Event):
        def __init__(self, *, loop: Any = None) -> None:
            super().__init__()

    asyncio.Queue = Queue  # type: ignore[misc]
    asyncio.Event = Event  # type: ignore[misc]

    def getargspec(f: Any) -> tuple:
        fa = inspect.getfullargspec(f)
        return fa.args, fa.varargs, fa.varkw, fa.defaults

    inspect.getargspec = getargspec  # type: ignore[attr-defined]
    import numpy
    import numpy.ctypeslib

    numpy.ctypeslib.prep_array = lambda tp: None  # type: ignore[attr-defined]
    try:
        import pandas

        pandas.np = numpy  # type: ignore[attr-defined]
    except ImportError:
        pass


def _switchio_child(addr: tuple, dest: str, rates: list[float], window: float, conn: Any) -> None:
    """Child: run switchio's Originator at each rate; send one result dict per rate."""
    import logging

    logging.basicConfig(level=logging.ERROR)
    try:
        _shim()
        import psutil
        from switchio import event_callback
        from switchio.apps.call_gen import get_originator
    except Exception as exc:  # noqa: BLE001 - reported to the parent
        conn.send({"error": f"import failed: {type(exc).__name__}: {exc}"})
        return

    class Hold:
        """switchio's apps apply the Originator's duration themselves: hang the A-leg up
        ``duration`` seconds after answer (what fastswitch's worker timer does)."""

        duration = 1.0

        def __setduration__(self, value: float) -> None:
            self.duration = value

        @event_callback("CHANNEL_ANSWER")
        def on_answer(self, sess: Any) -> None:
            if sess.is_outbound():
                # whole seconds: "sched_hangup +1.0" is not FreeSWITCH syntax
                sess.sched_hangup(max(1, round(self.duration)))

    me = psutil.Process()
    try:
        o = get_originator([tuple(addr)], rate=rates[0], limit=10, max_offered=10**9)
        o._max_rate = 10**6  # switchio clips at 250 calls/s by default
        o.pool.evals("client.set_orig_cmd(dest, app_name='park')", dest=dest)
        o.load_app(Hold)
        for rate in rates:
            rate = max(1, round(rate))  # its burst loop does range(rate): integers only
            o.rate = rate
            o.limit = int(rate * 3) + 10
            o.duration = 1.0
            f0 = sum(o.pool.evals("listener.count_failed()"))
            peak = 0
            before = o.total_originated_sessions
            o.start()
            # switchio's start() sets and at once clears the event its burst thread waits
            # on, so the thread can miss it: trigger again until calls flow
            for _ in range(20):
                time.sleep(0.1)
                if o.total_originated_sessions > before:
                    break
                o.start()
            time.sleep(WARMUP_S)  # as for fastswitch: the window starts after a warm-up
            n0 = o.total_originated_sessions
            c0 = sum(me.cpu_times()[:2])
            t0 = time.monotonic()
            while time.monotonic() - t0 < window:
                peak = max(peak, o.count_calls())
                time.sleep(0.05)
            n1 = o.total_originated_sessions
            c1 = sum(me.cpu_times()[:2])
            wall = time.monotonic() - t0
            o.stop()
            deadline = time.monotonic() + 5
            while o.count_calls() > 0 and time.monotonic() < deadline:
                time.sleep(0.1)
            failed = sum(o.pool.evals("listener.count_failed()")) - f0
            conn.send(
                {
                    "rate": rate,
                    "achieved": (n1 - n0) / wall,
                    "offered": n1 - n0,
                    "failed": failed,
                    "max_active": peak,
                    "limit": o.limit,
                    "us_per_call": (c1 - c0) / max(n1 - n0, 1) * 1e6,
                }
            )
        # no o.shutdown(): it can hang; the child exits with os._exit
    except Exception as exc:  # noqa: BLE001
        conn.send({"error": f"{type(exc).__name__}: {exc}"})


def run_switchio(addr: tuple, dest: str, rates: list[float], window: float) -> list[dict]:
    """Run switchio in a child interpreter (this file as a script) at ``rates``; bounded in
    time; the child is killed if it overruns."""
    args = json.dumps({"addr": list(addr), "dest": dest, "rates": rates, "window": window})
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])
    )
    timeout = 15 + len(rates) * (window + WARMUP_S + 8)
    # its own session: switchio forks helpers that outlive the child; the whole group is
    # killed at the end, whatever happened
    proc = subprocess.Popen(
        [sys.executable, __file__, args],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=env,
        start_new_session=True,
    )
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_group(proc.pid)
        out, _ = proc.communicate()
    finally:
        _kill_group(proc.pid)
    lines = (out or "").splitlines()
    results = []
    for line in lines:
        if line.startswith("{"):
            results.append(json.loads(line))
    return results


def _kill_group(pgid: int) -> None:
    """SIGKILL every process of the child's session (it leads its own process group)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


class _Pipe:
    """The child's end: one JSON line per result on stdout."""

    def send(self, msg: dict) -> None:
        print(json.dumps(msg), flush=True)


def test_switchio_side_by_side(request: pytest.FixtureRequest) -> None:
    quick = is_quick(request.config)
    data: dict[str, Any] = {"available": False}
    if importlib.util.find_spec("switchio") is None:
        data["reason"] = "switchio is not installed (pip install switchio)"
        save_results("peers", data, quick)
        pytest.skip(data["reason"])
    from fastswitch.sim import SimConfig, SimServer

    cfg = SimConfig(port=0, sip_port=0, heartbeat_interval=0.0, **SIM_SETTINGS)
    with SimServer(cfg) as srv:
        dest = f"doggy@{cfg.sip_host}:{cfg.sip_port}"
        sim_proc = __import__("psutil").Process(srv.pid)
        probe = run_switchio(srv.address, dest, [PROBE_RATE], PROBE_S)
        if not probe or "error" in probe[0]:
            why = probe[0]["error"] if probe else "the driver produced nothing"
        elif probe[0]["achieved"] < 0.5 * PROBE_RATE:
            why = (
                f"imports and connects with the Python 3.11 shims, but its burst loop stalls: "
                f"{probe[0]['offered']} calls offered in {PROBE_S:.0f} s at {PROBE_RATE:.0f}/s"
            )
        else:
            why = ""
        if why:
            data["reason"] = f"switchio {_ver()}: {why}"
            data["probe"] = probe
            save_results("peers", data, quick)
            pytest.skip(data["reason"])
        window = 5.0 if quick else 30.0
        trials: list[dict] = []

        def trial(rate: float) -> Any:
            c0 = sum(sim_proc.cpu_times()[:2])
            r = run_switchio(srv.address, dest, [rate], window)
            c1 = sum(sim_proc.cpu_times()[:2])
            x = r[0] if r else {"rate": rate, "error": "no result"}
            ok = (
                "error" not in x
                and x["failed"] == 0
                # against the integer rate switchio was actually given
                and abs(x["achieved"] - x["rate"]) <= RATE_TOLERANCE * x["rate"]
                and x["max_active"] <= x["limit"]
            )
            x["sim_us_per_call"] = (c1 - c0) / max(x.get("offered", 0), 1) * 1e6
            x["sustained"] = ok
            trials.append(x)
            return _T(rate, x.get("achieved", 0.0), ok, x.get("us_per_call", float("nan")))

        best, _ = search_rate(
            trial, start=100.0, budget_s=25.0 if quick else 240.0, max_trials=3 if quick else 9
        )
    data.update(
        available=True,
        switchio={
            "best_rate": best,
            "us_per_call": _med([t["us_per_call"] for t in trials if t.get("sustained")]),
            "sim_us_per_call": _med([t["sim_us_per_call"] for t in trials if t.get("sustained")]),
            "trials": trials,
            "lower_bound": all(t.get("sustained") for t in trials),
            "max_achieved": max((t.get("achieved", 0.0) for t in trials), default=0.0),
        },
    )
    with EngineRig(1, hold_s=1.0, sim_settings=SIM_SETTINGS) as rig:
        fbest, ftrials = search_rate(
            lambda r: rig.trial(r, window, WARMUP_S),
            start=max(best, 100.0),
            budget_s=15.0 if quick else 180.0,
            max_trials=2 if quick else 9,
        )
    data["fastswitch"] = {
        "best_rate": fbest,
        # worker + parent: switchio does everything in its one process
        "us_per_call": _med(
            [t.worker_us_per_call + t.parent_us_per_call for t in ftrials if t.sustained]
        ),
        "lower_bound": all(t.sustained for t in ftrials),
        "max_achieved": max((t.achieved for t in ftrials), default=0.0),
        "sim_us_per_call": _med([t.sim_us_per_call for t in ftrials if t.sustained]),
        "trials": [t.as_dict() for t in ftrials],
    }
    data["ratio"] = fbest / best if best else None
    save_results("peers", data, quick)


class _T:
    """The fields :func:`search_rate` reads from a trial."""

    def __init__(self, rate: float, achieved: float, sustained: bool, us: float) -> None:
        self.rate = rate
        self.achieved = achieved
        self.sustained = sustained
        self.worker_us_per_call = us
        self.sim_us_per_call = float("nan")
        self.reason = "sustained" if sustained else "not sustained"


def _med(xs: list[float]) -> float:
    from _support import median

    return median(xs)


def _ver() -> str:
    from importlib import metadata

    try:
        return metadata.version("switchio")
    except metadata.PackageNotFoundError:
        return "?"


if __name__ == "__main__":  # the switchio child (see run_switchio)
    _a = json.loads(sys.argv[1])
    _switchio_child(tuple(_a["addr"]), _a["dest"], _a["rates"], _a["window"], _Pipe())
    if os.getpgrp() == os.getpid():  # started by run_switchio: end switchio's helpers too
        os.killpg(os.getpid(), signal.SIGKILL)
    os._exit(0)  # switchio leaves non-daemon threads behind
