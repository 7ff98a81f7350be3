"""The load-test configuration: a TOML file (``-c loadtest.toml``) overridden by options.

Top-level keys mirror the ``run`` options (``hosts``, ``password``, ``proxy``, ``profile``,
``dest_url``, ``originate_cmd``, ``rate``, ``limit``, ``duration``, ``max_sessions``, ``time``,
``ramp``, ``drain``, ``run_dir``); ``[[app]]`` tables list the apps (``name``, ``weight``,
``params``), ``[[stage]]`` tables the k6-style stages (``duration``, ``rate``, ``limit``,
``hold``, ``ramp``), ``[thresholds]`` the pass/fail limits. Dashes and underscores in keys are
equivalent. An unknown key is an error naming it, so that typos do not pass silently.

Options given on the command line win over the file. The load shape follows the same rule:
an explicit ``--rate``, ``--limit``, ``--duration`` or ``--ramp`` replaces the file's
``[[stage]]`` tables (``--ramp`` by that ramp, the others by a constant profile; the test
keeps the stages' total length unless ``time`` or ``--time`` sets one), and ``--rate``
without ``--ramp`` replaces the file's ``ramp``. :attr:`RunConfig.notes` says so, to be
logged.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastswitch.cli.parse import (
    AppSpec,
    Ramp,
    format_duration,
    parse_app,
    parse_count,
    parse_duration,
    parse_hostport,
    parse_ramp,
    parse_rate,
)
from fastswitch.cli.profile import LoadProfile, Stage
from fastswitch.cli.thresholds import Thresholds
from fastswitch.errors import ConfigurationError

DEFAULT_RATE = 10.0
DEFAULT_LIMIT = 100
DEFAULT_PROFILE = "external"
DEFAULT_PASSWORD = "ClueCon"
DEFAULT_APPS = (AppSpec("bert"),)

_SCALARS = {
    "hosts",
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
}
_TABLES = {"app", "stage", "thresholds"}
#: The options that shape the load: given on the command line, they replace the file's stages.
_LOAD_OPTIONS = ("rate", "limit", "duration", "ramp")


@dataclass
class RunConfig:
    """Everything a load test needs, validated."""

    hosts: list[tuple[str, int]] = field(default_factory=list)
    password: str = DEFAULT_PASSWORD
    proxy: str | None = None
    profile: str = DEFAULT_PROFILE
    dest_url: str | None = None
    originate_cmd: str | None = None
    rate: float = DEFAULT_RATE
    limit: int = DEFAULT_LIMIT
    duration: float | None = None
    max_sessions: int | None = None
    time: float | None = None
    ramp: Ramp | None = None
    stages: list[Stage] = field(default_factory=list)
    apps: list[AppSpec] = field(default_factory=lambda: list(DEFAULT_APPS))
    thresholds: Thresholds = field(default_factory=Thresholds)
    drain: float | None = None
    run_dir: Path | None = None
    #: What the merge decided that the user should know (logged when the run starts).
    notes: list[str] = field(default_factory=list)

    def load_profile(self) -> LoadProfile:
        """The :class:`LoadProfile` these settings describe."""
        return LoadProfile(
            rate=self.rate,
            limit=self.limit,
            hold=self.duration,
            ramp=self.ramp,
            stages=list(self.stages),
            time=self.time,
        )


def _norm(d: dict[str, Any]) -> dict[str, Any]:
    return {k.replace("-", "_"): v for k, v in d.items()}


def read_toml(path: str | Path) -> dict[str, Any]:
    """Read a TOML file; a missing or malformed file is a ConfigurationError naming it."""
    p = Path(path)
    try:
        with p.open("rb") as f:
            return _norm(tomllib.load(f))
    except FileNotFoundError:
        raise ConfigurationError(f"config file {str(p)!r} not found: check the -c path") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigurationError(f"config file {str(p)!r} is not valid TOML: {e}") from None
    except OSError as e:
        raise ConfigurationError(f"cannot read config file {str(p)!r}: {e.strerror}") from None


def _stage(i: int, d: Any) -> Stage:
    if not isinstance(d, dict):
        raise ConfigurationError(f"stage {i + 1}: expected a [[stage]] table")
    d = _norm(d)
    unknown = set(d) - {"duration", "rate", "limit", "hold", "ramp"}
    if unknown:
        raise ConfigurationError(
            f"stage {i + 1}: unknown key(s) {', '.join(sorted(unknown))}: use duration, rate, limit, hold, ramp"
        )
    if "duration" not in d or "rate" not in d:
        raise ConfigurationError(f"stage {i + 1}: 'duration' and 'rate' are required")
    return Stage(
        duration=parse_duration(d["duration"], f"stage {i + 1} duration"),
        rate=parse_rate(d["rate"], f"stage {i + 1} rate"),
        limit=None if d.get("limit") is None else parse_count(d["limit"], f"stage {i + 1} limit"),
        hold=None if d.get("hold") is None else parse_duration(d["hold"], f"stage {i + 1} hold"),
        ramp=bool(d.get("ramp", False)),
    )


def _app(i: int, d: Any) -> AppSpec:
    if isinstance(d, str):
        return parse_app(d)
    if not isinstance(d, dict):
        raise ConfigurationError(
            f"app {i + 1}: expected an [[app]] table or a string like 'bert:34'"
        )
    d = _norm(d)
    unknown = set(d) - {"name", "weight", "params"}
    if unknown:
        raise ConfigurationError(
            f"app {i + 1}: unknown key(s) {', '.join(sorted(unknown))}: use name, weight, params"
        )
    if "name" not in d:
        raise ConfigurationError(f"app {i + 1}: 'name' is required")
    base = parse_app(str(d["name"]))
    params = d.get("params", {})
    if not isinstance(params, dict):
        raise ConfigurationError(f"app {base.name!r}: 'params' must be a table")
    weight = parse_count(d.get("weight", base.weight), f"weight of app {base.name!r}")
    return AppSpec(base.name, weight, {**base.params, **params})


def build_config(file_data: dict[str, Any] | None, overrides: dict[str, Any]) -> RunConfig:
    """Merge the TOML data with command-line ``overrides`` (``None`` = not given) into a RunConfig.

    Raw values (strings from the command line or the file) are parsed and validated here, so
    the same rules and messages apply to both sources.
    """
    data = dict(file_data or {})
    unknown = set(data) - _SCALARS - _TABLES
    if unknown:
        raise ConfigurationError(
            f"unknown key(s) in config file: {', '.join(sorted(unknown))} (see examples/loadtest.toml)"
        )
    merged: dict[str, Any] = {k: data[k] for k in _SCALARS if k in data}
    for k, v in overrides.items():
        if v is not None and (k in _SCALARS or k in ("apps", "thresholds")):
            merged[k] = v
    cfg = RunConfig()
    hosts = merged.get("hosts", [])
    if isinstance(hosts, str):
        hosts = [hosts]
    cfg.hosts = [parse_hostport(h) for h in hosts]
    for key in ("password", "proxy", "profile", "dest_url", "originate_cmd"):
        if merged.get(key) is not None:
            setattr(cfg, key, str(merged[key]))
    if "rate" in merged:
        cfg.rate = parse_rate(merged["rate"])
    if "limit" in merged:
        cfg.limit = parse_count(merged["limit"], "limit")
    if "duration" in merged:
        cfg.duration = parse_duration(merged["duration"], "duration (call hold time)")
    if "max_sessions" in merged:
        cfg.max_sessions = parse_count(merged["max_sessions"], "max_sessions")
    if "time" in merged:
        cfg.time = parse_duration(merged["time"], "time (test length)")
        if cfg.time <= 0:
            raise ConfigurationError("invalid time 0: the test length must be > 0, e.g. --time 10m")
    if "drain" in merged:
        cfg.drain = parse_duration(merged["drain"], "drain time")
    if merged.get("ramp") is not None:
        r = merged["ramp"]
        cfg.ramp = r if isinstance(r, Ramp) else parse_ramp(str(r))
    if merged.get("run_dir") is not None:
        cfg.run_dir = Path(merged["run_dir"])

    stages = data.get("stage", [])
    if not isinstance(stages, list):
        raise ConfigurationError("'stage' must be a list of [[stage]] tables")
    cfg.stages = [_stage(i, s) for i, s in enumerate(stages)]
    given = [k for k in _LOAD_OPTIONS if overrides.get(k) is not None]
    if given and cfg.stages:
        # the command line's load settings replace the file's stages (not mixed with them)
        total = sum(st.duration for st in cfg.stages)
        if cfg.time is None and overrides.get("ramp") is None:
            cfg.time = total  # the stages' test length stays (a ramp sets its own)
        shape = "the ramp given" if overrides.get("ramp") is not None else "a constant load"
        length = "" if cfg.time is None else f", for {format_duration(cfg.time)}"
        cfg.notes.append(
            f"the config file's {len(cfg.stages)} [[stage]] tables are overridden by "
            f"{' '.join('--' + k for k in given)} on the command line "
            f"({shape} is run instead{length})"
        )
        cfg.stages = []
    elif (
        overrides.get("rate") is not None
        and overrides.get("ramp") is None
        and data.get("ramp") is not None
    ):
        cfg.ramp = None  # --rate: a constant rate instead of the file's ramp
        cfg.notes.append("the config file's ramp is overridden by --rate on the command line")
    if cfg.ramp is not None and cfg.stages:
        raise ConfigurationError("both a ramp and [[stage]] tables are configured: use one of them")

    if overrides.get("apps"):
        cfg.apps = [a if isinstance(a, AppSpec) else parse_app(a) for a in overrides["apps"]]
    elif data.get("app"):
        apps = data["app"]
        if not isinstance(apps, list):
            raise ConfigurationError("'app' must be a list of [[app]] tables")
        cfg.apps = [_app(i, a) for i, a in enumerate(apps)]

    th = data.get("thresholds", {})
    if not isinstance(th, dict):
        raise ConfigurationError("'thresholds' must be a table")
    cfg.thresholds = Thresholds.from_mapping(_norm(th))
    if overrides.get("thresholds") is not None:
        cfg.thresholds = cfg.thresholds.merged(overrides["thresholds"])
    return cfg
