"""``log/data`` messages for ESL connections that asked with ``log <level>``.

The frames copy capture i (``log 7`` during one loopback call): headers
``Content-Type, Content-Length, Log-Level, Text-Channel, Log-File, Log-Func, Log-Line,
User-Data`` (the channel uuid) and the console line as the body. Only the channel
lifecycle lines of that capture are produced.

Nothing here runs unless a connection is logging: callers check ``core.loggers`` (a
list, empty when nobody logs) before building any text.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .channel import Leg
    from .core import Core

LEVEL_NAMES = ("CONSOLE", "ALERT", "CRIT", "ERR", "WARNING", "NOTICE", "INFO", "DEBUG")
NOTICE = 5
INFO = 6

#: switch_text_channel_t: LOG (0) lines carry the date/idle/level prefix, LOG_CLEAN (1)
#: lines (the EXECUTE trace) are bare, SESSION (3) lines are prefixed like LOG ones
CH_LOG = 0
CH_CLEAN = 1
CH_SESSION = 3

#: (file, function, line) of the FreeSWITCH source that writes each line (capture i)
NEW_CHANNEL = ("switch_channel.c", "switch_channel_set_name", 1143)
SENDING_INVITE = ("sofia_glue.c", "sofia_glue_do_invite", 1656)
RECEIVING_INVITE = ("sofia.c", "sofia_handle_sip_i_invite", 10472)
PROCESSING = ("mod_dialplan_xml.c", "dialplan_hunt", 648)
EXECUTE = ("switch_core_session.c", "switch_core_session_exec", 2907)
PRE_ANSWER = ("sofia_media.c", "sofia_media_tech_media", 90)
ANSWERED_INBOUND = ("mod_dptools.c", "answer_function", 1406)
ANSWERED_OUTBOUND = ("sofia.c", "sofia_handle_sip_i_state", 8693)
HANGUP_KILL = ("switch_ivr.c", "switch_ivr_kill_uuid", 4404)
HANGUP_BYE = ("sofia.c", "sofia_handle_sip_i_bye", 1065)
SESSION_ENDED = ("switch_core_session.c", "switch_core_session_thread", 1766)
CLOSE_CHANNEL = ("switch_core_session.c", "switch_core_session_thread", 1770)

SOFIA_VERSION = "1.11.3-dev git cc93a68 2026-08-21 14:10:14Z 64bit"
IDLE = "94.37%"


def frame(
    core: Core,
    level: int,
    channel: int,
    where: tuple[str, str, int],
    uuid: str,
    text: str,
) -> bytes:
    """One rendered ``log/data`` message."""
    file, func, line = where
    if channel == CH_CLEAN:
        body = f"{text}\n"
    else:
        us = core.now_us
        stamp = f"{core.stamp(us)}.{us % 1_000_000:06d}"
        body = f"{stamp} {IDLE} [{LEVEL_NAMES[level]}] {file}:{line} {text}\n"
    b = body.encode("utf-8", "surrogateescape")
    return (
        b"Content-Type: log/data\nContent-Length: %d\nLog-Level: %d\nText-Channel: %d\n"
        b"Log-File: %s\nLog-Func: %s\nLog-Line: %d\nUser-Data: %s\n\n%s"
        % (len(b), level, channel, file.encode(), func.encode(), line, uuid.encode(), b)
    )


def log(
    core: Core,
    level: int,
    channel: int,
    where: tuple[str, str, int],
    uuid: str,
    text: str,
) -> None:
    """Send one log line to every connection logging at ``level`` or more verbosely."""
    data = None
    for conn in core.loggers:
        if conn.log_level >= level:
            if data is None:
                data = frame(core, level, channel, where, uuid, text)
            conn.deliver(data)


# -- the channel lifecycle lines (callers check ``core.loggers`` first) -------------------
def new_channel(leg: Leg) -> None:
    core, name, uuid = leg.core, leg.chan_name, leg.uuid
    log(core, NOTICE, CH_SESSION, NEW_CHANNEL, uuid, f"New Channel {name} [{uuid}]")
    if leg.role == "A" and name.startswith("sofia/"):
        log(core, INFO, CH_SESSION, SENDING_INVITE, uuid, f"{name} sending invite call-id: (null)")


def inbound_invite(leg: Leg, from_addr: str, cid_num: str) -> None:
    core, name, uuid = leg.core, leg.chan_name, leg.uuid
    log(
        core,
        INFO,
        CH_SESSION,
        RECEIVING_INVITE,
        uuid,
        f"{name} receiving invite from {from_addr} version: {SOFIA_VERSION} call-id: {leg.call_id}",
    )
    log(
        core,
        INFO,
        CH_SESSION,
        PROCESSING,
        uuid,
        f"Processing {cid_num} <{cid_num}>->{leg.dest} in context {leg.context}",
    )


def execute(leg: Leg, app: str, arg: str, depth: int) -> None:
    log(
        leg.core,
        INFO,
        CH_CLEAN,
        EXECUTE,
        leg.uuid,
        f"EXECUTE [depth={depth}] {leg.chan_name} {app}({arg})",
    )


def pre_answer(leg: Leg) -> None:
    log(leg.core, NOTICE, CH_LOG, PRE_ANSWER, leg.uuid, f"Pre-Answer {leg.chan_name}!")


def answered(leg: Leg) -> None:
    where = ANSWERED_OUTBOUND if leg.role == "A" else ANSWERED_INBOUND
    log(leg.core, NOTICE, CH_LOG, where, leg.uuid, f"Channel [{leg.chan_name}] has been answered")


def hangup(leg: Leg, cs: str, cause: str, disposition: str) -> None:
    where = HANGUP_BYE if disposition == "recv_bye" else HANGUP_KILL
    log(leg.core, NOTICE, CH_LOG, where, leg.uuid, f"Hangup {leg.chan_name} [{cs}] [{cause}]")


def ended(leg: Leg) -> None:
    core, name, uuid = leg.core, leg.chan_name, leg.uuid
    session = leg.values.get("session_id", "0")
    log(core, NOTICE, CH_SESSION, SESSION_ENDED, uuid, f"Session {session} ({name}) Ended")
    log(core, NOTICE, CH_LOG, CLOSE_CHANNEL, uuid, f"Close Channel {name} [CS_DESTROY]")
