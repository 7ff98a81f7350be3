"""The user's spec (../shared/seed/callgen.rst) walked through as a test, step by step, in
order, against one simulated slave: every call the document shows, with package
``fastswitch``.
"""

from __future__ import annotations

import logging
import re

import pytest
from support import SEED_CDR_COLUMNS, shm_exists, wait_for

from fastswitch import ConfigurationError, get_originator
from fastswitch.sim import SimConfig, SimServer

pytestmark = pytest.mark.timeout(90)


@pytest.fixture(scope="module")
def slave():
    cfg = SimConfig(port=0, sip_port=0, seed=1, heartbeat_interval=0.0)
    with SimServer(cfg) as server:
        yield server, cfg


def _messages(caplog, level=None):
    return [r.getMessage() for r in caplog.records if level is None or r.levelno == level]


def test_seed_walkthrough(slave, caplog, tmp_path):
    server, cfg = slave
    host, port = server.address
    sip = f"{host}:{cfg.sip_port}"
    caplog.set_level(logging.INFO, logger="fastswitch")

    # >>> originator = get_originator([...]); originator
    originator = get_originator([(host, port)], run_dir=tmp_path)
    shm = originator._cb.name
    try:
        assert repr(originator) == (
            "<Originator: '0' active calls, state=[INITIAL], rate=30 limit=1 "
            "max_sessions=inf duration=10.03>"
        )

        # >>> originator.start()  -- logged, not raised: no originate command yet
        originator.start()
        err = [r for r in caplog.records if r.levelno == logging.ERROR]
        assert err and err[-1].getMessage() == "'MainProcess' failed with:"
        assert err[-1].name == "fastswitch.Originator"
        tb = caplog.text
        assert "Traceback (most recent call last):" in tb
        assert "ConfigurationError: you must first set an originate command" in tb
        assert originator.state == "INITIAL"

        # >>> originator.pool.clients[0].set_orig_cmd(dest_url=..., profile=..., app_name=, proxy=)
        originator.pool.clients[0].set_orig_cmd(
            dest_url=f"doggy@{sip}",
            profile="external",
            app_name="park",
            proxy=f"doggy@{sip}",
        )
        # >>> originator.originate_cmd  (the rendered template, one per client)
        cmds = originator.originate_cmd
        assert isinstance(cmds, list) and len(cmds) == 1
        cmd = cmds[0]
        assert cmd.startswith("originate {{")
        for piece in (
            "origination_uuid={uuid_str}",
            "fastswitch_client={app_id}",
            "sip_h_X-fastswitch_client={app_id}",
            "sip_h_X-originating_session_uuid={uuid_str}",
            "originate_timeout=60",
            f"}}}}sofia/external/doggy@{sip};fs_path=sip:doggy@{sip} &park()",
        ):
            assert piece in cmd, piece

        # >>> originator.start()  -- raises: no apps loaded
        with pytest.raises(ConfigurationError, match="No apps have been loaded"):
            originator.start()

        # >>> from fastswitch.apps.bert import Bert; originator.load_app(Bert)
        from fastswitch.apps.bert import Bert

        assert originator.load_app(Bert) == "Bert"

        # >>> originator.start()  -- State Change logged
        caplog.clear()
        originator.start()
        info = _messages(caplog, logging.INFO)
        assert info.index("starting loop thread") < info.index(
            "State Change: 'INITIAL' -> 'ORIGINATING'"
        )
        rec = next(r for r in caplog.records if r.getMessage().startswith("State Change"))
        assert rec.hosts == f"[{host!r}]"

        # one call from the caller through the SUT to the callee, held
        assert wait_for(lambda: originator.count_calls() == 1, 10)
        assert repr(originator) == (
            "<Originator: '1' active calls, state=[ORIGINATING], rate=30 limit=1 "
            "max_sessions=inf duration=10.0333333333>"
        )
        # the limit holds it at one call
        assert wait_for(lambda: originator.stats()["answered"] >= 1, 10)
        assert originator.count_calls() == 1

        # >>> originator.rate = 50; originator.limit = 1000; originator
        originator.rate = 50
        originator.limit = 1000
        assert wait_for(lambda: originator.count_calls() >= 50, 15)
        text = repr(originator)
        assert re.fullmatch(
            r"<Originator: '\d+' active calls, state=\[ORIGINATING\], rate=50 limit=1000 "
            r"max_sessions=inf duration=30\.0>",
            text,
        ), text

        # >>> originator.pool.evals("client.set_orig_cmd(...)", ip_addr=...)
        res = originator.pool.evals(
            (
                """client.set_orig_cmd('park@{}:{}'.format(client.server, sip_port),
             app_name='park',
             proxy='doggy@{}:{}'.format(ip_addr, sip_port))"""
            ),
            ip_addr=host,
            sip_port=cfg.sip_port,
        )
        assert len(res) == 1 and f"sofia/external/park@{sip};fs_path=sip:doggy@{sip}" in res[0]
        assert originator.originate_cmd == res

        # >>> originator.hupall()
        caplog.clear()
        originator.hupall()
        msgs = _messages(caplog)
        assert "Stopping all calls with hupall!" in _messages(caplog, logging.WARNING)
        assert "State Change: 'ORIGINATING' -> 'STOPPED'" in msgs
        seed_order = [
            "Stopping all calls with hupall!",
            "State Change: 'ORIGINATING' -> 'STOPPED'",
            "stopping burst loop...",
            "Waiting for start command...",
        ]
        assert [msgs.index(m) for m in seed_order] == sorted(msgs.index(m) for m in seed_order)
        assert wait_for(lambda: "all sessions have ended..." in _messages(caplog), 15)
        assert originator.count_calls() == 0
        assert originator.state == "STOPPED"
        # calls still ringing when hupall hit fail with NORMAL_CLEARING, each logged in the
        # seed's words (one message per failed job)
        jobs = [m for m in _messages(caplog, logging.ERROR) if m.startswith("Job '")]
        for m in jobs:
            assert re.fullmatch(
                r"Job '[0-9a-f-]+' corresponding to session '[0-9a-f-]+' failed with:\n-ERR \w+",
                m,
            ), m
        failures = originator.failures
        assert set(failures) <= {"NORMAL_CLEARING"}
        assert len(jobs) == sum(failures.values())

        # >>> orig.measurers.stores.CDR
        df = originator.measurers.stores.CDR
        assert list(df.columns[: len(SEED_CDR_COLUMNS)]) == SEED_CDR_COLUMNS
        assert len(df) >= 50
        assert set(df["fastswitch_app"]) == {"Bert"}
        answered = df[df["caller_answer"].notna()]
        assert len(answered) >= 50
        assert (answered["callee_create"] >= answered["caller_create"] - 1).all()
        metrics = originator.measurers.ops.call_metrics
        assert "call_setup_latency" in metrics.columns and len(metrics) == len(df)
    finally:
        originator.shutdown()
    assert not originator.is_alive()
    assert not shm_exists(shm)


def test_seed_weights_example(slave, tmp_path):
    """The note's multi-app example, verbatim apart from the package name."""
    server, cfg = slave
    originator = get_originator([server.address], run_dir=tmp_path)
    try:
        from fastswitch.apps.bert import Bert
        from fastswitch.apps.blockers import (  # noqa: F401 - the seed imports both names
            CalleeBlockOnInvite,
            CalleeBlockonInvite,
            CalleeRingback,
        )

        originator.load_app(
            CalleeRingback,
            ppkwargs={"caller_hup_after": 5, "ring_response": "ring_ready"},
            weight=33,
        )
        originator.load_app(CalleeBlockonInvite, ppkwargs={"response": 404}, weight=33)
        originator.load_app(Bert, weight=34)
        assert originator.apps == {"CalleeRingback": 33, "CalleeBlockOnInvite": 33, "Bert": 34}

        # run the mix: a destination the simulator parks unanswered leaves each call to its app
        originator.pool.clients[0].set_orig_cmd(f"callee@{cfg.sip_host}:{cfg.sip_port}")
        originator.rate, originator.limit, originator.max_sessions = 30, 100, 30
        originator.duration = 6  # the ringing callee would hang up then: the caller is first
        originator.start()
        assert originator.waitforstate("STOPPED", timeout=10)
        assert originator.waitwhile(lambda: originator.count_calls() > 0, timeout=15)
        df = originator.measurers.stores.CDR
        df = df[df["row_kind"] == "call"]
        assert len(df) == 30
        by_app = {name: g for name, g in df.groupby("fastswitch_app")}
        assert set(by_app) == {"CalleeRingback", "CalleeBlockOnInvite", "Bert"}
        # 404 -> UNALLOCATED_NUMBER; the ringing caller hangs up after 5 s; Bert answers
        assert set(by_app["CalleeBlockOnInvite"]["hangup_cause"]) == {"UNALLOCATED_NUMBER"}
        ring = by_app["CalleeRingback"]
        assert ring["caller_answer"].isna().all()
        rang = ring["caller_hangup"] - ring["caller_create"]
        assert ((rang >= 4.9) & (rang < 5.9)).all(), rang.tolist()
        assert by_app["Bert"]["caller_answer"].notna().all()
    finally:
        originator.shutdown()
