"""What recording costs a worker: CDR row building + CDRWriter.append/flush per call.

Figures (printed; run ``python -m pytest benchmarks/test_bench_cdr.py -s`` or
``python benchmarks/test_bench_cdr.py``):

- baseline: ``list.append`` of the same row tuples (the cheapest possible "record");
- writer: ``CDRWriter.append`` with its flush every 1000 rows and the final close, i.e.
  the whole cost of getting the rows onto disk as Arrow batches;
- row: ``CDR.row(call)`` on the real calls of capture q (after tracking them);
- per-call work: parsing and tracking one call's events (capture q, 300 real calls through
  the Parser and the CallTracker) — a lower bound of what a worker spends per call.

The budget: recording must stay under 5% of a worker's CPU at its top call rate. At the top
rate the worker is busy all the time, so the share is ``record / (per-call work + record)``;
measuring it against the *lower bound* of per-call work overstates it, so passing here is
a safe pass. Memory must stay flat: the writer's buffer is cleared on every flush.
"""

from __future__ import annotations

import gc
import itertools
import os
import shutil
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from fastswitch.apps.cdr import CDR  # noqa: E402
from fastswitch.esl import Parser  # noqa: E402
from fastswitch.listener import CallTracker  # noqa: E402
from fastswitch.measure import CDR_COLUMNS, CDRWriter  # noqa: E402
from fastswitch.models import Call, Job  # noqa: E402

CAPTURES = Path(os.environ.get("FASTSWITCH_CAPTURES", REPO.parent / "shared" / "esl-captures"))
T0 = 1_700_000_000.0
N = 100_000
BUDGET = 0.05


def _row(i: int) -> tuple:
    t = T0 + i / 100
    values = {
        "fastswitch_app": "app1",
        "hangup_cause": "ALLOTTED_TIMEOUT",
        "failed_calls": 0,
        "active_sessions": 2000,
        "erlangs": 1000,
        "call_uuid": f"6f0c3a2e-1b4d-4c6e-9a8b-{i:012d}",
        "callee_uuid": f"0b1c2d3e-4f50-4617-8293-{i:012d}",
        "slave": "127.0.0.1:8021",
        "worker": 0,
        "job_uuid": f"1ae987a9-f0bb-4f33-bbb7-{i:012d}",
        "job_result": f"+OK 6f0c3a2e-1b4d-4c6e-9a8b-{i:012d}",
        "caller_hangup_cause": "ALLOTTED_TIMEOUT",
        "callee_hangup_cause": "NORMAL_CLEARING",
        "caller_sip_status": None,
        "callee_sip_status": "200",
        "failed": False,
        "app_verdict": None,
        "lost": None,
        "row_kind": "call",
    }
    return tuple(values.get(c, t + 0.001 * k) for k, c in enumerate(CDR_COLUMNS))


def _best(fn, repeat: int = 5) -> float:
    """Least CPU time (this process's, seconds) of ``repeat`` runs, GC off while timing.

    CPU time rather than wall time: the box is shared, and the worker's figure it is
    compared with is CPU time too.
    """
    best = float("inf")
    for _ in range(repeat):
        gc.collect()
        gc.disable()
        try:
            t = time.process_time()
            fn()
            best = min(best, time.process_time() - t)
        finally:
            gc.enable()
    return best


def measure() -> dict[str, float]:
    rows = [_row(i) for i in range(N)]

    def baseline():
        out = []
        append = out.append
        for r in rows:
            append(r)

    tmp = tempfile.mkdtemp(prefix="bench-cdr-")
    path = os.path.join(tmp, "cdr-0.arrows")

    def writer():
        w = CDRWriter(path, flush_rows=1000, flush_ms=500)
        append = w.append
        for r in rows:
            append(r)
        w.close()

    # Per-call work lower bound: parse + track capture q (300 real calls, all events).
    capture = (CAPTURES / "q_load_minimal.bin").read_bytes()
    events = [f.event for f in Parser().feed(capture) if f.is_event]
    jobs = {
        e.body[4:].strip(): e.job_uuid
        for e in events
        if e.name == "BACKGROUND_JOB" and (e.body or "").startswith("+OK ")
    }
    n_calls = len(jobs)
    completed: list = []

    def per_call_work():
        completed.clear()
        tracker = CallTracker()
        tracker.call_complete_hooks.append(completed.append)
        for uuid, job_uuid in jobs.items():
            c = Call(uuid, app_id="app1")
            j = Job(job_uuid, sess_uuid=uuid, launch_time=T0, call=c)
            c.job = j
            tracker.expect(c, j)
        for f in Parser().feed(capture):
            if f.is_event:
                tracker.handle(f.event, T0)

    # CDR.row on those real completed calls (variables read from their real events).
    class _Tracker:
        call_complete_hooks: list = []
        active_sessions = 2000
        active_calls = 1000

    class _Null:
        def append(self, row):
            pass

    cdr = CDR(_Null(), "127.0.0.1:8021", 0)
    cdr.attach(_Tracker())
    reps = 50

    def build_rows():
        row = cdr.row
        calls = completed
        for _ in range(reps):
            for c in calls:
                row(c)

    t_base = _best(baseline)
    t_writer = _best(writer)
    t_work = _best(per_call_work)
    assert len(completed) == n_calls
    t_row = _best(build_rows)
    n_row = reps * n_calls
    size = os.path.getsize(path)

    # Memory: peak traced allocation while writing 10k vs 100k rows must be the same order.
    def peak(n: int) -> int:
        tracemalloc.start()
        w = CDRWriter(path, flush_rows=1000)
        for r in itertools.islice(rows, n):
            w.append(r)
            assert w.pending < 1000
        w.close()
        _, pk = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        return pk

    peak_small, peak_large = peak(10_000), peak(N)
    os.remove(path)
    os.rmdir(tmp)

    base_us = t_base / N * 1e6
    writer_us = t_writer / N * 1e6
    row_us = t_row / n_row * 1e6
    work_us = t_work / n_calls * 1e6
    record_us = writer_us + row_us
    return {
        "baseline_rows_per_s": N / t_base,
        "writer_rows_per_s": N / t_writer,
        "row_build_per_s": n_row / t_row,
        "baseline_us": base_us,
        "writer_us": writer_us,
        "row_us": row_us,
        "record_us": record_us,
        "per_call_work_us": work_us,
        "record_share": record_us / (work_us + record_us),
        "bytes_per_row": size / N,
        "peak_mem_10k": peak_small,
        "peak_mem_100k": peak_large,
    }


def _proc_cpu(pid: int) -> float:
    """utime + stime of a process, seconds (Linux /proc)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def worker_cpu_per_call(calls: int = 6000, rate: float = 2000.0) -> dict[str, float]:
    """CPU a real worker spends per call (events, tracking, app, hold timer, CDR), driving a
    simulated slave as fast as it goes (``rate`` is above what one simulator sustains on
    this box, so this is the top rate): the worker process's utime+stime over the run
    divided by the calls. CPU time, not wall time, so other load on the box matters little;
    at a low rate the worker's fixed timer overhead would inflate the per-call figure."""
    import time as _time

    from fastswitch import get_originator
    from fastswitch.apps.park import Park
    from fastswitch.sim import SimConfig, SimServer

    cfg = SimConfig(port=0, sip_port=0, seed=3, heartbeat_interval=0.0, max_sessions=100_000)
    run_dir = tempfile.mkdtemp(prefix="bench-worker-")
    with SimServer(cfg) as server:
        host, port = server.address
        sip = f"{host}:{cfg.sip_port}"
        orig = get_originator(
            [(host, port)],
            run_dir=run_dir,
            rate=rate,
            limit=10_000,
            max_sessions=calls,
            duration=0.2,
        )
        try:
            orig.pool.clients[0].set_orig_cmd(
                dest_url=f"doggy@{sip}", profile="external", app_name="park", proxy=f"doggy@{sip}"
            )
            orig.load_app(Park)
            pid = orig.pool.clients[0].process.pid
            cpu0, t0 = _proc_cpu(pid), _time.monotonic()
            orig.start()
            deadline = _time.monotonic() + 300
            while (orig.state != "STOPPED" or orig.count_calls()) and _time.monotonic() < deadline:
                _time.sleep(0.05)
            cpu1, t1 = _proc_cpu(pid), _time.monotonic()
            done = orig.stats()["completed"]
        finally:
            orig.shutdown()
            shutil.rmtree(run_dir, ignore_errors=True)
    return {
        "worker_calls": done,
        "worker_us_per_call": (cpu1 - cpu0) / max(done, 1) * 1e6,
        "worker_wall_s": t1 - t0,
        "worker_cpu_share": (cpu1 - cpu0) / (t1 - t0),
    }


def report(r: dict[str, float]) -> str:
    return "\n".join(
        [
            f"baseline list.append      {r['baseline_rows_per_s']:>12,.0f} rows/s "
            f"({r['baseline_us']:.3f} us/row)",
            f"CDRWriter append+flush    {r['writer_rows_per_s']:>12,.0f} rows/s "
            f"({r['writer_us']:.2f} us/row, {r['bytes_per_row']:.0f} B/row on disk)",
            f"CDR.row(call)             {r['row_build_per_s']:>12,.0f} rows/s "
            f"({r['row_us']:.2f} us/row)",
            f"recording per call        {r['record_us']:.2f} us",
            f"parse+track per call      {r['per_call_work_us']:.2f} us (lower bound of a worker's work)",
            f"recording share vs parse+track  {100 * r['record_share']:.2f} % (an upper bound)",
            f"real worker per call      {r['worker_us_per_call']:.1f} us CPU "
            f"({r['worker_calls']:.0f} calls, worker busy {100 * r['worker_cpu_share']:.0f} %)",
            f"recording share of a worker  {100 * r['worker_record_share']:.2f} % "
            f"(budget {100 * BUDGET:.0f} %)",
            f"peak traced memory 10k rows {r['peak_mem_10k'] / 1e6:.2f} MB, "
            f"100k rows {r['peak_mem_100k'] / 1e6:.2f} MB",
        ]
    )


def full() -> dict[str, float]:
    r = measure()
    r.update(worker_cpu_per_call())
    r["worker_record_share"] = r["record_us"] / r["worker_us_per_call"]
    return r


def test_recording_costs_under_5_percent_and_memory_is_flat():
    r = full()
    print("\n" + report(r))
    assert r["worker_calls"] > 0
    assert r["worker_record_share"] < BUDGET, report(r)
    # 10x the rows, same buffer: peak memory grows by well under 2x
    assert r["peak_mem_100k"] < 2 * r["peak_mem_10k"], report(r)
    assert r["writer_rows_per_s"] > 0 and r["baseline_rows_per_s"] > r["writer_rows_per_s"]


if __name__ == "__main__":
    print(report(full()))
