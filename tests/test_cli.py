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
    env = dict(os.environ, PYTHONPATH=str(REPO), COLUMNS="120")
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


# -- run --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def passing_run(slaves, tmp_path_factory):
    """A short ``run`` with options (a whole originate command) and thresholds that hold."""
    run_dir = tmp_path_factory.mktemp("runs") / "pass"
    cmd = f"originate {{originate_timeout=20,sip_h_X-Test=fs}}sofia/external/{dest(slaves)} &park()"
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
        assert template.endswith(f"}}}}sofia/external/{dest(slaves)} &park()")


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


# -- errors -----------------------------------------------------------------------------------


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
