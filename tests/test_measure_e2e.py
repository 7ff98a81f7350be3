"""Measurement end to end: the Originator drives a simulated slave with a fixed answer delay
and a known rejection mix; the run directory it leaves must hold one CDR row per offered
call, none lost, set-up latencies at the configured delay and failures by cause."""

from __future__ import annotations

import math
from collections import Counter

import pytest
from support import wait_for

from fastswitch import get_originator
from fastswitch.apps.park import Park
from fastswitch.measure import Measurers, format_summary, load_run, report_html
from fastswitch.sim import SimConfig, SimServer

pytestmark = pytest.mark.timeout(120)

ANSWER_DELAY = 0.2
CALLS = 60
# SIP code -> the cause the A-leg gets (the simulator's SUT rejects before the B-leg)
MIX = {486: 0.2, 503: 0.1}
CAUSES = {486: "USER_BUSY", 503: "NORMAL_TEMPORARY_FAILURE"}


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("e2e") / "run"
    cfg = SimConfig(
        port=0,
        sip_port=0,
        seed=11,
        heartbeat_interval=0.0,
        answer_delay=ANSWER_DELAY,
        reject_mix=MIX,
    )
    with SimServer(cfg) as server:
        host, port = server.address
        sip = f"{host}:{cfg.sip_port}"
        orig = get_originator(
            [(host, port)], run_dir=run_dir, rate=30, limit=40, max_sessions=CALLS, duration=0.3
        )
        try:
            orig.pool.clients[0].set_orig_cmd(
                dest_url=f"doggy@{sip}", profile="external", app_name="park", proxy=f"doggy@{sip}"
            )
            orig.load_app(Park)
            orig.start()
            assert wait_for(lambda: orig.state == "STOPPED", 60), orig.state
            assert wait_for(lambda: orig.count_calls() == 0, 30)
            live = orig.measurers  # while the workers are up: flushed on request
            live_rows = len(live.stores.CDR)
            stats, failures = orig.stats(), orig.failures
        finally:
            orig.shutdown()
    return run_dir, stats, failures, live_rows


def test_one_row_per_offered_call_none_lost(finished_run):
    run_dir, stats, _, live_rows = finished_run
    run = load_run(run_dir)
    df = run.cdr
    assert stats["originated"] == CALLS
    assert len(df) == CALLS and live_rows == CALLS
    assert df["call_uuid"].is_unique
    assert set(df["row_kind"]) == {"call"}
    assert df["lost"].isna().all()
    assert set(df["fastswitch_app"]) == {"Park"}
    assert df["caller_create"].is_monotonic_increasing
    s = run.summary()
    assert s["offered"] == CALLS and s["lost"] == 0
    assert s["answered"] + s["failed"] == CALLS
    assert s["answered"] == stats["answered"] and s["failed"] == stats["failed"]


def test_setup_latency_is_the_answer_delay(finished_run):
    run = load_run(finished_run[0])
    df = run.cdr
    ok = df[~df["failed"]]
    assert len(ok) > CALLS // 3
    assert ok["caller_answer"].notna().all() and ok["callee_answer"].notna().all()
    m = run.call_metrics
    setup = m.loc[~m["failed"], "call_setup_latency"]
    # never less than the ring time the SUT imposes; close to it (tolerance for a loaded box)
    assert (setup >= ANSWER_DELAY - 0.005).all(), setup.min()
    assert setup.median() < ANSWER_DELAY + 0.25, setup.median()
    inv = m.loc[~m["failed"], "invite_latency"]
    assert (inv >= 0).all() and inv.median() < ANSWER_DELAY
    # the B-leg answers after the ring; the A-leg sees it shortly after
    ans = m.loc[~m["failed"], "answer_latency"]
    assert (ans >= -0.005).all() and ans.median() < 0.25
    lat = run.summary()["latency"]["call_setup_latency"]
    assert lat["count"] == len(ok)
    assert math.isclose(lat["p50"], setup.median(), rel_tol=1e-9)
    # FreeSWITCH's stamps agree with the ring time too (20 ms clock steps)
    fs_setup = ok["caller_answer_fs"] - ok["caller_create_fs"]
    assert (fs_setup >= ANSWER_DELAY - 0.021).all()


def test_failures_counted_by_cause(finished_run):
    run_dir, stats, failures, _ = finished_run
    run = load_run(run_dir)
    df = run.cdr
    failed = df[df["failed"]]
    assert len(failed) > 0
    by_cause = Counter(failed["hangup_cause"])
    assert set(by_cause) <= set(CAUSES.values())
    s = run.summary()
    assert s["failed_by_cause"] == dict(by_cause)
    assert s["failed_by_cause"] == failures  # the Originator's live count agrees
    # each rejection carries its SIP status and a failed originate job
    for code, cause in CAUSES.items():
        rows = failed[failed["hangup_cause"] == cause]
        assert (rows["caller_sip_status"] == str(code)).all()
        assert rows["job_result"].str.startswith(f"-ERR {cause}").all()
        assert rows["caller_answer"].isna().all()
    # roughly the configured mix (binomial, n=60, p=0.3: far outside +-4 sigma fails)
    assert 3 <= len(failed) <= 33
    assert failures and sum(failures.values()) == stats["failed"]


def test_report_of_the_finished_run(finished_run, tmp_path):
    run_dir = finished_run[0]
    ms = Measurers(run_dir)
    assert len(ms.ops.call_metrics) == CALLS
    text = format_summary(ms.summary())
    assert "USER_BUSY" in text or "NORMAL_TEMPORARY_FAILURE" in text
    page = report_html(load_run(run_dir), tmp_path / "r.html").read_text()
    assert "data:image/png;base64," in page
    settings = load_run(run_dir).settings
    assert settings["initial"].get("rate") == 30


def test_target_rate_over_time_from_the_first_second(finished_run):
    """The workers record their counters when offering starts, so the target line of the
    run's plot is the set rate from its first second on (not 0 until the first per-second
    sample)."""
    run_dir, _, _, _ = finished_run
    ot = load_run(run_dir).summary()["rate"]["over_time"]
    assert len(ot) >= 2  # 60 calls at 30/s: two seconds of offering
    assert [e["target"] for e in ot] == [30.0] * len(ot)
    assert sum(e["achieved"] for e in ot) == CALLS


def test_rate_figures_at_the_set_rate(finished_run):
    """One worker offering at a constant 30 calls/s: the report's achieved rate (intervals
    between calls over their span) and target are the set rate."""
    rate = load_run(finished_run[0]).summary()["rate"]
    assert rate["target"] == 30.0  # constant: its time-weighted average is the setting
    # offered / span would be 60 / (59 / 30) = 30.5: one call per worker too many
    assert rate["achieved"] == pytest.approx(30.0, rel=0.012)
