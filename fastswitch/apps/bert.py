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
"""

from __future__ import annotations

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

    def __init__(self, codec: str = "PCMU") -> None:
        self.codec = codec
        self.in_sync = 0
        self.lost_sync = 0
        self.timed_out = 0

    def prepost(self, client: Any, listener: Any = None, codec: str | None = None) -> None:
        if codec:
            self.codec = codec

    @event_callback("CHANNEL_PARK")
    def on_park(self, sess: Any) -> None:
        if sess.direction == "inbound":
            if not sess.answered:
                sess.setvar("absolute_codec_string", self.codec)
                sess.answer()
        elif sess.direction == "outbound" and not sess.call.vars.get("bert_a"):
            sess.call.vars["bert_a"] = True
            sess.execute("bert_test")

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
