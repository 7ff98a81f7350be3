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
  ``var_event`` / ``last_event`` for ``sip_term_status`` / ``sip_invite_failure_status``
  (read for failed calls only: the ``*_sip_status`` columns are null on calls that went
  well, because reading a variable costs more than the rest of the row).
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

if TYPE_CHECKING:
    from fastswitch.measure import CDRWriter
    from fastswitch.models import Call, Job, Session

__all__ = ["CDR"]

log = logging.getLogger("fastswitch.apps.cdr")


def _sip_status(sess: Session) -> str | None:
    """The leg's final SIP status: ``sip_term_status``, else ``sip_invite_failure_status``,
    read from its latest event that carried variables."""
    ev = sess.var_event or sess.last_event
    if ev is None:
        return None
    return ev.get("variable_sip_term_status") or ev.get("variable_sip_invite_failure_status")


def _job_cause(job: Job) -> str | None:
    r = job.result
    if r and r.startswith("-ERR"):
        return r[4:].strip() or None
    return None


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
        remote = call.remote
        caller = callee = None
        for s in call.sessions:  # one pass instead of call.caller + call.callee
            if s.direction == "outbound":
                if caller is None:
                    caller = s
            elif callee is None:
                callee = s
        if remote:
            if callee is None:
                callee = caller or call.first
            caller = None
        job = call.job
        lost = call.lost
        vars_ = call.vars
        verdict = vars_.get("app_verdict") or None
        if verdict is not None:
            verdict = str(verdict)

        if job is not None:
            job_failed = job.failed
            result = job.result
            job_cause = _job_cause(job) if job_failed else None
        else:
            job_failed, result, job_cause = False, None, None
        if call.failed and not lost:
            job_failed = True
        if caller is not None:
            caller_cause = caller.hangup_cause or job_cause
            c_answer = caller.answer_time
        else:
            caller_cause, c_answer = job_cause, None
        if callee is not None:
            b_cause = callee.hangup_cause
            b_answer = callee.answer_time
        else:
            b_cause = b_answer = None

        if remote:
            cause, answered = b_cause, b_answer is not None
        else:
            cause = caller_cause
            answered = c_answer is not None if caller is not None else bool(call.answered)

        explicit = vars_.get("failed")
        if explicit is not None:
            failed = bool(explicit)
        elif lost:
            failed = (
                job_failed
                or verdict is not None
                or (cause is not None and cause not in self.ok_causes)
            )
        else:
            failed = (
                job_failed
                or not answered
                or verdict is not None
                or cause is None
                or cause not in self.ok_causes
            )
        # SIP statuses only for failed calls: reading a variable makes the Event index its
        # ~200 headers (~10 us on a 9 KB event), 3x the rest of the row; an answered, normally
        # cleared call has nothing to say there.
        c_sip = b_sip = None
        if failed:
            if not remote:
                self.failed_calls += 1
            if caller is not None:
                c_sip = _sip_status(caller)
            if callee is not None:
                b_sip = _sip_status(callee)
        listener = self.listener
        if listener is not None:
            active_sessions = listener.active_sessions
            erlangs = listener.active_calls
        else:
            active_sessions = erlangs = 0

        # `x or None`: a time of 0 (never set / no stamp) is missing.
        if caller is not None:
            c = caller
            a_times = (
                c.create_time or None,
                c_answer or None,
                c.originate_time or None,
            )
            a_hangup = c.hangup_time or c.destroy_time or None
            a_fs = (
                c.create_fs_time or None,
                c.answer_fs_time or None,
                c.hangup_fs_time or c.destroy_fs_time or None,
            )
        else:
            a_times = (None, None, None)
            a_hangup = None
            a_fs = (None, None, None)
        if callee is not None:
            b = callee
            b_uuid = b.uuid
            b_times = (
                b.create_time or None,
                b_answer or None,
                b.hangup_time or b.destroy_time or None,
            )
            b_fs = (
                b.create_fs_time or None,
                b.answer_fs_time or None,
                b.hangup_fs_time or b.destroy_fs_time or None,
            )
        else:
            b_uuid = None
            b_times = b_fs = (None, None, None)
        if job is not None:
            job_uuid, launch, done = job.uuid, job.launch_time or None, job.done_time or None
        else:
            job_uuid = launch = done = None

        return (
            call.app_id,
            cause,
            *a_times,
            done,
            a_hangup,
            launch,
            *b_times,
            self.failed_calls,
            active_sessions,
            erlangs,
            call.uuid,
            b_uuid,
            self.slave,
            self.worker,
            job_uuid,
            result.strip() if result else None,
            caller_cause,
            b_cause,
            c_sip,
            b_sip,
            failed,
            verdict,
            lost or None,
            "callee" if remote else "call",
            *a_fs,
            *b_fs,
        )
