"""Driving one load test: apply the load profile to an Originator while it runs, show the
live view, obey keys and signals, then stop cleanly.

Phases: ``offering`` (calls are offered; ``paused`` while the ``p`` key holds it), then
``draining`` (no new calls; the calls in progress end by their hold time, for at most the
drain time), then ``stopping`` (``hupall`` sent; waiting briefly for the last legs), then
the originator is shut down so that every worker flushes and closes its CDR file, and
:meth:`LoadTest.finish` shows the ``done`` line from the run's records (the report's figures).

Once the offering has stopped, the live rate is the offering period's: calls offered per
second of offering time against the time-averaged target, the figures the report's
``--min-rate`` check uses (a sliding window would show a rate that is no longer offered).
"""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.live import Live

from fastswitch.cli.keys import KeyReader, key_action
from fastswitch.cli.latency import LatencyTail
from fastswitch.cli.live import RateMeter, SlaveStats, Snapshot, plain_line, render
from fastswitch.cli.profile import LoadProfile, Setpoint
from fastswitch.cli.signals import StopRequests

RUN_INFO_FILE = "loadtest.json"
#: How long ``stopping`` waits for the last calls after ``hupall``.
HUPALL_WAIT = 5.0


@dataclass
class Totals:
    """Cluster-wide live counters, summed over the workers."""

    offered: int = 0
    answered: int = 0
    failed: int = 0
    active: int = 0
    causes: dict[str, int] = field(default_factory=dict)
    slaves: list[SlaveStats] = field(default_factory=list)


def read_totals(orig: Any) -> Totals:
    """Cluster totals (``orig.stats()``, ``orig.failures``) and each slave's live counters."""
    st = orig.stats()
    tot = Totals(
        offered=int(st["originated"]),
        answered=int(st["answered"]),
        failed=int(st["failed"]),
        active=int(st["active"]),
        causes=dict(orig.failures),
    )
    if orig.is_alive():  # per-slave live counters (none once shut down)
        for row in orig.slave_stats():
            tot.slaves.append(
                SlaveStats(
                    name=row["slave"],
                    offered=int(row["originated"]),
                    answered=int(row["answered"]),
                    failed=int(row["failed"]),
                    active=int(row["active"]),
                )
            )
    return tot


@dataclass
class RunOutcome:
    """What the run loop observed; saved as ``loadtest.json`` in the run directory."""

    run_dir: str
    offering_time: float = 0.0
    target_calls: float = 0.0
    offered: int = 0
    answered: int = 0
    failed: int = 0
    interrupted: bool = False
    hungup: bool = False
    quit_key: bool = False
    argv: list[str] = field(default_factory=list)

    @property
    def target_rate(self) -> float | None:
        """The average target rate over the offering time."""
        return self.target_calls / self.offering_time if self.offering_time > 0 else None

    @property
    def achieved_rate(self) -> float | None:
        """Calls offered per second of offering time."""
        return self.rate_of(self.offered)

    def rate_of(self, offered: int) -> float | None:
        """``offered`` calls per second of offering time (None before any offering)."""
        return offered / self.offering_time if self.offering_time > 0 else None

    def save(self) -> Path:
        """Write ``loadtest.json`` into the run directory."""
        path = Path(self.run_dir) / RUN_INFO_FILE
        data = asdict(self) | {"target_rate": self.target_rate, "achieved_rate": self.achieved_rate}
        path.write_text(json.dumps(data, indent=2) + "\n")
        return path


def load_outcome(run_dir: Path) -> RunOutcome | None:
    """The outcome a CLI run saved in ``run_dir`` (None if the run was not made by the CLI)."""
    path = Path(run_dir) / RUN_INFO_FILE
    if not path.exists():
        return None
    data = json.loads(path.read_text())
    fields = RunOutcome.__dataclass_fields__
    return RunOutcome(**{k: v for k, v in data.items() if k in fields})


class LiveOutput:
    """The live view: a rich screen on a terminal, else one plain line per interval."""

    def __init__(self, console: Console, mode: str, plain_interval: float = 1.0) -> None:
        self.console = console
        self.mode = mode  # 'rich' | 'plain' | 'off'
        self.plain_interval = plain_interval
        self._live: Live | None = None
        self._last_plain = -math.inf
        self._last_message: str | None = None

    def __enter__(self) -> LiveOutput:
        if self.mode == "rich":
            self._live = Live(console=self.console, auto_refresh=False, transient=False)
            self._live.__enter__()
        return self

    def update(self, snap: Snapshot, force: bool = False) -> None:
        """Show ``snap`` (plain mode: at most one line per ``plain_interval`` unless ``force``)."""
        if self._live is not None:
            self._live.update(render(snap), refresh=True)
        elif self.mode == "plain":
            if snap.message and snap.message != self._last_message:
                print(f"fastswitch: {snap.message}", file=sys.stdout, flush=True)
            self._last_message = snap.message
            now = time.monotonic()
            if force or now - self._last_plain >= self.plain_interval * 0.75:
                self._last_plain = now
                print(plain_line(snap), file=sys.stdout, flush=True)

    def note(self, text: str) -> None:
        """Print a line above the live view."""
        if self.mode != "off":
            self.console.print(text)

    def __exit__(self, *exc: object) -> None:
        if self._live is not None:
            self._live.__exit__(None, None, None)
            self._live = None


class LoadTest:
    """One load test run by an already configured Originator (apps and command set)."""

    def __init__(
        self,
        orig: Any,
        profile: LoadProfile,
        output: LiveOutput,
        run_dir: Path,
        drain: float | None = None,
        interval: float = 0.5,
        keys: KeyReader | None = None,
        argv: list[str] | None = None,
    ) -> None:
        self.orig = orig
        self.profile = profile
        self.output = output
        self.run_dir = Path(run_dir)
        self.interval = interval
        self.keys = keys
        self.drain = drain
        self.outcome = RunOutcome(run_dir=str(self.run_dir), argv=list(argv or []))
        self.phase = "offering"
        self.paused = False
        self.applied: Setpoint | None = None
        self.message: str | None = None
        self.meter = RateMeter(window=2.0)
        self.latency = LatencyTail(self.run_dir)
        self._slave_meters: dict[str, RateMeter] = {}
        self._stops: StopRequests | None = None
        self._drain_interrupts = 0
        self._last: tuple[Totals, float] = (Totals(), 0.0)

    # -- settings ------------------------------------------------------------------------
    def apply(self, sp: Setpoint) -> None:
        """Push a setpoint to the originator when it differs from the last one applied."""
        last = self.applied
        if last is not None and sp == last:
            return
        if last is None or abs(sp.rate - last.rate) > 1e-9:
            self.orig.rate = sp.rate
        if last is None or sp.limit != last.limit:
            self.orig.limit = sp.limit
        if sp.hold is not None and (last is None or sp.hold != last.hold):
            self.orig.duration = sp.hold  # a given hold time turns the automatic one off
        self.applied = sp

    def drain_time(self) -> float:
        """How long to let calls end by themselves after the offering stops."""
        if self.drain is not None:
            return self.drain
        hold = self.applied.hold if self.applied and self.applied.hold is not None else None
        if hold is None:
            hold = getattr(self.orig, "duration", None) or 30.0
        return min(float(hold) + 5.0, 120.0)

    # -- the loop ------------------------------------------------------------------------
    def _key(self, ch: str) -> None:
        act = key_action(ch)
        if act is None:
            return
        name, arg = act
        if name == "scale" and self.phase == "offering":
            f = self.profile.scale(arg)
            self.message = f"rate x{f:.2f} of the profile"
        elif name == "pause" and self.phase == "offering":
            self.paused = not self.paused
            if self.paused:
                self.orig.stop()
                self.message = "paused: no new calls (p to resume)"
            else:
                self.orig.start()
                self.message = "resumed"
        elif name == "hupall":
            self.orig.hupall()
            self.outcome.hungup = True
            self.message = "hung up all calls"
            if self.phase == "offering" and not self.paused:
                self.orig.start()  # hupall stops offering; keep the test going
        elif name == "quit":
            self.outcome.quit_key = True
            self._begin_drain("quit")

    def _begin_drain(self, why: str) -> None:
        if self.phase != "offering":
            return
        self.orig.stop()
        self.phase = "draining"
        # Ctrl-C presses beyond this count hang up all (the first one caused an "interrupted" drain)
        seen = self._stops.interrupts if self._stops is not None else 0
        self._drain_interrupts = min(seen, 1) if why == "interrupted" else seen
        self._drain_deadline = time.monotonic() + self.drain_time()
        again = "Ctrl-C again" if why == "interrupted" else "Ctrl-C"
        self.message = f"{why}: stopped offering, waiting for calls to end ({again}: hang up all)"

    def _hangup(self) -> None:
        if self.phase == "stopping":
            return
        if self.phase == "offering":
            self.orig.stop()
        self.orig.hupall()
        self.outcome.hungup = True
        self.phase = "stopping"
        self._stop_deadline = time.monotonic() + HUPALL_WAIT
        self.message = "hung up all calls, waiting for the last legs"

    def snapshot(
        self,
        tot: Totals,
        now: float,
        t_off: float,
        latency: tuple[float | None, float | None, float | None] | None = None,
    ) -> Snapshot:
        """The live view's data at this tick (``latency``: set-up p50/p95/p99 to show
        instead of the live reader's)."""
        sp = self.applied or self.profile.setpoint(t_off)
        lat = self.latency.percentiles() if latency is None else latency
        offering = self.phase == "offering"
        achieved = self.meter.update(now, tot.offered)
        if offering:
            target = 0.0 if self.paused else sp.rate
        else:  # the offering period's averages, as the report's rate check has them
            achieved = self.outcome.rate_of(tot.offered) or 0.0
            target = self.outcome.target_rate or 0.0
        for s in tot.slaves:
            s.rate = self._slave_meters.setdefault(s.name, RateMeter(2.0)).update(now, s.offered)
            if not offering:
                s.rate = self.outcome.rate_of(s.offered) or 0.0
        rem = None if math.isinf(self.profile.length) else max(self.profile.length - t_off, 0.0)
        state = "paused" if self.paused and self.phase == "offering" else self.phase
        stage = None
        idx = self.profile.stage_index(t_off)
        if idx is not None:
            stage = f"stage {idx + 1}/{len(self.profile.stages)}"
        return Snapshot(
            elapsed=now - self._t0,
            remaining=rem if self.phase == "offering" else None,
            state=state,
            target_rate=target,
            achieved_rate=achieved,
            active=tot.active,
            limit=sp.limit,
            offered=tot.offered,
            answered=tot.answered,
            failed=tot.failed,
            failed_by_cause=tot.causes,
            setup_p50=lat[0],
            setup_p95=lat[1],
            setup_p99=lat[2],
            slaves=tot.slaves,
            hold=sp.hold if sp.hold is not None else getattr(self.orig, "duration", None),
            stage=stage,
            keys=self.keys is not None,
            message=self.message,
        )

    def run(self, stops: StopRequests) -> RunOutcome:
        """Run until the profile ends, ``q`` or a signal; always ends with the originator stopped."""
        self._stops = stops
        self._t0 = last = time.monotonic()
        t_off = 0.0
        self.apply(self.profile.setpoint(0.0))
        self.orig.start()
        tot = read_totals(self.orig)
        try:
            while True:
                now = time.monotonic()
                dt, last = now - last, now
                if self.phase == "offering" and not self.paused:
                    self.outcome.target_calls += (self.applied.rate if self.applied else 0.0) * dt
                    t_off += dt
                    self.outcome.offering_time = t_off
                if self.keys is not None:
                    for ch in self.keys.drain():
                        self._key(ch)
                if self.phase == "draining" and stops.interrupts > self._drain_interrupts:
                    self.outcome.interrupted = True  # Ctrl-C while draining: hang up all
                    self._hangup()
                elif stops.stop and self.phase == "offering":
                    self.outcome.interrupted = True
                    self._begin_drain("interrupted")
                tot = read_totals(self.orig)
                if self.phase == "offering":
                    if t_off >= self.profile.length:
                        self._begin_drain("test time over")
                    elif not self.paused and self.orig.state == "STOPPED":
                        self._begin_drain("max sessions offered")
                    elif not self.paused:
                        self.apply(self.profile.setpoint(t_off))
                elif self.phase == "draining":
                    if tot.active == 0:
                        break
                    if now >= self._drain_deadline:
                        self._hangup()
                elif self.phase == "stopping":
                    if tot.active == 0 or now >= self._stop_deadline:
                        break
                self.output.update(self.snapshot(tot, now, t_off))
                time.sleep(max(0.0, self.interval - (time.monotonic() - now)))
        finally:
            self.outcome.offered, self.outcome.answered, self.outcome.failed = (
                tot.offered,
                tot.answered,
                tot.failed,
            )
            self._last = (tot, t_off)
        self.phase, self.message, self.keys = "done", None, None
        return self.outcome

    def finish(self, summary: dict[str, Any] | None) -> None:
        """Show the final ``done`` line: with ``summary`` (:func:`fastswitch.measure.summarize`
        of the run directory once the workers flushed their CDR files) the report's counts
        and set-up percentiles, else the last live figures."""
        tot, t_off = self._last
        self.phase, self.message, self.keys = "done", None, None
        if summary is None:
            latency = self.latency.percentiles(force=True)
        else:
            setup = (summary.get("latency") or {}).get("call_setup_latency") or {}
            latency = (setup.get("p50"), setup.get("p95"), setup.get("p99"))
            tot = Totals(
                offered=int(summary["offered"]),
                answered=int(summary["answered"]),
                failed=int(summary["failed"]),
                active=0,  # the workers have stopped
                causes=dict(summary.get("failed_by_cause") or {}),
                slaves=[
                    SlaveStats(name, int(g["offered"]), int(g["answered"]), int(g["failed"]), 0)
                    for name, g in (summary.get("per_slave") or {}).items()
                ],
            )
        self.output.update(self.snapshot(tot, time.monotonic(), t_off, latency), force=True)
