"""measure.py: CDR/counter writers, the stream reader, metrics, summary, plot and report."""

from __future__ import annotations

import base64
import json
import math
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from support import SEED_CDR_COLUMNS

from fastswitch import measure
from fastswitch.measure import (
    CDR_COLUMNS,
    CDR_SCHEMA,
    COUNTER_SCHEMA,
    CDRWriter,
    CounterWriter,
    Measurers,
    SettingsLog,
    cdr_path,
    counters_path,
    format_summary,
    load_run,
    new_run_dir,
    read_stream,
    report_html,
)

REPO = Path(__file__).resolve().parent.parent
T0 = 1_700_000_000.0


def make_row(i: int = 0, **kw) -> tuple:
    """A realistic CDR row of an answered two-leg call created at T0 + i/10 (overrides by name).

    Offsets from job_launch: A create +18 ms, B create +24 ms, B answer +24.5 ms,
    A answer +25 ms, job reply +36 ms, hangups +2 s (like capture q).
    """
    launch = T0 + i / 10
    uuid = f"a-{i:06d}"
    row = {
        "fastswitch_app": "app1",
        "hangup_cause": "ALLOTTED_TIMEOUT",
        "caller_create": launch + 0.018,
        "caller_answer": launch + 0.025,
        "caller_req_originate": launch + 0.017,
        "caller_originate": launch + 0.036,
        "caller_hangup": launch + 2.0,
        "job_launch": launch,
        "callee_create": launch + 0.024,
        "callee_answer": launch + 0.0245,
        "callee_hangup": launch + 2.002,
        "failed_calls": 0,
        "active_sessions": 8,
        "erlangs": 4,
        "call_uuid": uuid,
        "callee_uuid": f"b-{i:06d}",
        "slave": "127.0.0.1:8021",
        "worker": 0,
        "job_uuid": f"j-{i:06d}",
        "job_result": f"+OK {uuid}",
        "caller_hangup_cause": "ALLOTTED_TIMEOUT",
        "callee_hangup_cause": "NORMAL_CLEARING",
        "caller_sip_status": "200",
        "callee_sip_status": "200",
        "failed": False,
        "app_verdict": None,
        "lost": None,
        "row_kind": "call",
        "caller_create_fs": launch + 0.00,
        "caller_answer_fs": launch + 0.02,
        "caller_hangup_fs": launch + 2.0,
        "callee_create_fs": launch + 0.02,
        "callee_answer_fs": launch + 0.02,
        "callee_hangup_fs": launch + 2.0,
    }
    unknown = set(kw) - set(row)
    assert not unknown, unknown
    row.update(kw)
    return tuple(row[c] for c in CDR_COLUMNS)


def row_dict(row: tuple) -> dict:
    return dict(zip(CDR_COLUMNS, row, strict=True))


def write_cdr(path: Path, rows, **kw) -> None:
    with CDRWriter(path, **kw) as w:
        for r in rows:
            w.append(r)


# -- schema ---------------------------------------------------------------------------------


def test_schema_seed_columns_first_then_extras_with_dtypes():
    assert list(CDR_COLUMNS[: len(SEED_CDR_COLUMNS)]) == SEED_CDR_COLUMNS
    types = {f.name: f.type for f in CDR_SCHEMA}
    assert types["fastswitch_app"] == pa.string() and types["hangup_cause"] == pa.string()
    for c in SEED_CDR_COLUMNS[2:11]:
        assert types[c] == pa.float64(), c
    for c in ("failed_calls", "active_sessions", "erlangs", "worker"):
        assert types[c] == pa.int64(), c
    assert types["failed"] == pa.bool_()
    for c in ("caller_create_fs", "caller_answer_fs", "caller_hangup_fs"):
        assert types[c] == pa.float64()
    for c in ("callee_create_fs", "callee_answer_fs", "callee_hangup_fs"):
        assert types[c] == pa.float64()
    extras = {
        "call_uuid",
        "callee_uuid",
        "slave",
        "job_uuid",
        "job_result",
        "caller_hangup_cause",
        "callee_hangup_cause",
        "caller_sip_status",
        "callee_sip_status",
        "app_verdict",
        "lost",
        "row_kind",
    }
    for c in extras:
        assert types[c] == pa.string(), c
    assert len(CDR_COLUMNS) == len(set(CDR_COLUMNS))


# -- writer / reader ------------------------------------------------------------------------


def test_round_trip_values_and_nulls(tmp_path):
    rows = [make_row(i) for i in range(5)]
    rows.append(
        make_row(
            5,
            caller_answer=None,
            callee_create=None,
            callee_answer=None,
            callee_hangup=None,
            callee_uuid=None,
            failed=True,
            hangup_cause="USER_BUSY",
            app_verdict="bert lost_sync",
            lost="lost: connection dropped",
        )
    )
    path = tmp_path / "cdr-0.arrows"
    write_cdr(path, rows)
    table = read_stream(path)
    assert table.schema.equals(CDR_SCHEMA)
    assert table.num_rows == 6
    got = [tuple(r[c] for c in CDR_COLUMNS) for r in table.to_pylist()]
    assert got == rows


def test_file_is_a_standard_arrow_stream(tmp_path):
    """Byte-identical to pyarrow's own stream writer given the same batches; the schema is
    on disk from the start."""
    path = tmp_path / "cdr-0.arrows"
    w = CDRWriter(path, flush_rows=2)
    assert pa.ipc.open_stream(path.read_bytes()).schema.equals(CDR_SCHEMA)
    for i in range(5):
        w.append(make_row(i))
    w.close()
    with pa.ipc.open_stream(path.read_bytes()) as reader:
        batches = list(reader)
    assert [b.num_rows for b in batches] == [2, 2, 1]
    ref = pa.BufferOutputStream()
    with pa.ipc.new_stream(ref, CDR_SCHEMA) as ws:
        for b in batches:
            ws.write_batch(b)
    assert ref.getvalue().to_pybytes() == path.read_bytes()


def test_flush_by_rows_writes_batches_and_keeps_buffer_small(tmp_path):
    path = tmp_path / "cdr-0.arrows"
    w = CDRWriter(path, flush_rows=3, flush_ms=10**9)
    for i in range(7):
        w.append(make_row(i))
        assert w.pending < 3
    assert w.batches_written == 2 and w.rows_written == 6 and w.pending == 1
    # Readable while the writer is still open: the two batches, not the pending row.
    assert read_stream(path, CDR_SCHEMA).num_rows == 6
    w.close()
    assert read_stream(path, CDR_SCHEMA).num_rows == 7
    w.close()  # idempotent


def test_flush_by_time_through_maybe_flush(tmp_path):
    path = tmp_path / "cdr-0.arrows"
    w = CDRWriter(path, flush_rows=1000, flush_ms=500)
    assert w.maybe_flush() is False  # nothing buffered
    w.append(make_row(0))
    start = time.monotonic()
    assert w.maybe_flush(now=start - 10.0) is False  # "now" before the deadline
    assert w.pending == 1 and read_stream(path, CDR_SCHEMA).num_rows == 0
    assert w.maybe_flush(now=start + 0.501) is True  # 501 ms after the writer was created
    assert w.pending == 0 and read_stream(path, CDR_SCHEMA).num_rows == 1
    w.close()


def test_bad_row_is_dropped_not_the_batch(tmp_path, caplog):
    path = tmp_path / "cdr-0.arrows"
    w = CDRWriter(path, flush_rows=4)
    w.append(make_row(0))
    w.append(make_row(1)[:-1])  # one value short
    w.append(make_row(2, caller_create="not a time"))
    w.append(make_row(3))
    w.close()
    assert w.dropped == 2
    w2 = CDRWriter(tmp_path / "cdr-1.arrows", flush_rows=2)
    w2.append(None)  # not even a sequence
    w2.append(make_row(4))
    w2.close()
    assert w2.dropped == 1
    assert read_stream(tmp_path / "cdr-1.arrows").column("call_uuid").to_pylist() == ["a-000004"]
    table = read_stream(path, CDR_SCHEMA)
    assert table.column("call_uuid").to_pylist() == ["a-000000", "a-000003"]
    assert "caller_create" in caplog.text


def test_truncated_stream_yields_every_complete_batch(tmp_path):
    path = tmp_path / "cdr-0.arrows"
    sizes = []
    w = CDRWriter(path, flush_rows=2)
    for i in range(8):
        w.append(make_row(i))
        if w.pending == 0:
            sizes.append(path.stat().st_size)
    w.close()
    data = path.read_bytes()
    cut = tmp_path / "cut.arrows"
    # Every batch boundary and the bytes around it, plus a stride through the rest.
    offsets = set(range(0, len(data) + 1, 97)) | {len(data)}
    for b in sizes:
        offsets |= set(range(max(0, b - 4), min(len(data), b + 4) + 1))
    for size in sorted(offsets):
        cut.write_bytes(data[:size])
        n = read_stream(cut, CDR_SCHEMA).num_rows
        complete = sum(1 for s in sizes if s <= size)
        assert n == 2 * complete, (size, n, complete)


WRITER_CHILD = textwrap.dedent(
    """
    import sys, time
    sys.path.insert(0, sys.argv[2])
    from fastswitch.measure import CDRWriter
    from test_measure import make_row
    w = CDRWriter(sys.argv[1], flush_rows=10, flush_ms=10**9)
    i = 0
    for b in range(25):
        for _ in range(10):
            w.append(make_row(i)); i += 1
        print("flushed", w.rows_written, flush=True)
    for _ in range(7):  # buffered, never flushed
        w.append(make_row(i)); i += 1
    print("ready", w.rows_written, w.pending, flush=True)
    while True:
        w.append(make_row(i)); i += 1
        if w.pending == 9:
            print("spinning", flush=True)
            time.sleep(60)
    """
)


def test_sigkilled_writer_leaves_every_flushed_batch(tmp_path):
    path = tmp_path / "cdr-0.arrows"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO / "tests"), str(REPO)]))
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER_CHILD, str(path), str(REPO)],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        flushed = 0
        for line in proc.stdout:
            if line.startswith("flushed"):
                flushed = int(line.split()[1])
            if line.startswith("spinning"):
                break
        assert flushed == 250
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        assert proc.returncode == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
        proc.stdout.close()
    table = read_stream(path, CDR_SCHEMA)
    assert table.num_rows == 250  # every flushed row, none of the buffered ones
    assert table.column("call_uuid").to_pylist() == [f"a-{i:06d}" for i in range(250)]
    assert load_run(tmp_path).cdr_table.num_rows == 250


def test_missing_and_empty_files_read_as_empty_tables(tmp_path):
    assert read_stream(tmp_path / "nope.arrows", CDR_SCHEMA).num_rows == 0
    (tmp_path / "cdr-0.arrows").write_bytes(b"")
    run = load_run(tmp_path)
    assert run.cdr_table.num_rows == 0
    s = run.summary()
    assert s["offered"] == 0 and s["latency"]["call_setup_latency"]["count"] == 0


def test_counter_writer_round_trip_and_order(tmp_path):
    for worker in (1, 0):
        with CounterWriter(counters_path(tmp_path, worker), worker=worker) as cw:
            for k in range(3):
                cw.append((T0 + k, 10 * k, 9 * k, k, 5 + worker, 10 + worker, 15.0, 100.0))
            assert cw.rows_written == 3  # every sample written at once (flush_rows=1)
    table = measure.read_counters(tmp_path)
    assert table.schema.equals(COUNTER_SCHEMA)
    assert table.column("worker").to_pylist() == [0, 1, 0, 1, 0, 1]
    assert table.column("offered").to_pylist() == [0, 0, 10, 10, 20, 20]
    assert table.column("rate_target").to_pylist() == [15.0] * 6
    cw = CounterWriter(counters_path(tmp_path, 7), worker=7)
    cw.record(
        offered=1,
        answered=1,
        failed=0,
        active_calls=1,
        active_sessions=2,
        rate_target=3,
        limit_target=4,
        time_=T0,
    )
    cw.close()
    r = read_stream(counters_path(tmp_path, 7), COUNTER_SCHEMA).to_pylist()
    assert r == [
        dict(
            time=T0,
            worker=7,
            offered=1,
            answered=1,
            failed=0,
            active_calls=1,
            active_sessions=2,
            rate_target=3.0,
            limit_target=4.0,
        )
    ]


# -- run directory, settings ----------------------------------------------------------------


def test_new_run_dir_is_fresh_and_named_by_time(tmp_path):
    a = new_run_dir(tmp_path)
    b = new_run_dir(tmp_path)
    assert a != b and a.is_dir() and b.is_dir()
    assert re.fullmatch(r"\d{8}-\d{6}(-\d+)?", a.name)
    assert cdr_path(a, 3) == a / "cdr-3.arrows"
    assert counters_path(a, 3) == a / "counters-3.arrows"


def test_new_run_dir_default_base_is_cwd_fastswitch_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    d = new_run_dir()
    assert d.parent == tmp_path / "fastswitch-runs"


def test_settings_log_records_changes_and_value_at(tmp_path):
    log = SettingsLog(tmp_path, initial={"rate": 10, "limit": 100})
    log.record("rate", 20, time_=T0 + 5)
    log.record("limit", 50, time_=T0 + 7)
    data = json.loads((tmp_path / "settings.json").read_text())
    assert data["initial"] == {"rate": 10, "limit": 100}
    assert data["changes"] == [
        {"time": T0 + 5, "setting": "rate", "value": 20},
        {"time": T0 + 7, "setting": "limit", "value": 50},
    ]
    assert log.value_at("rate", T0 + 4.9) == 10 and log.value_at("rate", T0 + 5) == 20
    assert log.value_at("limit", T0 + 100) == 50 and log.value_at("duration", T0) is None
    again = SettingsLog(tmp_path)  # continues the file
    again.record("rate", 30, time_=T0 + 9)
    assert [c["value"] for c in measure.read_settings(tmp_path)["changes"]] == [20, 50, 30]


def test_flat_settings_file_reads_as_initial(tmp_path):
    (tmp_path / "settings.json").write_text(json.dumps({"rate": 40, "limit": 7}))
    s = measure.read_settings(tmp_path)
    assert s["initial"] == {"rate": 40, "limit": 7} and s["changes"] == []


# -- merge and order ------------------------------------------------------------------------


def test_callee_rows_merge_into_caller_rows_across_workers(tmp_path):
    caller_only = dict(
        callee_uuid=None,
        callee_create=None,
        callee_answer=None,
        callee_hangup=None,
        callee_hangup_cause=None,
        callee_sip_status=None,
        callee_create_fs=None,
        callee_answer_fs=None,
        callee_hangup_fs=None,
    )
    # Worker 0 originated calls 0..2 (the SUT routed their B-legs to worker 1's slave).
    w0 = [make_row(i, **caller_only) for i in (2, 0, 1)]
    # Worker 1: B-leg rows for calls 0 and 1 (not 2), plus one whose caller row is missing.
    none_a = {
        c: None
        for c in (
            "caller_create",
            "caller_answer",
            "caller_req_originate",
            "caller_originate",
            "caller_hangup",
            "job_launch",
            "caller_create_fs",
            "caller_answer_fs",
            "caller_hangup_fs",
            "job_uuid",
            "job_result",
            "caller_hangup_cause",
            "caller_sip_status",
        )
    }
    w1 = [
        make_row(i, row_kind="callee", worker=1, slave="127.0.0.2:8021", **none_a)
        for i in (1, 0, 9)
    ]
    w1[0] = make_row(
        1,
        row_kind="callee",
        worker=1,
        slave="127.0.0.2:8021",
        app_verdict="bert lost_sync",
        failed=True,
        **none_a,
    )
    write_cdr(cdr_path(tmp_path, 0), w0)
    write_cdr(cdr_path(tmp_path, 1), w1)
    t = load_run(tmp_path).cdr_table
    rows = t.to_pylist()
    assert [r["call_uuid"] for r in rows] == ["a-000000", "a-000001", "a-000002", "a-000009"]
    assert [r["row_kind"] for r in rows] == ["call", "call", "call", "callee"]
    r0, r1, r2, orphan = rows
    assert r0["callee_uuid"] == "b-000000" and r0["callee_create"] == T0 + 0.024
    assert r0["callee_hangup_cause"] == "NORMAL_CLEARING" and r0["worker"] == 0
    assert r0["caller_create"] == T0 + 0.018 and r0["failed"] is False
    assert r1["app_verdict"] == "bert lost_sync" and r1["failed"] is True  # from the B side
    assert r2["callee_create"] is None  # its B-leg row never came
    assert orphan["caller_create"] is None and orphan["callee_create"] == T0 + 0.9 + 0.024
    s = load_run(tmp_path).summary()
    assert s["offered"] == 3 and s["callee_only"] == 1 and s["failed"] == 1


def test_cdr_ordered_by_caller_create_with_dataframe(tmp_path):
    write_cdr(cdr_path(tmp_path, 0), [make_row(i) for i in (4, 0, 2)])
    write_cdr(cdr_path(tmp_path, 1), [make_row(i, worker=1) for i in (3, 1)])
    df = load_run(tmp_path).cdr
    assert list(df.columns) == list(CDR_COLUMNS)
    assert df["call_uuid"].tolist() == [f"a-{i:06d}" for i in range(5)]
    assert df["worker"].tolist() == [0, 1, 0, 1, 0]
    assert df["caller_create"].is_monotonic_increasing
    assert list(df.index) == list(range(5))


# -- metrics --------------------------------------------------------------------------------


def test_call_metrics_definitions_on_hand_built_rows(tmp_path):
    creates = [0.0, 1.0, 1.5, 1.75, 3.75]
    rows = []
    for i, c in enumerate(creates):
        rows.append(
            make_row(
                i,
                job_launch=T0 + c - 0.010,
                caller_req_originate=T0 + c - 0.004,
                caller_create=T0 + c,
                callee_create=T0 + c + 0.030,
                callee_answer=T0 + c + 0.100,
                caller_answer=T0 + c + 0.125,
                caller_hangup=T0 + c + 2.5,
                failed=(i == 2),
            )
        )
    rows[3] = make_row(
        3,
        job_launch=T0 + creates[3] - 0.010,
        caller_req_originate=T0 + creates[3] - 0.004,
        caller_create=T0 + creates[3],
        caller_answer=None,
        callee_create=None,
        callee_answer=None,
        caller_hangup=T0 + creates[3] + 0.5,
        failed=True,
        hangup_cause="USER_BUSY",
    )
    write_cdr(cdr_path(tmp_path, 0), rows)
    m = measure.call_metrics(load_run(tmp_path).cdr_table, window=2).to_pydict()
    assert list(m) == list(measure.CALL_METRICS_COLUMNS)
    for k in ("call_setup_latency", "invite_latency", "answer_latency", "originate_latency"):
        assert len(m[k]) == 5
    close = lambda a, b: (a is None and b is None) or math.isclose(a, b, abs_tol=1e-6)  # noqa: E731
    exp_setup = [0.125, 0.125, 0.125, None, 0.125]
    assert all(close(a, b) for a, b in zip(m["call_setup_latency"], exp_setup, strict=True))
    exp_inv = [0.030, 0.030, 0.030, None, 0.030]
    assert all(close(a, b) for a, b in zip(m["invite_latency"], exp_inv, strict=True))
    exp_ans = [0.025, 0.025, 0.025, None, 0.025]
    assert all(close(a, b) for a, b in zip(m["answer_latency"], exp_ans, strict=True))
    assert all(close(a, 0.006) for a in m["originate_latency"])
    exp_dur = [2.5, 2.5, 2.5, 0.5, 2.5]
    assert all(close(a, b) for a, b in zip(m["call_duration"], exp_dur, strict=True))
    # call_rate = 1/diff(caller_create): gaps 1, .5, .25, 2
    exp_rate = [None, 1.0, 2.0, 4.0, 0.5]
    assert all(close(a, b) for a, b in zip(m["call_rate"], exp_rate, strict=True))
    # avg_call_rate over window=2: m/(t[i]-t[i-m]), m = min(i, 2), NaN until m reaches 2
    exp_avg = [None, None, 2 / 1.5, 2 / 0.75, 2 / 2.25]
    assert all(close(a, b) for a, b in zip(m["avg_call_rate"], exp_avg, strict=True))
    # failed: rows 2 and 3; answered: all but row 3
    exp_sfr = [0, 0, 1 / 3, 2 / 4, 2 / 5]
    assert all(close(a, b) for a, b in zip(m["seizure_fail_rate"], exp_sfr, strict=True))
    exp_asr = [1, 1, 1, 3 / 4, 4 / 5]
    assert all(close(a, b) for a, b in zip(m["answer_seizure_ratio"], exp_asr, strict=True))
    assert m["failed"] == [False, False, True, True, False]
    assert m["caller_create"] == [T0 + c for c in creates]


def test_avg_call_rate_ignores_simultaneous_first_arrivals(tmp_path):
    """Two workers' first calls created in the same millisecond, then a steady 10 calls/s:
    the average rate never reads as thousands per second."""
    rows = [make_row(0), make_row(0, call_uuid="a-twin", caller_create=T0 + 0.0181)]
    rows += [make_row(i) for i in range(1, 40)]
    write_cdr(cdr_path(tmp_path, 0), rows)
    avg = [
        a for a in measure.call_metrics(load_run(tmp_path).cdr_table).to_pydict()["avg_call_rate"]
    ]
    finite = [a for a in avg if a is not None and math.isfinite(a)]
    assert finite, avg
    assert max(finite) < 12.0
    assert math.isclose(finite[-1], 10.0, rel_tol=0.1)


def test_call_rate_clipped_and_simultaneous_creates(tmp_path):
    rows = [make_row(i, caller_create=T0 + x) for i, x in enumerate([0.0, 0.0, 0.0001, 0.5])]
    write_cdr(cdr_path(tmp_path, 0), rows)
    m = measure.call_metrics(load_run(tmp_path).cdr_table)
    r = m.column("call_rate").to_pylist()
    assert r[0] is None and r[1] == 1000.0 and r[2] == 1000.0
    assert math.isclose(r[3], 1 / 0.4999, rel_tol=1e-5)


def test_run_call_metrics_is_a_dataframe_in_cdr_order(tmp_path):
    write_cdr(cdr_path(tmp_path, 0), [make_row(i) for i in (1, 0)])
    run = load_run(tmp_path)
    df = run.call_metrics
    assert df["call_uuid"].tolist() == run.cdr["call_uuid"].tolist() == ["a-000000", "a-000001"]
    assert np.allclose(df["call_setup_latency"], 0.007, rtol=0, atol=1e-6)


# -- summary --------------------------------------------------------------------------------


def _summary_run(tmp_path, counters: bool = True) -> Path:
    rows = []
    # 100 answered calls on two slaves, 10 per second, setup latency 1..100 ms.
    for i in range(100):
        create = T0 + i / 10
        worker = i % 2
        rows.append(
            make_row(
                i,
                caller_create=create,
                caller_answer=create + (i + 1) / 1000,
                callee_create=create + 0.002,
                callee_answer=create + (i + 1) / 1000 - 0.0005,
                caller_hangup=create + 1.0,  # 10 calls overlap at any time
                worker=worker,
                slave=f"10.0.0.{worker}:8021",
                fastswitch_app="app1" if i < 80 else "app2",
            )
        )
    # failures: 3 busy, 2 no-answer; 1 lost
    for k in range(5):
        i = 100 + k
        create = T0 + 10 + k / 10
        cause = "USER_BUSY" if k < 3 else "NO_ANSWER"
        rows.append(
            make_row(
                i,
                caller_create=create,
                caller_answer=None,
                callee_create=None,
                callee_answer=None,
                caller_hangup=create + 0.05,
                failed=True,
                hangup_cause=cause,
            )
        )
    rows.append(
        make_row(
            105,
            caller_create=T0 + 10.5,
            callee_create=T0 + 10.502,
            caller_answer=None,
            callee_answer=None,
            caller_hangup=None,
            hangup_cause=None,
            lost="lost: connection dropped",
        )
    )
    for w in (0, 1):
        write_cdr(cdr_path(tmp_path, w), [r for r in rows if row_dict(r)["worker"] == w])
    log = SettingsLog(tmp_path, initial={"rate": 10, "limit": 12})
    log.record("rate", 20, time_=T0 + 5.0)
    if counters:
        for w in (0, 1):
            with CounterWriter(counters_path(tmp_path, w), worker=w) as cw:
                for k in range(11):
                    share = 5.0 if k < 5 else 10.0  # the workers' rate shares: 10 then 20 /s
                    cw.append((T0 + k + 0.25, 5 * k, 5 * k, 0, 5 + w, 10, share, 6.0))
    return tmp_path


def test_summary_counts_percentiles_rates_and_groups(tmp_path):
    s = load_run(_summary_run(tmp_path)).summary()
    assert s["offered"] == 106 and s["answered"] == 100 and s["failed"] == 5
    assert s["failed_by_cause"] == {"USER_BUSY": 3, "NO_ANSWER": 2}
    assert s["lost"] == 1 and s["lost_by_reason"] == {"lost: connection dropped": 1}
    setup = s["latency"]["call_setup_latency"]
    assert setup["count"] == 100
    # values 1..100 ms: numpy linear percentiles
    assert math.isclose(setup["p50"], 0.0505, abs_tol=1e-6)
    assert math.isclose(setup["p90"], 0.0901, abs_tol=1e-6)
    assert math.isclose(setup["p99"], 0.09901, abs_tol=1e-6)
    assert math.isclose(setup["max"], 0.100, abs_tol=1e-6)
    assert math.isclose(setup["mean"], 0.0505, abs_tol=1e-6)
    ans = s["latency"]["answer_latency"]
    assert math.isclose(ans["p50"], 0.0005, abs_tol=1e-6) and ans["count"] == 100
    inv = s["latency"]["invite_latency"]
    assert math.isclose(inv["max"], 0.002, abs_tol=1e-6)
    assert inv["count"] == 101  # the lost call got its B-leg
    assert s["concurrency"]["max_active_calls"] >= 10
    assert s["concurrency"]["limit"] == 12.0  # 6 + 6 from the counters
    assert s["concurrency"]["max_active_counters"] == 11  # 5 + 6 summed over the workers
    assert math.isclose(s["duration"], 10.5, abs_tol=1e-6)
    # 106 calls from two workers over 10.5 s: 104 intervals between a worker's calls
    assert math.isclose(s["rate"]["achieved"], 104 / 10.5)
    # the target averaged over the span: 10/s until the counters' step at +5.25 s, then 20
    assert math.isclose(s["rate"]["target"], (5.25 * 10 + 5.25 * 20) / 10.5)
    ot = s["rate"]["over_time"]
    assert len(ot) == 11
    assert [e["achieved"] for e in ot[:10]] == [10] * 10
    assert ot[10]["achieved"] == 6
    assert [e["target"] for e in ot[:5]] == [10] * 5 and ot[5]["target"] == 20
    assert s["per_app"]["app1"]["offered"] == 86 and s["per_app"]["app2"]["offered"] == 20
    assert s["per_app"]["app1"]["failed"] == 5
    p2 = s["per_app"]["app2"]["latency"]["call_setup_latency"]
    assert math.isclose(p2["max"], 0.100, abs_tol=1e-6) and p2["count"] == 20
    assert s["per_slave"]["10.0.0.1:8021"]["offered"] == 50
    assert s["per_slave"]["127.0.0.1:8021"]["offered"] == 6
    text = format_summary(s)
    assert "USER_BUSY" in text and "app2" in text and "10.0.0.1:8021" in text
    assert "50.5" in text  # setup p50 in ms
    json.dumps(s)  # plain data


def test_targets_from_settings_changes_without_counters(tmp_path):
    s = load_run(_summary_run(tmp_path, counters=False)).summary()
    # the setting: 10/s for the first 5 s of the 10.5 s span, then 20/s
    assert math.isclose(s["rate"]["target"], (5 * 10 + 5.5 * 20) / 10.5)
    assert s["concurrency"]["limit"] == 12
    assert s["concurrency"]["max_active_counters"] is None
    ot = s["rate"]["over_time"]
    assert [e["target"] for e in ot[:5]] == [10] * 5 and ot[5]["target"] == 20


def test_unlimited_limit_target_reads_as_none(tmp_path):
    write_cdr(cdr_path(tmp_path, 0), [make_row(i) for i in range(3)])
    with CounterWriter(counters_path(tmp_path, 0), worker=0) as cw:
        cw.append((T0, 0, 0, 0, 0, 0, 10.0, float(2**53)))
    assert load_run(tmp_path).summary()["concurrency"]["limit"] is None


def test_max_active_calls_from_intervals(tmp_path):
    spans = [(0, 10), (1, 2), (1.5, 3), (2, 4), (5, 6)]  # at 2.0: (0,10) (1.5,3) (2,4) -> 3
    rows = [
        make_row(i, caller_create=T0 + a, caller_hangup=T0 + b) for i, (a, b) in enumerate(spans)
    ]
    write_cdr(cdr_path(tmp_path, 0), rows)
    assert load_run(tmp_path).summary()["concurrency"]["max_active_calls"] == 3


def test_target_from_counters_without_settings(tmp_path):
    write_cdr(cdr_path(tmp_path, 0), [make_row(i) for i in range(3)])
    for w in (0, 1):
        with CounterWriter(counters_path(tmp_path, w), worker=w) as cw:
            cw.append((T0, 0, 0, 0, 0, 0, 7.5, 50.0))
    s = load_run(tmp_path).summary()
    assert s["rate"]["target"] == 15.0 and s["concurrency"]["limit"] == 100.0


def _paced_run(tmp_path, times_by_worker, rate_at, sample_every: float = 0.05) -> Path:
    """CDR rows of calls created at the given times per worker, and each worker's counters
    sampling its share of the target ``rate_at(t - T0)`` every ``sample_every`` s."""
    workers = len(times_by_worker)
    end = max(max(ts) for ts in times_by_worker)
    for w, ts in enumerate(times_by_worker):
        rows = [
            make_row(k, caller_create=t, worker=w, call_uuid=f"w{w}-{k}") for k, t in enumerate(ts)
        ]
        write_cdr(cdr_path(tmp_path, w), rows)
        with CounterWriter(counters_path(tmp_path, w), worker=w) as cw:
            for k in range(int((end - T0) / sample_every) + 2):
                t = T0 + k * sample_every
                cw.append((t, 0, 0, 0, 0, 0, rate_at(k * sample_every) / workers, 100.0))
    return tmp_path


def test_rate_figures_at_a_known_constant_rate(tmp_path):
    """Two workers at 10 calls/s each for 5 s: 20 calls/s achieved and targeted exactly
    (not 100 calls / 4.9 s, one call per worker too many)."""
    ts = [[T0 + k / 10 for k in range(50)] for _w in range(2)]
    s = load_run(_paced_run(tmp_path, ts, lambda t: 20.0)).summary()
    assert s["offered"] == 100 and s["duration"] == pytest.approx(4.9, rel=1e-6)
    assert s["rate"]["achieved"] == pytest.approx(20.0, rel=1e-6)
    assert s["rate"]["target"] == pytest.approx(20.0, rel=1e-9)


def test_rate_figures_of_a_ramp_average_over_the_offering_period(tmp_path):
    """A ramp from 10 to 30 calls/s over 4 s: the target is the time-weighted average over
    the calls' span (about 20), not the 30 in force at the last call, and the achieved rate
    matches it."""
    # calls where the ramp's cumulative count 10 t + 2.5 t^2 reaches 0, 1, 2, ... (80 at 4 s)
    ts = [[T0 + (-10 + math.sqrt(100 + 10 * k)) / 5 for k in range(80)]]
    s = load_run(_paced_run(tmp_path, ts, lambda t: 10 + 5 * min(t, 4.0), 0.01)).summary()
    span = ts[0][-1] - ts[0][0]
    assert s["rate"]["achieved"] == pytest.approx(79 / span, rel=1e-6)
    exact = 10 + 2.5 * span  # the linear ramp's mean over [0, span]
    assert s["rate"]["target"] == pytest.approx(exact, rel=0.01)
    assert s["rate"]["achieved"] / s["rate"]["target"] == pytest.approx(1.0, rel=0.01)


# -- plot, HTML, Measurers ------------------------------------------------------------------


def test_plot_renders_png(tmp_path):
    run = load_run(_summary_run(tmp_path))
    png = tmp_path / "run.png"
    fig = run.plot(png)
    assert len(fig.axes) == 3
    labels = {t for ax in fig.axes for t in ax.get_legend_handles_labels()[1]}
    assert {"call_setup_latency", "answer_latency", "avg_call_rate", "failed_calls"} <= labels
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000
    # the rate panel draws every second, the last one too: its steps end one second after
    # the start of the last second
    ot = run.summary()["rate"]["over_time"]
    rate_ax = fig.axes[2]
    lines = {ln.get_label(): ln for ln in rate_ax.get_lines()}
    for label in ("call_rate (per second)", "target rate"):
        x = lines[label].get_xdata()
        assert x[0] == 0 and x[-1] == ot[-1]["t"] + 1, label
    assert lines["call_rate (per second)"].get_ydata()[-1] == ot[-1]["achieved"]


def test_report_html_is_self_contained(tmp_path):
    run = load_run(_summary_run(tmp_path))
    path = report_html(run, tmp_path / "report.html")
    page = path.read_text()
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    assert "USER_BUSY" in page and "app2" in page and "rate" in page
    assert not re.search(r"""(src|href)\s*=\s*['"](?!data:)""", page)
    assert "<script" not in page and "<link" not in page
    m = re.search(r"data:image/png;base64,([A-Za-z0-9+/=]+)", page)
    assert m and base64.b64decode(m.group(1))[:8] == b"\x89PNG\r\n\x1a\n"


def test_measurers_reads_fresh_from_files(tmp_path):
    w = CDRWriter(cdr_path(tmp_path, 0), flush_rows=1000)
    ms = Measurers(tmp_path)
    assert ms.run_dir == tmp_path
    assert len(ms.stores.CDR) == 0
    for i in range(3):
        w.append(make_row(i))
    w.flush()
    assert len(ms.stores.CDR) == 3
    assert len(ms.ops.call_metrics) == 3
    for i in range(3, 5):
        w.append(make_row(i))
    w.flush()
    assert len(ms.stores.CDR) == 5  # the open writer's new batch is seen
    assert ms.summary()["offered"] == 5
    w.close()
    fig = ms.plot(tmp_path / "m.png")
    assert fig is not None and (tmp_path / "m.png").stat().st_size > 1000


# -- without pandas ---------------------------------------------------------------------------

NO_PANDAS = textwrap.dedent(
    """
    import sys
    class _Block:
        def find_spec(self, name, path=None, target=None):
            if name == "pandas" or name.startswith("pandas."):
                raise ImportError("pandas is blocked for this test")
            return None
    sys.meta_path.insert(0, _Block())
    """
)

NO_PANDAS_CHILD = textwrap.dedent(
    """
    import json, sys
    from fastswitch.measure import load_run, Measurers, format_summary
    try:
        import pandas
        print(json.dumps({"pandas": True})); sys.exit(0)
    except ImportError:
        pass
    run = load_run(sys.argv[1])
    cdr = run.cdr
    m = run.call_metrics
    s = run.summary()
    format_summary(s)
    print(json.dumps({
        "pandas": "pandas" in sys.modules,
        "cdr_type": type(cdr).__name__, "row_type": type(cdr[0]).__name__,
        "n": len(cdr), "first": cdr[0], "cols": list(run.cdr_columns),
        "metrics_n": len(m), "metrics_cols": list(run.metrics_columns), "m0": m[0],
        "offered": s["offered"], "stores_n": len(Measurers(sys.argv[1]).stores.CDR),
    }))
    """
)


def test_analysis_without_pandas_gives_lists_of_lists(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    rows = [make_row(i) for i in (2, 0, 1)]
    write_cdr(cdr_path(run_dir, 0), rows)
    block = tmp_path / "block"
    block.mkdir()
    (block / "sitecustomize.py").write_text(NO_PANDAS)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(block), str(REPO)]))
    out = subprocess.run(
        [sys.executable, "-c", NO_PANDAS_CHILD, str(run_dir)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    res = json.loads(out.stdout)
    assert res["pandas"] is False
    assert res["cdr_type"] == "list" and res["row_type"] == "list" and res["n"] == 3
    assert res["cols"] == list(CDR_COLUMNS)
    assert res["first"] == list(make_row(0))
    assert res["metrics_n"] == 3
    m0 = dict(zip(res["metrics_cols"], res["m0"], strict=True))
    assert m0["call_uuid"] == "a-000000" and math.isclose(
        m0["call_setup_latency"], 0.007, abs_tol=1e-6
    )
    assert res["offered"] == 3 and res["stores_n"] == 3


# -- edges ------------------------------------------------------------------------------------


def test_restarted_worker_files_are_read_too(tmp_path):
    """A restarted worker writes cdr-<i>r<n>.arrows next to its first file."""
    write_cdr(cdr_path(tmp_path, 0), [make_row(0), make_row(2)])
    write_cdr(tmp_path / "cdr-0r2.arrows", [make_row(1)])
    with CounterWriter(tmp_path / "counters-0r2.arrows", worker=0) as cw:
        cw.append((T0, 1, 1, 0, 1, 2, 5.0, 10.0))
    run = load_run(tmp_path)
    assert run.cdr_table.column("call_uuid").to_pylist() == ["a-000000", "a-000001", "a-000002"]
    assert run.counters_table.num_rows == 1


def test_counter_sums_take_each_workers_latest_sample():
    ctr = pa.table(
        {
            "time": [1.0, 2.0, 1.5, 3.0],
            "worker": [0, 0, 1, 1],
            "offered": [0, 0, 0, 0],
            "answered": [0, 0, 0, 0],
            "failed": [0, 0, 0, 0],
            "active_calls": [10, 20, 1, 2],
            "active_sessions": [0, 0, 0, 0],
            "rate_target": [0.0] * 4,
            "limit_target": [0.0] * 4,
        },
        schema=COUNTER_SCHEMA,
    )
    got = measure._counter_sums(ctr, "active_calls", np.array([0.5, 1.0, 1.6, 2.5, 9.0]))
    assert np.isnan(got[0])
    assert got[1:].tolist() == [10.0, 11.0, 21.0, 22.0]


def test_thin_keeps_at_most_limit_evenly_spaced_points():
    mask = np.zeros(1000, dtype=bool)
    mask[::2] = True  # 500 candidates
    idx = measure._thin(mask, limit=120)
    assert 0 < len(idx) <= 120 and idx[0] == 0 and mask[idx].all()
    assert len(set(np.diff(idx))) == 1  # one stride
    assert measure._thin(mask, limit=1000).tolist() == np.flatnonzero(mask).tolist()


def test_empty_run_plots_and_reports(tmp_path):
    CDRWriter(cdr_path(tmp_path, 0)).close()
    run = load_run(tmp_path)
    assert len(run.cdr) == 0 and len(run.call_metrics) == 0
    fig = run.plot(tmp_path / "empty.png")
    assert len(fig.axes) == 3 and (tmp_path / "empty.png").read_bytes()[:4] == b"\x89PNG"
    page = report_html(run, tmp_path / "empty.html").read_text()
    assert "offered" in page and "data:image/png;base64," in page
    assert "offered" in format_summary(run.summary())


def test_rows_without_call_uuid_never_merge(tmp_path):
    write_cdr(cdr_path(tmp_path, 0), [make_row(0, call_uuid=None, callee_create=None)])
    write_cdr(cdr_path(tmp_path, 1), [make_row(1, call_uuid=None, row_kind="callee", worker=1)])
    rows = load_run(tmp_path).cdr_table.to_pylist()
    assert [r["row_kind"] for r in rows] == ["call", "callee"]
    assert rows[0]["callee_create"] is None
