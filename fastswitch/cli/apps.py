"""Resolving ``--app`` names to app classes, and the ``list-apps`` listing.

Names come from the app registry in :mod:`fastswitch.apps` (matched case-insensitively), a
``pkg.module:Class`` path, or one of the CLI's presets: short names for common call flows
with preset parameters (``block404`` is ``CalleeBlockOnInvite`` answering 404).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any

from fastswitch.cli.parse import AppSpec
from fastswitch.errors import ConfigurationError


@dataclass(frozen=True)
class Preset:
    """A short CLI name for a registered app with preset parameters."""

    app: str
    params: dict[str, Any]
    description: str


PRESETS: dict[str, Preset] = {
    "bert": Preset("Bert", {}, "audio-checked calls with mod_bert (the default)"),
    "ringback": Preset(
        "CalleeRingback", {}, "callee rings back (180/183 + tone) and never answers"
    ),
    "block": Preset("CalleeBlockOnInvite", {}, "callee rejects every INVITE"),
    "block404": Preset(
        "CalleeBlockOnInvite", {"response": 404}, "callee rejects every INVITE with 404"
    ),
    "block486": Preset(
        "CalleeBlockOnInvite", {"response": 486}, "callee rejects every INVITE with 486 busy"
    ),
}


def registry() -> dict[str, type]:
    """Every app registered in :mod:`fastswitch.apps`, by name."""
    from fastswitch.apps import all_apps

    return all_apps()


def resolve(spec: AppSpec) -> tuple[type, dict[str, Any]]:
    """The app class for ``spec`` and the prepost keyword arguments to load it with."""
    from fastswitch.apps import get_app

    params: dict[str, Any] = {}
    name = spec.name
    preset = PRESETS.get(name.lower())
    if preset is not None:
        name, params = preset.app, dict(preset.params)
    if ":" in name:
        try:
            cls = get_app(name)
        except (ImportError, AttributeError) as e:
            raise ConfigurationError(f"cannot load app {name!r}: {e}") from None
    else:
        apps = registry()
        by_lower = {k.lower(): v for k, v in apps.items()}
        cls = apps.get(name) or by_lower.get(name.lower())
        if cls is None:
            known = sorted(set(PRESETS) | set(apps))
            raise ConfigurationError(
                f"unknown app {spec.name!r}: use one of {', '.join(known)} "
                "(see `python -m fastswitch list-apps`) or pkg.module:Class"
            )
    params.update(spec.params)
    _check_params(cls, params, spec.name)
    return cls, params


def prepost_params(cls: type) -> list[inspect.Parameter]:
    """The keyword parameters an app's ``prepost`` accepts (after client and listener)."""
    pp = getattr(cls, "prepost", None)
    if pp is None:
        return []
    try:
        sig = inspect.signature(pp)
    except (TypeError, ValueError):
        return []
    params = list(sig.parameters.values())
    out = []
    for p in params:
        if p.name in ("self", "client", "listener"):
            continue
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY, p.VAR_KEYWORD):
            out.append(p)
    return out


def _check_params(cls: type, params: dict[str, Any], shown: str) -> None:
    accepted = prepost_params(cls)
    if any(p.kind == p.VAR_KEYWORD for p in accepted):
        return
    names = {p.name for p in accepted}
    bad = sorted(set(params) - names)
    if bad:
        hint = ", ".join(sorted(names)) if names else "none"
        raise ConfigurationError(
            f"app {shown!r} has no parameter {', '.join(bad)}: it accepts {hint}"
        )


def _param_text(p: inspect.Parameter) -> str:
    if p.kind == p.VAR_KEYWORD:
        return f"**{p.name}"
    if p.default is inspect.Parameter.empty:
        return p.name
    return f"{p.name}={p.default!r}"


def first_line(obj: Any) -> str:
    """The first line of an object's docstring ('' without one)."""
    doc = inspect.getdoc(obj) or ""
    return doc.strip().splitlines()[0] if doc.strip() else ""


def format_app_list() -> str:
    """The ``list-apps`` text: registered apps with their parameters, then the presets."""
    apps = registry()
    lines = ["Apps (use with --app NAME[:WEIGHT][/key=value,...]):", ""]
    for name in sorted(apps, key=str.lower):
        cls = apps[name]
        lines.append(f"  {name:<22} {first_line(cls)}")
        params = prepost_params(cls)
        if params:
            lines.append(f"  {'':<22} parameters: {', '.join(_param_text(p) for p in params)}")
        lines.append(f"  {'':<22} module: {cls.__module__}")
    lines += ["", "Presets:", ""]
    for short, pre in PRESETS.items():
        extra = f" {pre.params}" if pre.params else ""
        present = "" if pre.app in apps else "  (not available)"
        lines.append(f"  {short:<22} {pre.app}{extra}: {pre.description}{present}")
    return "\n".join(lines)
