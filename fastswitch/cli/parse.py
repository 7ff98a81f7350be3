"""Parsers for the command line's value syntax: durations, percentages, ramps, hosts, apps.

Every parser raises :class:`~fastswitch.errors.ConfigurationError` with a message that names
the bad value and shows the accepted form, so that the CLI can print it as one line and exit
with the usage-error code.
"""

from __future__ import annotations

import ipaddress
import math
import re
from dataclasses import dataclass, field
from typing import Any

from fastswitch.errors import ConfigurationError

DEFAULT_ESL_PORT = 8021

_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ms|s|m|h)")
_NUMBER = re.compile(r"^[+-]?(\d+(?:\.\d*)?|\.\d+)$")
_HOSTNAME = re.compile(
    r"^(?=.{1,253}$)[A-Za-z0-9_]([A-Za-z0-9_-]{0,62})(\.[A-Za-z0-9_-]{1,63})*\.?$"
)


def parse_duration(text: str | float | int, what: str = "duration") -> float:
    """Parse a duration into seconds: ``'10m'``, ``'250ms'``, ``'1h30m'``, ``'1.5s'``, ``'20'``.

    A bare number is seconds. Negative or non-finite values are rejected.
    """
    if isinstance(text, bool):
        raise ConfigurationError(f"invalid {what} {text!r}: use e.g. 30s, 250ms, 10m, 1h30m")
    if isinstance(text, int | float):
        value = float(text)
    else:
        s = str(text).strip().lower().replace(" ", "")
        if _NUMBER.match(s):
            value = float(s)
        else:
            pos, value = 0, 0.0
            for m in _DURATION_PART.finditer(s):
                if m.start() != pos:
                    break
                value += float(m.group(1)) * _DURATION_UNITS[m.group(2)]
                pos = m.end()
            if pos != len(s) or not s:
                raise ConfigurationError(
                    f"invalid {what} {text!r}: use e.g. 30s, 250ms, 10m, 1h30m (a bare number is seconds)"
                )
    if not math.isfinite(value) or value < 0:
        raise ConfigurationError(f"invalid {what} {text!r}: must be a finite value >= 0")
    return value


def format_duration(seconds: float) -> str:
    """Render seconds compactly for humans: ``250ms``, ``0.1ms``, ``12.5s``, ``3m05s``,
    ``1h02m`` (below 10 ms with up to two decimals, so that small limits do not read 0ms)."""
    if seconds != seconds or seconds in (math.inf, -math.inf):
        return "-"
    if 0 < seconds < 1e-5:
        return f"{seconds * 1e6:.0f}us"
    if seconds < 0.01 and seconds * 1000 != round(seconds * 1000):
        return f"{seconds * 1000:.2f}".rstrip("0").rstrip(".") + "ms"  # 0.1ms, 2.5ms
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    if seconds < 60:
        return f"{seconds:.1f}s" if seconds < 10 and seconds != int(seconds) else f"{seconds:.0f}s"
    if seconds < 3600:
        m, s = divmod(int(round(seconds)), 60)
        return f"{m}m{s:02d}s"
    h, rem = divmod(int(round(seconds)), 3600)
    return f"{h}h{rem // 60:02d}m"


def parse_fraction(text: str | float | int, what: str = "ratio") -> float:
    """Parse a ratio: ``'0.5%'`` -> 0.005, ``'99%'`` -> 0.99, ``'0.99'`` -> 0.99.

    A bare number must lie in [0, 1]; a percentage in [0, 100].
    """
    if isinstance(text, bool):
        raise ConfigurationError(
            f"invalid {what} {text!r}: use a percentage like 0.5% or a ratio like 0.005"
        )
    s = str(text).strip()
    pct = s.endswith("%")
    num = s[:-1].strip() if pct else s
    if not _NUMBER.match(num):
        raise ConfigurationError(
            f"invalid {what} {text!r}: use a percentage like 0.5% or a ratio like 0.005"
        )
    value = float(num) / 100.0 if pct else float(num)
    if not 0.0 <= value <= 1.0:
        raise ConfigurationError(f"invalid {what} {text!r}: must be between 0% and 100% (0 and 1)")
    return value


def parse_rate(text: str | float | int, what: str = "rate") -> float:
    """Parse a call rate (calls per second); must be > 0."""
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise ConfigurationError(
            f"invalid {what} {text!r}: give calls per second, e.g. 50"
        ) from None
    if isinstance(text, bool) or not math.isfinite(value) or value <= 0:
        raise ConfigurationError(
            f"invalid {what} {text!r}: must be a number of calls per second > 0"
        )
    return value


def parse_count(text: str | int, what: str = "limit", minimum: int = 1) -> int:
    """Parse a whole count (``limit``, ``max_sessions`` ...) that must be >= ``minimum``."""
    try:
        if isinstance(text, bool):
            raise ValueError
        value = int(str(text).strip().replace("_", ""))
    except (TypeError, ValueError):
        raise ConfigurationError(
            f"invalid {what} {text!r}: must be a whole number >= {minimum}"
        ) from None
    if value < minimum:
        raise ConfigurationError(f"invalid {what} {text!r}: must be a whole number >= {minimum}")
    return value


@dataclass(frozen=True)
class Ramp:
    """A linear rate ramp: from ``start`` to ``end`` calls/s over ``over`` seconds (then hold)."""

    start: float
    end: float
    over: float

    def rate_at(self, t: float) -> float:
        """The target rate ``t`` seconds after the ramp began."""
        if self.over <= 0 or t >= self.over:
            return self.end
        if t <= 0:
            return self.start
        return self.start + (self.end - self.start) * (t / self.over)


def parse_ramp(text: str) -> Ramp:
    """Parse ``START:END:OVER`` such as ``'10:200:60s'`` (10 to 200 cps over 60 s)."""
    parts = str(text).split(":")
    if len(parts) != 3:
        raise ConfigurationError(
            f"invalid ramp {text!r}: use START:END:DURATION, e.g. 10:200:60s (10 to 200 cps over 60 s)"
        )
    start = parse_rate(parts[0], "ramp start rate")
    end = parse_rate(parts[1], "ramp end rate")
    over = parse_duration(parts[2], "ramp duration")
    if over <= 0:
        raise ConfigurationError(f"invalid ramp {text!r}: the ramp duration must be > 0")
    return Ramp(start, end, over)


def parse_hostport(text: str, default_port: int = DEFAULT_ESL_PORT) -> tuple[str, int]:
    """Parse ``HOST``, ``HOST:PORT``, ``[V6]:PORT`` or a bare IPv6 address into ``(host, port)``."""
    s = str(text).strip()
    hint = "use HOST or HOST:PORT, e.g. 10.0.0.5:8021 or [::1]:8021"
    port_s: str | None = None
    if s.startswith("["):
        end = s.find("]")
        if end < 0:
            raise ConfigurationError(f"malformed host {text!r}: unclosed '[': {hint}")
        host, rest = s[1:end], s[end + 1 :]
        if rest:
            if not rest.startswith(":"):
                raise ConfigurationError(f"malformed host {text!r}: {hint}")
            port_s = rest[1:]
        _check_ip(host, text, hint, v6=True)
    elif s.count(":") > 1:
        host = s
        _check_ip(host, text, hint, v6=True)
    else:
        host, sep, port_s2 = s.partition(":")
        port_s = port_s2 if sep else None
        if not host or not (_HOSTNAME.match(host) or _is_ip(host)):
            raise ConfigurationError(f"malformed host {text!r}: {hint}")
    port = default_port
    if port_s is not None:
        if not port_s.isdigit() or not 0 < int(port_s) < 65536:
            raise ConfigurationError(f"malformed host {text!r}: the port must be 1-65535; {hint}")
        port = int(port_s)
    return host, port


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _check_ip(host: str, text: str, hint: str, v6: bool) -> None:
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        raise ConfigurationError(f"malformed host {text!r}: {hint}") from None
    if v6 and addr.version != 6:
        raise ConfigurationError(
            f"malformed host {text!r}: brackets are for IPv6 addresses; {hint}"
        )


@dataclass(frozen=True)
class AppSpec:
    """One ``--app`` entry: a registry name, its weight and prepost keyword arguments."""

    name: str
    weight: int = 1
    params: dict[str, Any] = field(default_factory=dict)


def _scalar(value: str) -> Any:
    """Interpret a ``k=v`` value: int, float, true/false/none, else the string itself."""
    low = value.lower()
    if low in ("true", "yes"):
        return True
    if low in ("false", "no"):
        return False
    if low in ("none", "null"):
        return None
    for conv in (int, float):
        try:
            return conv(value)
        except ValueError:
            pass
    return value


def parse_app(text: str) -> AppSpec:
    """Parse ``NAME[:WEIGHT][/key=value,key=value]`` such as ``'ringback:33/caller_hup_after=5'``.

    ``NAME`` is a registered app name or ``pkg.module:Class`` (``module:Class`` too: the part
    after a colon is a weight only when it is a number).
    """
    s = str(text).strip()
    hint = "use NAME[:WEIGHT][/key=value,...], e.g. bert:34 or ringback:33/caller_hup_after=5"
    head, _, tail = s.partition("/")
    name, sep, weight_s = head.rpartition(":")
    if not sep or not name or re.match(r"^[A-Za-z_]\w*$", weight_s):
        # no weight: a ':' followed by a name (not a number) belongs to a 'module:Class' path
        name, weight_s = head, ""
    name = name.strip()
    if not name or not re.match(r"^[A-Za-z_][\w.-]*(:[A-Za-z_]\w*)?$", name):
        raise ConfigurationError(f"invalid app {text!r}: {hint}")
    weight = 1
    if weight_s:
        weight = parse_count(weight_s, f"weight of app {name!r}", minimum=1)
    params: dict[str, Any] = {}
    if tail:
        for item in tail.split(","):
            k, eq, v = item.partition("=")
            if not eq or not k.strip():
                raise ConfigurationError(f"invalid app parameter {item!r} in {text!r}: {hint}")
            params[k.strip()] = _scalar(v.strip())
    return AppSpec(name, weight, params)
