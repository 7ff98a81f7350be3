"""Shared helpers of the system benchmarks (engine, client, peers, soak).

Kept out of ``conftest.py`` (owned by the parser benchmarks) so these benchmarks can be
changed without touching it. Everything here is plain functions and small classes:

- :func:`machine_info` / :func:`save_results`: the JSON written to ``benchmarks/results/``;
- :class:`CpuMeter`: CPU seconds of a set of processes over a window (psutil);
- :class:`EngineRig`: simulated slaves + an Originator, and :meth:`EngineRig.trial` which
  runs one rate and judges it *sustained* (zero failed calls, achieved rate within 1% of
  the target over the window, limit never exceeded); :func:`search_rate` climbs and
  bisects for the highest sustained rate within a time budget;
- :func:`soak_requested`: whether ``--soak`` (or ``FASTSWITCH_SOAK=1``) was given.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import logging
import math
import os
import platform
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psutil

REPO = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

#: The acceptance tolerance of the achieved rate (1% of the target).
RATE_TOLERANCE = 0.01


# -- run options ----------------------------------------------------------------------------
def soak_requested(config: Any) -> bool:
    """True when the soak benchmarks should run: ``--soak`` (when a conftest registers it)
    or ``FASTSWITCH_SOAK=1`` in the environment."""
    try:
        if config.getoption("--soak"):
            return True
    except (ValueError, AttributeError):
        pass
    return os.environ.get("FASTSWITCH_SOAK", "") not in ("", "0")


def is_quick(config: Any) -> bool:
    """True under ``--quick`` (or ``FASTSWITCH_QUICK=1``)."""
    try:
        if config.getoption("--quick"):
            return True
    except (ValueError, AttributeError):
        pass
    return os.environ.get("FASTSWITCH_QUICK", "") not in ("", "0")


# -- results --------------------------------------------------------------------------------
def _version(dist: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def machine_info() -> dict[str, Any]:
    """What the figures were measured on: CPUs, model, memory, load, Python and versions."""
    model = platform.processor() or ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    try:
        import fastswitch

        parser = getattr(fastswitch, "PARSER", None)
    except Exception:  # pragma: no cover - reported, not fatal
        parser = None
    commit = None
    with contextlib.suppress(Exception):
        import subprocess

        commit = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
    return {
        "cpu_count": os.cpu_count(),
        "cpu_model": model,
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "load_avg_1m": round(os.getloadavg()[0], 2),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "fastswitch_parser": parser,
        "git_commit": commit,
        "versions": {
            d: _version(d)
            for d in ("fastswitch", "uvloop", "pyarrow", "psutil", "Cython", "switchio")
        },
    }


def save_results(kind: str, data: dict[str, Any], quick: bool) -> Path:
    """Write ``benchmarks/results/<kind>-<UTC time>.json`` with the machine's description."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    now = _dt.datetime.now(_dt.UTC)
    out = {
        "kind": kind,
        "time": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "quick": quick,
        "machine": machine_info(),
        **data,
    }
    path = RESULTS / f"{kind}-{now.strftime('%Y%m%dT%H%M%S')}.json"
    path.write_text(json.dumps(out, indent=1, default=_json_default) + "\n")
    return path


def _json_default(x: Any) -> Any:
    if isinstance(x, float) and not math.isfinite(x):
        return str(x)
    if hasattr(x, "item"):  # numpy scalars
        return x.item()
    return str(x)


def median(xs: Iterable[float]) -> float:
    """The median (nan when empty)."""
    s = sorted(xs)
    if not s:
        return math.nan
    m = len(s) // 2
    return s[m] if len(s) % 2 else (s[m - 1] + s[m]) / 2


# -- CPU and memory -------------------------------------------------------------------------
class CpuMeter:
    """CPU seconds (user + system) used by named groups of processes between two reads."""

    def __init__(self, groups: dict[str, list[int]]) -> None:
        self.procs = {k: [psutil.Process(p) for p in pids] for k, pids in groups.items()}
        self._t0: dict[str, float] = {}
        self._w0 = 0.0

    def _read(self) -> dict[str, float]:
        out = {}
        for k, procs in self.procs.items():
            total = 0.0
            for p in procs:
                with contextlib.suppress(psutil.Error):
                    c = p.cpu_times()
                    total += c.user + c.system
            out[k] = total
        return out

    def start(self) -> None:
        self._t0 = self._read()
        self._w0 = time.monotonic()

    def stop(self) -> tuple[float, dict[str, float]]:
        """``(wall seconds, {group: CPU seconds})`` since :meth:`start`."""
        now = self._read()
        return time.monotonic() - self._w0, {k: now[k] - self._t0[k] for k in now}


def rss(pid: int) -> int:
    """Resident set size of ``pid`` in bytes."""
    return psutil.Process(pid).memory_info().rss


# -- the engine rig -------------------------------------------------------------------------
@dataclass
class Trial:
    """One rate tried by :meth:`EngineRig.trial` and its verdict."""

    rate: float
    slaves: int
    window_s: float
    hold_s: float
    limit: int
    achieved: float = 0.0
    offered_in_window: int = 0
    failed: int = 0
    failures: dict[str, int] = field(default_factory=dict)
    max_active: int = 0
    peak_active_counters: int = 0
    limit_exceeded: bool = False
    rate_ok: bool = False
    sustained: bool = False
    cpu_s: dict[str, float] = field(default_factory=dict)
    worker_us_per_call: float = math.nan
    sim_us_per_call: float = math.nan
    parent_us_per_call: float = math.nan
    calls_per_worker_cpu_s: float = math.nan
    calls_per_total_cpu_s: float = math.nan
    worker_net_us_per_call: float = math.nan
    sim_net_us_per_call: float = math.nan
    reason: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class EngineRig:
    """``slaves`` simulated FreeSWITCH processes, one Originator (one worker each) running
    the Park app on loop-back calls held ``hold_s`` seconds from answer.

    Use as a context manager; every process it started is stopped on exit.
    """

    def __init__(
        self,
        slaves: int = 1,
        hold_s: float = 1.0,
        run_dir: str | None = None,
        sim_settings: dict[str, Any] | None = None,
    ) -> None:
        self.n = slaves
        self.sim_settings = dict(sim_settings or {})
        self.hold_s = hold_s
        self.run_dir = run_dir or tempfile.mkdtemp(prefix="fastswitch-bench-")
        self.servers: list[Any] = []
        self.cfgs: list[Any] = []
        self.o: Any = None
        #: CPU seconds per wall second of each group while nothing is offered (heartbeats,
        #: idle ticks, counters): subtracted to give the *net* cost per call
        self.idle_cpu: dict[str, float] | None = None

    def __enter__(self) -> EngineRig:
        from fastswitch import get_originator
        from fastswitch.apps.park import Park
        from fastswitch.sim import SimConfig, SimServer

        logging.getLogger("fastswitch").setLevel(logging.WARNING)
        try:
            for i in range(self.n):
                kw: dict[str, Any] = {"sps": 1_000_000, "max_sessions": 1_000_000}
                kw.update(self.sim_settings)
                cfg = SimConfig(port=0, sip_port=0, heartbeat_interval=0.0, seed=100 + i, **kw)
                srv = SimServer(cfg)
                srv.start()
                self.servers.append(srv)
                self.cfgs.append(cfg)
            self.o = get_originator(
                [s.address for s in self.servers],
                rate=1,
                limit=1,
                duration=self.hold_s,
                run_dir=self.run_dir,
                log_level=logging.WARNING,
            )
            # each worker loops its calls back to its own slave
            dests = {i: f"doggy@{c.sip_host}:{c.sip_port}" for i, c in enumerate(self.cfgs)}
            self.o.pool.evals("client.set_orig_cmd(dests[client.index])", dests=dests)
            self.o.load_app(Park)
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.o is not None:
            with contextlib.suppress(Exception):
                self.o.shutdown(timeout=10.0)
            self.o = None
        for s in self.servers:
            with contextlib.suppress(Exception):
                s.stop()
        self.servers = []

    # -- processes --
    @property
    def worker_pids(self) -> list[int]:
        return [h.process.pid for h in self.o.pool.clients]

    @property
    def sim_pids(self) -> list[int]:
        return [int(s.pid) for s in self.servers]

    def meter(self) -> CpuMeter:
        return CpuMeter({"worker": self.worker_pids, "sim": self.sim_pids, "parent": [os.getpid()]})

    def flush(self) -> None:
        for h in self.o.pool.clients:
            h.request(("flush",))

    def cdr(self) -> Any:
        """The CDR rows written so far (a pyarrow Table)."""
        from fastswitch.measure import read_cdr

        self.flush()
        return read_cdr(self.run_dir)

    def drain(self, timeout: float) -> bool:
        """Stop offering and wait until no call is up."""
        o = self.o
        if o.state != "STOPPED":
            o.stop()
        return bool(o.waitwhile(lambda: o.count_calls() > 0, timeout=timeout))

    def measure_idle(self, seconds: float = 2.0) -> dict[str, float]:
        """CPU seconds per second of each group with no call offered (kept in ``idle_cpu``)."""
        self.drain(timeout=self.hold_s + 20.0)
        meter = self.meter()
        meter.start()
        time.sleep(seconds)
        wall, cpu = meter.stop()
        self.idle_cpu = {k: v / wall for k, v in cpu.items()}
        return self.idle_cpu

    # -- one trial --
    def trial(self, rate: float, window_s: float, warmup_s: float = 1.5) -> Trial:
        """Offer ``rate`` calls/s (the whole cluster) for ``warmup_s + window_s`` seconds.

        Sustained when: no call failed (from the workers' counters, over the whole trial
        including the drain), the calls launched inside the window (CDR ``job_launch``)
        give a rate within 1% of the target, and the active calls never exceeded the
        limit (sampled every 20 ms in the parent and from the per-second counters). The
        limit is ``rate * (hold + 2 s)``: a system that falls behind (answers or hangups
        arriving late) piles calls up against it and its achieved rate drops.
        """
        import pyarrow.compute as pc

        o = self.o
        limit = int(math.ceil(rate * (self.hold_s + 2.0))) + 10
        t = Trial(rate=rate, slaves=self.n, window_s=window_s, hold_s=self.hold_s, limit=limit)
        st0 = o.stats()
        f0 = dict(o.failures)
        o.limit = limit
        o.rate = rate
        o.duration = self.hold_s
        peak = [0]
        stop_sampling = threading.Event()

        def sample() -> None:
            while not stop_sampling.is_set():
                n = o.count_calls()
                if n > peak[0]:
                    peak[0] = n
                stop_sampling.wait(0.02)

        sampler = threading.Thread(target=sample, daemon=True)
        meter = self.meter()
        o.start()
        sampler.start()
        try:
            time.sleep(warmup_s)
            w0 = time.time()
            meter.start()
            time.sleep(window_s)
            wall, cpu = meter.stop()
            w1 = time.time()
        finally:
            drained = self.drain(timeout=self.hold_s + 20.0)
            stop_sampling.set()
            sampler.join()
        st1 = o.stats()
        f1 = o.failures
        table = self.cdr()
        launch = table.column("job_launch")
        in_window = pc.and_(pc.greater_equal(launch, w0), pc.less(launch, w1))
        n = int(pc.sum(pc.cast(in_window, "int64")).as_py() or 0)
        t.offered_in_window = n
        t.achieved = n / (w1 - w0)
        t.failed = int(st1["failed"] - st0["failed"])
        t.failures = {k: v - f0.get(k, 0) for k, v in f1.items() if v - f0.get(k, 0)}
        t.max_active = peak[0]
        t.peak_active_counters = self._peak_counter_active(w0 - warmup_s)
        t.limit_exceeded = max(t.max_active, t.peak_active_counters) > limit
        t.rate_ok = abs(t.achieved - rate) <= RATE_TOLERANCE * rate
        t.cpu_s = {k: round(v, 4) for k, v in cpu.items()}
        calls = max(n, 1)
        t.worker_us_per_call = cpu["worker"] / calls * 1e6
        t.sim_us_per_call = cpu["sim"] / calls * 1e6
        t.parent_us_per_call = cpu["parent"] / calls * 1e6
        t.calls_per_worker_cpu_s = n / cpu["worker"] if cpu["worker"] > 0 else math.nan
        if self.idle_cpu is not None:
            t.worker_net_us_per_call = (
                (cpu["worker"] - self.idle_cpu["worker"] * wall) / calls * 1e6
            )
            t.sim_net_us_per_call = (cpu["sim"] - self.idle_cpu["sim"] * wall) / calls * 1e6
        tot = cpu["worker"] + cpu["sim"] + cpu["parent"]
        t.calls_per_total_cpu_s = n / tot if tot > 0 else math.nan
        reasons = []
        if t.failed:
            reasons.append(f"{t.failed} failed {t.failures}")
        if not t.rate_ok:
            reasons.append(f"achieved {t.achieved:.1f}/s")
        if t.limit_exceeded:
            reasons.append(f"active {max(t.max_active, t.peak_active_counters)} > limit {limit}")
        if not drained:
            reasons.append("calls still up after the drain")
        t.sustained = not reasons
        t.reason = "; ".join(reasons) or "sustained"
        return t

    def _peak_counter_active(self, since: float) -> int:
        """Highest cluster-wide ``active_calls`` in the per-worker counters since ``since``."""
        from fastswitch.measure import read_counters

        try:
            tbl = read_counters(self.run_dir)
        except Exception:
            return 0
        if tbl.num_rows == 0:
            return 0
        rows = tbl.select(["time", "worker", "active_calls"]).to_pylist()
        # each worker's count holds until its next row (a worker may write several rows in
        # a second: offering started, its share changed): the cluster's total at each row
        # is the sum of every worker's latest count
        latest: dict[Any, int] = {}
        peak = 0
        for r in sorted(rows, key=lambda r: r["time"]):
            latest[r["worker"]] = int(r["active_calls"])
            if r["time"] >= since:
                peak = max(peak, sum(latest.values()))
        return peak


def search_rate(
    trial: Callable[[float], Trial],
    start: float,
    budget_s: float,
    max_trials: int = 12,
    step: float = 1.5,
    precision: float = 1.08,
    floor: float = 5.0,
    log: Callable[[str], None] = print,
) -> tuple[float, list[Trial]]:
    """The highest sustained rate: from ``start`` step up by ``step`` while it sustains
    (down while it does not), then bisect until the bracket is within ``precision``, or
    the time budget / trial count runs out. Returns ``(best sustained rate or 0, trials)``."""
    t_end = time.monotonic() + budget_s
    lo: float | None = None
    hi: float | None = None
    rate = start
    trials: list[Trial] = []
    while len(trials) < max_trials:
        t0 = time.monotonic()
        tr = trial(rate)
        trials.append(tr)
        log(
            f"  rate {rate:8.1f}/s -> achieved {tr.achieved:8.1f}/s, worker "
            f"{tr.worker_us_per_call:6.0f} us/call, sim {tr.sim_us_per_call:6.0f} us/call: "
            f"{tr.reason}"
        )
        if tr.sustained:
            lo = rate if lo is None else max(lo, rate)
        else:
            hi = rate if hi is None else min(hi, rate)
        if lo is not None and hi is not None:
            if hi / lo <= precision:
                break
            nxt = math.sqrt(lo * hi)
        elif lo is not None:
            nxt = lo * step
        else:
            assert hi is not None
            nxt = hi / step
            if nxt < floor:
                break
        spent = time.monotonic() - t0
        if time.monotonic() + spent > t_end:
            break
        rate = round(nxt, 1)
    return (lo or 0.0), trials


def slope(xs: list[float], ys: list[float]) -> float:
    """Least-squares slope of ``ys`` over ``xs`` (nan with fewer than 2 distinct xs)."""
    n = len(xs)
    if n < 2 or len(set(xs)) < 2:
        return math.nan
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx
