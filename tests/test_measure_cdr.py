"""The CDR app (fastswitch.apps.cdr): one row per call from Call/Session/Job, the failure
rule, and the rows a real FreeSWITCH capture produces through the call tracker."""

from __future__ import annotations

import math

import pytest

from fastswitch.apps.cdr import CDR
from fastswitch.esl import Parser
from fastswitch.listener import CallTracker
from fastswitch.measure import CDR_COLUMNS, CDR_SCHEMA, CDRWriter, cdr_path, load_run, read_stream
from fastswitch.models import Call, Job, Session

T0 = 1_700_000_000.0


class ListWriter:
    def __init__(self) -> None:
        self.rows: list[tuple] = []

    def append(self, row: tuple) -> None:
        self.rows.append(row)


class FakeTracker:
    """Stands in for CallTracker's hook list and counters."""

    def __init__(self, sessions: int = 6, calls: int = 3) -> None:
        self.call_complete_hooks: list = []
        self.active_sessions = sessions
        self.active_calls = calls


def as_dict(row: tuple) -> dict:
    assert len(row) == len(CDR_COLUMNS)
    return dict(zip(CDR_COLUMNS, row, strict=True))


def leg(call: Call, uuid: str, direction: str, base: float, answered=True, cause="NORMAL_CLEARING"):
    s = Session(uuid, direction, call.app_id, call, None)
    s.create_time, s.create_fs_time = base + 0.001, base
    s.originate_time = base + 0.0005
    if answered:
        s.answer_time, s.answer_fs_time = base + 0.101, base + 0.1
    s.hangup_time, s.hangup_fs_time = base + 2.001, base + 2.0
    s.destroy_time, s.destroy_fs_time = base + 2.011, base + 2.01
    s.hangup_cause = cause
    call.sessions.append(s)
    return s


def two_leg_call(uuid="A1", a_cause="ALLOTTED_TIMEOUT", answered=True) -> Call:
    call = Call(uuid, app_id="app1")
    job = Job("J1", sess_uuid=uuid, launch_time=T0 - 0.02, call=call)
    call.job = job
    leg(call, uuid, "outbound", T0, answered=answered, cause=a_cause)
    leg(call, "B1", "inbound", T0 + 0.03, answered=answered)
    job.set_result(f"+OK {uuid}\n", T0 + 0.15)
    call.answered = answered
    return call


def make_cdr(**kw) -> tuple[CDR, ListWriter, FakeTracker]:
    w = ListWriter()
    cdr = CDR(w, slave="10.0.0.1:8021", worker=2, **kw)
    tr = FakeTracker()
    cdr.attach(tr)
    return cdr, w, tr


def test_answered_call_row_maps_every_time_to_its_column():
    cdr, w, tr = make_cdr()
    tr.call_complete_hooks[0](two_leg_call())
    assert cdr.rows == 1
    r = as_dict(w.rows[0])
    assert r["fastswitch_app"] == "app1" and r["hangup_cause"] == "ALLOTTED_TIMEOUT"
    expect = {
        "caller_create": T0 + 0.001,
        "caller_req_originate": T0 + 0.0005,
        "caller_answer": T0 + 0.101,
        "caller_originate": T0 + 0.15,  # the BACKGROUND_JOB
        "caller_hangup": T0 + 2.001,
        "job_launch": T0 - 0.02,
        "callee_create": T0 + 0.031,
        "callee_answer": T0 + 0.131,
        "callee_hangup": T0 + 2.031,
        "caller_create_fs": T0,
        "caller_answer_fs": T0 + 0.1,
        "caller_hangup_fs": T0 + 2.0,
        "callee_create_fs": T0 + 0.03,
        "callee_answer_fs": T0 + 0.13,
        "callee_hangup_fs": T0 + 2.03,
    }
    for k, v in expect.items():
        assert math.isclose(r[k], v, abs_tol=1e-9), k
    assert r["call_uuid"] == "A1" and r["callee_uuid"] == "B1" and r["job_uuid"] == "J1"
    assert r["job_result"] == "+OK A1" and r["row_kind"] == "call"
    assert r["slave"] == "10.0.0.1:8021" and r["worker"] == 2
    assert r["caller_hangup_cause"] == "ALLOTTED_TIMEOUT"
    assert r["callee_hangup_cause"] == "NORMAL_CLEARING"
    assert r["failed"] is False and r["lost"] is None and r["app_verdict"] is None
    assert (r["failed_calls"], r["active_sessions"], r["erlangs"]) == (0, 6, 3)


def test_rows_fit_the_schema(tmp_path):
    cdr, w, _ = make_cdr()
    w.append(cdr.row(two_leg_call()))
    with CDRWriter(tmp_path / "cdr-0.arrows") as cw:
        for r in w.rows:
            cw.append(r)
    assert cw.dropped == 0
    assert read_stream(tmp_path / "cdr-0.arrows", CDR_SCHEMA).num_rows == 1


def test_failed_originate_without_a_channel():
    cdr, w, tr = make_cdr()
    call = Call("A2", app_id="app1")
    call.job = Job("J2", sess_uuid="A2", launch_time=T0, call=call)
    call.job.set_result("-ERR USER_BUSY\n", T0 + 0.05)
    call.failed = True
    tr.call_complete_hooks[0](call)
    r = as_dict(w.rows[0])
    assert r["failed"] is True and r["hangup_cause"] == "USER_BUSY"
    assert r["caller_hangup_cause"] == "USER_BUSY" and r["job_result"] == "-ERR USER_BUSY"
    assert r["caller_create"] is None and r["callee_create"] is None
    assert r["job_launch"] == T0 and r["caller_originate"] == T0 + 0.05
    assert r["failed_calls"] == 1


@pytest.mark.parametrize(
    "a_cause, answered, failed",
    [
        ("NORMAL_CLEARING", True, False),
        ("ALLOTTED_TIMEOUT", True, False),
        ("NO_ANSWER", False, True),
        ("NORMAL_CLEARING", False, True),  # never answered
        ("RECOVERY_ON_TIMER_EXPIRE", True, True),
    ],
)
def test_failure_rule(a_cause, answered, failed):
    cdr, w, tr = make_cdr()
    tr.call_complete_hooks[0](two_leg_call(a_cause=a_cause, answered=answered))
    r = as_dict(w.rows[0])
    assert r["failed"] is failed and r["hangup_cause"] == a_cause
    assert r["failed_calls"] == int(failed)


def test_app_verdict_fails_the_call_and_failed_var_overrides():
    cdr, w, tr = make_cdr()
    c1 = two_leg_call("A1")
    c1.vars["app_verdict"] = "bert lost_sync"
    c2 = two_leg_call("A2", a_cause="NO_ANSWER", answered=False)
    c2.vars["failed"] = False  # the app expected this outcome
    c3 = two_leg_call("A3")
    for c in (c1, c2, c3):
        tr.call_complete_hooks[0](c)
    r1, r2, r3 = (as_dict(r) for r in w.rows)
    assert r1["app_verdict"] == "bert lost_sync" and r1["failed"] is True
    assert r2["failed"] is False and r3["failed"] is False
    assert [r["failed_calls"] for r in (r1, r2, r3)] == [1, 1, 1]


def test_lost_call_is_not_counted_failed_unless_seen_failing():
    cdr, w, tr = make_cdr()
    call = two_leg_call()
    for s in call.sessions:  # up and answered when the connection dropped
        s.hangup_time = s.hangup_fs_time = s.destroy_time = s.destroy_fs_time = None
        s.hangup_cause = None
    call.lost = "lost: connection dropped"
    call.failed = True  # what the tracker sets on a lost call
    tr.call_complete_hooks[0](call)
    r = as_dict(w.rows[0])
    assert r["lost"] == "lost: connection dropped" and r["failed"] is False
    assert r["caller_hangup"] is None and r["caller_answer"] is not None
    busy = two_leg_call("A9", a_cause="USER_BUSY", answered=False)
    busy.lost = "lost: connection dropped"
    tr.call_complete_hooks[0](busy)
    assert as_dict(w.rows[1])["failed"] is True


def test_remote_call_gives_a_callee_row():
    cdr, w, tr = make_cdr()
    call = Call("A7", app_id="app1", remote=True)
    leg(call, "B7", "inbound", T0 + 0.03)
    tr.call_complete_hooks[0](call)
    r = as_dict(w.rows[0])
    assert r["row_kind"] == "callee" and r["call_uuid"] == "A7" and r["callee_uuid"] == "B7"
    assert r["caller_create"] is None and r["job_launch"] is None and r["job_uuid"] is None
    assert math.isclose(r["callee_create"], T0 + 0.031) and r["callee_answer"] is not None
    assert r["hangup_cause"] == "NORMAL_CLEARING" and r["failed"] is False
    assert r["failed_calls"] == 0


def test_detach_and_prepost_manage_the_hook():
    cdr, w, tr = make_cdr()
    assert tr.call_complete_hooks == [cdr.on_call_complete]
    cdr.detach()
    assert tr.call_complete_hooks == [] and cdr.listener is None
    tr2 = FakeTracker()
    gen = cdr.prepost(client=None, listener=tr2)
    next(gen)
    assert tr2.call_complete_hooks == [cdr.on_call_complete]
    with pytest.raises(StopIteration):
        next(gen)
    assert tr2.call_complete_hooks == []


# -- a real capture through the real call tracker --------------------------------------------


def _replay(capture: bytes, cdr: CDR, tracker: CallTracker, recv_lag: float) -> int:
    """Feed a capture's events to ``tracker`` (after registering every originate it shows,
    as Client.originate would), receive time = FreeSWITCH stamp + recv_lag."""
    events = [f.event for f in Parser().feed(capture) if f.is_event]
    a_create = {
        e.unique_id: e.timestamp / 1e6
        for e in events
        if e.name == "CHANNEL_CREATE" and e.call_direction == "outbound"
    }
    jobs = {}
    for e in events:
        if e.name == "BACKGROUND_JOB" and (e.body or "").startswith("+OK "):
            jobs[e.body[4:].strip()] = e.job_uuid
    for uuid, job_uuid in jobs.items():
        call = Call(uuid, app_id="app1")
        job = Job(job_uuid, sess_uuid=uuid, launch_time=a_create[uuid] - 0.010, call=call)
        call.job = job
        tracker.expect(call, job)
    for e in events:
        tracker.handle(e, e.timestamp / 1e6 + recv_lag)
    return len(jobs)


def test_capture_q_through_tracker_gives_one_row_per_call(tmp_path, captures_dir):
    capture = (captures_dir / "q_load_minimal.bin").read_bytes()
    tracker = CallTracker()
    with CDRWriter(cdr_path(tmp_path, 0), flush_rows=64) as writer:
        cdr = CDR(writer, slave="127.0.0.1:8021", worker=0)
        cdr.attach(tracker)
        n = _replay(capture, cdr, tracker, recv_lag=0.001)
    assert n == 300 and cdr.rows == 300
    assert tracker.active_calls == 0 and tracker.active_sessions == 0
    run = load_run(tmp_path)
    rows = run.cdr_table.to_pylist()
    assert len(rows) == 300
    assert len({r["call_uuid"] for r in rows}) == 300
    for r in rows:
        assert r["row_kind"] == "call" and r["failed"] is False and r["lost"] is None
        assert r["hangup_cause"] == "ALLOTTED_TIMEOUT"
        assert r["callee_hangup_cause"] == "NORMAL_CLEARING"
        assert r["callee_sip_status"] is None  # read for failed calls only
        assert r["job_result"] == f"+OK {r['call_uuid']}"
        # receive time = FreeSWITCH stamp + 1 ms, so each pair differs by exactly that
        for leg_ in ("caller", "callee"):
            for ev in ("create", "answer", "hangup"):
                diff = r[f"{leg_}_{ev}"] - r[f"{leg_}_{ev}_fs"]
                assert math.isclose(diff, 0.001, abs_tol=1e-5), (leg_, ev)
        assert r["callee_create"] >= r["caller_create"]
        assert math.isclose(r["caller_create"] - r["job_launch"], 0.011, abs_tol=1e-5)
    s = run.summary()
    assert s["offered"] == 300 and s["answered"] == 300 and s["failed"] == 0
    setup = s["latency"]["call_setup_latency"]
    assert setup["count"] == 300 and 0 <= setup["p50"] <= setup["max"] < 1.0
    # FreeSWITCH's clock moves in 20 ms steps: every setup latency is a multiple of it
    for r in rows:
        steps = (r["caller_answer_fs"] - r["caller_create_fs"]) / 0.020
        assert abs(steps - round(steps)) < 0.01
