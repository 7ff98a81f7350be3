"""A tiny SIP stand-in between simulated servers (loopback TCP, one JSON array per line).

Each simulated server listens on its "SIP" address. An originate to
``sofia/<profile>/<user>@<host>:<port>`` sends ``INVITE`` to whatever simulator
listens on ``host:port``; when nothing does (connection refused), the call loops
back to the originating server itself, as the captures' SUT does. ``routes`` in
the config can alias an address to another one or mark it ``unreachable``
(the INVITE then fails at once with 503, ``NORMAL_TEMPORARY_FAILURE``).

Messages (direction ``B`` = towards the inbound leg, ``A`` = towards the caller):
``INVITE CANCEL BYE BERT`` (to B) and ``RING EARLY ANSWER REJECT BYE BERT`` (to A).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import orjson

from . import logs
from .channel import Leg, bert_peer, dialplan, dp_match

if TYPE_CHECKING:
    from .core import Core
    from .originate import Dial


class LocalChannel:
    """Both legs in this process.

    An INVITE is handled at once (the B-leg exists before the next command is read,
    as with FreeSWITCH's loop-back through its own SIP stack, which matters for the
    session limits); every other message on the next loop iteration.
    """

    def __init__(self, link: SipLink) -> None:
        self.link = link

    def send(self, direction: str, msg: tuple[Any, ...]) -> None:
        if msg[0] == "INVITE":
            self.link.dispatch(direction, msg, self)
        else:
            self.link.core.loop.call_soon(self.link.dispatch, direction, msg, self)


class SipConnection(asyncio.Protocol):
    """One TCP connection to or from another simulator."""

    def __init__(self, link: SipLink, addr: str | None = None) -> None:
        self.link = link
        self.addr = addr
        self.transport: asyncio.Transport | None = None
        self.buf = b""
        self.pending: list[bytes] = []
        self.failed = False
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        if self.pending:
            self.transport.writelines(self.pending)  # type: ignore[union-attr]
            self.pending = []

    def data_received(self, data: bytes) -> None:
        self.buf += data
        *lines, self.buf = self.buf.split(b"\n")
        for line in lines:
            if line:
                direction, *msg = orjson.loads(line)
                self.link.dispatch(direction, tuple(msg), self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.link.connection_lost(self)

    def send(self, direction: str, msg: tuple[Any, ...]) -> None:
        if self.failed:
            self.link.local.send(direction, msg)
            return
        data = orjson.dumps([direction, *msg]) + b"\n"
        if self.transport is None:
            self.pending.append(data)
        elif not self.closed:
            self.transport.write(data)


def _far_cause(msg: tuple[Any, ...]) -> str:
    """The cause the far end's BYE/CANCEL carried (its Reason header), NORMAL_CLEARING
    when it named none."""
    return str(msg[2]) if len(msg) > 2 and msg[2] else "NORMAL_CLEARING"


class SipLink:
    """The SIP side of one simulated server: its listener, peers and dialogs."""

    def __init__(self, core: Core) -> None:
        self.core = core
        core.sip = self
        self.local = LocalChannel(self)
        self.own = "{}:{}".format(*core.cfg.sip_address)
        self.peers: dict[str, SipConnection] = {}
        self.not_sim: set[str] = set()
        self.a_dialogs: dict[str, Leg] = {}
        self.b_dialogs: dict[str, Leg] = {}
        self.server: asyncio.base_events.Server | None = None
        self.calls = 0

    async def start(self) -> None:
        host, port = self.core.cfg.sip_address
        self.server = await self.core.loop.create_server(
            lambda: SipConnection(self), host, port, reuse_address=True
        )

    def close(self) -> None:
        if self.server is not None:
            self.server.close()
        for c in self.peers.values():
            if c.transport is not None:
                c.transport.close()

    # -- routing -------------------------------------------------------------------------
    def channel_for(self, hostport: str) -> LocalChannel | SipConnection | None:
        routes = self.core.cfg.routes
        target = routes.get(hostport, hostport)
        if target in ("unreachable", "refuse", "503"):
            return None
        if target == self.own or target in self.not_sim:
            return self.local
        conn = self.peers.get(target)
        if conn is None or conn.closed:
            conn = SipConnection(self, target)
            self.peers[target] = conn
            self.core.loop.create_task(self._connect(conn, target))
        return conn

    async def _connect(self, conn: SipConnection, target: str) -> None:
        host, _, port = target.rpartition(":")
        try:
            await self.core.loop.create_connection(lambda: conn, host, int(port))
        except (OSError, ValueError):
            # nothing simulated there: the call loops back to this server
            self.not_sim.add(target)
            conn.failed = True
            self.peers.pop(target, None)
            pending, conn.pending = conn.pending, []
            for data in pending:
                direction, *msg = orjson.loads(data)
                self.local.send(direction, tuple(msg))
            for leg in list(self.a_dialogs.values()):
                if leg.peer is conn:
                    leg.peer = self.local

    def connection_lost(self, conn: SipConnection) -> None:
        if conn.addr and self.peers.get(conn.addr) is conn:
            del self.peers[conn.addr]

    def unreachable(self, d: Dial) -> bool:
        """True when the dial string's next hop is routed to ``unreachable``."""
        bad = ("unreachable", "refuse", "503")
        routes = self.core.cfg.routes
        return routes.get(d.hostport) in bad or (
            bool(d.fs_path) and routes.get(d.fs_path.removeprefix("sip:")) in bad
        )

    def is_local(self, hostport: str) -> bool:
        """True when calls to ``hostport`` loop back into this server."""
        target = self.core.cfg.routes.get(hostport, hostport)
        return target == self.own or target in self.not_sim

    def invite(self, leg: Leg, d: Dial, session_taken: bool = False) -> None:
        """Send the A-leg's INVITE towards the destination in its dial string
        (``session_taken``: the inbound leg's session was already accounted)."""
        chan = self.channel_for(d.hostport)
        if chan is None:
            leg.hangup("NORMAL_TEMPORARY_FAILURE", "recv_refuse", term_status="503")
            return
        self.calls += 1
        cid = leg.core.new_uuid()
        leg.call_id = cid
        leg.enc.set_plain("call_id", cid)
        leg.peer = chan
        self.a_dialogs[cid] = leg
        xh = [(k, v) for k, v in leg.block if k.startswith("sip_h_X-")]
        cid_num = leg.getvar("origination_caller_id_number") or "0000000000"
        chan.send("B", ("INVITE", cid, d.user, xh, cid_num, d.profile, self.own, session_taken))

    def forget(self, leg: Leg) -> None:
        if leg.call_id:
            if leg.role == "A":
                self.a_dialogs.pop(leg.call_id, None)
            else:
                self.b_dialogs.pop(leg.call_id, None)

    # -- dispatch ------------------------------------------------------------------------
    def dispatch(self, direction: str, msg: tuple[Any, ...], chan: Any) -> None:
        kind, cid = msg[0], msg[1]
        if direction == "B":
            if kind == "INVITE":
                self._invite(cid, msg, chan)
                return
            leg = self.b_dialogs.get(cid)
            if leg is None:
                return
            # FreeSWITCH's BYE/CANCEL carry "Reason: Q.850;cause=<the caller's cause>"
            far = _far_cause(msg)
            if kind == "CANCEL":
                leg.hangup(
                    "ORIGINATOR_CANCEL",
                    "recv_cancel",
                    term_status="487",
                    notify=False,
                    reason=True,
                    far_cause=far,
                )
            elif kind == "BYE":
                leg.hangup("NORMAL_CLEARING", "recv_bye", notify=False, reason=True, far_cause=far)
            elif kind == "BERT":
                bert_peer(leg, float(msg[2]) if len(msg) > 2 else 0.0)
            return
        leg = self.a_dialogs.get(cid)
        if leg is None:
            return
        if "n" not in leg.history and kind != "BERT":
            leg.history += "n"  # a response from the far end (sip_reply_host etc.)
        if kind == "RING":
            leg.on_ring()
        elif kind == "EARLY":
            leg.on_early()
        elif kind == "ANSWER":
            leg.on_answer()
        elif kind == "REJECT":
            reason = bool(msg[4]) if len(msg) > 4 else False
            leg.hangup(msg[3], "recv_refuse", term_status=str(msg[2]), notify=False, reason=reason)
        elif kind == "BYE":
            leg.hangup(
                "NORMAL_CLEARING", "recv_bye", notify=False, reason=True, far_cause=_far_cause(msg)
            )
        elif kind == "BERT":
            bert_peer(leg, float(msg[2]) if len(msg) > 2 else 0.0)

    def _invite(self, cid: str, msg: tuple[Any, ...], chan: Any) -> None:
        _, _, dest, xh, cid_num, profile, from_addr, taken = msg
        core = self.core
        if not taken and not core.take_session():
            chan.send("A", ("REJECT", cid, 503, "NORMAL_TEMPORARY_FAILURE"))
            return
        from_host = str(from_addr).rpartition(":")[0]
        leg = Leg(
            core,
            core.new_uuid(),
            "B",
            dest,
            f"sofia/{profile}/{cid_num}@{from_host}",
            f"{dest}@{self.own}",
            [tuple(p) for p in xh],  # type: ignore[misc]
            "public",
        )
        leg.peer = chan
        leg.call_id = cid
        leg.enc.set_plain("call_id", cid)
        match = dp_match(dest, core)
        if match:
            leg.enc.set("dp_match", match)
        self.b_dialogs[cid] = leg
        if core.loggers:
            logs.inbound_invite(leg, str(from_addr), str(cid_num))
        leg.set_state("CS_NEW")
        leg.set_state("CS_INIT")
        leg.fire("CHANNEL_CREATE")
        leg.set_state("CS_ROUTING", fire=False)
        leg.set_callstate("RINGING")
        leg.fire("CHANNEL_STATE")
        leg.set_state("CS_EXECUTE")
        leg.run_steps(dialplan(dest, core))
