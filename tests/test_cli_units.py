"""Unit tests of the CLI's pure parts: value parsers, config merging, load profiles,
thresholds and the live view renderer."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from rich.console import Console

from fastswitch.cli.config import build_config, read_toml
from fastswitch.cli.keys import key_action
from fastswitch.cli.live import RateMeter, SlaveStats, Snapshot, plain_line, render
from fastswitch.cli.parse import (
    AppSpec,
    Ramp,
    format_duration,
    parse_app,
    parse_count,
    parse_duration,
    parse_fraction,
    parse_hostport,
    parse_ramp,
    parse_rate,
)
from fastswitch.cli.profile import LoadProfile, Stage
from fastswitch.cli.thresholds import Measured, Thresholds, evaluate, format_checks, passed
from fastswitch.errors import ConfigurationError

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize(
    "text,seconds",
    [
        ("10m", 600.0),
        ("250ms", 0.25),
        ("1h30m", 5400.0),
        ("1.5s", 1.5),
        ("20", 20.0),
        (" 2m 30s ", 150.0),
        (3, 3.0),
        ("0", 0.0),
    ],
)
def test_parse_duration(text, seconds):
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "ten", "10x", "-5s", "5s10", "m", "nan", "1e400"])
def test_parse_duration_rejects(text):
    with pytest.raises(ConfigurationError, match="duration"):
        parse_duration(text)


def test_format_duration():
    assert format_duration(0.25) == "250ms"
    assert format_duration(0.0001) == "0.1ms" and format_duration(0.0025) == "2.5ms"
    assert format_duration(0.005) == "5ms" and format_duration(0) == "0ms"
    assert format_duration(12) == "12s"
    assert format_duration(185) == "3m05s"
    assert format_duration(3720) == "1h02m"


@pytest.mark.parametrize(
    "text,value", [("0.5%", 0.005), ("99%", 0.99), ("0.99", 0.99), ("0", 0.0), ("100%", 1.0)]
)
def test_parse_fraction(text, value):
    assert parse_fraction(text) == pytest.approx(value)


@pytest.mark.parametrize("text", ["150%", "1.5", "-1%", "abc", "%"])
def test_parse_fraction_rejects(text):
    with pytest.raises(ConfigurationError):
        parse_fraction(text)


def test_parse_rate_and_count():
    assert parse_rate("50") == 50.0
    assert parse_rate(0.5) == 0.5
    for bad in ("-1", "0", "x", "inf"):
        with pytest.raises(ConfigurationError, match="rate"):
            parse_rate(bad)
    assert parse_count("1_000", "limit") == 1000
    for bad in ("0", "-3", "1.5", "many"):
        with pytest.raises(ConfigurationError, match="limit"):
            parse_count(bad, "limit")


def test_parse_ramp():
    r = parse_ramp("10:200:60s")
    assert r == Ramp(10.0, 200.0, 60.0)
    assert r.rate_at(0) == 10.0
    assert r.rate_at(30) == pytest.approx(105.0)
    assert r.rate_at(90) == 200.0
    down = parse_ramp("100:10:1m")
    assert down.rate_at(30) == pytest.approx(55.0)
    for bad in ("10:200", "10:200:0s", "0:200:60s", "a:b:c", "10:200:60s:5"):
        with pytest.raises(ConfigurationError, match="ramp"):
            parse_ramp(bad)


@pytest.mark.parametrize(
    "text,expected",
    [
        ("10.0.0.5", ("10.0.0.5", 8021)),
        ("10.0.0.5:8022", ("10.0.0.5", 8022)),
        ("fs-1.example.com:9000", ("fs-1.example.com", 9000)),
        ("localhost", ("localhost", 8021)),
        ("[::1]:8021", ("::1", 8021)),
        ("::1", ("::1", 8021)),
    ],
)
def test_parse_hostport(text, expected):
    assert parse_hostport(text) == expected


@pytest.mark.parametrize(
    "text",
    ["", ":8021", "host:", "host:0", "host:70000", "host:port", "a b", "[::1", "[1.2.3.4]:5"],
)
def test_parse_hostport_rejects(text):
    with pytest.raises(ConfigurationError, match="malformed host"):
        parse_hostport(text)


def test_parse_app():
    assert parse_app("bert") == AppSpec("bert", 1, {})
    assert parse_app("bert:34") == AppSpec("bert", 34, {})
    a = parse_app("ringback:33/caller_hup_after=5,ring_response=ring_ready,x=1.5,y=true")
    assert a.weight == 33
    assert a.params == {"caller_hup_after": 5, "ring_response": "ring_ready", "x": 1.5, "y": True}
    for bad in ("", ":3", "bert:0", "bert:3x", "bert/novalue", "9lives"):
        with pytest.raises(ConfigurationError):
            parse_app(bad)


def test_parse_app_module_class_without_a_dot():
    """``module:Class`` is a class path when the part after the colon is not a number."""
    assert parse_app("myapps:MyPark") == AppSpec("myapps:MyPark", 1, {})
    assert parse_app("myapps:MyPark:3/x=1") == AppSpec("myapps:MyPark", 3, {"x": 1})
    assert parse_app("pkg.mod:Cls:2") == AppSpec("pkg.mod:Cls", 2, {})
    for bad in ("myapps:MyPark:many", "myapps:MyPark:0"):
        with pytest.raises(ConfigurationError):
            parse_app(bad)


def test_constant_profile_has_no_end():
    p = LoadProfile(rate=50, limit=1000, hold=20)
    assert p.length == math.inf
    sp = p.setpoint(123)
    assert (sp.rate, sp.limit, sp.hold) == (50, 1000, 20)
    p.scale(2.0)
    assert p.setpoint(0).rate == 100
    p.scale(0.5)
    p.scale(1.1)
    assert p.setpoint(0).rate == pytest.approx(55)


def test_ramp_profile_length_and_rates():
    p = LoadProfile(rate=1, limit=500, ramp=Ramp(10, 200, 60))
    assert p.length == 60
    assert p.setpoint(0).rate == 10
    assert p.setpoint(15).rate == pytest.approx(57.5)
    p2 = LoadProfile(rate=1, limit=500, ramp=Ramp(10, 200, 60), time=120)
    assert p2.length == 120 and p2.setpoint(100).rate == 200


def test_stage_profile():
    stages = [
        Stage(duration=10, rate=20, limit=100, hold=5),
        Stage(duration=20, rate=60, ramp=True),
        Stage(duration=10, rate=5, limit=50, hold=2),
    ]
    p = LoadProfile(rate=10, limit=30, stages=stages)
    assert p.length == 40
    assert p.setpoint(5) == p.setpoint(0)
    assert (p.setpoint(5).rate, p.setpoint(5).limit, p.setpoint(5).hold) == (20, 100, 5)
    mid = p.setpoint(20)  # halfway through the ramp from 20 to 60, limit/hold inherited
    assert (mid.rate, mid.limit, mid.hold) == (pytest.approx(40), 100, 5)
    last = p.setpoint(35)
    assert (last.rate, last.limit, last.hold) == (5, 50, 2)
    assert p.stage_index(35) == 2 and p.stage_index(0) == 0 and p.stage_index(99) == 2
    with pytest.raises(ConfigurationError):
        LoadProfile(rate=1, limit=1, ramp=Ramp(1, 2, 3), stages=stages)


def test_thresholds_pass_and_fail():
    th = Thresholds(max_failed=0.005, max_setup_p99=0.25, min_rate=0.99)
    good = Measured(offered=1000, failed=3, setup_p99=0.12, achieved_rate=49.9, target_rate=50)
    checks = evaluate(th, good)
    assert [c.ok for c in checks] == [True, True, True]
    assert passed(checks)
    text = format_checks(checks)
    assert "0.30% (3 of 1000)" in text and "120ms" in text and "Verdict: PASS" in text
    bad = Measured(offered=1000, failed=6, setup_p99=0.3, achieved_rate=40, target_rate=50)
    checks = evaluate(th, bad)
    assert [c.ok for c in checks] == [False, False, False]
    assert "Verdict: FAIL (3 of 3" in format_checks(checks)
    # nothing measured: the thresholds cannot be shown to hold
    none = evaluate(th, Measured(offered=0, failed=0))
    assert not any(c.ok for c in none)
    assert evaluate(Thresholds(), good) == [] and format_checks([]).startswith(
        "Thresholds: none set"
    )


def test_thresholds_mapping_merge_and_save(tmp_path):
    th = Thresholds.from_mapping({"max_failed": "1%", "min_rate": "0.9"})
    assert th == Thresholds(0.01, None, 0.9)
    merged = th.merged(Thresholds(max_setup_p99=0.5, min_rate=0.95))
    assert merged == Thresholds(0.01, 0.5, 0.95)
    merged.save(tmp_path)
    assert Thresholds.load(tmp_path) == merged
    assert Thresholds.load(tmp_path / "nowhere") == Thresholds()
    with pytest.raises(ConfigurationError, match="max_fail"):
        Thresholds.from_mapping({"max_fail": 1})


def test_config_merges_toml_and_overrides(tmp_path):
    f = tmp_path / "t.toml"
    f.write_text(
        """
hosts = ["127.0.0.1:9001", "127.0.0.1:9002"]
rate = 20
limit = 200
duration = "30s"
proxy = "sut@10.0.0.1:5060"
time = "2m"
[[app]]
name = "bert"
weight = 3
[[app]]
name = "block404"
[thresholds]
max-failed = "0.5%"
"""
    )
    cfg = build_config(
        read_toml(f), {"rate": "40", "hosts": None, "thresholds": Thresholds(min_rate=0.9)}
    )
    assert cfg.hosts == [("127.0.0.1", 9001), ("127.0.0.1", 9002)]
    assert (cfg.rate, cfg.limit, cfg.duration, cfg.time) == (40.0, 200, 30.0, 120.0)
    assert cfg.proxy == "sut@10.0.0.1:5060"
    assert cfg.apps == [AppSpec("bert", 3), AppSpec("block404", 1)]
    assert cfg.thresholds == Thresholds(max_failed=0.005, min_rate=0.9)
    cfg2 = build_config(read_toml(f), {"apps": ["ringback:2"]})
    assert cfg2.apps == [AppSpec("ringback", 2)]


def test_config_errors(tmp_path):
    with pytest.raises(ConfigurationError, match="unknown key.*colour"):
        build_config({"colour": "red"}, {})
    with pytest.raises(ConfigurationError, match="not found"):
        read_toml(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("rate = = 3")
    with pytest.raises(ConfigurationError, match="not valid TOML"):
        read_toml(bad)
    with pytest.raises(ConfigurationError, match="limit"):
        build_config({}, {"limit": "0"})
    with pytest.raises(ConfigurationError, match="stage 1.*required"):
        build_config({"stage": [{"rate": 3}]}, {})
    with pytest.raises(ConfigurationError, match="ramp and"):
        build_config({"stage": [{"rate": 3, "duration": 1}], "ramp": "1:2:3s"}, {})


def test_command_line_load_options_replace_the_files_stages():
    """--rate/--limit/--duration (a constant load) or --ramp replace the file's [[stage]]
    tables, saying so; the file's own settings keep them."""
    data = read_toml(REPO / "examples" / "loadtest.toml")
    assert len(build_config(data, {}).stages) == 3 and not build_config(data, {}).notes
    cfg = build_config(data, {"rate": "30", "duration": "2s"})
    assert cfg.stages == [] and cfg.ramp is None
    sp = cfg.load_profile().setpoint(45)  # mid-way through the file's second stage
    assert (sp.rate, sp.hold) == (30.0, 2.0)
    assert cfg.load_profile().length == 120  # the file's time = "2m"
    assert (
        len(cfg.notes) == 1
        and "[[stage]] tables are overridden by --rate --duration" in (cfg.notes[0])
    )
    cfg = build_config(data, {"ramp": "5:10:2s"})
    assert cfg.stages == [] and cfg.ramp == Ramp(5.0, 10.0, 2.0)
    assert cfg.load_profile().setpoint(1).rate == pytest.approx(7.5)
    assert "overridden by --ramp" in cfg.notes[0]
    # without a time in the file, the constant load lasts as long as the stages did
    no_time = {k: v for k, v in data.items() if k != "time"}
    assert build_config(no_time, {"limit": "50"}).load_profile().length == 120
    # --rate replaces a ramp set in the file too
    cfg = build_config({"ramp": "1:5:3s"}, {"rate": "7"})
    assert cfg.ramp is None and cfg.load_profile().setpoint(1).rate == 7.0 and cfg.notes


def test_example_config_is_valid():
    cfg = build_config(read_toml(REPO / "examples" / "loadtest.toml"), {})
    assert cfg.hosts and cfg.apps
    assert cfg.load_profile().length > 0


def test_key_actions():
    assert key_action("+") == ("scale", 1.1)
    assert key_action("*") == ("scale", 2.0)
    assert key_action("/") == ("scale", 0.5)
    assert key_action("P") == ("pause", 0.0)
    assert key_action("q") == ("quit", 0.0)
    assert key_action("x") is None


def test_rate_meter():
    m = RateMeter(window=2.0)
    assert m.update(0.0, 0) == 0.0
    assert m.update(1.0, 50) == pytest.approx(50.0)
    assert m.update(2.0, 100) == pytest.approx(50.0)
    assert m.update(3.0, 120) == pytest.approx(35.0)  # window 1..3: (120-50)/2


def _snap(**kw):
    base = dict(
        elapsed=12.0,
        remaining=48.0,
        state="offering",
        target_rate=50.0,
        achieved_rate=49.5,
        active=612,
        limit=1000,
        offered=600,
        answered=580,
        failed=7,
        failed_by_cause={"USER_BUSY": 4, "CALL_REJECTED": 2, "NO_ANSWER": 1},
        setup_p50=0.021,
        setup_p95=0.080,
        setup_p99=0.150,
        slaves=[SlaveStats("127.0.0.1:8021", 300, 290, 3, 306, 24.8)],
    )
    base.update(kw)
    return Snapshot(**base)


def test_plain_line():
    line = plain_line(_snap())
    assert "rate 49.5/50.0 cps" in line and "active 612/1000" in line
    assert "setup p50/p95/p99 21ms/80ms/150ms" in line
    assert "(USER_BUSY 4, CALL_REJECTED 2, NO_ANSWER 1)" in line and "48s left" in line
    assert "setup" not in plain_line(_snap(setup_p99=None, setup_p50=None))


def test_render():
    console = Console(width=120, record=True, force_terminal=False)
    console.print(render(_snap(keys=True, message="rate x2")))
    out = console.export_text()
    for needle in (
        "offering",
        "49.5 / 50.0 cps",
        "612 / 1000",
        "USER_BUSY 4",
        "127.0.0.1:8021",
        "150ms",
        "rate x2",
        "p pause",
    ):
        assert needle in out, needle
    console = Console(width=120, record=True)
    console.print(render(_snap(remaining=None, slaves=[], state="paused")))
    out = console.export_text()
    assert "until stopped" in out and "paused" in out and "127.0.0.1" not in out


def test_parse_originate_cmd_round_trips_through_the_builder():
    from fastswitch.cli.origcmd import parse_originate_cmd
    from fastswitch.commands import build_originate_cmd

    cmd = (
        "originate {originate_timeout=30,sip_h_X-Test=a\\,b,origination_uuid=mine}"
        "sofia/gateway/sut/1000;fs_path=sip:10.0.0.1:5060 &park()"
    )
    dest, kw = parse_originate_cmd(cmd)
    assert dest == "1000"
    assert kw["gateway"] == "sut" and kw["proxy"] == "10.0.0.1:5060" and kw["timeout"] == 30
    assert kw["app_name"] == "park" and kw["sip_h_X-Test"] == "a,b"
    assert "origination_uuid" not in kw  # fastswitch sets its own tracking variables
    out = build_originate_cmd(dest, **kw).format(uuid_str="U", app_id="A", call_index=1)
    assert out.startswith("originate {origination_uuid=U,fastswitch_client=A,")
    assert "originate_timeout=30" in out and "sip_h_X-Test=a\\,b" in out
    assert out.endswith("}sofia/gateway/sut/1000;fs_path=sip:10.0.0.1:5060 &park()")
    dest, kw = parse_originate_cmd("sofia/external/x@h:5080 9999 XML public")
    assert (dest, kw["profile"], kw["app_name"], kw["dp_context"]) == (
        "x@h:5080",
        "external",
        "9999",
        "public",
    )
    for bad in ("originate sofia/external/x@h", "user/1000 &park()", "{a=1 sofia/x/y &park()"):
        with pytest.raises(ConfigurationError, match="originate-cmd"):
            parse_originate_cmd(bad)


def test_originate_cmd_with_placeholders_inside_the_variable_block():
    """The {...} block nests: {uuid_str}, {app_id}, {call_index} in values stay placeholders
    and are filled per call; an unknown placeholder fails before connecting."""
    from fastswitch.cli.origcmd import check_originate_cmd
    from fastswitch.commands import build_originate_cmd

    cmd = (
        "originate {origination_uuid={uuid_str},sip_h_X-Idx={call_index},"
        "origination_caller_id_number={call_index}}sofia/external/x@127.0.0.1:5080 &park()"
    )
    dest, kw = check_originate_cmd(cmd)
    assert dest == "x@127.0.0.1:5080" and kw["profile"] == "external"
    assert kw["sip_h_X-Idx"] == "{call_index}" and "origination_uuid" not in kw
    out = build_originate_cmd(dest, **kw).format(uuid_str="U", app_id="A", call_index="7")
    assert out.startswith("originate {origination_uuid=U,fastswitch_client=A,")
    assert ",sip_h_X-Idx=7,origination_caller_id_number=7}sofia/external/x@127.0.0.1:5080 " in out
    with pytest.raises(ConfigurationError, match=r"unknown placeholder \{foo\}"):
        check_originate_cmd("originate {a={foo}}sofia/external/x@h:5080 &park()")


def test_stop_requests_count_real_signals():
    import os
    import signal

    from fastswitch.cli.signals import StopRequests, children_ignore_sigint

    before = signal.getsignal(signal.SIGTERM)
    with StopRequests() as stops:
        assert not stops.stop
        os.kill(os.getpid(), signal.SIGTERM)  # behaves like a first Ctrl-C
        assert stops.stop and stops.terminated and stops.interrupts == 0
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGINT)
        assert stops.interrupts == 2
        with children_ignore_sigint():
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
        assert signal.getsignal(signal.SIGINT) == stops._on_sigint
    assert signal.getsignal(signal.SIGTERM) == before


def test_latency_tail_reads_appended_batches_only(tmp_path):
    """The live latency reader follows a CDR file as a worker writes it, batch by batch,
    including a batch cut in the middle (it is read once complete)."""
    import numpy as np

    from fastswitch.cli.latency import LatencyTail
    from fastswitch.measure import CDR_COLUMNS, CDRWriter

    def row(i: int, setup: float) -> tuple:
        r = dict.fromkeys(CDR_COLUMNS)
        r.update(caller_create=1000.0 + i, caller_answer=1000.0 + i + setup, row_kind="call")
        r.update(failed=False, call_uuid=f"u{i}")
        return tuple(r[c] for c in CDR_COLUMNS)

    path = tmp_path / "cdr-0.arrows"
    w = CDRWriter(path, flush_rows=10_000, flush_ms=1e9)
    tail = LatencyTail(tmp_path, every=0.0)
    assert tail.percentiles() == (None, None, None)
    for i in range(100):
        w.append(row(i, 0.001 * (i + 1)))  # 1 ms .. 100 ms
    w.flush()
    p50, p95, p99 = tail.percentiles()
    assert p50 == pytest.approx(np.percentile(np.arange(1, 101) / 1000, 50))
    assert p99 == pytest.approx(np.percentile(np.arange(1, 101) / 1000, 99))
    offset = tail._files[path].offset
    assert offset == path.stat().st_size  # everything consumed
    w.append(row(100, 5.0))
    w.flush()
    whole = path.read_bytes()
    path.write_bytes(whole[: offset + (len(whole) - offset) // 2])  # a batch half written
    assert tail.percentiles()[2] == pytest.approx(p99)  # not read yet
    path.write_bytes(whole)
    assert tail.percentiles()[2] > p99  # the 5 s call is in now
    w.close()
