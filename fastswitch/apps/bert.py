"""Bert: a two-sided mod_bert audio check on every call (the recommended stress app).

Flow (capture n_ctl_bert_two_sided): the inbound B-leg parks unanswered ->
``uuid_setvar B absolute_codec_string PCMU`` and ``uuid_answer B``; once answered the
B-leg runs ``bert_test`` (sendmsg execute); the A-leg answers and parks (``&park()``) ->
``bert_test`` on the A-leg. Each leg's mod_bert then reports CUSTOM ``mod_bert::in_sync``
(about 1 s later), or ``mod_bert::lost_sync`` / ``mod_bert::timeout`` when the audio
path is broken: the call is then hung up (cause MEDIA_TIMEOUT, as mod_bert's own
``bert_hangup_on_error`` does) and recorded as failed
(``call.vars['app_verdict'] = 'bert lost_sync'`` / ``'bert timeout'``, which the CDR app
turns into ``failed``). Starting the B-leg's test on its own answer keeps the flow
working when the SUT routes the call to another slave (the B-leg's worker drives it).

The hold time and the final hangup are the Originator's (``duration`` after answer).

Settings (``ppkwargs`` of ``load_app``, as switchio's Bert takes them): ``codec``
(``absolute_codec_string``, PCMU), ``ring_response`` (``'ring_ready'`` or
``'pre_answer'``: the callee rings first), ``pdd`` (seconds before that ring), ``prd``
(seconds of ringing before the answer), and mod_bert's channel variables as further
keywords, switchio's defaults being ``bert_timer_name=soft``, ``bert_max_err=30``,
``bert_timeout_ms=3000``, ``jitterbuffer_msec=100:200:40``. They are set on each leg in
one ``uuid_setvar_multi`` before its ``bert_test``. Unlike switchio, the default is
``bert_hangup_on_error=no``: the app hangs the *caller* up itself on a lost sync or
timeout, so the call's cause is MEDIA_TIMEOUT whichever leg detected it (with ``yes``,
mod_bert hangs up the leg that detected it and the caller may end NORMAL_CLEARING).
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastswitch.apps import event_callback, register

__all__ = ["Bert"]


@register(name="bert")
@register
class Bert:
    """Run ``bert_test`` on both legs; fail and hang up calls that lose sync or time out.

    ``lost_sync`` / ``timed_out`` count the failed calls, ``in_sync`` the legs that
    synchronised (this worker's view).
    """

    #: mod_bert's channel variables as switchio's Bert sets them
    BERT_DEFAULTS = {
        "bert_timer_name": "soft",
        "bert_max_err": "30",
        "bert_timeout_ms": "3000",
        "bert_hangup_on_error": "no",
        "jitterbuffer_msec": "100:200:40",
    }

    def __init__(self, codec: str = "PCMU") -> None:
        self.codec = codec
        self.ring_response: str | None = None
        self.pdd = 0.0
        self.prd = 0.0
        self.opts = dict(self.BERT_DEFAULTS)
        self.in_sync = 0
        self.lost_sync = 0
        self.timed_out = 0

    def prepost(
        self,
        client: Any,
        listener: Any = None,
        codec: str | None = None,
        ring_response: str | None = None,
        pdd: float | None = None,
        prd: float | None = None,
        **opts: Any,
    ) -> None:
        if codec:
            self.codec = codec
        if ring_response is not None:
            if ring_response not in ("ring_ready", "pre_answer"):
                raise ValueError(
                    f"ring_response must be 'ring_ready' or 'pre_answer', got {ring_response!r}"
                )
            self.ring_response = ring_response
        if pdd is not None:
            self.pdd = float(pdd)
        if prd is not None:
            self.prd = float(prd)
        for name, value in opts.items():
            if any(c in str(value) for c in ";= \n") or any(c in name for c in ";= \n"):
                raise ValueError(f"invalid mod_bert setting {name}={value!r}")
            self.opts[name] = str(value)

    def _vars(self, sess: Any, codec: bool) -> None:
        variables = {"absolute_codec_string": self.codec} if codec else {}
        variables.update(self.opts)
        if variables:
            sess.setvars(variables)

    @event_callback("CHANNEL_PARK")
    def on_park(self, sess: Any) -> None:
        if sess.direction == "inbound":
            if not sess.answered:
                self._vars(sess, codec=True)
                if self.ring_response is None and not self.pdd and not self.prd:
                    sess.answer()
                else:
                    loop = asyncio.get_running_loop()
                    loop.call_later(self.pdd, self._ring, sess)
        elif sess.direction == "outbound" and not sess.call.vars.get("bert_a"):
            sess.call.vars["bert_a"] = True
            self._vars(sess, codec=False)
            sess.execute("bert_test")

    def _ring(self, sess: Any) -> None:
        if sess.hungup:
            return
        if self.ring_response is not None:
            sess.execute(self.ring_response)
        asyncio.get_running_loop().call_later(self.prd, self._answer, sess)

    @staticmethod
    def _answer(sess: Any) -> None:
        if not sess.hungup and not sess.answered:
            sess.answer()

    @event_callback("CHANNEL_ANSWER")
    def on_answer(self, sess: Any) -> None:
        if sess.direction == "inbound":
            sess.execute("bert_test")

    @event_callback("mod_bert::in_sync")
    def on_in_sync(self, sess: Any) -> None:
        self.in_sync += 1
        sess.call.vars["bert_in_sync"] = sess.call.vars.get("bert_in_sync", 0) + 1

    @event_callback("mod_bert::lost_sync")
    def on_lost_sync(self, sess: Any) -> None:
        self.lost_sync += 1
        self._fail(sess, "bert lost_sync")

    @event_callback("mod_bert::timeout")
    def on_timeout(self, sess: Any) -> None:
        self.timed_out += 1
        self._fail(sess, "bert timeout")

    @staticmethod
    def _fail(sess: Any, verdict: str) -> None:
        call = sess.call
        if call.vars.get("app_verdict"):
            return
        call.vars["app_verdict"] = verdict
        # hang up the caller when this worker has it (the call's cause is the caller's),
        # else this leg; MEDIA_TIMEOUT is the cause mod_bert's bert_hangup_on_error uses
        leg = call.caller or sess
        if not leg.hungup:
            leg.hangup("MEDIA_TIMEOUT")
