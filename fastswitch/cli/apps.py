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
    "block486": Preset(
        "CalleeBlockOnInvite", {"response": 486}, "the callee rejects every INVITE with 486 busy"
    ),
    "block503": Preset(
        "CalleeBlockOnInvite", {"response": 503}, "the callee rejects every INVITE with 503"
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
    """The settings an app accepts through ``ppkwargs``.

    ``prepost``'s keyword parameters (after client and listener); when ``prepost`` takes
    ``**kwargs`` and passes them on to the app's settings, the constructor's parameters.
    """
    out: list[inspect.Parameter] = []
    var_kw = False
    for fn in (getattr(cls, "prepost", None), cls.__init__):
        if fn is None or fn is object.__init__:
            continue
        try:
            params = inspect.signature(fn).parameters.values()
        except (TypeError, ValueError):
            continue
        for p in params:
            if p.name in ("self", "client", "listener") or p.kind == p.VAR_POSITIONAL:
                continue
            if p.kind == p.VAR_KEYWORD:
                var_kw = True
            elif all(p.name != q.name for q in out):
                out.append(p)
        if not var_kw:
            break
        var_kw = False
    return out


def _check_params(cls: type, params: dict[str, Any], shown: str) -> None:
    names = {p.name for p in prepost_params(cls)}
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
    """The first sentence (or paragraph) of an object's docstring ('' without one)."""
    doc = inspect.getdoc(obj) or ""
    para = " ".join(doc.strip().split("\n\n")[0].split())
    end = para.find(". ")
    return para[: end + 1] if end >= 0 else para


def format_app_list() -> str:
    """The ``list-apps`` text: each registered app (all its names) with its parameters,
    then the CLI presets."""
    apps = registry()
    by_class: dict[type, list[str]] = {}
    for name, cls in apps.items():
        by_class.setdefault(cls, []).append(name)
    lines = ["Apps (--app NAME[:WEIGHT][/key=value,...]):", ""]
    for cls, names in sorted(by_class.items(), key=lambda kv: min(kv[1], key=str.lower).lower()):
        names.sort(key=lambda n: (n != n.lower(), n))
        lines.append(f"  {' | '.join(names)}")
        lines.append(f"      {first_line(cls)}")
        params = prepost_params(cls)
        if params:
            lines.append(f"      parameters: {', '.join(_param_text(p) for p in params)}")
        lines.append(f"      class: {cls.__module__}:{cls.__name__}")
    lines += ["", "Presets:", ""]
    for short, pre in PRESETS.items():
        args = ",".join(f"{k}={v}" for k, v in pre.params.items())
        lines.append(f"  {short:<10} = {pre.app}/{args}: {pre.description}")
    return "\n".join(lines)
