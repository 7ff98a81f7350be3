"""The shared-memory control block between the Originator (parent) and its workers.

One :class:`multiprocessing.shared_memory.SharedMemory` block holds every value that
changes often, so that no message per call crosses a process boundary. The block is an
array of float64 slots (``memoryview.cast('d')``): integers are exact up to 2**53, ``inf``
is representable, and each aligned 8-byte store is atomic on the platforms we run on.
Each slot has exactly one writer.

Layout (slot indexes)::

    header (HEADER_SLOTS = 16), written by the parent
      0 MAGIC         0x66737763 ('fswc')
      1 VERSION       layout version (1)
      2 NWORKERS      number of worker slots
      3 STATE         0 INITIAL, 1 ORIGINATING, 2 STOPPED
      4 GENERATION    incremented on every start() (workers re-anchor their rate clock)
      5 DURATION      hold time in seconds (<= 0 or inf: no automatic hangup)
      6 RATE          cluster rate (informational; workers use their share)
      7 LIMIT         cluster limit (informational)
      8 MAX_SESSIONS  cluster max_sessions (informational)
      9 OWNER_PID     pid of the process that created the block
    worker i, at HEADER_SLOTS + i * WORKER_SLOTS (WORKER_SLOTS = 32 + len(CAUSES)):
      parent-written:
      0 W_RATE        calls/s this worker offers
      1 W_LIMIT       max concurrent calls (pending + active) of this worker
      2 W_MAX         cap on this incarnation's W_ORIGINATED (inf: no cap)
      3 W_ENABLED     1 when the worker holds a share
      worker-written:
      4 W_PID         worker pid
      5 W_HEARTBEAT   time.monotonic() of the worker's last tick (CLOCK_MONOTONIC is
                      system wide on Linux)
      6 W_CONNECTED   1 while the ESL connection is up
      7 W_ACTIVE      calls originated by this worker and not yet complete (incl. pending)
      8 W_SESSIONS    sessions (legs) tracked by this worker's client
      9 W_ORIGINATED  originates sent by this incarnation
     10 W_ANSWERED    calls whose A-leg answered
     11 W_FAILED      calls that failed (originate -ERR, or hung up before answer)
     12 W_PENDING     originates whose job has not completed yet
     13 W_COMPLETED   calls complete (all legs destroyed / job failed)
     14 W_HAS_CMD     1 once an originate command is set
     15 W_BACKLOG     calls due by rate but held back by the limit (capacity signal)
     16 W_REMOTE      active calls whose A-leg another worker originated
     17 W_STATE       the run state the worker last acted on
     18 W_SHED        1 while the worker sheds load (its event stream lags or stalled:
                      it offers no new calls so FreeSWITCH's event queue cannot overflow)
     19 W_LOST        calls this incarnation completed as lost (connection gone)
     20 W_DISCONNECTS ESL connections to the slave this incarnation lost
     21 W_KILLED      of those, how many FreeSWITCH ended with "killed listener because
                      of lost events" (a slow consumer)
     22 W_SHEDS       times the worker started shedding
     23 W_BADCMD      1 when FreeSWITCH rejects the originate command itself (every call
                      fails with CHAN_NOT_IMPLEMENTED, -USAGE ...): the worker stops offering
     32.. per hangup-cause failure counters, index CAUSES.index(cause) (OTHER last)

The parent creates and unlinks the block; workers attach by name. ``close()`` releases the
views before closing so that no ``BufferError`` is raised.
"""

from __future__ import annotations

import os
from multiprocessing import shared_memory
from typing import Any

__all__ = [
    "ControlBlock",
    "CAUSES",
    "cause_index",
    "INITIAL",
    "ORIGINATING",
    "STOPPED",
    "STATE_NAMES",
]

MAGIC = 0x66737763
VERSION = 1

INITIAL, ORIGINATING, STOPPED = 0, 1, 2
STATE_NAMES = ("INITIAL", "ORIGINATING", "STOPPED")

#: FreeSWITCH hangup causes (switch_types.h), plus OTHER for anything unknown.
CAUSES: tuple[str, ...] = (
    "NONE",
    "UNALLOCATED_NUMBER",
    "NO_ROUTE_TRANSIT_NET",
    "NO_ROUTE_DESTINATION",
    "CHANNEL_UNACCEPTABLE",
    "CALL_AWARDED_DELIVERED",
    "NORMAL_CLEARING",
    "USER_BUSY",
    "NO_USER_RESPONSE",
    "NO_ANSWER",
    "SUBSCRIBER_ABSENT",
    "CALL_REJECTED",
    "NUMBER_CHANGED",
    "REDIRECTION_TO_NEW_DESTINATION",
    "EXCHANGE_ROUTING_ERROR",
    "DESTINATION_OUT_OF_ORDER",
    "INVALID_NUMBER_FORMAT",
    "FACILITY_REJECTED",
    "RESPONSE_TO_STATUS_ENQUIRY",
    "NORMAL_UNSPECIFIED",
    "NORMAL_CIRCUIT_CONGESTION",
    "NETWORK_OUT_OF_ORDER",
    "NORMAL_TEMPORARY_FAILURE",
    "SWITCH_CONGESTION",
    "ACCESS_INFO_DISCARDED",
    "REQUESTED_CHAN_UNAVAIL",
    "PRE_EMPTED",
    "FACILITY_NOT_SUBSCRIBED",
    "OUTGOING_CALL_BARRED",
    "INCOMING_CALL_BARRED",
    "BEARERCAPABILITY_NOTAUTH",
    "BEARERCAPABILITY_NOTAVAIL",
    "SERVICE_UNAVAILABLE",
    "BEARERCAPABILITY_NOTIMPL",
    "CHAN_NOT_IMPLEMENTED",
    "FACILITY_NOT_IMPLEMENTED",
    "SERVICE_NOT_IMPLEMENTED",
    "INVALID_CALL_REFERENCE",
    "INCOMPATIBLE_DESTINATION",
    "INVALID_MSG_UNSPECIFIED",
    "MANDATORY_IE_MISSING",
    "MESSAGE_TYPE_NONEXIST",
    "WRONG_MESSAGE",
    "IE_NONEXIST",
    "INVALID_IE_CONTENTS",
    "WRONG_CALL_STATE",
    "RECOVERY_ON_TIMER_EXPIRE",
    "MANDATORY_IE_LENGTH_ERROR",
    "PROTOCOL_ERROR",
    "INTERWORKING",
    "SUCCESS",
    "ORIGINATOR_CANCEL",
    "CRASH",
    "SYSTEM_SHUTDOWN",
    "LOSE_RACE",
    "MANAGER_REQUEST",
    "BLIND_TRANSFER",
    "ATTENDED_TRANSFER",
    "ALLOTTED_TIMEOUT",
    "USER_CHALLENGE",
    "MEDIA_TIMEOUT",
    "PICKED_OFF",
    "USER_NOT_REGISTERED",
    "PROGRESS_TIMEOUT",
    "INVALID_GATEWAY",
    "GATEWAY_DOWN",
    "INVALID_URL",
    "INVALID_PROFILE",
    "NO_PICKUP",
    "SRTP_READ_ERROR",
    "BOWOUT",
    "BUSY_EVERYWHERE",
    "DECLINE",
    "DOES_NOT_EXIST_ANYWHERE",
    "NOT_ACCEPTABLE",
    "UNWANTED",
    "NO_IDENTITY",
    "BAD_IDENTITY_INFO",
    "UNSUPPORTED_CERTIFICATE",
    "INVALID_IDENTITY",
    "STALE_DATE",
    "REJECT_ALL",
    "OTHER",
)
_CAUSE_INDEX = {c: i for i, c in enumerate(CAUSES)}
_OTHER = len(CAUSES) - 1


def cause_index(cause: str | None) -> int:
    """The counter index of ``cause`` (``OTHER`` for unknown names)."""
    return _CAUSE_INDEX.get(cause or "NONE", _OTHER)


# header
H_MAGIC, H_VERSION, H_NWORKERS, H_STATE, H_GENERATION, H_DURATION = 0, 1, 2, 3, 4, 5
H_RATE, H_LIMIT, H_MAX_SESSIONS, H_OWNER_PID = 6, 7, 8, 9
HEADER_SLOTS = 16
# worker slot fields
W_RATE, W_LIMIT, W_MAX, W_ENABLED = 0, 1, 2, 3
W_PID, W_HEARTBEAT, W_CONNECTED, W_ACTIVE, W_SESSIONS = 4, 5, 6, 7, 8
W_ORIGINATED, W_ANSWERED, W_FAILED, W_PENDING, W_COMPLETED = 9, 10, 11, 12, 13
W_HAS_CMD, W_BACKLOG, W_REMOTE, W_STATE = 14, 15, 16, 17
W_SHED, W_LOST, W_DISCONNECTS, W_KILLED, W_SHEDS, W_BADCMD = 18, 19, 20, 21, 22, 23
W_CAUSES = 32
WORKER_SLOTS = W_CAUSES + len(CAUSES)

#: The worker-written counters (reset when a worker slot is re-used by a restart).
COUNTER_FIELDS = {
    "active": W_ACTIVE,
    "sessions": W_SESSIONS,
    "originated": W_ORIGINATED,
    "answered": W_ANSWERED,
    "failed": W_FAILED,
    "pending": W_PENDING,
    "completed": W_COMPLETED,
    "backlog": W_BACKLOG,
    "remote": W_REMOTE,
    "lost": W_LOST,
    "disconnects": W_DISCONNECTS,
    "killed": W_KILLED,
    "sheds": W_SHEDS,
}


class ControlBlock:
    """The shared control block (see the module docstring for the layout).

    ``ControlBlock.create(nworkers)`` in the parent, ``ControlBlock.attach(name)`` in a
    worker. ``d`` is the float64 view; ``base(i)`` the first slot of worker ``i``.
    """

    def __init__(self, shm: shared_memory.SharedMemory, owner: bool) -> None:
        self.shm = shm
        self.owner = owner
        self.name = shm.name
        self.d: Any = shm.buf.cast("d")
        if owner:
            return
        if int(self.d[H_MAGIC]) != MAGIC or int(self.d[H_VERSION]) != VERSION:
            self.close()
            raise RuntimeError(f"shared memory {shm.name!r} is not a fastswitch control block")

    @staticmethod
    def size(nworkers: int) -> int:
        """Bytes needed for ``nworkers`` worker slots."""
        return 8 * (HEADER_SLOTS + nworkers * WORKER_SLOTS)

    @classmethod
    def create(cls, nworkers: int) -> ControlBlock:
        """Create (and zero) a block for ``nworkers`` workers; the caller must ``unlink()``."""
        shm = shared_memory.SharedMemory(create=True, size=cls.size(nworkers))
        cb = cls(shm, owner=True)
        d = cb.d
        for i in range(len(d)):
            d[i] = 0.0
        d[H_MAGIC] = MAGIC
        d[H_VERSION] = VERSION
        d[H_NWORKERS] = nworkers
        d[H_STATE] = INITIAL
        d[H_OWNER_PID] = os.getpid()
        for i in range(nworkers):
            d[cb.base(i) + W_MAX] = float("inf")
        return cb

    @classmethod
    def attach(cls, name: str) -> ControlBlock:
        """Attach to an existing block by name (worker side)."""
        return cls(shared_memory.SharedMemory(name=name), owner=False)

    @property
    def nworkers(self) -> int:
        return int(self.d[H_NWORKERS])

    @staticmethod
    def base(i: int) -> int:
        """First slot of worker ``i``."""
        return HEADER_SLOTS + i * WORKER_SLOTS

    # header accessors
    @property
    def state(self) -> int:
        return int(self.d[H_STATE])

    @state.setter
    def state(self, value: int) -> None:
        self.d[H_STATE] = value

    @property
    def generation(self) -> int:
        return int(self.d[H_GENERATION])

    def bump_generation(self) -> None:
        self.d[H_GENERATION] = self.d[H_GENERATION] + 1

    @property
    def duration(self) -> float:
        return self.d[H_DURATION]

    @duration.setter
    def duration(self, value: float) -> None:
        self.d[H_DURATION] = float(value)

    def set_settings(self, rate: float, limit: float, max_sessions: float, duration: float) -> None:
        d = self.d
        d[H_RATE] = float(rate)
        d[H_LIMIT] = float(limit)
        d[H_MAX_SESSIONS] = float(max_sessions)
        d[H_DURATION] = float(duration)

    # worker slot accessors
    def get(self, i: int, field: int) -> float:
        return self.d[self.base(i) + field]

    def put(self, i: int, field: int, value: float) -> None:
        self.d[self.base(i) + field] = float(value)

    def counters(self, i: int) -> dict[str, float]:
        """Snapshot of worker ``i``'s counters (see ``COUNTER_FIELDS``)."""
        b = self.base(i)
        d = self.d
        return {k: d[b + f] for k, f in COUNTER_FIELDS.items()}

    def causes(self, i: int) -> dict[str, int]:
        """Worker ``i``'s failure counts by hangup cause (non-zero only)."""
        b = self.base(i) + W_CAUSES
        d = self.d
        return {c: int(d[b + k]) for k, c in enumerate(CAUSES) if d[b + k]}

    def reset_worker(self, i: int) -> None:
        """Zero worker ``i``'s worker-written slots (before a restart re-uses the slot)."""
        b = self.base(i)
        for f in range(W_PID, WORKER_SLOTS):
            self.d[b + f] = 0.0

    def close(self) -> None:
        """Release the view and close this process's mapping."""
        if self.d is not None:
            self.d.release()
            self.d = None
        try:
            self.shm.close()
        except Exception:
            pass

    def unlink(self) -> None:
        """Close and remove the block from the system (parent only)."""
        self.close()
        if self.owner:
            try:
                self.shm.unlink()
            except FileNotFoundError:
                pass
