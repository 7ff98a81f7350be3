"""``python -m fastswitch`` / ``fastswitch``: the command line.

Commands::

    demo       a load test against a simulated cluster started on this machine (no FreeSWITCH)
    run        a load test against real FreeSWITCH slaves (switchio's ``dial``)
    sim        run simulated FreeSWITCH servers (fastswitch.sim)
    report     summary, thresholds, PNG and HTML of a run directory
    list-apps  the shipped call-flow apps and their parameters

Exit codes (documented in ``--help``):

    0  the run finished and every threshold held (or none was set)
    1  a threshold was not met
    2  configuration or usage error (bad option value, unknown app, missing run directory ...)
    3  connection or authentication error (slave unreachable, wrong ESL password)
  130  interrupted (Ctrl-C) before the load test started, e.g. while connecting

Errors print one line naming the problem and its fix; ``--debug`` adds the traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from collections.abc import Callable, Sequence

from fastswitch.errors import (
    AuthenticationError,
    ConfigurationError,
    ConnectError,
    ESLError,
    FastSwitchError,
)

__all__ = [
    "main",
    "build_parser",
    "EXIT_OK",
    "EXIT_THRESHOLD",
    "EXIT_USAGE",
    "EXIT_CONNECT",
    "EXIT_INTERRUPTED",
]

EXIT_OK = 0
EXIT_THRESHOLD = 1
EXIT_USAGE = 2
EXIT_CONNECT = 3
#: Ctrl-C before a load test started (a test interrupted while it runs still reports and
#: exits with its thresholds' verdict, 0 or 1).
EXIT_INTERRUPTED = 130

EXIT_CODES_HELP = """\
exit codes:
  0  finished, every threshold held (or none set)
  1  a threshold was not met
  2  configuration or usage error (bad option value, unknown app, missing run directory)
  3  connection or authentication error (slave unreachable, wrong ESL password)
  130  interrupted (Ctrl-C) before the load test started, e.g. while connecting
       (Ctrl-C during the test stops it and still reports: 0 or 1 as above)
"""


class UsageError(ConfigurationError):
    """A command-line usage error (exit code 2)."""


class _Parser(argparse.ArgumentParser):
    """argparse that raises UsageError instead of exiting, so every error is one line."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{self.prog}: {message} (see {self.prog} --help)")


def _typed(fn: Callable[[str], object]) -> Callable[[str], object]:
    """Wrap a fastswitch parser as an argparse ``type`` (ConfigurationError -> usage error)."""

    def conv(text: str) -> object:
        try:
            return fn(text)
        except ConfigurationError as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    conv.__name__ = getattr(fn, "__name__", "value")
    return conv


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")


def _add_load_options(p: argparse.ArgumentParser, demo: bool) -> None:
    from fastswitch.cli import parse

    g = p.add_argument_group("load")
    g.add_argument("--rate", help="calls per second (default: %s)" % ("50" if demo else "10"))
    g.add_argument(
        "--limit",
        help="max concurrent calls, erlangs (default: %s)"
        % ("peak rate x (hold + 0.5s) x 1.5, at least 10" if demo else "100"),
    )
    g.add_argument(
        "--duration",
        help="call hold time, e.g. 20s (default: %s)"
        % ("3s" if demo else "limit/rate + 10s, recomputed when the rate or limit changes"),
    )
    g.add_argument("--max-sessions", help="stop offering after this many calls in total")
    g.add_argument(
        "--time",
        help="how long to offer load, e.g. 10m (default: %s)"
        % ("20s" if demo else "until stopped"),
    )
    g.add_argument("--ramp", help="linear rate ramp START:END:OVER, e.g. 10:200:60s")
    g.add_argument(
        "--drain", help="after the test time, wait this long for calls to end before hanging up"
    )
    g.add_argument(
        "--app",
        action="append",
        dest="apps",
        metavar="NAME[:WEIGHT][/k=v,...]",
        help="call flow app (repeatable), e.g. --app bert:34 --app ringback:33 --app block404:33",
    )
    g.add_argument(
        "--run-dir",
        help="directory for CDRs and the report (default: ./fastswitch-runs/<timestamp>)",
    )
    t = p.add_argument_group("thresholds (exit code 1 when one is not met)")
    t.add_argument(
        "--max-failed",
        type=_typed(lambda s: parse.parse_fraction(s, "--max-failed")),
        help="max failed/offered, e.g. 0.5%%",
    )
    t.add_argument(
        "--max-setup-p99",
        type=_typed(lambda s: parse.parse_duration(s, "--max-setup-p99")),
        help="max p99 call set-up latency, e.g. 250ms",
    )
    t.add_argument(
        "--min-rate",
        type=_typed(lambda s: parse.parse_fraction(s, "--min-rate")),
        help="min achieved/target call rate, e.g. 0.99",
    )
    o = p.add_argument_group("output")
    o.add_argument(
        "--plain", action="store_true", help="one log line per interval instead of the live screen"
    )
    o.add_argument(
        "--interval",
        default="0.5s",
        help="live view refresh interval (default 0.5s; plain lines: 1s min)",
    )
    o.add_argument(
        "--no-plot",
        action="store_true",
        help="write only report.txt, no report.png/report.html (faster)",
    )


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every command."""
    from fastswitch import PARSER, __version__

    parser = _Parser(
        prog="fastswitch",
        description="FreeSWITCH call generator and SIP stress tester.",
        epilog=EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--version", action="version", version=f"fastswitch {__version__} (ESL parser: {PARSER})"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    demo = sub.add_parser(
        "demo",
        help="load test a simulated cluster started here (no FreeSWITCH needed)",
        description="Start simulated FreeSWITCH slaves on loopback, load test them and report.",
        epilog=EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    demo.add_argument("--slaves", default="2", help="number of simulated slaves (default 2)")
    demo.add_argument("--seed", type=int, default=None, help="random seed of the simulators")
    _add_load_options(demo, demo=True)
    _add_common(demo)

    run = sub.add_parser(
        "run",
        help="load test through a SUT with real FreeSWITCH slaves",
        description="Originate calls from FreeSWITCH slaves through the SUT back to the slaves.",
        epilog=EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    run.add_argument(
        "hosts",
        nargs="*",
        metavar="HOST[:PORT]",
        help="ESL address of each slave (port 8021 by default)",
    )
    run.add_argument(
        "-c",
        "--config",
        help="TOML file with the settings (options override it; --rate/--limit/--duration/"
        "--ramp replace its [[stage]] tables)",
    )
    run.add_argument("--password", help="ESL password (default ClueCon)")
    run.add_argument("--proxy", help="first hop: the SUT's SIP address, e.g. sut@10.0.0.1:5060")
    run.add_argument("--profile", help="sofia profile to originate from (default external)")
    run.add_argument(
        "--dest-url",
        help="where the SUT sends calls back (default: each slave's own profile address)",
    )
    run.add_argument(
        "--originate-cmd",
        help="the whole originate command instead ({uuid_str} {app_id} {call_index} are "
        "filled in per call)",
    )
    _add_load_options(run, demo=False)
    _add_common(run)

    sim = sub.add_parser(
        "sim", help="run simulated FreeSWITCH servers (see `sim --help`)", add_help=False
    )
    sim.add_argument("sim_args", nargs=argparse.REMAINDER)

    rep = sub.add_parser(
        "report",
        help="summary, thresholds, PNG and HTML of a run directory",
        epilog=EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    rep.add_argument("run_dir", metavar="RUN_DIR")
    from fastswitch.cli import parse

    rep.add_argument("--max-failed", type=_typed(lambda s: parse.parse_fraction(s, "--max-failed")))
    rep.add_argument(
        "--max-setup-p99", type=_typed(lambda s: parse.parse_duration(s, "--max-setup-p99"))
    )
    rep.add_argument("--min-rate", type=_typed(lambda s: parse.parse_fraction(s, "--min-rate")))
    rep.add_argument(
        "--no-plot", action="store_true", help="write only report.txt, no report.png/report.html"
    )
    _add_common(rep)

    la = sub.add_parser("list-apps", help="the shipped call-flow apps and their parameters")
    _add_common(la)
    return parser


def _fix_hint(exc: BaseException) -> str:
    """One-line message with the fix for connection/authentication errors."""
    msg = str(exc)
    if isinstance(exc, AuthenticationError):
        return f"{msg}: check --password (event_socket.conf.xml 'password', FreeSWITCH's default is ClueCon)"
    if isinstance(exc, ConnectError):
        return (
            f"{msg}: check the host and port, and that FreeSWITCH runs there with mod_event_socket "
            "listening on that address (event_socket.conf.xml listen-ip/listen-port)"
        )
    return msg


def _dispatch(args: argparse.Namespace, argv: list[str]) -> int:
    if args.command == "list-apps":
        from fastswitch.cli.apps import format_app_list

        print(format_app_list())
        return EXIT_OK
    if args.command == "report":
        from fastswitch.cli.commands import cmd_report

        return cmd_report(args)
    if args.command == "run":
        from fastswitch.cli.commands import cmd_run

        return cmd_run(args, argv)
    if args.command == "demo":
        from fastswitch.cli.demo import cmd_demo

        return cmd_demo(args, argv)
    raise UsageError(
        "fastswitch: a command is required: demo, run, sim, report or list-apps (see --help)"
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code (see the module docstring)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get("FASTSWITCH_DEBUG") == "1"
    if argv and argv[0] == "sim":
        from fastswitch import sim

        return int(sim.main(argv[1:]) or 0)
    try:
        args = build_parser().parse_args(argv)
        return _dispatch(args, argv)
    except SystemExit as e:  # --help / --version
        return int(e.code or 0) if isinstance(e.code, int | None) else EXIT_USAGE
    except (AuthenticationError, ConnectError) as e:
        return _fail(e, EXIT_CONNECT, debug)
    except ConfigurationError as e:
        return _fail(e, EXIT_USAGE, debug)
    except ESLError as e:
        return _fail(e, EXIT_CONNECT, debug)
    except FastSwitchError as e:
        return _fail(e, EXIT_USAGE, debug)
    except KeyboardInterrupt as e:
        if debug:
            traceback.print_exception(e)
        print(f"fastswitch: {e or 'interrupted'}", file=sys.stderr)
        return EXIT_INTERRUPTED


def _fail(exc: BaseException, code: int, debug: bool) -> int:
    if debug:
        traceback.print_exception(exc)
    msg = _fix_hint(exc)
    prefix = "" if msg.startswith("fastswitch") else "fastswitch: error: "
    print(f"{prefix}{msg}", file=sys.stderr)
    return code
