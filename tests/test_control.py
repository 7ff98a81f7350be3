"""Unit tests of the shared control block, the share split and the seed log format."""

from __future__ import annotations

import logging
import math
import multiprocessing
import os
import re

import pytest

from fastswitch import control as C
from fastswitch.control import ControlBlock, cause_index
from fastswitch.log import RateLimitedQueueHandler, SeedFormatter, get_logger
from fastswitch.originator import _fmt_num, _split_int


def _shm_path(cb: ControlBlock) -> str:
    return "/dev/shm/" + cb.name.lstrip("/")


def _child_writes(name: str, i: int) -> None:
    cb = ControlBlock.attach(name)
    cb.put(i, C.W_ACTIVE, 42)
    cb.d[cb.base(i) + C.W_CAUSES + cause_index("USER_BUSY")] += 3
    cb.close()


def test_control_block_layout_create_attach_unlink():
    cb = ControlBlock.create(3)
    try:
        assert os.path.exists(_shm_path(cb))
        assert cb.nworkers == 3
        assert cb.state == C.INITIAL
        # every worker's max_sessions cap starts unlimited, everything else at 0
        assert all(math.isinf(cb.get(i, C.W_MAX)) for i in range(3))
        assert cb.get(2, C.W_RATE) == 0.0
        cb.state = C.ORIGINATING
        cb.set_settings(50, 1000, math.inf, 30.0)
        cb.put(1, C.W_RATE, 12.5)
        # a spawned process sees the parent's values and its writes come back
        ctx = multiprocessing.get_context("spawn")
        p = ctx.Process(target=_child_writes, args=(cb.name, 1))
        p.start()
        p.join(30)
        assert p.exitcode == 0
        assert cb.counters(1)["active"] == 42
        assert cb.counters(0)["active"] == 0
        assert cb.causes(1) == {"USER_BUSY": 3}
        assert cb.duration == 30.0
        cb.reset_worker(1)
        assert cb.counters(1)["active"] == 0 and cb.causes(1) == {}
        assert cb.get(1, C.W_RATE) == 12.5  # parent-written slots survive a reset
    finally:
        cb.unlink()
    assert not os.path.exists(_shm_path(cb))


def test_attach_rejects_foreign_block():
    from multiprocessing import shared_memory

    shm = shared_memory.SharedMemory(create=True, size=4096)
    try:
        with pytest.raises(RuntimeError, match="not a fastswitch control block"):
            ControlBlock.attach(shm.name)
    finally:
        shm.close()
        shm.unlink()


def test_cause_index_unknown_goes_to_other():
    assert C.CAUSES[cause_index("NORMAL_CLEARING")] == "NORMAL_CLEARING"
    assert C.CAUSES[cause_index("NOT_A_CAUSE")] == "OTHER"
    assert C.CAUSES[cause_index(None)] == "NONE"


@pytest.mark.parametrize(
    "total, weights, expected",
    [
        (1, [1, 1, 1], [1, 0, 0]),
        (10, [1, 1, 1], [4, 3, 3]),
        (10, [1, 0, 1], [5, 0, 5]),
        (7, [0, 0, 0], [0, 0, 0]),
        (100, [1, 0.5, 1], [40, 20, 40]),
    ],
)
def test_split_int_sums_to_total_and_skips_zero_weights(total, weights, expected):
    got = _split_int(total, weights)
    assert got == expected
    if sum(weights):
        assert sum(got) == total


def test_split_int_infinite():
    assert _split_int(math.inf, [1, 0, 1]) == [math.inf, 0.0, math.inf]


def test_number_format_matches_seed():
    assert _fmt_num(1 / 30 + 10) == "10.0333333333"
    assert _fmt_num(30.0) == "30.0"
    assert _fmt_num(10.03) == "10.03"
    assert _fmt_num(math.inf) == "inf"


def test_seed_log_format():
    logger = get_logger("fastswitch.Originator", ["vm-host"])
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    h = Keep()
    base = logging.getLogger("fastswitch.Originator")
    base.addHandler(h)
    old = base.level
    base.setLevel(logging.INFO)
    try:
        logger.info("State Change: '%s' -> '%s'", "INITIAL", "ORIGINATING")
    finally:
        base.removeHandler(h)
        base.setLevel(old)
    line = SeedFormatter().format(records[0])
    assert re.fullmatch(
        r"[A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d \[INFO\] fastswitch\.Originator@\['vm-host'\] "
        r"test_control\.py:\d+ : State Change: 'INITIAL' -> 'ORIGINATING'",
        line,
    ), line
    # a plain logger (no hosts) renders its name alone
    rec = logging.makeLogRecord({"name": "fastswitch.x", "msg": "hi", "levelname": "WARNING"})
    assert "] fastswitch.x " in SeedFormatter().format(rec)


def test_rate_limited_queue_handler_summarises_floods():
    import queue

    q: queue.Queue = queue.Queue()
    h = RateLimitedQueueHandler(q, max_per_sec=5)
    log = logging.getLogger("fastswitch.test.flood")
    log.propagate = False
    log.addHandler(h)
    log.setLevel(logging.ERROR)
    try:
        for i in range(200):
            log.error("Job %d failed", i)
        h.flush()
    finally:
        log.removeHandler(h)
    msgs = []
    while not q.empty():
        msgs.append(q.get_nowait().getMessage())
    passed = [m for m in msgs if m.startswith("Job")]
    summary = [m for m in msgs if "similar messages suppressed" in m]
    # the window may roll over once during the loop: at most two windows' worth pass
    assert 5 <= len(passed) <= 10
    assert summary and sum(int(m.split()[1]) for m in summary) == 200 - len(passed)
