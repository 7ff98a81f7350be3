"""Park: the plain load app. The callee answers at once; the call is held for the
Originator's ``duration`` (the worker's hold timer hangs the A-leg up), nothing else.

Flow (capture k): the inbound B-leg parks unanswered -> ``uuid_answer B``; the A-leg
answers, parks (``&park()``) and is held.
"""

from __future__ import annotations

from typing import Any

from fastswitch.apps import event_callback, register

__all__ = ["Park"]


@register(name="park")
@register
class Park:
    """Answer the callee and hold the call (the worker hangs it up after ``duration``)."""

    @event_callback("CHANNEL_PARK")
    def on_park(self, sess: Any) -> None:
        if sess.direction == "inbound" and not sess.answered:
            sess.answer()
