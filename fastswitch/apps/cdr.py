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
- Session: ``uuid``, ``hangup_cause``, ``create_time``, ``originate_time``,
  ``answer_time``, ``hangup_time``, ``destroy_time`` and their ``*_fs_time`` stamps,
  ``var(name)`` for ``sip_term_status`` / ``sip_invite_failure_status``.
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


def _t(v: float | None) -> float | None:
    """A time, with 0 (FreeSWITCH sent no stamp / never set) as missing."""
    return v if v else None


def _sip_status(sess: Session) -> str | None:
    return sess.var("sip_term_status") or sess.var("sip_invite_failure_status")


def _job_cause(job: Job | None) -> str | None:
    if job is None or not job.failed:
        return None
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
        """The CDR row of ``call``, a tuple in :data:`~fastswitch.measure.CDR_COLUMNS` order."""
        remote = call.remote
        caller = None if remote else call.caller
        callee = call.callee
        if remote and callee is None:
            callee = call.first
        job = call.job
        lost = getattr(call, "lost", None)
        vars_ = call.vars
        verdict = vars_.get("app_verdict") or None
        if verdict is not None:
            verdict = str(verdict)

        job_failed = bool(job is not None and job.failed) or bool(call.failed and not lost)
        job_cause = _job_cause(job)
        if caller is not None:
            caller_cause = caller.hangup_cause or job_cause
            c_create, c_answer = caller.create_time, caller.answer_time
            c_req, c_hangup = caller.originate_time, caller.hangup_time or caller.destroy_time
            c_create_fs, c_answer_fs = caller.create_fs_time, caller.answer_fs_time
            c_hangup_fs = caller.hangup_fs_time or caller.destroy_fs_time
            c_sip = _sip_status(caller)
        else:
            caller_cause = job_cause
            c_create = c_answer = c_req = c_hangup = c_create_fs = c_answer_fs = c_hangup_fs = None
            c_sip = None
        if callee is not None:
            b_cause = callee.hangup_cause
            b_uuid = callee.uuid
            b_create, b_answer = callee.create_time, callee.answer_time
            b_hangup = callee.hangup_time or callee.destroy_time
            b_create_fs, b_answer_fs = callee.create_fs_time, callee.answer_fs_time
            b_hangup_fs = callee.hangup_fs_time or callee.destroy_fs_time
            b_sip = _sip_status(callee)
        else:
            b_cause = b_uuid = b_create = b_answer = b_hangup = None
            b_create_fs = b_answer_fs = b_hangup_fs = b_sip = None

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

        if failed and not remote:
            self.failed_calls += 1
        listener = self.listener
        if listener is not None:
            active_sessions = listener.active_sessions
            erlangs = listener.active_calls
        else:
            active_sessions = erlangs = 0
        result = job.result if job is not None else None

        return (
            call.app_id,
            cause,
            _t(c_create),
            _t(c_answer),
            _t(c_req),
            _t(getattr(job, "done_time", None)) if job is not None else None,
            _t(c_hangup),
            _t(job.launch_time) if job is not None else None,
            _t(b_create),
            _t(b_answer),
            _t(b_hangup),
            self.failed_calls,
            active_sessions,
            erlangs,
            call.uuid,
            b_uuid,
            self.slave,
            self.worker,
            job.uuid if job is not None else None,
            result.strip() if result else None,
            caller_cause,
            b_cause,
            c_sip,
            b_sip,
            failed,
            verdict,
            lost or None,
            "callee" if remote else "call",
            _t(c_create_fs),
            _t(c_answer_fs),
            _t(c_hangup_fs),
            _t(b_create_fs),
            _t(b_answer_fs),
            _t(b_hangup_fs),
        )
