"""``fastswitch demo``: a complete load test on a machine without FreeSWITCH.

Starts ``--slaves`` simulated FreeSWITCH servers (:mod:`fastswitch.sim`, each in its own
process, on loopback, on free ports) with a realistic mix: answer delays that differ per
slave (50 ms to 400 ms), a few rejections (486 busy, 503, 404). Slave ``i`` calls slave
``i+1`` (the simulator routes an originate by SIP address, as a SUT would), so every call
has a caller leg on one slave and a callee leg on another. Then it runs the same load test
as ``run`` with the demo defaults, prints the report and stops the simulators.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import socket
from collections.abc import Iterator
from typing import Any

from fastswitch.cli.commands import execute, overrides_from_args
from fastswitch.cli.config import build_config
from fastswitch.cli.parse import AppSpec, parse_count
from fastswitch.cli.signals import children_ignore_sigint
from fastswitch.errors import ConfigurationError

DEMO_TIME = "20s"
DEMO_RATE = 50.0
DEMO_HOLD = 3.0
#: Per-slave answer delays, cycled.
ANSWER_DELAYS = (0.05, 0.15, 0.4, 0.1)
#: SIP rejections each simulated callee gives: {code: probability}.
REJECT_MIX: dict[Any, float] = {486: 0.02, 503: 0.01, 404: 0.005}
#: Default call flows: mostly held calls with an audio check, a few blocked or ringing ones.
DEMO_APPS = (
    AppSpec("bert", 85),
    AppSpec("block486", 10),
    AppSpec("ringback", 5, {"caller_hup_after": 2, "ring_response": "ring_ready"}),
)
MAX_SLAVES = 16


def free_ports(n: int) -> list[int]:
    """``n`` distinct free TCP ports on loopback (bound together so none repeats)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


@contextlib.contextmanager
def sim_slaves(count: int, seed: int | None = None) -> Iterator[list[Any]]:
    """Start ``count`` simulated slaves; yields their SimConfigs; stops them on exit."""
    from fastswitch import sim

    ports = free_ports(2 * count)
    configs = [
        sim.SimConfig(
            host="127.0.0.1",
            port=ports[2 * i],
            sip_port=ports[2 * i + 1],
            answer_delay=ANSWER_DELAYS[i % len(ANSWER_DELAYS)],
            reject_mix=dict(REJECT_MIX),
            seed=None if seed is None else seed + i,
            max_sessions=20000,
            sps=5000,
        )
        for i in range(count)
    ]
    servers: list[Any] = []
    try:
        with children_ignore_sigint():
            for cfg in configs:
                server = sim.SimServer(cfg)
                server.start()
                servers.append(server)
        yield configs
    finally:
        with children_ignore_sigint():
            for server in reversed(servers):
                try:
                    server.stop()
                except Exception:
                    pass


def cmd_demo(args: argparse.Namespace, argv: list[str]) -> int:
    """Run the demo load test; returns the exit code."""
    count = parse_count(args.slaves, "--slaves")
    if count > MAX_SLAVES:
        raise ConfigurationError(f"invalid --slaves {count}: at most {MAX_SLAVES} simulated slaves")
    overrides = overrides_from_args(args)
    overrides["hosts"] = None
    cfg = build_config(None, overrides)
    # demo defaults where the options left the generic ones
    if args.rate is None and cfg.ramp is None:
        cfg.rate = DEMO_RATE
    if args.duration is None:
        cfg.duration = DEMO_HOLD
    if args.limit is None:
        peak = cfg.ramp.end if cfg.ramp is not None else cfg.rate
        cfg.limit = max(10, math.ceil(peak * (cfg.duration + 0.5) * 1.5))
    if args.time is None and cfg.ramp is None:
        cfg.time = float(DEMO_TIME.rstrip("s"))
    if not args.apps:
        cfg.apps = list(DEMO_APPS)
    from fastswitch.cli.commands import resolve_apps

    resolve_apps(cfg.apps)  # fail on a bad --app before starting anything

    with sim_slaves(count, seed=args.seed) as sims:
        cfg.hosts = [(c.host, c.port) for c in sims]

        def configure(orig: Any) -> None:
            for i, client in enumerate(orig.pool.clients):
                callee = sims[(i + 1) % len(sims)]
                client.set_orig_cmd(
                    f"fastswitch@{callee.sip_host}:{callee.sip_port}",
                    profile=cfg.profile,
                    app_name="park",
                )

        return execute(cfg, args, argv, configure)
