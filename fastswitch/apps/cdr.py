"""The CDR app: one call detail record per call, written by every worker.

Each worker loads it on its client's call tracker: ``CDR(writer, slave, worker).attach(
client.listener)`` (or through the app runtime, whose ``prepost`` does the same). When the
tracker completes a call (all its legs destroyed, or its originate failed with no leg) the
app builds one row from the Call, its Sessions and its Job and appends it to the worker's
:class:`~fastswitch.measure.CDRWriter`. Row layout: :data:`fastswitch.measure.CDR_SCHEMA`.

What the app relies on (docs/ARCHITECTURE.md, models.py):

- Call: ``uuid`` (the A-leg / origination uuid), ``caller``, ``callee``, ``job``,
  ``app_id``, ``remote``, ``failed`` (the originate failed), ``answered``, ``vars``,
  and ``lost`` (a reason the tracker stopped following it, or None).
- Session: ``uuid``, ``direction``, ``hangup_cause``, ``create_time``, ``originate_time``,
  ``answer_time``, ``hangup_time``, ``destroy_time`` and their ``*_fs_time`` stamps;
  ``sip_term_status`` / ``sip_invite_failure_status`` (extracted by the tracker from the
  leg's hangup events; recorded for failed calls only: the ``*_sip_status`` columns are
  null on calls that went well).
- Job: ``uuid``, ``launch_time``, ``result``, ``failed`` and ``done_time`` (when the
  BACKGROUND_JOB arrived).
- Tracker counters sampled at row time: ``active_sessions`` and ``active_calls`` (the
  ``erlangs`` column). ``failed_calls`` is the app's own count of the failed calls it has
  recorded, this one included (the failure rule below, not the tracker's narrower count).

What apps may tell it, through ``call.vars``:

- ``call.vars["app_verdict"] = "bert lost_sync"``: the app's word on the call, recorded in
  ``app_verdict``; a non-empty verdict marks the call failed.
- ``call.vars["failed"] = True | False``: overrides the failure rule below.

A call is *failed* when its originate failed, its first leg was never answered, that leg's
hangup cause is not in :data:`fastswitch.measure.OK_CAUSES` (NORMAL_CLEARING,
ALLOTTED_TIMEOUT), or an app gave a verdict. A *lost* call (the tracker could not follow it
to the end, e.g. the connection dropped) is failed only if one of those was already seen
before it was lost (an unfinished call is not called unanswered); the summary counts lost
calls on their own.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from fastswitch.measure import OK_CAUSES
from fastswitch.models import error_cause

if TYPE_CHECKING:
    from fastswitch.measure import CDRWriter
    from fastswitch.models import Call, Job, Session

__all__ = ["CDR"]

log = logging.getLogger("fastswitch.apps.cdr")


def _sip_status(sess: Session) -> str | None:
    """The leg's final SIP status: ``sip_term_status``, else ``sip_invite_failure_status``
    (extracted from its hangup events; a kept event is read for a session built outside
    the tracker)."""
    st = sess.sip_term_status or sess.sip_invite_failure_status
    if st is None:
        ev = sess.var_event or sess.last_event
        if ev is not None:
            st = ev.get("variable_sip_term_status") or ev.get("variable_sip_invite_failure_status")
    return st


def _job_cause(job: Job) -> str | None:
    r = job.result
    if r and r.startswith("-"):
        return error_cause(r)
    return None


class _Missing:
    """Stands in for a leg or a job the call does not have: every attribute is None."""

    __slots__ = ()

    def __getattr__(self, name: str) -> None:
        return None

    def __bool__(self) -> bool:
        return False


_NOLEG: Any = _Missing()
_NOJOB: Any = _Missing()


class CDR:
    """Record one :data:`~fastswitch.measure.CDR_SCHEMA` row per completed call.

    ``writer``: the worker's :class:`~fastswitch.measure.CDRWriter` (anything with
    ``append(tuple)``); ``slave``: ``host:port`` of the slave this worker drives;
    ``worker``: the worker's index. ``rows`` counts rows recorded through the hook,
    ``failed_calls`` the failed calls (caller rows) recorded so far. :meth:`row` may be
    called directly (the worker does) but exactly once per call: it counts failures.
    """

    def __init__(
        self,
        writer: CDRWriter | Any,
        slave: str = "",
        worker: int = 0,
        ok_causes: frozenset[str] = OK_CAUSES,
    ) -> None:
        self.writer = writer
        self.slave = slave
        self.worker = int(worker)
        self.ok_causes = ok_causes
        self.listener: Any = None
        self.rows = 0
        self.failed_calls = 0
        self._append: Callable[[tuple], None] = writer.append

    # -- wiring ------------------------------------------------------------------------------
    def attach(self, listener: Any) -> None:
        """Record the calls ``listener`` (a CallTracker) completes."""
        if self.listener is not None:
            self.detach()
        self.listener = listener
        listener.call_complete_hooks.append(self.on_call_complete)

    def detach(self) -> None:
        """Stop recording (the writer stays open: it is the worker's)."""
        listener, self.listener = self.listener, None
        if listener is not None:
            try:
                listener.call_complete_hooks.remove(self.on_call_complete)
            except ValueError:
                pass

    def prepost(self, client: Any, listener: Any = None) -> Iterator[None]:
        """App-runtime set-up/teardown: attach to the client's tracker, detach after."""
        self.attach(listener if listener is not None else client.listener)
        try:
            yield
        finally:
            self.detach()

    # -- recording -----------------------------------------------------------------------
    def on_call_complete(self, call: Call) -> None:
        """The ``call_complete_hooks`` entry: build and append the call's row."""
        self._append(self.row(call))
        self.rows += 1

    __call__ = on_call_complete

    def row(self, call: Call) -> tuple:
        """The CDR row of ``call``, a tuple in :data:`~fastswitch.measure.CDR_COLUMNS` order.

        Times that were never seen (or are 0: FreeSWITCH sent no stamp) are None.
        """
        # Hot path (one call per call): plain attribute reads into one flat tuple; a missing
        # leg or job reads as _NOLEG / _NOJOB, whose attributes are all None.
        remote = call.remote
        a = b = _NOLEG
        for s in call.sessions:  # one pass instead of call.caller + call.callee
            if s.direction == "outbound":
                if a is _NOLEG:
                    a = s
            elif b is _NOLEG:
                b = s
        if remote:
            if b is _NOLEG:
                b = a if a is not _NOLEG else (call.first or _NOLEG)
            a = _NOLEG
        job = call.job or _NOJOB
        lost = call.lost
        vars_ = call.vars
        if vars_:
            verdict = vars_.get("app_verdict") or None
            if verdict is not None:
                verdict = str(verdict)
            explicit = vars_.get("failed")
        else:
            verdict = explicit = None

        job_failed = job.failed
        result = job.result
        job_cause = _job_cause(job) if job_failed else None
        if call.failed and not lost:
            job_failed = True
        caller_cause = a.hangup_cause or job_cause
        b_cause = b.hangup_cause
        a_answer = a.answer_time
        b_answer = b.answer_time
        if remote:
            cause, answered = b_cause, b_answer is not None
        else:
            cause = caller_cause
            answered = a_answer is not None if a is not _NOLEG else bool(call.answered)

        ok = self.ok_causes
        if explicit is not None:
            failed = bool(explicit)
        elif lost:
            failed = job_failed or verdict is not None or (cause is not None and cause not in ok)
        else:
            failed = (
                job_failed
                or not answered
                or verdict is not None
                or cause is None
                or cause not in ok
            )
        # SIP statuses only for failed calls: an answered, normally cleared call has nothing
        # to say there.
        a_sip = b_sip = None
        if failed:
            if not remote:
                self.failed_calls += 1
            if a is not _NOLEG:
                a_sip = _sip_status(a)
            if b is not _NOLEG:
                b_sip = _sip_status(b)
        listener = self.listener
        if listener is not None:
            active_sessions = listener.active_sessions
            erlangs = listener.active_calls
        else:
            active_sessions = erlangs = 0

        # `x or None`: a time of 0 (never set / no stamp) is missing.
        return (
            call.app_id,
            cause,
            a.create_time or None,
            a_answer or None,
            a.originate_time or None,
            job.done_time or None,
            a.hangup_time or a.destroy_time or None,
            job.launch_time or None,
            b.create_time or None,
            b_answer or None,
            b.hangup_time or b.destroy_time or None,
            self.failed_calls,
            active_sessions,
            erlangs,
            call.uuid,
            b.uuid,
            self.slave,
            self.worker,
            job.uuid,
            result.strip() if result else None,
            caller_cause,
            b_cause,
            a_sip,
            b_sip,
            failed,
            verdict,
            lost or None,
            "callee" if remote else "call",
            a.create_fs_time or None,
            a.answer_fs_time or None,
            a.hangup_fs_time or a.destroy_fs_time or None,
            b.create_fs_time or None,
            b.answer_fs_time or None,
            b.hangup_fs_time or b.destroy_fs_time or None,
        )
