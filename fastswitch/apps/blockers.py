"""Call flows where the callee never answers (auto-dialer traffic).

- :class:`CalleeRingback`: the callee only rings (``ring_ready``: SIP 180, or
  ``pre_answer``: 183 with early media) and the caller hangs up after
  ``caller_hup_after`` seconds (flow of capture m). The originate job then fails with
  ``-ERR NORMAL_CLEARING`` (ring_ready) or succeeds on early media (pre_answer), and the
  call is recorded as not answered.
- :class:`CalleeBlockOnInvite`: the callee rejects the INVITE with ``respond <code>``
  (flow of capture l: ``respond 404`` -> ``-ERR UNALLOCATED_NUMBER``); a cause name
  instead of a code hangs the callee up with that cause. ``CalleeBlockonInvite`` is the
  seed's spelling of the same class.

Settings are accepted by the constructor and by ``prepost`` (``ppkwargs`` of
``load_app``), the latter winning.
"""

from __future__ import annotations

import asyncio
import math
from typing import Any

from fastswitch.apps import event_callback, register

__all__ = ["CalleeRingback", "CalleeBlockOnInvite", "CalleeBlockonInvite"]

_RING_RESPONSES = ("ring_ready", "pre_answer")


def _kill(sess: Any, cause: str) -> None:
    if not sess.hungup:
        try:
            sess.hangup(cause)
        except Exception:
            pass  # connection gone: the call is lost anyway


@register(name="ringback")
@register
class CalleeRingback:
    """The callee rings (``ring_response``) and never answers; the caller hangs up after
    ``caller_hup_after`` seconds (from its CHANNEL_CREATE), the callee after
    ``callee_hup_after`` seconds from its CHANNEL_PARK. Unless ``callee_hup_after`` is
    given, it follows the Originator's ``duration`` (switchio's ``__setduration__``), so a
    ringing call ends after the hold time an answered one would have."""

    def __init__(
        self,
        caller_hup_after: float = math.inf,
        ring_response: str = "pre_answer",
        callee_hup_after: float | None = None,
    ) -> None:
        self.duration = math.inf
        self.configure(caller_hup_after, ring_response, callee_hup_after)

    def configure(
        self, caller_hup_after: float, ring_response: str, callee_hup_after: float | None
    ) -> None:
        if ring_response not in _RING_RESPONSES:
            raise ValueError(
                f"ring_response must be one of {_RING_RESPONSES}, got {ring_response!r}"
            )
        self.caller_hup_after = float(caller_hup_after)
        self._callee_hup_given = callee_hup_after is not None
        self.callee_hup_after = (
            float(callee_hup_after) if callee_hup_after is not None else self.duration
        )
        self.ring_response = ring_response

    def prepost(self, client: Any, listener: Any = None, **kwargs: Any) -> None:
        self.configure(
            kwargs.pop("caller_hup_after", self.caller_hup_after),
            kwargs.pop("ring_response", self.ring_response),
            kwargs.pop(
                "callee_hup_after", self.callee_hup_after if self._callee_hup_given else None
            ),
        )
        if kwargs:
            raise TypeError(f"CalleeRingback got unexpected settings {sorted(kwargs)}")

    def __setduration__(self, value: float) -> None:
        self.duration = value if 0 < value < math.inf else math.inf
        if not self._callee_hup_given:
            self.callee_hup_after = self.duration

    @event_callback("CHANNEL_CREATE")
    def on_create(self, sess: Any) -> None:
        if sess.direction == "outbound" and self.caller_hup_after < math.inf:
            asyncio.get_running_loop().call_later(
                self.caller_hup_after, _kill, sess, "NORMAL_CLEARING"
            )

    @event_callback("CHANNEL_PARK")
    def on_park(self, sess: Any) -> None:
        if sess.direction != "inbound" or sess.answered:
            return
        sess.execute(self.ring_response)
        if self.callee_hup_after < math.inf:
            asyncio.get_running_loop().call_later(
                self.callee_hup_after, _kill, sess, "NORMAL_CLEARING"
            )


@register(name="block404")
@register
class CalleeBlockOnInvite:
    """The callee rejects the call: ``respond <response>`` for a SIP code (default 404),
    or a hangup with ``response`` as the cause when it is a cause name."""

    def __init__(self, response: int | str = 404) -> None:
        self.response = response

    def prepost(self, client: Any, listener: Any = None, response: int | str | None = None) -> None:
        if response is not None:
            self.response = response

    @event_callback("CHANNEL_PARK")
    def on_park(self, sess: Any) -> None:
        if sess.direction != "inbound" or sess.answered:
            return
        r = self.response
        if isinstance(r, int) or (isinstance(r, str) and r.isdigit()):
            sess.respond(int(r))
        else:
            sess.hangup(str(r))


#: The seed's spelling (``CalleeBlockonInvite``).
CalleeBlockonInvite = CalleeBlockOnInvite
