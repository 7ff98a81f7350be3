"""Fault injection for the simulated switch (``api sim fault <name> [arg]``).

Faults hit every ESL connection. The connection that sent the command is hit too when
it listens to events (a client's single connection), and spared when it is a pure
control connection; a trailing ``others`` always spares it, ``all`` always hits it
(``api sim fault drop others``).

* ``drop`` — abort every ESL connection (no notice, as if the host died).
* ``stall <seconds>`` — hold event delivery on every connection for that long
  (events queue up in each listener's bounded queue).
* ``malformed`` — write a malformed frame (a non-numeric Content-Length) to every
  event listener.
* ``oversized [bytes]`` — write an event frame whose body is larger than 16 MiB
  (default 16 MiB + 1).
* ``rude`` — send ``text/rude-rejection`` and close every connection.
* ``disconnect`` — send the ``text/disconnect-notice`` FreeSWITCH sends on shutdown,
  then close every connection.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .core import Core

MALFORMED = b"Content-Length: 12x\nContent-Type: text/event-plain\n\nEvent-Name: X"
RUDE = b"Content-Type: text/rude-rejection\nContent-Length: 24\n\nAccess Denied, go away.\n"
SHUTDOWN = b"The system is being shut down.\n"


def inject(core: Core, spec: str) -> str:
    parts = spec.split()
    who = parts[-1].lower() if parts and parts[-1].lower() in ("others", "all") else ""
    if who:
        parts = parts[:-1]
    req = core.current_connection
    # a pure control connection (no events) that asks is spared unless "all" is given;
    # an event-listening one is hit too unless "others" is given
    spare = who == "others" or (who == "" and req is not None and not _listening(req))
    if not parts:
        return "-USAGE: sim fault drop|stall <seconds>|malformed|oversized [bytes]|rude|disconnect [others|all]\n"
    name = parts[0].lower()
    conns = [
        c for c in getattr(core, "connections", ()) if not (spare and c is core.current_connection)
    ]
    if name == "drop":
        for c in conns:
            c.abort()
    elif name == "stall":
        secs = float(parts[1]) if len(parts) > 1 else 1.0
        core.stall_until = core.loop.time() + secs
        core.loop.call_later(secs, _unstall, core)
    elif name == "malformed":
        for c in conns:
            c.write_raw(MALFORMED)
    elif name == "oversized":
        size = int(parts[1]) if len(parts) > 1 else 16 * 1024 * 1024 + 1
        frame = b"Content-Length: %d\nContent-Type: text/event-plain\n\n" % size
        body = b"Event-Name: CUSTOM\n" + b"x" * max(size - 19, 0)
        for c in conns:
            c.write_raw(frame + body[:size])
    elif name == "rude":
        for c in conns:
            c.write_raw(RUDE)
            c.close_after_write()
    elif name == "disconnect":
        for c in conns:
            c.disconnect_notice(SHUTDOWN)
    else:
        return f"-ERR unknown fault {name}\n"
    return f"+OK fault {name} injected on {len(conns)} connection(s)\n"


def _listening(conn: object) -> bool:
    return bool(
        getattr(conn, "all", False) or getattr(conn, "subs", None) or getattr(conn, "custom", None)
    )


def _unstall(core: Core) -> None:
    for c in list(getattr(core, "connections", ())):
        c.flush_pending()
