"""Call tracking: :class:`CallTracker` turns channel events into Sessions and Calls.

Rules (see docs/ARCHITECTURE.md, "Call tracking hooks"):

- :meth:`CallTracker.expect` registers a Call (keyed by the origination uuid, which is
  also the A-leg uuid) and its Job *before* the originate is sent.
- A leg joins a Call by ``variable_sip_h_X-originating_session_uuid`` (B-leg) or its own
  uuid (A-leg), whichever arrives first; with caller-id correlation (for SUTs that strip
  X- headers) a B-leg is matched by the call index in ``Caller-Caller-ID-Number``.
- An inbound leg carrying one of our app ids whose call we did not originate is a
  *remote* call (``call.remote = True``): another worker originated it.
- Legs of other traffic are ignored (nothing is stored for them).
- A session ends at its last event (``CHANNEL_DESTROY``, or ``CHANNEL_HANGUP_COMPLETE``
  when DESTROY is not subscribed) and is forgotten. A call completes when it has no live
  legs and its job (if any) is done, or when its job failed before any leg appeared:
  ``call_complete_hooks`` run once, then the Call is forgotten.
- A session keeps no event: what is read later (times, answer / hangup state, hangup
  cause, the hangup's SIP statuses) is extracted into its fields as events arrive, and
  ``Session.event`` refers to an event only while it is dispatched (``keep_events``
  keeps ``last_event`` / ``var_event`` as well, for harnesses that want them).
- A failed originate job is logged in the seed's words and counted by cause.

Counters are plain ints/dicts updated in O(1) per event.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from fastswitch.commands import ORIGINATING_SESSION_VAR, client_var
from fastswitch.errors import CommandError, ConnectionLost
from fastswitch.models import _NO_VARS, KNOWN_HEADERS, Call, Job, Session, error_cause

if TYPE_CHECKING:
    from fastswitch.esl import Event

__all__ = ["CallTracker", "TRACKER_EVENTS", "LOST"]

log = logging.getLogger("fastswitch.listener")

#: The events call tracking needs (apps add theirs).
TRACKER_EVENTS = ("CHANNEL_CREATE", "CHANNEL_ANSWER", "CHANNEL_HANGUP_COMPLETE", "BACKGROUND_JOB")

#: Prefix of ``call.lost`` reasons.
LOST = "lost"


class CallTracker:
    """Sessions, Calls and Jobs of one client, built from its events.

    Public state: ``sessions`` {uuid: Session}, ``calls`` {uuid: Call}, ``jobs``
    {job uuid: Job}; hooks ``call_complete_hooks`` (``f(call)``) and
    ``job_failed_hooks`` (``f(job)``); counters ``active_calls`` (tracked calls,
    remote ones included), ``active_sessions``, ``originated_calls``, ``answered_calls``
    and ``failed_calls`` (of the calls this client originated, so sums over workers
    count each call once), ``completed_calls``, ``lost_calls``, ``remote_calls``,
    ``hangup_causes`` {cause: n} (per leg), ``failed_jobs`` {cause: n}.

    ``dispatch(name, app_id, obj)`` (set by the client) is called for every event
    about a tracked session after the session was updated and before it may be
    released, so app callbacks see the final state; ``sess.event`` is the event for the
    dispatch (and the completion hooks it may trigger) and None afterwards.
    ``keep_events`` (default False) also keeps each session's latest event and latest
    event with variables (``last_event`` / ``var_event``, ~5 KB each).
    """

    def __init__(
        self,
        client: Any = None,
        var_prefix: str = "fastswitch",
        correlation: str = "uuid",
        final_event: str = "CHANNEL_HANGUP_COMPLETE",
        logger: logging.Logger | None = None,
        keep_events: bool = False,
    ) -> None:
        if correlation not in ("uuid", "caller_id"):
            raise ValueError("correlation must be 'uuid' or 'caller_id'")
        self.client = client
        self.log = logger or log
        cvar = client_var(var_prefix)
        self.app_var_a = "variable_" + cvar  # on the A-leg
        self.app_var_b = f"variable_sip_h_X-{cvar}"  # on the B-leg (and the A-leg)
        self.orig_var = "variable_" + ORIGINATING_SESSION_VAR
        self.keep_events = keep_events
        # what Session.get answers from fields once no event is at hand
        self.known_headers = {**KNOWN_HEADERS, self.app_var_a: "app_id", self.app_var_b: "app_id"}
        self.correlation = correlation
        self.final_event = final_event
        self.app_ids: set[str] = set()  # our app ids (for recognising remote B-legs)
        #: track B-legs of calls other workers originated (turn off when several workers
        #: share one slave: each of them already tracks its own B-legs there)
        self.track_remote = True
        #: without a CHANNEL_ORIGINATE subscription, an A-leg's originate time is its
        #: CHANNEL_CREATE (FS fires both back to back with the same timestamp)
        self.originate_from_create = True

        self.sessions: dict[str, Session] = {}
        self.calls: dict[str, Call] = {}
        self.jobs: dict[str, Job] = {}
        self._by_index: dict[str, Call] = {}

        self.call_complete_hooks: list[Callable[[Call], None]] = []
        self.job_failed_hooks: list[Callable[[Job], None]] = []
        self.dispatch: Callable[[str, str | None, Any], None] | None = None

        self.originated_calls = 0
        self.answered_calls = 0
        self.failed_calls = 0
        self.completed_calls = 0
        self.lost_calls = 0
        self.remote_calls = 0
        self.hangup_causes: dict[str, int] = {}
        self.failed_jobs: dict[str, int] = {}

        self._handlers: dict[str, Callable[[Session, Event, float], None]] = {
            "CHANNEL_ORIGINATE": self._on_originate,
            "CHANNEL_PROGRESS": self._on_progress,
            "CHANNEL_PROGRESS_MEDIA": self._on_progress,
            "CHANNEL_ANSWER": self._on_answer,
            "CHANNEL_HANGUP": self._on_hangup,
            "CHANNEL_HANGUP_COMPLETE": self._on_hangup,
            "CHANNEL_DESTROY": self._on_destroy,
        }

    def __repr__(self) -> str:
        return (
            f"<CallTracker calls={len(self.calls)} sessions={len(self.sessions)} "
            f"jobs={len(self.jobs)} failed={self.failed_calls}>"
        )

    # -- counters --------------------------------------------------------------------------
    @property
    def active_calls(self) -> int:
        """Calls being tracked (originated or seen, not yet complete)."""
        return len(self.calls)

    @property
    def active_sessions(self) -> int:
        """Legs alive right now."""
        return len(self.sessions)

    def count_calls(self) -> int:
        """Same as ``active_calls`` (switchio's name)."""
        return len(self.calls)

    def count_sessions(self) -> int:
        """Legs alive right now (switchio's name)."""
        return len(self.sessions)

    def count_jobs(self) -> int:
        """bgapi jobs waiting for their BACKGROUND_JOB."""
        return len(self.jobs)

    # -- registration (called by Client.originate, before sending) ---------------------------
    def expect(self, call: Call, job: Job | None) -> None:
        """Register an originated call (and its job) before the command goes out."""
        self.calls[call.uuid] = call
        if call.index is not None:
            self._by_index[call.index] = call
        if job is not None:
            self.jobs[job.uuid] = job
        self.originated_calls += 1

    def add_job(self, job: Job) -> None:
        """Track a bgapi job that is not an originate."""
        self.jobs[job.uuid] = job

    # -- event entry point -------------------------------------------------------------------
    def handle(self, ev: Event, now: float) -> None:
        """Process one event received at ``now`` (``time.time()``)."""
        name = ev.name
        if name == "BACKGROUND_JOB":
            self._on_job(ev, now)
            return
        uuid = ev.unique_id
        sess = self.sessions.get(uuid)  # type: ignore[arg-type]
        if sess is None:
            if uuid is None or (name != "CHANNEL_CREATE" and name != "CHANNEL_ORIGINATE"):
                return
            sess = self._new_session(uuid, ev, now)
            if sess is None:
                return
            sess.event = ev
            if name == "CHANNEL_ORIGINATE":
                self._on_originate(sess, ev, now)
        else:
            sess.event = ev  # for the dispatch only: cleared below
            if self.keep_events:  # Session.update, inlined (one Event-Name read per event)
                sess.last_event = ev
                if name not in _NO_VARS:
                    sess.var_event = ev
            h = self._handlers.get(name)
            if h is not None:
                h(sess, ev, now)
        try:
            dispatch = self.dispatch
            if dispatch is not None:
                dispatch(ev.subclass if name == "CUSTOM" else name, sess.app_id, sess)
            if name == self.final_event:
                self._end_session(sess, now)
        finally:
            sess.event = None

    # -- sessions ------------------------------------------------------------------------------
    def _new_session(self, uuid: str, ev: Event, now: float) -> Session | None:
        direction = ev.call_direction
        remote = False
        if direction == "outbound":
            call = self.calls.get(uuid)
            if call is None:
                key = ev.get(self.orig_var)
                call = self.calls.get(key) if key else None
                if call is None:
                    return None  # an outbound leg we did not originate
            app_id = ev.get(self.app_var_a) or ev.get(self.app_var_b) or call.app_id
        else:
            key = ev.get(self.orig_var)
            call = self.calls.get(key) if key else None
            if call is None and self.correlation == "caller_id":
                idx = ev.get("Caller-Caller-ID-Number")
                call = self._by_index.get(idx) if idx else None
            app_id = ev.get(self.app_var_b) or (call.app_id if call is not None else None)
            if call is None:
                # A B-leg of a call another worker originated (the SUT routed it here).
                if (
                    not key
                    or app_id is None
                    or not self.track_remote
                    or (self.app_ids and app_id not in self.app_ids)
                ):
                    return None
                call = Call(key, app_id=app_id, remote=True)
                self.calls[key] = call
                self.remote_calls += 1
                remote = True
        if call.done:
            return None
        sess = Session(
            uuid,
            direction,
            app_id,
            call,
            self.client,
            ev if self.keep_events else None,
            self.known_headers,
        )
        sess.create_time = now
        sess.create_fs_time = ev.timestamp / 1e6
        if direction == "outbound" and self.originate_from_create:
            sess.originate_time = now
            sess.originate_fs_time = sess.create_fs_time
        call.sessions.append(sess)
        call.live += 1
        if call.app_id is None:
            call.app_id = app_id
        self.sessions[uuid] = sess
        if remote:
            self.log.debug("tracking remote call %s (B-leg %s)", call.uuid, uuid)
        return sess

    def _on_originate(self, sess: Session, ev: Event, now: float) -> None:
        sess.originate_time = now
        sess.originate_fs_time = ev.timestamp / 1e6

    def _on_progress(self, sess: Session, ev: Event, now: float) -> None:
        if sess.progress_time is None:
            sess.progress_time = now
            sess.progress_fs_time = ev.timestamp / 1e6

    def _on_answer(self, sess: Session, ev: Event, now: float) -> None:
        if sess.answered:
            return
        sess.answered = True
        sess.answer_time = now
        sess.answer_fs_time = ev.timestamp / 1e6
        call = sess.call
        if call is not None and not call.answered:
            call.answered = True
            if not call.remote:
                self.answered_calls += 1

    def _on_hangup(self, sess: Session, ev: Event, now: float) -> None:
        if not sess.hungup:
            sess.hungup = True
            sess.hangup_time = now
            sess.hangup_fs_time = ev.timestamp / 1e6
        cause = ev.hangup_cause
        if cause:
            sess.hangup_cause = cause
        # the SIP statuses the CDR app records for failed legs (on the hangup events only:
        # earlier events do not have them)
        st = ev.get("variable_sip_term_status")
        if st is not None:
            sess.sip_term_status = st
        st = ev.get("variable_sip_invite_failure_status")
        if st is not None:
            sess.sip_invite_failure_status = st

    def _on_destroy(self, sess: Session, ev: Event, now: float) -> None:
        if not sess.hungup:
            self._on_hangup(sess, ev, now)
        sess.destroy_time = now
        sess.destroy_fs_time = ev.timestamp / 1e6

    def _end_session(self, sess: Session, now: float) -> None:
        if self.sessions.pop(sess.uuid, None) is None:
            return
        cause = sess.hangup_cause or "UNKNOWN"
        self.hangup_causes[cause] = self.hangup_causes.get(cause, 0) + 1
        call = sess.call
        if call is None:
            return
        call.live -= 1
        if call.live <= 0:
            job = call.job
            if job is None or job.done():
                self._complete(call)

    # -- jobs ------------------------------------------------------------------------------------
    def _on_job(self, ev: Event, now: float) -> None:
        job = self.jobs.pop(ev.job_uuid, None)  # type: ignore[arg-type]
        if job is None:
            return  # someone else's job
        job.set_result(ev.body or "", now)
        call = job.call
        if job.failed:
            self._job_failed(job)
        dispatch = self.dispatch
        if dispatch is not None:
            dispatch("BACKGROUND_JOB", call.app_id if call is not None else None, job)
        if call is not None and call.live <= 0 and not call.done:
            if job.failed or call.sessions:
                self._complete(call)

    def _job_failed(self, job: Job, text: str | None = None) -> None:
        """Count a failed job by cause, mark its call failed, log it in the seed's words
        and run ``job_failed_hooks``."""
        text = text or (job.result or "").strip()
        cause = error_cause(text) or text or "UNKNOWN"
        self.failed_jobs[cause] = self.failed_jobs.get(cause, 0) + 1
        call = job.call
        if call is not None and not call.failed:
            call.failed = True
            if not call.remote:
                self.failed_calls += 1
        self.log.error(
            "Job '%s' corresponding to session '%s' failed with:\n%s", job.uuid, job.sess_uuid, text
        )
        for hook in self.job_failed_hooks:
            try:
                hook(job)
            except Exception:
                self.log.exception("job_failed hook %r failed", hook)

    def fail_job(self, job: Job, exc: BaseException, now: float) -> None:
        """A bgapi was refused (a ``-ERR`` command/reply, ``exc`` a CommandError) or
        cannot complete: fail it, account for it like a failed BACKGROUND_JOB."""
        if self.jobs.pop(job.uuid, None) is None and job.done():
            return
        job.set_exception(exc, now)
        text = exc.reply if isinstance(exc, CommandError) else f"-ERR {exc}"
        self._job_failed(job, text)
        call = job.call
        if call is not None and call.live <= 0 and not call.done:
            self._complete(call)

    # -- completion ----------------------------------------------------------------------------
    def _complete(self, call: Call) -> None:
        if call.done:
            return
        call.done = True
        if self.calls.get(call.uuid) is call:
            del self.calls[call.uuid]
        if call.index is not None and self._by_index.get(call.index) is call:
            del self._by_index[call.index]
        job = call.job
        if job is not None:
            self.jobs.pop(job.uuid, None)
        self.completed_calls += 1
        for hook in self.call_complete_hooks:
            try:
                hook(call)
            except Exception:
                self.log.exception("call_complete hook %r failed", hook)

    def lose_all(self, reason: str) -> tuple[int, int, int]:
        """Complete every tracked call with ``call.lost = 'lost: <reason>'`` (the
        connection dropped and their remaining events cannot be followed).

        Returns ``(calls, sessions, jobs)`` lost.
        """
        calls = list(self.calls.values())
        n_sess = len(self.sessions)
        n_jobs = len(self.jobs)
        marker = f"{LOST}: {reason}"
        exc = ConnectionLost(reason)
        for job in list(self.jobs.values()):
            if not job.done():
                job.set_exception(exc)
        self.jobs.clear()
        self.sessions.clear()
        for call in calls:
            call.lost = marker
            call.live = 0
            if not call.failed:
                call.failed = True
                if not call.remote:
                    self.failed_calls += 1
            self.lost_calls += 1
            self._complete(call)
        self.calls.clear()
        self._by_index.clear()
        return len(calls), n_sess, n_jobs
