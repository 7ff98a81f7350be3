"""The app runtime: the :func:`event_callback` decorator, per-client :class:`AppRegistry`
(load / unload / dispatch) and the registry of shipped apps (:func:`get_app`,
:func:`all_apps`).

An *app* is a class (or an instance) whose methods are marked with
``@event_callback("CHANNEL_PARK", ...)``. A callback receives the :class:`Session` the
event is about (the :class:`Job` for ``BACKGROUND_JOB``). CUSTOM events are named by
their subclass (``@event_callback("mod_bert::lost_sync")``). A callback may be a
coroutine function; its coroutine then runs as a task. An exception in a callback is
logged with its traceback and dispatch goes on.

Optional ``prepost(self, client, listener, **ppkwargs)`` runs when the app is loaded;
if it is a generator, the code after its (single) ``yield`` runs when the app is
unloaded. Optional ``__setduration__(seconds)``, ``__setrate__(cps)`` and
``__setlimit__(calls)`` (switchio's hooks) are called in each worker when the app is
loaded and whenever the Originator's settings change (rate and limit: the worker's share).

Each loaded app has an *app id*; every call carries the id of the app that owns it (A-leg
variable ``fastswitch_client``, B-leg ``variable_sip_h_X-fastswitch_client``), and only
that app's callbacks see the call's events.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import logging
import pkgutil
from collections.abc import Callable, Iterable
from typing import Any

__all__ = [
    "event_callback",
    "callbacks_of",
    "event_names_of",
    "AppRegistry",
    "LoadedApp",
    "register",
    "get_app",
    "all_apps",
]

log = logging.getLogger("fastswitch.apps")

_MARK = "_fastswitch_events"


def event_callback(*event_names: str) -> Callable[[Callable], Callable]:
    """Mark a method as the callback for one or more event names.

    ``BACKGROUND_JOB`` callbacks receive the Job, all others the Session. A CUSTOM event
    is named by its subclass (``'mod_bert::in_sync'``).
    """
    if not event_names or not all(isinstance(n, str) and n for n in event_names):
        raise TypeError("event_callback() needs one or more event names")

    def mark(fn: Callable) -> Callable:
        names = getattr(fn, _MARK, ())
        setattr(fn, _MARK, tuple(names) + tuple(n for n in event_names if n not in names))
        return fn

    return mark


def callbacks_of(app: Any) -> list[tuple[str, Callable]]:
    """``(event name, bound callback)`` for every marked method of an app instance,
    in definition order."""
    out: list[tuple[str, Callable]] = []
    seen: set[str] = set()
    for klass in type(app).__mro__:
        for attr, fn in vars(klass).items():
            if attr in seen:
                continue
            seen.add(attr)
            names = getattr(fn, _MARK, None)
            if names:
                bound = getattr(app, attr)
                out.extend((n, bound) for n in names)
    return out


def event_names_of(app: Any) -> set[str]:
    """The event names an app (class or instance) has callbacks for."""
    klass = app if isinstance(app, type) else type(app)
    names: set[str] = set()
    for k in klass.__mro__:
        for fn in vars(k).values():
            names.update(getattr(fn, _MARK, ()))
    return names


class LoadedApp:
    """One app loaded under one app id."""

    __slots__ = ("app_id", "app", "weight", "callbacks", "teardown")

    def __init__(self, app_id: str, app: Any, weight: int, callbacks, teardown) -> None:
        self.app_id = app_id
        self.app = app
        self.weight = weight
        self.callbacks: list[tuple[str, Callable]] = callbacks
        self.teardown = teardown  # the prepost generator, or None

    def __repr__(self) -> str:
        return f"<LoadedApp {self.app_id!r} {type(self.app).__name__} weight={self.weight}>"


def _log_task_error(task: asyncio.Task) -> None:
    if not task.cancelled() and task.exception() is not None:
        exc = task.exception()
        log.error(
            "app coroutine %s failed", task.get_name(), exc_info=(type(exc), exc, exc.__traceback__)
        )


class AppRegistry:
    """The apps loaded on one client and the ``event name -> app id -> callbacks`` table.

    ``dispatch(name, app_id, obj)`` is the hot path: two dict lookups and the calls.
    """

    def __init__(self) -> None:
        self.apps: dict[str, LoadedApp] = {}
        self._table: dict[str, dict[str, list[Callable]]] = {}
        self._tasks: set[asyncio.Task] = set()

    def __contains__(self, app_id: object) -> bool:
        return app_id in self.apps

    def __len__(self) -> int:
        return len(self.apps)

    @property
    def event_names(self) -> set[str]:
        """Every event name some loaded app has a callback for."""
        return {n for n, d in self._table.items() if any(d.values())}

    def load(
        self,
        app: Any,
        app_id: str,
        client: Any = None,
        listener: Any = None,
        ppkwargs: dict[str, Any] | None = None,
        weight: int = 1,
    ) -> LoadedApp:
        """Instantiate (if a class), run ``prepost`` and register the callbacks.

        Loading is all or nothing: if ``prepost`` raises, nothing is registered.
        """
        if app_id in self.apps:
            raise ValueError(f"an app is already loaded with id {app_id!r}")
        if weight < 0 or int(weight) != weight:
            raise ValueError(f"app weight must be a non-negative integer, got {weight!r}")
        inst = app() if isinstance(app, type) else app
        teardown = None
        prepost = getattr(inst, "prepost", None)
        if prepost is not None:
            res = prepost(client, listener, **(ppkwargs or {}))
            if inspect.isgenerator(res):
                next(res)  # set-up part
                teardown = res
        cbs = callbacks_of(inst)
        loaded = LoadedApp(app_id, inst, int(weight), cbs, teardown)
        for name, cb in cbs:
            self._table.setdefault(name, {}).setdefault(app_id, []).append(cb)
        self.apps[app_id] = loaded
        return loaded

    def unload(self, app_id: str) -> LoadedApp | None:
        """Remove an app's callbacks and run its ``prepost`` teardown."""
        loaded = self.apps.pop(app_id, None)
        if loaded is None:
            return None
        for name, _cb in loaded.callbacks:
            per = self._table.get(name)
            if per is not None:
                per.pop(app_id, None)
                if not per:
                    del self._table[name]
        gen = loaded.teardown
        if gen is not None:
            try:
                next(gen)
            except StopIteration:
                pass
            except Exception:
                log.exception("teardown of app %r failed", app_id)
            else:
                log.warning("prepost of app %r yielded more than once", app_id)
        return loaded

    def apply_settings(self, rate: float, limit: float, duration: float) -> None:
        """Tell every loaded app the load settings through switchio's hooks, where it has
        them: ``__setduration__(duration)``, ``__setrate__(rate)``, ``__setlimit__(limit)``
        (``rate`` and ``limit`` are this slave's shares). A hook that raises is logged."""
        for loaded in self.apps.values():
            app = loaded.app
            for hook, value in (
                ("__setduration__", duration),
                ("__setrate__", rate),
                ("__setlimit__", limit),
            ):
                fn = getattr(app, hook, None)
                if fn is None:
                    continue
                try:
                    fn(value)
                except Exception:
                    log.exception("%s(%r) of app %r failed", hook, value, loaded.app_id)

    def unload_all(self) -> None:
        """Unload every app (teardowns in reverse load order)."""
        for app_id in reversed(list(self.apps)):
            self.unload(app_id)

    def dispatch(self, name: str, app_id: str | None, obj: Any) -> None:
        """Run the callbacks app ``app_id`` has for event ``name`` with ``obj``."""
        per = self._table.get(name)
        if per is None:
            return
        cbs = per.get(app_id)  # type: ignore[arg-type]
        if not cbs:
            return
        for cb in cbs:
            try:
                res = cb(obj)
            except Exception:
                log.exception("app %r callback %s for %s failed", app_id, _cbname(cb), name)
                continue
            if res is not None and inspect.iscoroutine(res):
                task = asyncio.get_running_loop().create_task(res, name=f"{app_id}:{name}")
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
                task.add_done_callback(_log_task_error)


def _cbname(cb: Callable) -> str:
    return getattr(cb, "__qualname__", repr(cb))


# -- registry of shipped apps ---------------------------------------------------------------
_APPS: dict[str, type] = {}
_SHIPPED_LOADED = False


def register(cls: type | None = None, *, name: str | None = None):
    """Class decorator adding an app to the registry under ``name`` (default: class name)."""

    def deco(klass: type) -> type:
        _APPS[name or klass.__name__] = klass
        return klass

    return deco(cls) if cls is not None else deco


def _load_shipped() -> None:
    global _SHIPPED_LOADED
    if _SHIPPED_LOADED:
        return
    _SHIPPED_LOADED = True
    for mod in pkgutil.iter_modules(__path__):  # type: ignore[name-defined]
        try:
            importlib.import_module(f"{__name__}.{mod.name}")
        except ImportError as exc:  # an optional dependency is missing
            log.debug("app module %s not loaded: %s", mod.name, exc)


def all_apps() -> dict[str, type]:
    """Every shipped (and registered) app by name."""
    _load_shipped()
    return dict(_APPS)


def get_app(name: str) -> type:
    """The app class called ``name`` (a registered name, or ``'pkg.module:Class'``)."""
    if ":" in name:
        modname, _, attr = name.partition(":")
        return getattr(importlib.import_module(modname), attr)
    apps = all_apps()
    try:
        return apps[name]
    except KeyError:
        raise KeyError(f"no app named {name!r}; known apps: {', '.join(sorted(apps))}") from None


def iter_app_names(apps: Iterable[Any]) -> set[str]:
    """The union of the event names of several apps."""
    out: set[str] = set()
    for a in apps:
        out |= event_names_of(a)
    return out
