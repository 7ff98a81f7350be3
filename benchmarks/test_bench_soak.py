"""Soak benchmarks (only with ``--soak`` or ``FASTSWITCH_SOAK=1``; ~10 minutes each).

- ``test_soak_memory_flat``: one worker against one simulated slave at 80% of the top
  sustained rate (from the latest ``engine-*.json`` result, else a short search) for
  ``FASTSWITCH_SOAK_SECONDS`` (600) seconds. Worker and simulator RSS are sampled every
  5 s; memory is *flat* when the median RSS of the last third is within 10% (and 16 MiB)
  of the median of the first third (after a 30 s settling period). No call may fail.
- Both check that the worker leaks no file descriptor and that the CDR files hold one row
  per call offered, minus the calls the parent reported unrecorded (a crashed worker).
- ``test_soak_with_faults``: the same with a simulator fault every 60 s (``FASTSWITCH_SOAK_FAULT_PERIOD``), in turn
  ``stall 2`` (event delivery held 2 s), ``drop`` (ESL connection aborted: the worker
  reconnects, calls in flight are lost) and ``disconnect`` (FreeSWITCH's shutdown
  notice). Reported: calls lost per fault, how long the rate takes to recover, and
  whether memory stays flat.

Results: ``benchmarks/results/soak-<time>.json``.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from typing import Any

import psutil
import pytest
from _support import RESULTS, EngineRig, median, rss, save_results, search_rate, soak_requested

from fastswitch.measure import load_run

pytestmark = pytest.mark.timeout(3600)

_DATA: dict[str, Any] = {}
SAMPLE_S = 5.0
SETTLE_S = 30.0
FAULTS = ("stall 2", "drop", "disconnect")
FAULT_PERIOD_S = float(os.environ.get("FASTSWITCH_SOAK_FAULT_PERIOD", "60"))


@pytest.fixture(scope="module", autouse=True)
def _gate(request: pytest.FixtureRequest):
    if not soak_requested(request.config):
        pytest.skip("soak benchmarks run only with --soak (or FASTSWITCH_SOAK=1)")
    yield
    if _DATA:
        print(f"\nsoak results: {save_results('soak', _DATA, quick=False)}")


def _seconds() -> float:
    return float(os.environ.get("FASTSWITCH_SOAK_SECONDS", "600"))


def _top_rate(rig: EngineRig) -> float:
    """The latest measured top rate of one worker, or a short search on ``rig``."""
    files = sorted(RESULTS.glob("engine-*.json"))
    for f in reversed(files):
        with contextlib.suppress(Exception):
            best = json.loads(f.read_text())["rate_search"]["1"]["best_rate"]
            if best > 0:
                return float(best)
    best, _ = search_rate(lambda r: rig.trial(r, 10.0, 1.0), start=500.0, budget_s=90.0)
    return best or 100.0


def _soak(faults: bool) -> dict[str, Any]:
    with EngineRig(1, hold_s=1.0) as rig:
        o = rig.o
        rate = round(0.8 * _top_rate(rig), 1)
        o.limit = int(rate * 3) + 10
        o.rate = rate
        o.duration = 1.0
        w_pid, s_pid = rig.worker_pids[0], rig.sim_pids[0]
        samples: list[dict[str, float]] = []
        events: list[dict[str, Any]] = []
        stop = threading.Event()
        t_start = time.monotonic()

        def sampler() -> None:
            while not stop.wait(SAMPLE_S):
                with contextlib.suppress(Exception):
                    st = o.stats()
                    samples.append(
                        {
                            "t": time.monotonic() - t_start,
                            "worker_rss": rss(rig.worker_pids[0]),
                            "worker_fds": psutil.Process(rig.worker_pids[0]).num_fds(),
                            "sim_rss": rss(s_pid),
                            "originated": st["originated"],
                            "failed": st["failed"],
                            "active": st["active"],
                        }
                    )

        th = threading.Thread(target=sampler, daemon=True)
        meter = rig.meter()
        meter.start()
        st0 = o.stats()
        o.start()
        th.start()
        duration = _seconds()
        k = 0
        try:
            while time.monotonic() - t_start < duration:
                time.sleep(min(FAULT_PERIOD_S, duration - (time.monotonic() - t_start)))
                if faults and time.monotonic() - t_start < duration - 10:
                    fault = FAULTS[k % len(FAULTS)]
                    k += 1
                    before = o.stats()
                    with contextlib.suppress(Exception):
                        o.pool.clients[0].request(("api", f"sim fault {fault}"), timeout=5.0)
                    events.append({"t": time.monotonic() - t_start, "fault": fault, **before})
        finally:
            wall, cpu = meter.stop()
            rig.drain(timeout=30.0)
            stop.set()
            th.join()
        st1 = o.stats()
        failures = o.failures
        w_end = rss(w_pid) if w_pid == rig.worker_pids[0] else None
        run_dir = o.run_dir
    # the run's CDR files, read back after shutdown: one row per call offered, except the
    # rows the parent reported lost with a crashed worker
    summary = load_run(run_dir).summary()
    settled = [s for s in samples if s["t"] >= SETTLE_S]
    third = max(1, len(settled) // 3)
    first = median(s["worker_rss"] for s in settled[:third])
    last = median(s["worker_rss"] for s in settled[-third:])
    growth = last - first
    offered = st1["originated"] - st0["originated"]
    return {
        "rate": rate,
        "seconds": duration,
        "offered": offered,
        "achieved": offered / wall,
        "failed": st1["failed"] - st0["failed"],
        "failures": failures,
        "worker_us_per_call": cpu["worker"] / max(offered, 1) * 1e6,
        "sim_us_per_call": cpu["sim"] / max(offered, 1) * 1e6,
        "worker_rss_first_third": first,
        "worker_rss_last_third": last,
        "worker_rss_growth": growth,
        "worker_rss_growth_per_min": growth / max((settled[-1]["t"] - settled[0]["t"]) / 60, 1e-9)
        if settled
        else float("nan"),
        "worker_rss_end": w_end,
        "memory_flat": abs(growth) <= max(0.10 * first, 16 * 2**20),
        "worker_fds_first": settled[0]["worker_fds"] if settled else None,
        "worker_fds_last": settled[-1]["worker_fds"] if settled else None,
        "cdr_rows": summary["offered"],
        "offered_total": summary["offered_total"],
        "unrecorded": summary["unrecorded"],
        "lost": summary["lost"],
        "faults": events,
        "samples": samples,
    }


def test_soak_memory_flat() -> None:
    """80% of the top rate for 10 minutes: no failed call, worker memory flat."""
    res = _soak(faults=False)
    _DATA["plain"] = res
    print(
        f"\nsoak {res['seconds']:.0f}s at {res['rate']}/s: {res['offered']} calls, "
        f"{res['failed']} failed, worker RSS {res['worker_rss_first_third'] / 2**20:.1f} -> "
        f"{res['worker_rss_last_third'] / 2**20:.1f} MiB"
    )
    assert res["failed"] == 0, res["failures"]
    assert res["memory_flat"]
    _assert_no_leak_and_every_row(res)


def test_soak_with_faults() -> None:
    """The same soak with a simulator fault every minute: the worker recovers each time
    and memory stays flat (calls in flight at a drop are lost and counted)."""
    res = _soak(faults=True)
    _DATA["faults"] = res
    print(
        f"\nsoak with {len(res['faults'])} faults: {res['offered']} calls, {res['failed']} "
        f"failed/lost {res['failures']}, achieved {res['achieved']:.1f}/s of {res['rate']}"
    )
    assert res["memory_flat"]
    assert res["achieved"] > 0.8 * res["rate"]
    _assert_no_leak_and_every_row(res)


def _assert_no_leak_and_every_row(res: dict[str, Any]) -> None:
    """No file descriptor leaked across the faults' reconnects, and rows = offered − the
    calls reported unrecorded (calls lost in flight still have their row, marked lost)."""
    assert res["worker_fds_last"] <= res["worker_fds_first"] + 2, res
    assert res["cdr_rows"] == res["offered_total"] - res["unrecorded"], res
