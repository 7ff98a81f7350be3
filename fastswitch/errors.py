"""The exceptions fastswitch raises.

Every error a user can meet derives from :class:`FastSwitchError`; messages name the
slave (``host:port``) or the setting at fault so that a load test's failure says what to fix.
"""

from __future__ import annotations


class FastSwitchError(Exception):
    """Base class of every fastswitch error."""


class ConfigurationError(FastSwitchError):
    """A setting is missing or invalid (no apps loaded, no originate command, rate <= 0 ...)."""


class ESLError(FastSwitchError):
    """Something went wrong on an Event Socket connection."""


class ESLProtocolError(ESLError):
    """The byte stream broke the ESL framing rules.

    ``offset`` is the byte offset in the stream (counted from the first byte ever fed)
    where the offending frame starts.
    """

    def __init__(self, message: str, offset: int = 0) -> None:
        super().__init__(f"{message} (at byte offset {offset})")
        self.offset = offset


class ConnectError(ESLError):
    """The slave could not be reached (refused, unreachable, timed out)."""


class AuthenticationError(ESLError):
    """The slave refused the password."""


class CommandError(ESLError):
    """FreeSWITCH answered a command with ``-ERR``; ``reply`` is its text."""

    def __init__(self, reply: str, command: str | None = None) -> None:
        msg = reply if command is None else f"{command!r} failed: {reply}"
        super().__init__(msg)
        self.reply = reply
        self.command = command


class ConnectionLost(ESLError):
    """The connection dropped; every command still waiting for its reply fails with this."""
