"""Load profiles: what rate, limit and hold time the originator should have at time ``t``.

Three shapes, all pure functions of the elapsed offering time:

* constant: ``--rate R --limit L [--duration D]``;
* a ramp (SIPp ``-rate_increase``/``-rate_max`` style): ``--ramp 10:200:60s`` goes linearly from
  10 to 200 calls/s over 60 s, then holds 200;
* stages (k6 style), a list of ``{rate, limit, hold, duration, ramp}`` tables in the TOML file:
  each stage lasts ``duration`` seconds; with ``ramp = true`` its rate moves linearly from the
  previous stage's rate to its own, otherwise it steps.

The live keys (``+ - * /``) scale the profile's rate by :attr:`LoadProfile.factor`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from fastswitch.cli.parse import Ramp
from fastswitch.errors import ConfigurationError


@dataclass(frozen=True)
class Setpoint:
    """The load settings to apply: calls/s, concurrent-call limit, hold time (None = auto)."""

    rate: float
    limit: int
    hold: float | None


@dataclass(frozen=True)
class Stage:
    """One k6-style stage: offer ``rate`` up to ``limit`` calls, each held ``hold`` s, for ``duration`` s."""

    duration: float
    rate: float
    limit: int | None = None
    hold: float | None = None
    ramp: bool = False


@dataclass
class LoadProfile:
    """A load profile; :meth:`setpoint` gives the settings at elapsed offering time ``t``."""

    rate: float
    limit: int
    hold: float | None = None
    ramp: Ramp | None = None
    stages: list[Stage] = field(default_factory=list)
    time: float | None = None
    factor: float = 1.0

    def __post_init__(self) -> None:
        if self.ramp is not None and self.stages:
            raise ConfigurationError("both a ramp and stages are configured: use one of them")
        if self.time is None:
            if self.stages:
                self.time = sum(s.duration for s in self.stages)
            elif self.ramp is not None:
                self.time = self.ramp.over

    @property
    def length(self) -> float:
        """Total offering time in seconds (``inf`` when the test runs until stopped)."""
        return math.inf if self.time is None else self.time

    def base_setpoint(self, t: float) -> Setpoint:
        """The profile's settings at ``t`` before the live rate factor."""
        if self.ramp is not None:
            return Setpoint(self.ramp.rate_at(t), self.limit, self.hold)
        if self.stages:
            prev_rate = self.rate
            limit, hold = self.limit, self.hold
            start = 0.0
            for i, st in enumerate(self.stages):
                limit = st.limit if st.limit is not None else limit
                hold = st.hold if st.hold is not None else hold
                end = start + st.duration
                if t < end or i == len(self.stages) - 1:
                    if st.ramp and st.duration > 0:
                        frac = min(max((t - start) / st.duration, 0.0), 1.0)
                        rate = prev_rate + (st.rate - prev_rate) * frac
                    else:
                        rate = st.rate
                    return Setpoint(rate, limit, hold)
                prev_rate, start = st.rate, end
        return Setpoint(self.rate, self.limit, self.hold)

    def setpoint(self, t: float) -> Setpoint:
        """The settings at ``t`` including the live rate factor."""
        sp = self.base_setpoint(t)
        return Setpoint(sp.rate * self.factor, sp.limit, sp.hold)

    def stage_index(self, t: float) -> int | None:
        """The index of the stage active at ``t`` (None without stages)."""
        if not self.stages:
            return None
        start = 0.0
        for i, st in enumerate(self.stages):
            start += st.duration
            if t < start:
                return i
        return len(self.stages) - 1

    def scale(self, factor: float) -> float:
        """Multiply the live rate factor (keys ``+ - * /``); returns the new factor."""
        self.factor = min(max(self.factor * factor, 1e-3), 1e4)
        return self.factor
