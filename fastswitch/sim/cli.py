"""``python -m fastswitch sim``: run simulated FreeSWITCH servers until interrupted."""

from __future__ import annotations

import argparse
import dataclasses
import signal
import sys
import threading
from typing import Any

from .config import SimConfig, parse_mapping
from .server import SimCluster


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="fastswitch sim",
        description="Run simulated FreeSWITCH servers (ESL + loop-back SIP) until interrupted.",
    )
    p.add_argument("--count", type=int, default=1, help="number of servers (default 1)")
    p.add_argument(
        "--spread-hosts",
        action="store_true",
        help="use consecutive 127.0.0.x hosts instead of consecutive ports",
    )
    defaults = SimConfig(hostname="x")
    for f in dataclasses.fields(SimConfig):
        opt = "--" + f.name.replace("_", "-")
        val = getattr(defaults, f.name)
        if f.name == "hostname":
            p.add_argument(
                opt, default=None, help="FreeSWITCH-Hostname in events (default: this host)"
            )
        elif isinstance(val, bool):
            p.add_argument(opt, action="store_true", default=None, help=f"(default {val})")
        elif isinstance(val, dict):
            p.add_argument(
                opt,
                type=parse_mapping,
                default=None,
                help="k=v,k=v or JSON (e.g. 486=0.1,503=0.05)",
            )
        elif f.name in ("sip_port", "seed", "sip_host"):
            p.add_argument(opt, type=int if f.name != "sip_host" else str, default=None)
        else:
            p.add_argument(opt, type=type(val), default=None, help=f"(default {val})")
    return p


def main(argv: list[str] | None = None) -> int:
    """Start ``--count`` servers, print where each listens, run until SIGINT/SIGTERM."""
    args = build_parser().parse_args(argv)
    kwargs: dict[str, Any] = {
        f.name: getattr(args, f.name)
        for f in dataclasses.fields(SimConfig)
        if getattr(args, f.name) is not None
    }
    cluster = SimCluster(count=args.count, spread_hosts=args.spread_hosts, **kwargs)
    done = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: done.set())
    try:
        cluster.start()
    except RuntimeError as e:
        print(f"fastswitch sim: {e}", file=sys.stderr)
        return 1
    try:
        for s in cluster.servers:
            print(
                f"simulated FreeSWITCH: esl {s.address[0]}:{s.address[1]} "
                f"sip {s.sip_address[0]}:{s.sip_address[1]} password {s.cfg.password} pid {s.pid}",
                flush=True,
            )
        while not done.wait(0.5):
            if not all(s.running for s in cluster.servers):
                print("fastswitch sim: a server process died", file=sys.stderr)
                return 1
    finally:
        cluster.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
