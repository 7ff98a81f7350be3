"""fastswitch: a fast FreeSWITCH call generator and SIP stress tester.

Kept minimal so ``import fastswitch`` is cheap and never breaks: the public names are
re-exported lazily (module ``__getattr__``) from the modules that define them.
"""

from __future__ import annotations

import importlib
from typing import Any

from fastswitch.esl import PARSER

__version__ = "0.1.0"

_LAZY = {
    "Client": "fastswitch.client",
    "get_originator": "fastswitch.originator",
    "Originator": "fastswitch.originator",
    "build_originate_cmd": "fastswitch.commands",
    "load_run": "fastswitch.measure",
    "Parser": "fastswitch.esl",
    "Frame": "fastswitch.esl",
    "Event": "fastswitch.esl",
    "FastSwitchError": "fastswitch.errors",
    "ConfigurationError": "fastswitch.errors",
    "ESLError": "fastswitch.errors",
    "ESLProtocolError": "fastswitch.errors",
    "ConnectError": "fastswitch.errors",
    "AuthenticationError": "fastswitch.errors",
    "CommandError": "fastswitch.errors",
    "ConnectionLost": "fastswitch.errors",
}

__all__ = ["PARSER", "__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    mod = _LAZY.get(name)
    if mod is None:
        raise AttributeError(f"module 'fastswitch' has no attribute {name!r}")
    value = getattr(importlib.import_module(mod), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
