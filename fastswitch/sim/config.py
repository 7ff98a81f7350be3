"""SimConfig: the settings of one simulated FreeSWITCH server.

Every setting can be given to the constructor, on the command line
(``--answer-delay 0.5``) and changed at run time over ESL with
``api sim <setting> <value>``.
"""

from __future__ import annotations

import dataclasses
import json
import socket
from dataclasses import dataclass, field
from typing import Any

# SIP response code -> FreeSWITCH hangup cause seen by the originating leg.
# 480/404 follow the captures (FS's own 480 carries Q.850 16, a bare 404 maps to
# UNALLOCATED_NUMBER, a 404 with a Q.850 Reason header to NO_ROUTE_DESTINATION).
SIP_CAUSES: dict[int, str] = {
    400: "NORMAL_TEMPORARY_FAILURE",
    401: "CALL_REJECTED",
    402: "CALL_REJECTED",
    403: "CALL_REJECTED",
    404: "UNALLOCATED_NUMBER",
    405: "SERVICE_UNAVAILABLE",
    406: "SERVICE_NOT_IMPLEMENTED",
    407: "CALL_REJECTED",
    408: "RECOVERY_ON_TIMER_EXPIRE",
    410: "NUMBER_CHANGED",
    413: "INTERWORKING",
    414: "INTERWORKING",
    415: "SERVICE_NOT_IMPLEMENTED",
    416: "INTERWORKING",
    420: "INTERWORKING",
    421: "INTERWORKING",
    423: "INTERWORKING",
    480: "NORMAL_CLEARING",
    481: "NORMAL_TEMPORARY_FAILURE",
    482: "EXCHANGE_ROUTING_ERROR",
    483: "EXCHANGE_ROUTING_ERROR",
    484: "INVALID_NUMBER_FORMAT",
    485: "NO_ROUTE_DESTINATION",
    486: "USER_BUSY",
    487: "ORIGINATOR_CANCEL",
    488: "INCOMPATIBLE_DESTINATION",
    500: "NORMAL_TEMPORARY_FAILURE",
    501: "SERVICE_NOT_IMPLEMENTED",
    502: "NETWORK_OUT_OF_ORDER",
    503: "NORMAL_TEMPORARY_FAILURE",
    504: "RECOVERY_ON_TIMER_EXPIRE",
    505: "INTERWORKING",
    513: "INTERWORKING",
    600: "USER_BUSY",
    603: "CALL_REJECTED",
    604: "NO_ROUTE_DESTINATION",
    606: "INCOMPATIBLE_DESTINATION",
}
# FreeSWITCH's numbers (switch_call_cause_t) of the causes the simulator produces: the
# Q.850 cause values, and FreeSWITCH's own causes above INTERWORKING (127).
#: FreeSWITCH's hangup causes and their numbers (switch_call_cause_t, switch_types.h)
Q850: dict[str, int] = {
    "UNALLOCATED_NUMBER": 1,
    "NO_ROUTE_TRANSIT_NET": 2,
    "NO_ROUTE_DESTINATION": 3,
    "CHANNEL_UNACCEPTABLE": 6,
    "CALL_AWARDED_DELIVERED": 7,
    "NORMAL_CLEARING": 16,
    "USER_BUSY": 17,
    "NO_USER_RESPONSE": 18,
    "NO_ANSWER": 19,
    "SUBSCRIBER_ABSENT": 20,
    "CALL_REJECTED": 21,
    "NUMBER_CHANGED": 22,
    "REDIRECTION_TO_NEW_DESTINATION": 23,
    "EXCHANGE_ROUTING_ERROR": 25,
    "DESTINATION_OUT_OF_ORDER": 27,
    "INVALID_NUMBER_FORMAT": 28,
    "FACILITY_REJECTED": 29,
    "RESPONSE_TO_STATUS_ENQUIRY": 30,
    "NORMAL_UNSPECIFIED": 31,
    "NORMAL_CIRCUIT_CONGESTION": 34,
    "NETWORK_OUT_OF_ORDER": 38,
    "NORMAL_TEMPORARY_FAILURE": 41,
    "SWITCH_CONGESTION": 42,
    "ACCESS_INFO_DISCARDED": 43,
    "REQUESTED_CHAN_UNAVAIL": 44,
    "PRE_EMPTED": 45,
    "FACILITY_NOT_SUBSCRIBED": 50,
    "OUTGOING_CALL_BARRED": 52,
    "INCOMING_CALL_BARRED": 54,
    "BEARERCAPABILITY_NOTAUTH": 57,
    "BEARERCAPABILITY_NOTAVAIL": 58,
    "SERVICE_UNAVAILABLE": 63,
    "BEARERCAPABILITY_NOTIMPL": 65,
    "CHAN_NOT_IMPLEMENTED": 66,
    "FACILITY_NOT_IMPLEMENTED": 69,
    "SERVICE_NOT_IMPLEMENTED": 79,
    "INVALID_CALL_REFERENCE": 81,
    "INCOMPATIBLE_DESTINATION": 88,
    "INVALID_MSG_UNSPECIFIED": 95,
    "MANDATORY_IE_MISSING": 96,
    "MESSAGE_TYPE_NONEXIST": 97,
    "WRONG_MESSAGE": 98,
    "IE_NONEXIST": 99,
    "INVALID_IE_CONTENTS": 100,
    "WRONG_CALL_STATE": 101,
    "RECOVERY_ON_TIMER_EXPIRE": 102,
    "MANDATORY_IE_LENGTH_ERROR": 103,
    "PROTOCOL_ERROR": 111,
    "INTERWORKING": 127,
    "SUCCESS": 142,
    "ORIGINATOR_CANCEL": 487,
    "CRASH": 500,
    "SYSTEM_SHUTDOWN": 501,
    "LOSE_RACE": 502,
    "MANAGER_REQUEST": 503,
    "BLIND_TRANSFER": 600,
    "ATTENDED_TRANSFER": 601,
    "ALLOTTED_TIMEOUT": 602,
    "USER_CHALLENGE": 603,
    "MEDIA_TIMEOUT": 604,
    "PICKED_OFF": 605,
    "USER_NOT_REGISTERED": 606,
    "PROGRESS_TIMEOUT": 607,
    "INVALID_GATEWAY": 608,
    "GATEWAY_DOWN": 609,
    "INVALID_URL": 610,
    "INVALID_PROFILE": 611,
    "NO_PICKUP": 612,
    "SRTP_READ_ERROR": 613,
}
_CAUSE_NAMES = {n: name for name, n in Q850.items()}


def str2cause(text: str) -> str | None:
    """switch_channel_str2cause: a cause name (any case) or its number; None if unknown."""
    t = text.strip()
    if t.isdigit():
        return _CAUSE_NAMES.get(int(t))
    u = t.upper()
    return u if u in Q850 else None


INTERWORKING = 127
# the Reason header FreeSWITCH's sofia puts in a BYE/CANCEL/refusal for a cause above
# 127: "SIP;cause=N". Capture k shows N = 802 for ALLOTTED_TIMEOUT (602); the same
# offset is assumed for the other non-Q.850 causes.
_SIP_REASON_OFFSET = 200


def cause_number(cause: str) -> int:
    """FreeSWITCH's number of a hangup cause (``variable_sip_term_cause``: 487 for
    ORIGINATOR_CANCEL, capture m)."""
    return Q850.get(cause, 16)


def cause_q850(cause: str) -> int:
    """``variable_hangup_cause_q850``: switch_channel_get_cause_q850() maps every cause
    above INTERWORKING (127) to NORMAL_CLEARING (16) (captures k, m)."""
    n = Q850.get(cause, 16)
    return n if n <= INTERWORKING else 16


def sip_reason(cause: str) -> str:
    """The Reason header FreeSWITCH sends with ``cause`` (``variable_sip_reason`` on the
    leg that receives it): ``Q.850;cause=16;text="NORMAL_CLEARING"`` (captures b, l, m, o)."""
    n = Q850.get(cause, 16)
    if 0 < n <= INTERWORKING:
        return f'Q.850;cause={n};text="{cause}"'
    return f'SIP;cause={n + _SIP_REASON_OFFSET};text="{cause}"'


def reject_cause(code: int | str) -> tuple[int, str]:
    """(SIP status, hangup cause) for a reject_mix key.

    Keys: an int SIP code (``404``), ``"404q"`` (404 carrying a Q.850 Reason, i.e.
    NO_ROUTE_DESTINATION), ``"503"``, or ``"noanswer"`` (ring until
    originate_timeout: status 0, cause NO_ANSWER).
    """
    s = str(code).strip().lower()
    if s in ("noanswer", "no_answer", "timeout"):
        return 0, "NO_ANSWER"
    if s.endswith("q"):
        return int(s[:-1]), "NO_ROUTE_DESTINATION" if s[:-1] == "404" else SIP_CAUSES.get(
            int(s[:-1]), "NORMAL_TEMPORARY_FAILURE"
        )
    c = int(s)
    return c, SIP_CAUSES.get(c, "NORMAL_TEMPORARY_FAILURE")


@dataclass
class SimConfig:
    """Settings of one simulated FreeSWITCH (see module doc)."""

    host: str = "127.0.0.1"
    port: int = 8021
    password: str = "ClueCon"
    sip_port: int | None = None  # default: port - 8021 + 5080
    sip_host: str | None = None  # default: host
    hostname: str = field(default_factory=socket.gethostname)
    answer_delay: float = 0.0  # seconds the dialplan's answering extensions ring first (180)
    post_dial_delay: float = 0.0  # seconds between the INVITE leaving and the B-leg arriving
    # seconds a failed originate holds its A-leg (and session) after HANGUP_COMPLETE before
    # BACKGROUND_JOB -ERR and CHANNEL_DESTROY (FreeSWITCH's originate thread, capture s)
    originate_fail_delay: float = 0.02
    reject_mix: dict[Any, float] = field(default_factory=dict)  # {sip code: probability}
    sps: int = 1000
    max_sessions: int = 4000
    bert_lost_sync_prob: float = 0.0
    bert_sync_delay: float = 1.0
    seed: int | None = None
    # "switchio": unknown destinations park unanswered; "vanilla": FreeSWITCH's vanilla
    # public context (set/export, then hang up NORMAL_CLEARING -> 480)
    dialplan: str = "switchio"
    # "host:port" -> "host:port" of another simulator's SIP listener, or "unreachable"
    routes: dict[str, str] = field(default_factory=dict)
    event_queue_limit: int = 100_000
    max_missed: int = 500
    heartbeat_interval: float = 20.0
    auth_timeout: float = 25.0
    # scheduled faults (any fault can also be injected at once: `api sim fault <name> [arg]`)
    fault_drop_after: float = 0.0  # >0: abort every ESL connection this long after start
    fault_stall_after: float = 0.0  # >0: this long after start, stall event delivery for
    fault_stall_for: float = 0.0
    rude_rejection: bool = False  # reject every connection with text/rude-rejection

    def __post_init__(self) -> None:
        if self.sip_port is None:
            self.sip_port = self.port - 8021 + 5080 if self.port else 0
        if self.sip_host is None:
            self.sip_host = self.host
        self.reject_mix = {k: float(v) for k, v in dict(self.reject_mix).items()}
        self.routes = dict(self.routes)

    @property
    def address(self) -> tuple[str, int]:
        return (self.host, self.port)

    @property
    def sip_address(self) -> tuple[str, int]:
        return (str(self.sip_host), int(self.sip_port or 0))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def set(self, name: str, value: str) -> Any:
        """Set one setting from its text form (``api sim <name> <value>``); returns the new value."""
        name = name.replace("-", "_")
        fields = {f.name: f for f in dataclasses.fields(self)}
        if name not in fields:
            raise KeyError(name)
        cur = getattr(self, name)
        if isinstance(cur, bool):
            new: Any = value.lower() in ("1", "true", "yes", "on")
        elif isinstance(cur, int) and not isinstance(cur, bool) and name != "seed":
            new = int(value)
        elif isinstance(cur, float):
            new = float(value)
        elif isinstance(cur, dict):
            new = parse_mapping(value)
            if name == "reject_mix":
                new = {k: float(v) for k, v in new.items()}
        elif name in ("seed", "sip_port"):
            new = None if value in ("", "none", "None") else int(value)
        else:
            new = value
        setattr(self, name, new)
        return new


def parse_mapping(text: str) -> dict[str, Any]:
    """``'486=0.1,503=0.05'`` or a JSON object -> dict."""
    text = text.strip()
    if not text:
        return {}
    if text.startswith("{"):
        return dict(json.loads(text))
    out: dict[str, Any] = {}
    for part in text.split(","):
        k, _, v = part.partition("=")
        out[k.strip()] = v.strip()
    return out
