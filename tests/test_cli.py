"""End-to-end tests of ``python -m fastswitch``: the CLI runs as a subprocess against
simulated FreeSWITCH slaves (fastswitch.sim) on loopback, on free ports.

Load tests here are a few seconds long at a low rate; assertions are on exit codes, printed
text and the files of the run directory, never on timing.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fastswitch import sim

REPO = Path(__file__).resolve().parent.parent
PASSWORD = "ClueCon"
pytestmark = pytest.mark.timeout(90)


def fastswitch(
    *args: str, timeout: float = 60, cwd: Path | None = None
) -> subprocess.CompletedProcess:
    """Run ``python -m fastswitch ARGS`` to completion and return the result (text output)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), str(cwd or REPO)]))
    env["COLUMNS"] = "120"
    return subprocess.run(
        [sys.executable, "-m", "fastswitch", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd or REPO,
        env=env,
    )


@pytest.fixture(scope="module")
def slaves():
    """Two simulated slaves on free loopback ports; yields their ``(esl, sip)`` addresses."""
    servers = [
        sim.SimServer(host="127.0.0.1", port=0, sip_port=0, post_dial_delay=0.01, seed=1),
        sim.SimServer(host="127.0.0.1", port=0, sip_port=0, post_dial_delay=0.02, seed=2),
    ]
    try:
        for s in servers:
            s.start()
        yield [(tuple(s.address), tuple(s.sip_address)) for s in servers]
    finally:
        for s in servers:
            s.stop()


def hosts(slaves) -> list[str]:
    return ["{}:{}".format(*esl) for esl, _sip in slaves]


def dest(slaves) -> str:
    """A destination on the second slave: the simulator routes the call there."""
    return "fastswitch@{}:{}".format(*slaves[1][1])


def cdr_files(run_dir: Path) -> list[Path]:
    return sorted(run_dir.glob("cdr-*.arrows"))


def offered_in(run_dir: Path) -> int:
    from fastswitch.measure import load_run

    return load_run(run_dir).summary()["offered"]


# -- demo -------------------------------------------------------------------------------------


def plain_targets(stdout: str) -> list[float]:
    """The target rates of the plain progress lines while offering."""
    return [
        float(line.split(" rate ")[1].split("/")[1].split()[0])
        for line in stdout.splitlines()
        if line.startswith("[") and " offering " in line
    ]


def test_demo_with_a_ramp_runs_a_simulated_cluster_and_reports(tmp_path):
    run_dir = tmp_path / "demo"
    r = fastswitch(
        "demo", "--ramp", "4:30:3s", "--duration", "1s", "--slaves", "2",
        "--run-dir", str(run_dir), "--no-plot",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr + r.stdout
    assert "Traceback" not in r.stderr
    # plain progress lines (stdout is not a terminal) with the ramp's rising target
    targets = plain_targets(r.stdout)
    assert len(targets) >= 2
    assert targets[0] < targets[-1] <= 30.0 and targets == sorted(targets)
    # then the report: the demo's app mix, both slaves, the files
    assert "Thresholds: none set" in r.stdout
    assert "bert" in r.stdout and "block486" in r.stdout
    assert f"wrote {run_dir / 'report.txt'}" in r.stdout
    assert len(cdr_files(run_dir)) == 2
    assert offered_in(run_dir) > 0
    saved = json.loads((run_dir / "loadtest.json").read_text())
    assert 4.0 < saved["target_rate"] < 30.0  # a linear ramp averages between its ends
    # the report's rate figures: the ramp's average target over the calls' span (not the
    # 30/s in force at the last call), and an achieved rate that matches it
    from fastswitch.measure import load_run

    rate = load_run(run_dir).summary()["rate"]
    assert rate["target"] == pytest.approx(saved["target_rate"], rel=0.15)
    assert rate["achieved"] == pytest.approx(rate["target"], rel=0.15)


# -- run --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def passing_run(slaves, tmp_path_factory):
    """A short ``run`` with options (a whole originate command) and thresholds that hold."""
    run_dir = tmp_path_factory.mktemp("runs") / "pass"
    # placeholders inside the variable block: the block's braces nest
    cmd = (
        "originate {origination_uuid={uuid_str},originate_timeout=20,sip_h_X-Idx={call_index},"
        f"sip_h_X-Test=fs}}sofia/external/{dest(slaves)} &park()"
    )
    r = fastswitch(
        "run", *hosts(slaves), "--originate-cmd", cmd,
        "--rate", "20", "--limit", "100", "--duration", "1s", "--time", "3s",
        "--app", "bert:3", "--app", "block486:1",
        "--max-failed", "60%", "--max-setup-p99", "5s", "--min-rate", "0.5",
        "--run-dir", str(run_dir), "--no-plot", "--password", PASSWORD,
    )  # fmt: skip
    return r, run_dir


def test_run_with_options_passes_thresholds(passing_run, slaves):
    r, run_dir = passing_run
    assert r.returncode == 0, r.stderr + r.stdout
    out = r.stdout
    assert "PASS  failed calls <= 60.00%" in out
    assert "PASS  call set-up p99 <= 5.0s" in out or "PASS  call set-up p99 <= 5s" in out
    assert "PASS  achieved/target rate >= 0.500" in out
    assert "Verdict: PASS" in out
    assert len(cdr_files(run_dir)) == 2
    saved = json.loads((run_dir / "loadtest.json").read_text())
    assert saved["offered"] > 0 and saved["offering_time"] > 0
    # the block486 app is a quarter of the calls: they fail with USER_BUSY
    assert "USER_BUSY" in out
    # the whole originate command was used, with fastswitch's tracking variables added
    settings = json.loads((run_dir / "settings.json").read_text())
    for template in settings["initial"]["originate_cmd"]:
        assert "originate_timeout=20," in template and ",sip_h_X-Test=fs}" in template
        assert "origination_uuid={uuid_str},fastswitch_client={app_id}" in template
        assert ",sip_h_X-Idx={call_index}," in template  # filled per call
        assert template.endswith(f"}}}}sofia/external/{dest(slaves)} &park()")


def _line_fields(line: str) -> tuple[float, float, str | None]:
    """(achieved, target, 'p50/p95/p99' or None) of a plain progress line."""
    achieved, target = line.split(" rate ")[1].split(" cps")[0].split("/")
    setup = line.split("setup p50/p95/p99 ")[1].split()[0] if "setup p50" in line else None
    return float(achieved), float(target), setup


def test_run_final_line_matches_the_report(passing_run):
    """The done line has the report's figures: the set-up percentiles of every call (read
    after the workers flushed their last CDRs), and after the offering the rate over the
    offering period against its average target (the --min-rate check's figures)."""
    from fastswitch.cli.live import _ms
    from fastswitch.measure import load_run

    r, run_dir = passing_run
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("[")]
    done = [ln for ln in lines if " done " in ln]
    assert len(done) == 1, r.stdout
    s = load_run(run_dir).summary()
    setup = s["latency"]["call_setup_latency"]
    achieved, target, shown = _line_fields(done[0])
    assert shown == "/".join(_ms(setup[k]) for k in ("p50", "p95", "p99"))
    assert f"offered {s['offered']} answered {s['answered']} failed {s['failed']}" in done[0]
    saved = json.loads((run_dir / "loadtest.json").read_text())
    assert achieved == round(s["offered"] / saved["offering_time"], 1)
    assert target == round(saved["target_rate"], 1) == 20.0
    assert f"({achieved:.1f} of {target:.1f} calls/s)" in r.stdout  # the --min-rate check
    for line in lines:  # draining: the offering period's rate too, not a fading window
        if " draining " in line:
            a, t, _ = _line_fields(line)
            assert t == 20.0 and a > 10, line


def test_report_writes_png_and_html(passing_run):
    _r, run_dir = passing_run
    r = fastswitch("report", str(run_dir))
    assert r.returncode == 0, r.stderr
    assert (run_dir / "report.png").stat().st_size > 0
    html = (run_dir / "report.html").read_text()
    assert "<html" in html and "data:image/png;base64" in html
    assert "PASS  failed calls &lt;= 60.00%" in html  # the thresholds section
    # the thresholds saved by the run are re-checked, each with its measured value
    assert "PASS  failed calls <= 60.00%  measured" in r.stdout
    assert f"wrote {run_dir / 'report.png'}" in r.stdout
    # a stricter threshold given to report fails it
    r2 = fastswitch("report", str(run_dir), "--max-failed", "0%", "--no-plot")
    assert r2.returncode == 1
    assert "FAIL  failed calls <= 0.00%" in r2.stdout
    r3 = fastswitch("report", str(run_dir), "--max-setup-p99", "0.1ms", "--no-plot")
    assert r3.returncode == 1 and "FAIL  call set-up p99 <= 0.1ms  measured" in r3.stdout


def test_run_from_toml_with_stages_and_failing_threshold(slaves, tmp_path):
    """Settings from a TOML file (one overridden by an option), k6-style stages, and a
    threshold that fails: exit code 1 with the threshold and its measured value shown."""
    run_dir = tmp_path / "toml"
    conf = tmp_path / "loadtest.toml"
    conf.write_text(
        f"""
hosts = {json.dumps(hosts(slaves))}
password = "{PASSWORD}"
dest_url = "{dest(slaves)}"
limit = 200
duration = "1s"
time = "10m"            # overridden by --time 3s

[[app]]
name = "bert"

[[app]]
name = "block486"      # the callee answers 486: these calls fail

[[stage]]
duration = "1.5s"
rate = 6

[[stage]]
duration = "10m"
rate = 24
hold = "500ms"

[thresholds]
max_failed = "0.5%"
"""
    )
    r = fastswitch("run", "-c", str(conf), "--time", "3s", "--run-dir", str(run_dir), "--no-plot")
    assert r.returncode == 1, r.stderr + r.stdout
    assert "FAIL  failed calls <= 0.50%  measured" in r.stdout
    assert "Verdict: FAIL (1 of 1 thresholds not met)" in r.stdout
    targets = plain_targets(r.stdout)
    assert targets[0] == 6.0 and targets[-1] == 24.0 and set(targets) == {6.0, 24.0}
    saved = json.loads((run_dir / "loadtest.json").read_text())
    assert 6.0 < saved["target_rate"] < 24.0
    assert saved["offering_time"] < 60  # --time won over the file's 10m


def test_run_options_replace_the_toml_stages(slaves, tmp_path):
    """--ramp on the command line replaces the file's [[stage]] tables (no 'both a ramp and
    stages' error), with one line saying so."""
    run_dir = tmp_path / "ramp"
    conf = tmp_path / "st.toml"
    conf.write_text(
        f"""
hosts = {json.dumps(hosts(slaves))}
dest_url = "{dest(slaves)}"
duration = "500ms"
[[stage]]
duration = "10m"
rate = 40
"""
    )
    r = fastswitch(
        "run", "-c", str(conf), "--ramp", "5:10:2s", "--run-dir", str(run_dir), "--no-plot"
    )
    assert r.returncode == 0, r.stderr + r.stdout
    assert "fastswitch: the config file's 1 [[stage]] tables are overridden by --ramp" in r.stdout
    targets = plain_targets(r.stdout)
    assert targets and all(5.0 <= t <= 10.0 for t in targets) and targets == sorted(targets)
    saved = json.loads((run_dir / "loadtest.json").read_text())
    assert saved["offering_time"] < 10  # the ramp's 2 s, not the stage's 10 m
    assert "overridden by --ramp" in (run_dir / "fastswitch.log").read_text()


def test_app_given_as_module_colon_class(slaves, tmp_path):
    """``--app myapps:MyPark``: a class in a module without a dot in its name."""
    (tmp_path / "myapps.py").write_text(
        "from fastswitch.apps.park import Park\n\n\nclass MyPark(Park):\n    pass\n"
    )
    r = fastswitch(
        "run", *hosts(slaves), "--dest-url", dest(slaves), "--app", "myapps:MyPark",
        "--rate", "10", "--duration", "300ms", "--time", "1s",
        "--run-dir", str(tmp_path / "run"), "--no-plot",
        cwd=tmp_path,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr + r.stdout
    assert "myapps_MyPark" in r.stdout and offered_in(tmp_path / "run") > 0


# -- errors -----------------------------------------------------------------------------------


def test_failure_after_connecting_leaves_no_run_directory(slaves, tmp_path):
    """A configuration error found once connected (no such sofia profile) removes the run
    directory it made: nothing but a log would be in it."""
    r = fastswitch(
        "run", hosts(slaves)[0], "--proxy", "x@127.0.0.1:5060", "--profile", "bogus",
        "--time", "1s", cwd=tmp_path,
    )  # fmt: skip
    assert r.returncode == 2, r.stderr + r.stdout
    assert "profile 'bogus'" in r.stderr and "Traceback" not in r.stderr
    runs = tmp_path / "fastswitch-runs"
    assert not runs.exists() or not any(runs.iterdir())
    # a bad originate command fails before connecting
    r = fastswitch(
        "run", hosts(slaves)[0], "--originate-cmd", "originate {a={nope}}sofia/x/y@h &park()",
        cwd=tmp_path,
    )  # fmt: skip
    assert r.returncode == 2 and "unknown placeholder {nope}" in r.stderr
    assert "connecting" not in r.stdout
    assert not runs.exists() or not any(runs.iterdir())


def test_ctrl_c_while_connecting_aborts_promptly(tmp_path):
    """A Ctrl-C (SIGINT to the whole process group, as a terminal sends it) while a slave
    that accepts but never answers is being connected aborts at once with exit code 130;
    the worker processes ignore it (no KeyboardInterrupt from them)."""
    with socket.socket() as silent:  # accepts connections (the backlog), never says a word
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        port = silent.getsockname()[1]
        env = dict(os.environ, PYTHONPATH=str(REPO))
        proc = subprocess.Popen(
            [sys.executable, "-m", "fastswitch", "run", f"127.0.0.1:{port}",
             "--dest-url", "x@127.0.0.1:5080", "--time", "1s"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path, env=env,
            start_new_session=True,
        )  # fmt: skip
        try:
            time.sleep(2.0)  # the worker is started and waits for the slave's greeting
            assert proc.poll() is None
            sent = time.monotonic()
            os.killpg(proc.pid, signal.SIGINT)
            out, err = proc.communicate(timeout=10)
            took = time.monotonic() - sent
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert proc.returncode == 130, err + out
    assert took < 3.0, took  # not the 5 s connect timeout
    assert "interrupted while connecting to 127.0.0.1:" in err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    runs = tmp_path / "fastswitch-runs"
    assert not runs.exists() or not any(runs.iterdir())


def test_unreachable_slave_exit_3():
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    r = fastswitch("run", f"127.0.0.1:{port}", "--proxy", "x@127.0.0.1:5060", "--time", "1s")
    assert r.returncode == 3
    assert f"127.0.0.1:{port}" in r.stderr and "check the host and port" in r.stderr
    assert "Traceback" not in r.stderr


def test_wrong_password_exit_3(slaves):
    r = fastswitch(
        "run", hosts(slaves)[0], "--dest-url", dest(slaves), "--password", "nope", "--time", "1s"
    )
    assert r.returncode == 3
    assert "check --password" in r.stderr and hosts(slaves)[0] in r.stderr
    assert "Traceback" not in r.stderr


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--rate", "-5"], "invalid rate '-5'"),
        (["--limit", "0"], "invalid limit '0'"),
        (["--app", "nosuchapp"], "unknown app 'nosuchapp'"),
        (["--max-failed", "150%"], "--max-failed"),
    ],
)
def test_bad_option_values_exit_2(args, needle):
    r = fastswitch("run", "127.0.0.1:8021", "--proxy", "x@127.0.0.1:5060", *args)
    assert r.returncode == 2, r.stderr
    assert needle in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr


def test_malformed_host_and_missing_run_dir_exit_2(tmp_path):
    r = fastswitch("run", "10.0.0.1:http", "--proxy", "x@y")
    assert r.returncode == 2 and "malformed host '10.0.0.1:http'" in r.stderr
    r = fastswitch("report", str(tmp_path / "nowhere"))
    assert r.returncode == 2 and "does not exist" in r.stderr
    r = fastswitch("run", "127.0.0.1", "--proxy", "x@y", "--ramp", "10:5", "--debug")
    assert r.returncode == 2 and "invalid ramp" in r.stderr


def test_list_apps_and_version():
    r = fastswitch("list-apps")
    assert r.returncode == 0
    assert "Bert" in r.stdout and "CalleeBlockOnInvite" in r.stdout and "block404" in r.stdout
    assert "parameters:" in r.stdout
    r = fastswitch("--version")
    assert r.returncode == 0 and r.stdout.startswith("fastswitch ")
    r = fastswitch("sim", "--help")  # delegated to fastswitch.sim.main
    assert r.returncode == 0 and "--answer-delay" in r.stdout
    # the defaults the help texts state are the rules the code applies
    r = fastswitch("demo", "--help")
    assert "peak rate x (hold + 0.5s) x 1.5" in " ".join(r.stdout.split())
    r = fastswitch("run", "--help")
    assert "limit/rate + 10s" in " ".join(r.stdout.split()) and "130" in r.stdout


# -- terminal keys ----------------------------------------------------------------------------


def _read_until(fd: int, needle: bytes, buf: bytearray, limit: float = 30.0) -> bool:
    """Read the pty into ``buf`` until ``needle`` shows up (False on EOF or after ``limit`` s)."""
    import select

    deadline = time.monotonic() + limit
    while needle not in buf:
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        ready, _, _ = select.select([fd], [], [], min(left, 0.5))
        if ready:
            try:
                chunk = os.read(fd, 65536)
            except OSError:
                return needle in buf
            if not chunk:
                return needle in buf
            buf += chunk
    return True


def test_terminal_keys_and_sigint(slaves, tmp_path):
    """On a terminal: the rich live view; ``*`` doubles the rate, ``p`` pauses and resumes;
    a first Ctrl-C (SIGINT) stops offering and waits for the calls (held 30 s) to end, a
    second one hangs them up; the CDRs are flushed and the report printed."""
    import pty

    run_dir = tmp_path / "keys"
    master, slave = pty.openpty()
    env = dict(os.environ, PYTHONPATH=str(REPO), COLUMNS="120", LINES="40", TERM="xterm")
    args = f"run --rate 5 --limit 100 --duration 30s --time 5m --run-dir {run_dir} --no-plot"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "fastswitch",
            *args.split(),
            *hosts(slaves),
            "--dest-url",
            dest(slaves),
        ],
        stdin=slave,
        stdout=slave,
        stderr=slave,
        env=env,
        cwd=REPO,
        close_fds=True,
    )
    os.close(slave)
    buf = bytearray()

    def screen() -> str:
        return buf.decode(errors="replace")[-3000:]

    try:
        assert _read_until(master, b"p pause/resume", buf), screen()
        os.write(master, b"*")
        assert _read_until(master, b"rate x2.00 of the profile", buf), screen()
        assert _read_until(master, b"10.0 cps", buf), screen()  # the target doubled from 5
        os.write(master, b"p")
        assert _read_until(master, b"paused: no new calls", buf), screen()
        os.write(master, b"p")
        assert _read_until(master, b"resumed", buf), screen()
        proc.send_signal(signal.SIGINT)
        assert _read_until(master, b"interrupted: stopped offering", buf), screen()
        assert _read_until(master, b"draining", buf), screen()
        proc.send_signal(signal.SIGINT)
        assert _read_until(master, b"hung up all calls", buf), screen()
        assert _read_until(master, b"Thresholds: none set", buf), screen()  # the report
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
    assert len(cdr_files(run_dir)) == 2
    assert offered_in(run_dir) > 0
    saved = json.loads((run_dir / "loadtest.json").read_text())
    assert saved["interrupted"] is True and saved["hungup"] is True and saved["offered"] > 0
