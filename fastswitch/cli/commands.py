"""The ``run`` and ``report`` commands, and the load-test execution ``demo`` shares.

:func:`execute` owns one load test from the originator's start to the printed report:
it starts the workers (each starts with SIGINT ignored so that only this process sees
Ctrl-C, which aborts a slow connect), sets the originate commands, loads the apps, runs
:class:`~fastswitch.cli.runner.LoadTest`, always shuts the originator down (the workers flush
their CDR files), shows the final line from the flushed records, then prints the report and
returns the exit code of the thresholds' verdict.
"""

from __future__ import annotations

import argparse
import logging
import re
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console

from fastswitch.cli.apps import resolve
from fastswitch.cli.config import RunConfig, build_config, read_toml
from fastswitch.cli.keys import KeyReader
from fastswitch.cli.origcmd import check_originate_cmd, parse_originate_cmd
from fastswitch.cli.parse import AppSpec, parse_duration
from fastswitch.cli.report import REPORT_HTML, REPORT_PNG, build_report, check_run_dir
from fastswitch.cli.runner import LiveOutput, LoadTest
from fastswitch.cli.signals import (
    Interrupted,
    StopRequests,
    children_ignore_sigint,
    interruptible_spawning,
)
from fastswitch.cli.thresholds import Thresholds
from fastswitch.errors import CommandError, ConfigurationError

EXIT_OK, EXIT_THRESHOLD = 0, 1

_BIND_URL = re.compile(r"BIND-URL\s+sip:[^@\s]*@(?:\[([^\]]+)\]|([^:;\s]+)):(\d+)")


def thresholds_from_args(args: argparse.Namespace) -> Thresholds:
    """The thresholds given as options (unset ones None)."""
    return Thresholds(
        max_failed=getattr(args, "max_failed", None),
        max_setup_p99=getattr(args, "max_setup_p99", None),
        min_rate=getattr(args, "min_rate", None),
    )


def overrides_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The options of ``run``/``demo`` as ``build_config`` overrides (None = not given)."""
    keys = (
        "password",
        "proxy",
        "profile",
        "dest_url",
        "originate_cmd",
        "rate",
        "limit",
        "duration",
        "max_sessions",
        "time",
        "ramp",
        "drain",
        "run_dir",
        "apps",
    )
    out = {k: getattr(args, k, None) for k in keys}
    hosts = getattr(args, "hosts", None)
    out["hosts"] = hosts or None
    th = thresholds_from_args(args)
    out["thresholds"] = th if th.any else None
    return out


def resolve_apps(specs: list[AppSpec]) -> list[tuple[AppSpec, type, dict[str, Any]]]:
    """Resolve every ``--app`` before connecting, so a typo fails fast with exit code 2."""
    out = []
    for spec in specs:
        cls, params = resolve(spec)
        out.append((spec, cls, params))
    return out


def app_ids(resolved: list[tuple[AppSpec, type, dict[str, Any]]]) -> list[str]:
    """A distinct app id per ``--app`` entry (the short name; numbered when repeated)."""
    ids: list[str] = []
    for spec, _cls, _params in resolved:
        base = re.sub(r"[^\w.-]", "_", spec.name)
        name, n = base, 1
        while name in ids:
            n += 1
            name = f"{base}{n}"
        ids.append(name)
    return ids


def make_run_dir(path: Path | None) -> tuple[Path, bool]:
    """The run directory: the given one (created), or a new timestamped one; and whether
    this call created it (only such a directory is removed when the run cannot start)."""
    from fastswitch.measure import new_run_dir

    if path is None:
        return new_run_dir(), True
    created = not path.exists()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigurationError(
            f"cannot create run directory {str(path)!r}: {e.strerror}"
        ) from None
    return path, created


def cdr_rows_written(run_dir: Path) -> int:
    """How many CDR rows the workers wrote into ``run_dir`` (0 when unreadable)."""
    from fastswitch.measure import read_cdr

    try:
        return read_cdr(run_dir).num_rows
    except Exception:
        return 0


def discard_unused_run_dir(run_dir: Path, created: bool) -> bool:
    """Remove a run directory this run created when no CDR row was written into it (the run
    failed before any call: only a log and empty files would be left); True if removed."""
    if not created or cdr_rows_written(run_dir):
        return False
    shutil.rmtree(run_dir, ignore_errors=True)
    return not run_dir.exists()


def live_mode(args: argparse.Namespace) -> str:
    """'rich' on a terminal, 'plain' otherwise or with --plain."""
    if getattr(args, "plain", False) or not sys.stdout.isatty():
        return "plain"
    return "rich"


def profile_sip_address(client: Any, profile: str) -> tuple[str, int]:
    """The SIP address of ``profile`` on a slave: the ``BIND-URL`` of ``sofia status profile
    <profile>``, else the profile's row in the ``sofia status`` table."""
    try:
        reply = client.api(f"sofia status profile {profile}") or ""
    except CommandError as e:
        reply = str(e)
    m = _BIND_URL.search(reply)
    if not m:
        row = re.compile(
            rf"^\s*{re.escape(profile)}\s+profile\s+sip:[^@\s]*@(?:\[([^\]]+)\]|([^:;\s]+)):(\d+)",
            re.M,
        )
        m = row.search(reply)
        if not m:
            try:
                m = row.search(client.api("sofia status") or "")
            except CommandError:
                m = None
    if not m:
        raise ConfigurationError(
            f"cannot find the SIP address of profile {profile!r} on {client.host}:{client.port} "
            "(not in `sofia status`): give --dest-url USER@HOST:PORT, or the right --profile"
        )
    return (m.group(1) or m.group(2)), int(m.group(3))


def configure_commands(orig: Any, cfg: RunConfig) -> None:
    """Set each slave's originate command from the options (or the whole given command)."""
    if cfg.originate_cmd:
        dest_url, kwargs = parse_originate_cmd(cfg.originate_cmd)
        for client in orig.pool.clients:
            client.set_orig_cmd(dest_url, **kwargs)
        return
    for client in orig.pool.clients:
        if cfg.dest_url:
            dest = cfg.dest_url
        else:
            host, port = profile_sip_address(client, cfg.profile)
            dest = f"fastswitch@{host}:{port}"
        client.set_orig_cmd(dest, profile=cfg.profile, proxy=cfg.proxy or dest, app_name="park")


LOG_FILE = "fastswitch.log"


def setup_logging(run_dir: Path, debug: bool) -> logging.Handler:
    """Send fastswitch's log to ``fastswitch.log`` in the run directory (not the screen,
    where it would tear the live view); with ``--debug`` also to stderr, at DEBUG."""
    from fastswitch.log import SeedFormatter, log_to_stderr

    path = run_dir / LOG_FILE
    logger = logging.getLogger("fastswitch")
    handler = logging.FileHandler(path)
    handler.setFormatter(SeedFormatter())
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG if debug else logging.INFO)
    logger.propagate = False
    if debug:
        log_to_stderr(logging.DEBUG)
    return handler


def close_logging(handler: logging.Handler) -> None:
    """Detach and close the run's log file handler."""
    logging.getLogger("fastswitch").removeHandler(handler)
    handler.close()


def execute(
    cfg: RunConfig,
    args: argparse.Namespace,
    argv: list[str],
    configure: Callable[[Any], None],
    console: Console | None = None,
    stops: StopRequests | None = None,
) -> int:
    """Run one load test with ``cfg`` and print its report; returns the exit code.

    ``stops`` counts SIGINT/SIGTERM; installed here when not given. A SIGTERM while the
    slaves are being connected is kept and ends the test as soon as it starts; a Ctrl-C
    then aborts at once (:class:`~fastswitch.cli.signals.Interrupted`, exit code 130), the
    worker processes still never seeing it. When the run fails before its first CDR row
    (a slave cannot be reached, a bad ``--profile`` or originate command, Ctrl-C), the run
    directory it created is removed.
    """
    if stops is None:
        with StopRequests() as own:
            return execute(cfg, args, argv, configure, console, own)
    from fastswitch.originator import get_originator

    resolved = resolve_apps(cfg.apps)
    run_dir, created = make_run_dir(cfg.run_dir)
    log_handler = setup_logging(run_dir, getattr(args, "debug", False))
    console = console or Console()
    try:
        mode = live_mode(args)
        interval = parse_duration(getattr(args, "interval", "0.5s") or "0.5s", "--interval")
        interval = min(max(interval, 0.1), 10.0)
        profile = cfg.load_profile()
    except BaseException:
        close_logging(log_handler)
        discard_unused_run_dir(run_dir, created)
        raise
    for note in cfg.notes:
        logging.getLogger("fastswitch.cli").info("%s", note)
        console.print(f"fastswitch: {note}", highlight=False, markup=False)
    sp0 = profile.setpoint(0.0)
    settings: dict[str, Any] = {"rate": sp0.rate, "limit": sp0.limit, "run_dir": run_dir}
    if sp0.hold is not None:
        settings["duration"] = sp0.hold
    if cfg.max_sessions is not None:
        settings["max_sessions"] = cfg.max_sessions
    slaves = ", ".join(f"{h}:{p}" for h, p in cfg.hosts)
    console.print(f"fastswitch: connecting to {slaves} ...", highlight=False)
    try:
        with interruptible_spawning():
            orig = get_originator(list(cfg.hosts), password=cfg.password, **settings)
    except BaseException as e:
        close_logging(log_handler)
        discard_unused_run_dir(run_dir, created)
        if isinstance(e, Interrupted):
            raise Interrupted(
                f"interrupted while connecting to {slaves}: no load test was run"
            ) from None
        raise
    outcome = None
    keys = None
    run = None
    try:
        try:
            with interruptible_spawning():
                configure(orig)
                for (spec, cls, params), app_id in zip(resolved, app_ids(resolved), strict=True):
                    try:
                        orig.load_app(
                            cls, app_id=app_id, ppkwargs=params or None, weight=spec.weight
                        )
                    except (TypeError, ValueError) as e:
                        raise ConfigurationError(f"cannot load app {spec.name!r}: {e}") from None
        except Interrupted:
            raise Interrupted(
                f"interrupted while setting up {slaves}: no load test was run"
            ) from None
        if mode == "rich" and KeyReader.available():
            keys = KeyReader().start()
        with LiveOutput(console, mode, plain_interval=max(interval, 1.0)) as out:
            test = LoadTest(
                orig,
                profile,
                out,
                run_dir,
                drain=cfg.drain,
                interval=interval,
                keys=keys,
                argv=argv,
            )
            try:
                outcome = test.run(stops)
            finally:
                if keys is not None:
                    keys.close()
                    keys = None
                with children_ignore_sigint():
                    orig.shutdown()  # the workers flush and close their CDR files
            run = final_run(run_dir)
            test.finish(run.summary() if run is not None else None)
    finally:
        if keys is not None:
            keys.close()
        with children_ignore_sigint():
            orig.shutdown()
        close_logging(log_handler)
        if outcome is not None:
            outcome.save()
        else:
            discard_unused_run_dir(run_dir, created)
    cfg.thresholds.save(run_dir)
    return print_report(
        run_dir, cfg.thresholds, plot=not getattr(args, "no_plot", False), console=console, run=run
    )


def final_run(run_dir: Path) -> Any:
    """The finished run's records (:func:`fastswitch.measure.load_run`), read once for the
    final live line and the report; None when they cannot be read (the report says why)."""
    from fastswitch.measure import load_run

    try:
        run = load_run(run_dir)
        run.summary()
    except Exception:
        logging.getLogger("fastswitch.cli").exception("cannot summarise %s", run_dir)
        return None
    return run


def print_report(
    run_dir: Path,
    thresholds: Thresholds,
    plot: bool,
    console: Console | None = None,
    run: Any = None,
) -> int:
    """Build, print and write the report; exit code 1 when a threshold failed. ``run``: the
    run's records when already read."""
    report = build_report(run_dir, thresholds, plot=plot, run=run)
    print()
    print(report.text, end="")
    for f in report.files:
        if f.name in (REPORT_PNG, REPORT_HTML) or f.suffix == ".txt":
            print(f"wrote {f}")
    if (run_dir / LOG_FILE).exists():
        print(f"log   {run_dir / LOG_FILE}")
    sys.stdout.flush()
    return EXIT_OK if all(c.ok for c in report.checks) else EXIT_THRESHOLD


def cmd_run(args: argparse.Namespace, argv: list[str]) -> int:
    """``fastswitch run``: a load test against real slaves."""
    data = read_toml(args.config) if args.config else None
    cfg = build_config(data, overrides_from_args(args))
    if not cfg.hosts:
        raise ConfigurationError(
            "no slaves given: list HOST[:PORT] ... or set hosts = [...] in the -c file"
        )
    if not cfg.originate_cmd and not cfg.proxy and not cfg.dest_url:
        raise ConfigurationError(
            "no call route: give --proxy SUT_ADDRESS (the system under test), --dest-url, or --originate-cmd"
        )
    if cfg.originate_cmd:
        check_originate_cmd(cfg.originate_cmd)  # fail before connecting
    return execute(cfg, args, argv, lambda orig: configure_commands(orig, cfg))


def cmd_report(args: argparse.Namespace) -> int:
    """``fastswitch report RUN_DIR``: re-print the report of a finished run."""
    run_dir = check_run_dir(Path(args.run_dir))
    thresholds = Thresholds.load(run_dir).merged(thresholds_from_args(args))
    return print_report(run_dir, thresholds, plot=not args.no_plot)
