"""``fastswitch demo``: a complete load test on a machine without FreeSWITCH.

Starts ``--slaves`` simulated FreeSWITCH servers (:mod:`fastswitch.sim`, each in its own
process, on loopback, on free ports) with a realistic mix: post-dial delays that differ per
slave (20 ms to 150 ms), a few rejections (486 busy, 503, 404). Slave ``i`` calls slave
``i+1`` (the simulator routes an originate by SIP address, as a SUT would), so every call
has a caller leg on one slave and a callee leg on another. Then it runs the same load test
as ``run`` with the demo defaults, prints the report and stops the simulators.
"""

from __future__ import annotations

import argparse
import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from fastswitch.cli.commands import execute, overrides_from_args
from fastswitch.cli.config import build_config
from fastswitch.cli.parse import AppSpec, parse_count
from fastswitch.cli.signals import (
    Interrupted,
    StopRequests,
    children_ignore_sigint,
    interruptible_spawning,
)
from fastswitch.errors import ConfigurationError, ConnectError

DEMO_TIME = "20s"
DEMO_RATE = 50.0
DEMO_HOLD = 3.0
#: Per-slave post-dial delays (INVITE sent -> callee leg created), cycled: they show in the
#: call set-up latency. (The simulator's answer_delay applies to its own dialplan; here the
#: apps answer the callee legs.)
POST_DIAL_DELAYS = (0.02, 0.08, 0.15, 0.04)
#: SIP rejections each simulated callee gives: {code: probability}.
REJECT_MIX: dict[Any, float] = {486: 0.02, 503: 0.01, 404: 0.005}
#: Default call flows: held calls (half parked, a third with mod_bert's audio check), and a few
#: the callee rejects (486 busy) or lets ring until the caller gives up.
DEMO_APPS = (
    AppSpec("park", 50),
    AppSpec("bert", 35),
    AppSpec("block486", 10),
    AppSpec("ringback", 5, {"caller_hup_after": 2, "ring_response": "ring_ready"}),
)
MAX_SLAVES = 16


@dataclass(frozen=True)
class SimSlave:
    """A running simulated slave: its ESL and SIP addresses."""

    esl: tuple[str, int]
    sip: tuple[str, int]


@contextlib.contextmanager
def sim_slaves(count: int, seed: int | None = None) -> Iterator[list[SimSlave]]:
    """Start ``count`` simulated slaves on free loopback ports; stop them on exit."""
    from fastswitch import sim

    servers: list[Any] = []
    try:
        for i in range(count):
            cfg = sim.SimConfig(
                host="127.0.0.1",
                port=0,
                sip_port=0,
                post_dial_delay=POST_DIAL_DELAYS[i % len(POST_DIAL_DELAYS)],
                reject_mix=dict(REJECT_MIX),
                seed=None if seed is None else seed + i,
                max_sessions=20000,
                sps=5000,
            )
            servers.append(sim.SimServer(cfg))
        try:
            with interruptible_spawning():  # Ctrl-C aborts; the simulators never see it
                for server in servers:  # one at a time: SimServer.start is not thread-safe
                    try:
                        server.start()
                    except RuntimeError as e:
                        raise ConnectError(f"could not start the simulated slaves: {e}") from None
        except Interrupted:
            raise Interrupted("interrupted while starting the simulated slaves") from None
        yield [SimSlave(tuple(s.address), tuple(s.sip_address)) for s in servers]
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

    with StopRequests() as stops, sim_slaves(count, seed=args.seed) as sims:
        cfg.hosts = [s.esl for s in sims]

        def configure(orig: Any) -> None:
            for i, client in enumerate(orig.pool.clients):
                callee = sims[(i + 1) % len(sims)]
                client.set_orig_cmd(
                    "fastswitch@{}:{}".format(*callee.sip),
                    profile=cfg.profile,
                    app_name="park",
                )

        return execute(cfg, args, argv, configure, stops=stops)
