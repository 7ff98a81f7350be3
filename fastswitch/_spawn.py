"""Starting ``spawn`` child processes (workers, simulated servers) from any parent."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator

__all__ = ["main_hidden"]

_MISSING = object()


@contextlib.contextmanager
def main_hidden() -> Iterator[None]:
    """Keep a 'spawn' child from re-running the parent's ``__main__`` while processes are
    started inside this block. A script without an ``if __name__ == '__main__'`` guard
    would otherwise start itself again in every child; the children never need
    ``__main__`` (apps defined there are shipped by value with cloudpickle)."""
    main = sys.modules.get("__main__")
    if main is None:
        yield
        return
    saved_file = main.__dict__.pop("__file__", _MISSING)
    saved_spec = main.__dict__.get("__spec__", _MISSING)
    main.__spec__ = None
    try:
        yield
    finally:
        if saved_file is not _MISSING:
            main.__file__ = saved_file
        if saved_spec is _MISSING:
            main.__dict__.pop("__spec__", None)
        else:
            main.__spec__ = saved_spec
