"""Pass/fail thresholds of a load test and the verdict.

``--max-failed 0.5%`` (failed calls / offered calls), ``--max-setup-p99 250ms`` (99th percentile
of call set-up latency) and ``--min-rate 0.99`` (achieved call rate / target call rate). Each
threshold is checked against the run's measured values; a threshold whose value cannot be
measured (no calls at all) fails, because nothing proves it held.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from fastswitch.cli.parse import format_duration, parse_duration, parse_fraction
from fastswitch.errors import ConfigurationError

THRESHOLDS_FILE = "thresholds.json"


@dataclass(frozen=True)
class Thresholds:
    """The configured thresholds; ``None`` means not checked."""

    max_failed: float | None = None
    max_setup_p99: float | None = None
    min_rate: float | None = None

    @property
    def any(self) -> bool:
        """True when at least one threshold is set."""
        return any(v is not None for v in asdict(self).values())

    @classmethod
    def from_mapping(cls, data: dict) -> Thresholds:
        """Build from a TOML ``[thresholds]`` table or saved JSON (strings like '0.5%' accepted)."""
        unknown = set(data) - {"max_failed", "max_setup_p99", "min_rate"}
        if unknown:
            raise ConfigurationError(
                f"unknown threshold(s) {', '.join(sorted(unknown))}: use max_failed, max_setup_p99, min_rate"
            )
        mf, sp, mr = data.get("max_failed"), data.get("max_setup_p99"), data.get("min_rate")
        return cls(
            max_failed=None if mf is None else parse_fraction(mf, "max_failed"),
            max_setup_p99=None if sp is None else parse_duration(sp, "max_setup_p99"),
            min_rate=None if mr is None else parse_fraction(mr, "min_rate"),
        )

    def merged(self, override: Thresholds) -> Thresholds:
        """These thresholds with every value set in ``override`` replacing ours."""
        mine, theirs = asdict(self), asdict(override)
        return Thresholds(**{k: theirs[k] if theirs[k] is not None else mine[k] for k in mine})

    def save(self, run_dir: Path) -> Path:
        """Store the thresholds in the run directory so that ``report`` can re-check them."""
        path = Path(run_dir) / THRESHOLDS_FILE
        path.write_text(json.dumps(asdict(self), indent=2) + "\n")
        return path

    @classmethod
    def load(cls, run_dir: Path) -> Thresholds:
        """The thresholds saved in ``run_dir`` (empty when none were saved)."""
        path = Path(run_dir) / THRESHOLDS_FILE
        if not path.exists():
            return cls()
        return cls.from_mapping(json.loads(path.read_text()))


@dataclass(frozen=True)
class Measured:
    """What a run measured, as far as the thresholds need it."""

    offered: int
    failed: int
    setup_p99: float | None = None
    achieved_rate: float | None = None
    target_rate: float | None = None

    @property
    def failed_ratio(self) -> float | None:
        """failed / offered, None without offered calls."""
        return self.failed / self.offered if self.offered else None

    @property
    def rate_ratio(self) -> float | None:
        """achieved / target call rate, None when either is unknown."""
        if not self.target_rate or self.achieved_rate is None:
            return None
        return self.achieved_rate / self.target_rate


@dataclass(frozen=True)
class Check:
    """One threshold's outcome, with both sides rendered for the report."""

    name: str
    limit: str
    measured: str
    ok: bool

    def line(self) -> str:
        """``PASS  failed calls <= 0.50%  measured 0.12% (3 of 2500)``."""
        return (
            f"{'PASS' if self.ok else 'FAIL'}  {self.name} {self.limit}  measured {self.measured}"
        )


def _pct(x: float) -> str:
    return f"{x * 100:.2f}%"


def evaluate(th: Thresholds, m: Measured) -> list[Check]:
    """Check every configured threshold against the measured values."""
    checks: list[Check] = []
    if th.max_failed is not None:
        r = m.failed_ratio
        checks.append(
            Check(
                "failed calls",
                f"<= {_pct(th.max_failed)}",
                "n/a (no calls offered)" if r is None else f"{_pct(r)} ({m.failed} of {m.offered})",
                r is not None and r <= th.max_failed,
            )
        )
    if th.max_setup_p99 is not None:
        p = m.setup_p99
        checks.append(
            Check(
                "call set-up p99",
                f"<= {format_duration(th.max_setup_p99)}",
                "n/a (no answered calls)" if p is None else format_duration(p),
                p is not None and p <= th.max_setup_p99,
            )
        )
    if th.min_rate is not None:
        r = m.rate_ratio
        if r is None:
            measured = "n/a (no target rate or no calls)"
        else:
            measured = f"{r:.3f} ({m.achieved_rate:.1f} of {m.target_rate:.1f} calls/s)"
        checks.append(
            Check(
                "achieved/target rate",
                f">= {th.min_rate:.3f}",
                measured,
                r is not None and r >= th.min_rate,
            )
        )
    return checks


def passed(checks: list[Check]) -> bool:
    """True when every check holds (and trivially when there are none)."""
    return all(c.ok for c in checks)


def format_checks(checks: list[Check]) -> str:
    """The thresholds section of the report, ending with the verdict line."""
    if not checks:
        return "Thresholds: none set (e.g. --max-failed 0.5% --max-setup-p99 250ms --min-rate 0.99)"
    lines = ["Thresholds:"] + ["  " + c.line() for c in checks]
    bad = sum(not c.ok for c in checks)
    lines.append(
        "Verdict: PASS" if not bad else f"Verdict: FAIL ({bad} of {len(checks)} thresholds not met)"
    )
    return "\n".join(lines)
