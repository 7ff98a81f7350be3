"""The live view of a running load test.

A :class:`Snapshot` holds what the screen shows; :func:`render` turns it into a rich
renderable (refreshed about twice a second on a terminal) and :func:`plain_line` into one
line per interval for CI logs when stdout is not a terminal. :class:`RateMeter` turns the
cumulative offered count into the achieved call rate over a sliding window.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

from rich import box
from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from fastswitch.cli.parse import format_duration

KEYS_HELP = "keys: +/- rate ±10%  * / rate x2 /2  p pause/resume  h hang up all  q quit"


@dataclass
class SlaveStats:
    """One slave's live counters."""

    name: str
    offered: int = 0
    answered: int = 0
    failed: int = 0
    active: int = 0
    rate: float = 0.0


@dataclass
class Snapshot:
    """Everything the live view shows at one instant."""

    elapsed: float
    remaining: float | None
    state: str
    target_rate: float
    achieved_rate: float
    active: int
    limit: int
    offered: int
    answered: int
    failed: int
    failed_by_cause: dict[str, int] = field(default_factory=dict)
    setup_p50: float | None = None
    setup_p95: float | None = None
    setup_p99: float | None = None
    slaves: list[SlaveStats] = field(default_factory=list)
    hold: float | None = None
    stage: str | None = None
    keys: bool = False
    message: str | None = None


class RateMeter:
    """Achieved rate from a cumulative counter, averaged over the last ``window`` seconds."""

    def __init__(self, window: float = 2.0) -> None:
        self.window = window
        self._samples: deque[tuple[float, int]] = deque()

    def update(self, now: float, count: int) -> float:
        """Record ``count`` at time ``now``; return the rate over the window (0 until 2 samples)."""
        self._samples.append((now, count))
        while len(self._samples) > 2 and now - self._samples[1][0] >= self.window:
            self._samples.popleft()
        t0, c0 = self._samples[0]
        return (count - c0) / (now - t0) if now > t0 else 0.0


def _ms(x: float | None) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return f"{x * 1000:.1f}ms" if x < 0.01 else f"{x * 1000:.0f}ms"


def _time_text(s: Snapshot) -> str:
    if s.remaining is not None:
        return (
            f"{format_duration(s.elapsed)} elapsed, {format_duration(max(s.remaining, 0.0))} left"
        )
    if s.state in ("offering", "paused"):
        return f"{format_duration(s.elapsed)} elapsed, until stopped"
    return f"{format_duration(s.elapsed)} elapsed"


def _causes(s: Snapshot, top: int = 4) -> str:
    if not s.failed_by_cause:
        return ""
    items = sorted(s.failed_by_cause.items(), key=lambda kv: (-kv[1], kv[0]))
    text = ", ".join(f"{k} {v}" for k, v in items[:top])
    if len(items) > top:
        text += f", +{sum(v for _, v in items[top:])} other"
    return text


def plain_line(s: Snapshot) -> str:
    """One log line: ``[  12.0s] offering rate 49.8/50.0 cps active 612/1000 ...``."""
    parts = [
        f"[{s.elapsed:7.1f}s]",
        f"{s.state:<8}",
        f"rate {s.achieved_rate:.1f}/{s.target_rate:.1f} cps",
        f"active {s.active}/{s.limit}",
        f"offered {s.offered}",
        f"answered {s.answered}",
        f"failed {s.failed}",
    ]
    if s.setup_p99 is not None:
        parts.append(f"setup p50/p95/p99 {_ms(s.setup_p50)}/{_ms(s.setup_p95)}/{_ms(s.setup_p99)}")
    causes = _causes(s)
    if causes:
        parts.append(f"({causes})")
    if s.remaining is not None:
        parts.append(f"{format_duration(max(s.remaining, 0.0))} left")
    return " ".join(parts)


def render(s: Snapshot) -> RenderableType:
    """The rich renderable of the live screen."""
    head = Text()
    head.append("fastswitch ", style="bold")
    state_style = {"offering": "green", "paused": "yellow", "draining": "cyan", "done": "blue"}.get(
        s.state, "red"
    )
    head.append(f"[{s.state}]", style=f"bold {state_style}")
    head.append(f"  {_time_text(s)}")
    if s.stage:
        head.append(f"  {s.stage}", style="magenta")

    main = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
    for col in (
        "rate (achieved/target)",
        "active / limit",
        "hold",
        "offered",
        "answered",
        "failed",
    ):
        main.add_column(col, justify="right")
    main.add_row(
        f"{s.achieved_rate:.1f} / {s.target_rate:.1f} cps",
        f"{s.active} / {s.limit}",
        "auto" if s.hold is None else format_duration(s.hold),
        str(s.offered),
        str(s.answered),
        Text(str(s.failed), style="red" if s.failed else ""),
    )

    lat = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
    for col in ("setup p50", "p95", "p99", "failed by cause"):
        lat.add_column(col, justify="right" if col != "failed by cause" else "left")
    lat.add_row(_ms(s.setup_p50), _ms(s.setup_p95), _ms(s.setup_p99), _causes(s) or "-")

    parts: list[RenderableType] = [head, main, lat]
    if s.slaves:
        per = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, title=None)
        per.add_column("slave", justify="left")
        for col in ("rate", "active", "offered", "answered", "failed"):
            per.add_column(col, justify="right")
        for sl in s.slaves:
            per.add_row(
                sl.name,
                f"{sl.rate:.1f}",
                str(sl.active),
                str(sl.offered),
                str(sl.answered),
                str(sl.failed),
            )
        parts.append(per)
    if s.message:
        parts.append(Text(s.message, style="yellow"))
    if s.keys:
        parts.append(Text(KEYS_HELP, style="dim"))
    return Group(*parts)
