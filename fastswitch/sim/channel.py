"""Channels (legs) and their call flows: what events a leg fires, and when.

A :class:`Leg` is one FreeSWITCH session. The A-leg is created by ``originate``
(outbound, ``Call-Direction: outbound``); it sends a simulated INVITE through the
SIP link, which creates the B-leg (inbound, context ``public``) on the simulated
server that owns the destination address. The B-leg runs the dialplan
(:func:`dialplan`); answers, early media, rejections and hangups travel back as
SIP-like messages (``RING EARLY ANSWER REJECT BYE CANCEL BERT``), so two legs
on different simulator processes behave like two legs on one.

The per-leg event order follows the captures (b, d, k–n, o, q): see the README of
the captures, "Client-driven call flows".
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from . import logs
from .config import SIP_CAUSES, cause_number, cause_q850, sip_reason
from .templates import enc_url

if TYPE_CHECKING:
    from .core import Core

CALLSTATE_NUM = {
    "DOWN": "0",
    "DIALING": "1",
    "RINGING": "2",
    "EARLY": "3",
    "ACTIVE": "4",
    "HELD": "5",
    "RING_WAIT": "6",
    "HANGUP": "7",
    "UNHELD": "8",
}
CAUSE_SIP = {
    "USER_BUSY": 486,
    "NO_ROUTE_DESTINATION": 404,
    "UNALLOCATED_NUMBER": 404,
    "NORMAL_CLEARING": 480,
    "NO_ANSWER": 480,
    "NO_USER_RESPONSE": 408,
    "CALL_REJECTED": 603,
    "NORMAL_TEMPORARY_FAILURE": 503,
    "DESTINATION_OUT_OF_ORDER": 502,
    "INVALID_NUMBER_FORMAT": 484,
    "INCOMPATIBLE_DESTINATION": 488,
    "MEDIA_TIMEOUT": 408,
}
# events that carry no variable_* headers (switch_channel_event_set_extended_data)
NO_VARIABLES = frozenset({"CHANNEL_STATE", "CHANNEL_CALLSTATE", "CHANNEL_OUTGOING", "CODEC"})
MILESTONES = ("created", "answered", "progress", "pmedia", "hangup")
# variables every channel has (Leg.getvar)
_BUILTIN_VARS = frozenset(
    "uuid call_uuid direction channel_name destination_number hangup_cause "
    "current_application answer_state context".split()
)
_T_KEYS = {m: "t_" + m for m in MILESTONES}
_E_KEYS = {m: "e_" + m for m in MILESTONES}
_S_KEYS = {m: "s_" + m for m in MILESTONES}
DURATIONS = (
    "duration billsec progresssec answersec waitsec progress_mediasec flow_billsec "
    "mduration billmsec progressmsec answermsec waitmsec progress_mediamsec flow_billmsec "
    "uduration billusec progressusec answerusec waitusec progress_mediausec flow_billusec"
).split()
# apps that keep running until the channel hangs up (or are interrupted)
_UNKNOWN = object()
STAYING_APPS = frozenset({"park", "bert_test", "echo", "endless_playback", "conference"})


class Job:
    """A running originate: completes once (answer, early media, or failure)."""

    __slots__ = ("uuid", "cmd", "arg", "on_done", "done")

    def __init__(self, uuid: str, cmd: str, arg: str, on_done: Callable[[str], None]) -> None:
        self.uuid = uuid
        self.cmd = cmd
        self.arg = arg
        self.on_done = on_done
        self.done = False

    def finish(self, result: str) -> None:
        if not self.done:
            self.done = True
            self.on_done(result)


class Leg:
    """One channel: state, timestamps, variables, running apps, and its SIP dialog."""

    # slots: a leg has more attributes than an instance dict shares keys for (30), and
    # its creation and attribute access are on the per-call path; __dict__ keeps
    # other attributes possible
    __slots__ = (
        "core",
        "uuid",
        "role",
        "direction",
        "dest",
        "chan_name",
        "context",
        "block",
        "chanvars",
        "cs",
        "callstate",
        "answer",
        "t",
        "apps",
        "cause",
        "hungup",
        "destroyed",
        "job",
        "app_after_answer",
        "peer",
        "call_id",
        "timers",
        "bert_running",
        "bert_peer",
        "bert_synced",
        "bert_sync_scheduled",
        "history",
        "reason",
        "bert_lost_count",
        "created_wall",
        "enc",
        "values",
        "blockname",
        "__dict__",
        "__weakref__",
    )

    def __init__(
        self,
        core: Core,
        uuid: str,
        role: str,
        dest: str,
        chan_name: str,
        requri: str,
        block: list[tuple[str, str]],
        context: str,
    ) -> None:
        self.core = core
        self.uuid = uuid
        self.role = role  # "A" outbound, "B" inbound
        self.direction = "outbound" if role == "A" else "inbound"
        self.dest = dest
        self.chan_name = chan_name
        self.context = context
        self.block = list(block)  # VARS (A) / XHDRS (B) pairs
        self.chanvars: dict[str, str] = dict(block)
        self.cs = "CS_NEW"
        self.callstate = "DOWN"
        self.answer = "ringing"
        self.t = dict.fromkeys(MILESTONES, 0)
        self.t["created"] = core.now_us
        self.apps: list[tuple[str, str, str, bool]] = []  # name, data, uuid, from sendmsg
        self.cause = ""
        self.hungup = False
        self.destroyed = False
        self.job: Job | None = None
        self.app_after_answer: tuple[str, str] | None = None
        self.peer: Any = None  # SIP channel to the other side (see siplink)
        self.call_id = ""
        self.timers: list[Any] = []
        self.bert_running = False
        self.bert_peer = False
        self.bert_synced = False
        self.bert_sync_scheduled = False
        # "b" once bert_test ran, "p" once a playback did:
        # these change the channel variables, so they choose the templates
        self.history = ""
        self.reason = False  # the far end's BYE/CANCEL/refusal carried a Q.850 Reason
        self.bert_lost_count = 0
        self.created_wall = core.loop.time()
        core.session_counter += 1
        enc = self.enc = core.leg_defaults.copy()
        created = self.t["created"]
        # the leg's own values, set at once (the defaults' encodings are copied as is;
        # values that may need escaping are encoded when an event first shows them)
        plain = {
            "uuid": uuid,
            "session_id": str(core.session_counter),
            "t_created": str(created),
            "e_created": str(created // 1_000_000),
        }
        raw = enc.raw
        raw.update(plain)
        raw.update(chan_name=chan_name, dest=dest, requri=requri, s_created=core.stamp(created))
        plain_b = {k: v.encode() for k, v in plain.items()}
        url, js = enc.url, enc.json
        url.update(plain_b)
        js.update(plain_b)
        for k in ("chan_name", "dest", "requri", "s_created"):  # every event shows these
            url[k] = enc_url(raw[k])
            js.pop(k, None)
        self.values = raw  # raw slot values (filters, uuid_dump)
        self.blockname = "VARS" if role == "A" else "XHDRS"
        enc.set_block(self.blockname, self.block)
        enc.set_block("XHDRS" if role == "A" else "VARS", [])
        enc.set_lazy(self._lazy_value)
        core.legs[uuid] = self
        if core.loggers:
            logs.new_channel(self)

    # -- rendering -----------------------------------------------------------------------
    def fire(self, name: str, variant: str = "", nested: bool = False, msg: bool = False) -> None:
        """Fire one channel event for this leg in its current state."""
        core = self.core
        targets = core._wanted.get(name)
        if targets is None:
            targets = core.targets(name)
        if not targets:
            core.seq += 1
            return
        app = self.values["app"] if name.startswith("CHANNEL_EXECUTE") else variant
        t = self.t
        h = self.history
        if not msg:
            for a in self.apps:
                if a[3]:
                    msg = True
                    break
        # the template for this state: looked up by the state's parts, the text key is
        # only built the first time a state is seen
        state = (
            self.role,
            name,
            self.cs,
            self.callstate,
            self.answer,
            app,
            self.cause,
            not t["answered"],
            not t["pmedia"],
            not t["progress"],
            h,
            msg,
            nested,
            self.values["disposition"],
            self.reason,
        )
        by_state = core.tpl_by_state
        tpl = by_state.get(state, _UNKNOWN)
        if tpl is _UNKNOWN:
            tpl = self._find_template(name, app, nested, msg)
            if len(by_state) > 10_000:
                by_state.clear()
            by_state[state] = tpl
        core.seq += 1
        if tpl is not None:
            core.emit_template(tpl, self.enc, targets)

    def _find_template(self, name: str, app: str, nested: bool, msg: bool) -> Any:
        t = self.t
        h = self.history
        if name in NO_VARIABLES or name.startswith("CUSTOM::"):
            # events without channel variables: only the Caller-* times tell the history
            ans = (
                ("1" if t["answered"] else "0")
                + ("e" if t["pmedia"] else "")
                + ("n" if "n" in h else "")
                + ("r" if t["progress"] else "")
            )
        else:
            ans = (
                ("1" if t["answered"] else "0")
                + ("b" if "b" in h else "")
                + ("e" if t["pmedia"] else "")
                + ("m" if msg else "")
                + ("n" if "n" in h else "")
                + ("p" if "p" in h else "")
                + ("r" if t["progress"] else "")
            )
        if name.startswith("CUSTOM::"):
            key = f"{self.role}|{name}|{self.cs}|{self.callstate}|{self.answer}|||{ans}||"
        else:
            disp = self.values["disposition"] + ("+reason" if self.reason else "")
            n = "+" if nested else ""
            key = f"{self.role}|{name}|{self.cs}|{self.callstate}|{self.answer}|{app}|{self.cause}|{ans}|{disp}|{n}"
        return self.core.store.find(key)

    def set(self, key: str, value: str) -> None:
        """Set one slot value (encoded once, here)."""
        self.enc.set(key, value)

    # the setters below are Encoded.set_plain inlined (they run ~80 times per call)
    def set_state(self, cs: str, fire: bool = True) -> None:
        self.cs = cs
        enc = self.enc
        enc.raw["cs"] = cs
        enc.url["cs"] = enc.json["cs"] = cs.encode()
        if fire:
            self.fire("CHANNEL_STATE")

    def set_callstate(self, callstate: str) -> None:
        enc = self.enc
        raw, url, js = enc.raw, enc.url, enc.json
        prev = self.callstate
        raw["prev_callstate"] = prev
        url["prev_callstate"] = js["prev_callstate"] = prev.encode()
        self.callstate = callstate
        raw["callstate"] = callstate
        url["callstate"] = js["callstate"] = callstate.encode()
        num = CALLSTATE_NUM[callstate]
        raw["callstate_num"] = num
        url["callstate_num"] = js["callstate_num"] = num.encode()
        self.fire("CHANNEL_CALLSTATE")

    def set_answer(self, state: str) -> None:
        self.answer = state
        enc = self.enc
        enc.raw["answer"] = state
        enc.url["answer"] = enc.json["answer"] = state.encode()

    def mark(self, milestone: str) -> None:
        t = self.t
        if t[milestone]:
            return
        core = self.core
        us = t[milestone] = core.now_us
        enc = self.enc
        raw, url, js = enc.raw, enc.url, enc.json
        k = _T_KEYS[milestone]
        v = str(us)
        raw[k] = v
        url[k] = js[k] = v.encode()
        k = _E_KEYS[milestone]
        v = str(us // 1_000_000)
        raw[k] = v
        url[k] = js[k] = v.encode()
        k = _S_KEYS[milestone]
        v = raw[k] = core.stamp(us)
        url[k] = enc_url(v)
        js.pop(k, None)

    def setvar(self, name: str, value: str | None) -> None:
        if value is None or value == "":
            self.chanvars.pop(name, None)
            self.block = [(k, v) for k, v in self.block if k != name]
        else:
            self.chanvars[name] = value
            self.block = [(k, v) for k, v in self.block if k != name] + [(name, value)]
        self.enc.set_block(self.blockname, self.block)

    def getvar(self, name: str) -> str | None:
        v = self.chanvars.get(name)
        if v is not None or name not in _BUILTIN_VARS:
            return v
        builtin = {
            "uuid": self.uuid,
            "call_uuid": self.uuid,
            "direction": self.direction,
            "channel_name": self.chan_name,
            "destination_number": self.dest,
            "hangup_cause": self.cause or None,
            "current_application": self.apps[-1][0] if self.apps else None,
            "answer_state": self.answer,
            "context": self.context,
        }
        return builtin.get(name)

    # -- timers --------------------------------------------------------------------------
    def later(self, delay: float, fn: Callable[..., Any], *args: Any) -> None:
        if self.hungup:
            return
        h = self.core.loop.call_later(max(delay, 0.0), self._run_timer, fn, args)
        self.timers.append(h)

    def _run_timer(self, fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
        if not self.destroyed:
            fn(*args)

    # -- apps ----------------------------------------------------------------------------
    def _set_app_values(self, entry: tuple[str, str, str, bool] | None = None) -> None:
        if entry is None:
            entry = self.apps[-1] if self.apps else ("", "", "", False)
        enc = self.enc
        raw, url, js = enc.raw, enc.url, enc.json
        app, data, app_uuid = entry[0], entry[1], entry[2]
        raw["app"] = app
        url["app"] = js["app"] = app.encode()
        raw["app_uuid"] = app_uuid
        url["app_uuid"] = js["app_uuid"] = app_uuid.encode()
        if raw.get("app_data") != data:
            raw["app_data"] = data
            url.pop("app_data", None)
            js.pop("app_data", None)
            enc.drop_derived("app_data")

    def execute(
        self,
        app: str,
        arg: str = "",
        then: Callable[[], None] | None = None,
        via_msg: bool = False,
    ) -> None:
        """Run a dialplan application on this leg (CHANNEL_EXECUTE ... _COMPLETE);
        ``via_msg``: started by sendmsg (FreeSWITCH then sets current_loop/total_loops)."""
        if self.hungup:
            return
        app = app.strip()
        arg = arg.strip()
        if app not in APPS:
            if then:
                then()
            return
        self.apps.append((app, arg, self.core.new_uuid(), via_msg))
        self.enc.set_plain("last_app", app)
        self.enc.set("last_arg", arg)
        self._set_app_values()
        if self.core.loggers:
            logs.execute(self, app, arg, 0)
        self.fire("CHANNEL_EXECUTE", nested=len(self.apps) > 1)
        APPS[app](self, arg, then)

    def complete(self, app: str, then: Callable[[], None] | None = None) -> None:
        """An app finished: CHANNEL_EXECUTE_COMPLETE, then continue with ``then``."""
        if self.hungup:
            return
        for i in range(len(self.apps) - 1, -1, -1):
            if self.apps[i][0] == app:
                entry = self.apps.pop(i)
                break
        else:
            return
        self._set_app_values(entry)
        self.fire("CHANNEL_EXECUTE_COMPLETE", nested=bool(self.apps), msg=entry[3])
        self._set_app_values()
        if then:
            then()

    def run_steps(self, steps: list[tuple[str, str]]) -> None:
        """Run dialplan steps in order; a staying app (park) ends the list."""
        if not steps or self.hungup:
            return
        (app, arg), rest = steps[0], steps[1:]
        if app == "delay":
            self.later(float(arg), self.run_steps, rest)
            return
        if app == "end":  # dialplan exhausted: the channel hangs up
            self.hangup(arg)
            return
        self.execute(app, arg, (lambda: self.run_steps(rest)) if rest else None)

    # -- media/answer (both roles) ---------------------------------------------------------
    def ring_ready(self) -> None:
        if self.hungup or self.answer != "ringing" or self.t["progress"]:
            return
        self.mark("progress")
        self.fire("CHANNEL_PROGRESS")
        if self.role == "B":
            self.send("RING")

    def pre_answer(self) -> None:
        if self.hungup or self.answer in ("early", "answered"):
            return
        self.mark("pmedia")
        self.set_answer("early")
        if self.role == "B" and self.core.loggers:
            logs.pre_answer(self)
        self.fire("CHANNEL_PROGRESS_MEDIA")
        self.set_callstate("EARLY")
        if self.role == "B":
            self.send("EARLY")

    def answer_call(self) -> None:
        """Answer (pre-answering first, as FreeSWITCH always does) and send the 200."""
        if self.hungup or self.answer == "answered":
            return
        if self.role == "A":
            return
        loggers = self.core.loggers
        if self.answer != "early":
            self.mark("pmedia")
            self.set_answer("early")
            if loggers:
                logs.pre_answer(self)
            self.fire("CHANNEL_PROGRESS_MEDIA")
            self.set_callstate("EARLY")
        self.mark("answered")
        self.set_answer("answered")
        if loggers:
            logs.answered(self)
        self.fire("CHANNEL_ANSWER")
        self.set_callstate("ACTIVE")
        self.send("ANSWER")

    # -- SIP -----------------------------------------------------------------------------
    def send(self, kind: str, *args: Any) -> None:
        if self.peer is not None:
            self.peer.send("A" if self.role == "B" else "B", (kind, self.call_id, *args))

    # -- A-leg reactions to the far end ----------------------------------------------------
    def on_ring(self) -> None:
        if self.hungup or self.answer != "ringing":
            return
        self.mark("progress")
        self.fire("CHANNEL_PROGRESS")
        self.set_callstate("RINGING")

    def on_early(self) -> None:
        if self.hungup or self.answer in ("early", "answered"):
            return
        self.mark("pmedia")
        self.set_answer("early")
        self.fire("CHANNEL_PROGRESS_MEDIA")
        self.set_callstate("EARLY")
        if (
            self.job
            and not self.job.done
            and self.getvar("ignore_early_media") not in ("true", "consume", "ring_ready")
        ):
            self._originate_succeeded()

    def on_answer(self) -> None:
        if self.hungup or self.answer == "answered":
            return
        all_events = self.core.targets("CODEC")
        if all_events:
            self.fire("CODEC", variant="read")
            self.fire("CODEC", variant="write")
        self.mark("answered")
        self.set_answer("answered")
        if self.core.loggers:
            logs.answered(self)
        self.fire("CHANNEL_ANSWER")
        self.set_callstate("ACTIVE")
        self.fire("CALL_UPDATE")
        eoa = self.getvar("execute_on_answer")
        if eoa:
            app, _, arg = eoa.strip().partition(" ")
            if app == "sched_hangup":
                sched_hangup(self, arg)
            else:
                self.execute(app, arg)
        if self.job and not self.job.done:
            self._originate_succeeded()

    def _originate_succeeded(self) -> None:
        job = self.job
        if job is None:
            return
        for h in self.timers:
            h.cancel()
        self.timers.clear()
        job.finish(f"+OK {self.uuid}\n")
        self.set_state("CS_EXECUTE")
        if self.app_after_answer:
            app, arg = self.app_after_answer
            if app == "\x00dialplan":
                self.run_steps(dialplan(arg, self.core))
            else:
                self.execute(app, arg)

    # -- hangup --------------------------------------------------------------------------
    def hangup(
        self,
        cause: str = "NORMAL_CLEARING",
        disposition: str | None = None,
        term_status: str = "",
        notify: bool = True,
        reason: bool = False,
        far_cause: str = "",
    ) -> None:
        """Hang up this leg: the captured order HANGUP, EXECUTE_COMPLETE(apps), STATE,
        CALLSTATE(HANGUP), STATE, HANGUP_COMPLETE, [BACKGROUND_JOB], DESTROY, STATE.

        ``reason``: the far end's BYE/CANCEL/refusal carried a Reason header made from
        its cause ``far_cause`` (default: ``cause``)."""
        if self.hungup:
            return
        self.hungup = True
        self.reason = reason
        for h in self.timers:
            h.cancel()
        self.timers.clear()
        answered = self.answer == "answered"
        if disposition is None:
            if answered:
                disposition = "send_bye"
            elif self.role == "A":
                disposition = "send_cancel"
            else:
                disposition = "send_refuse"
        core = self.core
        self.cause = cause
        enc = self.enc
        if not self.call_id and self.role == "A":
            # refused before its INVITE went out (unreachable, reject mix): sofia made a
            # Call-ID for it anyway (capture d)
            self.call_id = core.new_uuid()
            enc.set_plain("call_id", self.call_id)
        enc.set_plain("cause", cause)
        enc.set_plain("q850", str(cause_q850(cause)))
        enc.set_plain("disposition", disposition)
        # the SIP side of the hangup, as sofia records it (captures b, d, k, l, m, s):
        # only a leg that received the final word has a term status and cause
        if disposition.startswith("recv_"):
            status = term_status or "200"
            enc.set_plain("term_status", status)
            enc.set("proto_cause", f"sip:{status}")
            enc.set_plain("term_cause", str(cause_number(cause)))
            if disposition != "recv_bye":
                enc.set_plain("invite_failure", status)
        elif disposition == "send_cancel":
            enc.set_plain("invite_failure", "487")
        if reason:
            enc.set("sip_reason", sip_reason(far_cause or cause))
        self.mark("hangup")
        self.set_answer("hangup")
        if core.loggers:
            logs.hangup(self, self.cs, cause, disposition)
        self.fire("CHANNEL_HANGUP")
        # the session thread does the rest, after the api command that hung up returns
        core.loop.call_soon(self._hangup_rest, answered, disposition, term_status, notify)

    def _hangup_rest(
        self, answered: bool, disposition: str, term_status: str, notify: bool
    ) -> None:
        core = self.core
        cause = self.cause
        if core.targets("CHANNEL_UNPARK") and any(a[0] == "park" for a in self.apps):
            self.fire("CHANNEL_UNPARK")
        while self.apps:
            entry = self.apps.pop()
            self._set_app_values(entry)
            self.fire("CHANNEL_EXECUTE_COMPLETE", nested=bool(self.apps), msg=entry[3])
        self._set_app_values()
        if notify and self.peer is not None:
            if self.role == "A":
                self.send("BYE" if answered else "CANCEL", cause)
            elif disposition != "recv_cancel":
                if answered:
                    self.send("BYE", cause)
                else:
                    # sofia adds "Reason: Q.850;cause=<this leg's cause>" to the refusal
                    # (capture l: respond 404 gives the A-leg sip_reason cause=1)
                    code = CAUSE_SIP.get(cause, 503) if not term_status else int(term_status)
                    self.send("REJECT", code, cause, True)
        self.set_state("CS_HANGUP")
        self.set_callstate("HANGUP")
        self.set_state("CS_REPORTING")
        self.fire("CHANNEL_HANGUP_COMPLETE")
        delay = core.cfg.originate_fail_delay
        if self.job and not self.job.done and delay > 0:
            # the originate thread notices the failure, reports it and only then lets
            # the session go (the session still counts against the limits meanwhile)
            core.loop.call_later(delay, self._finish)
        else:
            self._finish()

    def _finish(self) -> None:
        if self.job and not self.job.done:
            self.job.finish(f"-ERR {self.cause}\n")
        self.fire("CHANNEL_DESTROY")
        self.set_state("CS_DESTROY")
        if self.core.loggers:
            logs.ended(self)
        self.destroy()

    def destroy(self) -> None:
        self.destroyed = True
        self.core.legs.pop(self.uuid, None)
        self.core.release_session()
        if self.core.sip is not None:
            self.core.sip.forget(self)
        # break the leg <-> encodings cycle (the lazy-value hook) so the leg is freed by
        # reference counting: at thousands of calls/s, leaving legs to the cyclic GC
        # costs ~15% of the simulator's CPU
        enc = self.enc
        if enc.url.lazy is not None:
            if "d_duration" not in enc.raw:
                enc.raw.update(self._lazy_value("d_duration"))
            enc.set_lazy(None)

    def _lazy_value(self, key: str) -> dict[str, str]:
        """CDR durations (``d_*``), all computed the first time an event shows one."""
        if not key.startswith("d_"):
            raise KeyError(key)
        t = self.t
        start, end = t["created"], t["hangup"] or self.core.now_us
        ans, prog, pm = t["answered"], t["progress"], t["pmedia"]
        es, ee = start // 1_000_000, end // 1_000_000
        spans = {
            "bill": end - ans if ans else 0,
            "progress": prog - start if prog else 0,
            "answer": ans - start if ans else 0,
            "wait": 0,
            "progress_media": pm - start if pm else 0,
            "flow_bill": end - start,
        }
        v = {
            "d_duration": str(ee - es),
            "d_billsec": str(ee - ans // 1_000_000) if ans else "0",
            "d_progresssec": str(prog // 1_000_000 - es) if prog else "0",
            "d_answersec": str(ans // 1_000_000 - es) if ans else "0",
            "d_waitsec": "0",
            "d_progress_mediasec": str(pm // 1_000_000 - es) if pm else "0",
            "d_flow_billsec": str(ee - es),
            "d_mduration": str((end - start) // 1000),
            "d_uduration": str(end - start),
        }
        for k, us in spans.items():
            v[f"d_{k}msec"] = str(us // 1000)
            v[f"d_{k}usec"] = str(us)
        return v


# -- applications ------------------------------------------------------------------------
def _app_park(leg: Leg, arg: str, then: Callable[[], None] | None) -> None:
    leg.fire("CHANNEL_PARK")


def _app_answer(leg: Leg, arg: str, then: Callable[[], None] | None) -> None:
    if leg.role == "B":
        if leg.core.targets("CODEC"):
            leg.fire("CODEC", variant="read")
            leg.fire("CODEC", variant="write")
        leg.answer_call()
    leg.complete("answer", then)


def _app_pre_answer(leg: Leg, arg: str, then: Callable[[], None] | None) -> None:
    leg.pre_answer()
    leg.complete("pre_answer", then)


def _app_ring_ready(leg: Leg, arg: str, then: Callable[[], None] | None) -> None:
    leg.ring_ready()
    leg.complete("ring_ready", then)


def _app_respond(leg: Leg, arg: str, then: Callable[[], None] | None) -> None:
    m = re.match(r"\s*(\d{3})", arg)
    code = int(m.group(1)) if m else 0
    if code in (180,):
        leg.ring_ready()
    elif code == 183:
        leg.pre_answer()
    elif 200 <= code < 300:
        leg.answer_call()
    elif code >= 300:
        if leg.answer == "answered":
            leg.complete("respond", then)
            return
        cause = SIP_CAUSES.get(code, "NORMAL_TEMPORARY_FAILURE")
        leg.hangup(cause, "send_refuse", term_status=str(code))
        return
    leg.complete("respond", then)


def _app_hangup(leg: Leg, arg: str, then: Callable[[], None] | None) -> None:
    cause = arg.strip().upper() or "NORMAL_CLEARING"
    leg.hangup(cause)


def _app_set(leg: Leg, arg: str, then: Callable[[], None] | None) -> None:
    name, _, value = arg.partition("=")
    if name:
        leg.setvar(name.strip(), value)
    leg.complete(leg.apps[-1][0], then)


def _sleep_ms(arg: str) -> float:
    try:
        return max(int(arg.strip() or 0), 0) / 1000.0
    except ValueError:
        return 0.0


def _app_sleep(leg: Leg, arg: str, then: Callable[[], None] | None) -> None:
    leg.later(_sleep_ms(arg), leg.complete, "sleep", then)


def playback_seconds(path: str) -> float:
    """How long a playback lasts in the simulation (tone_stream: its first segment)."""
    m = re.search(r"%\(([\d]+)\s*,\s*([\d]+)", path)
    if path.startswith("tone_stream://") and m:
        if "loops=-1" in path:
            return -1.0
        return (int(m.group(1)) + int(m.group(2))) / 1000.0
    m = re.match(r"silence_stream://(\d+)", path)
    if m:
        return int(m.group(1)) / 1000.0 if int(m.group(1)) > 0 else -1.0
    return 0.5


def _app_playback(leg: Leg, arg: str, then: Callable[[], None] | None) -> None:
    if "p" not in leg.history:
        leg.history += "p"
    secs = playback_seconds(arg)
    if secs >= 0:
        leg.later(secs, leg.complete, "playback", then)


def _app_stay(leg: Leg, arg: str, then: Callable[[], None] | None) -> None:
    return None


def _app_sched_hangup(leg: Leg, arg: str, then: Callable[[], None] | None) -> None:
    sched_hangup(leg, arg)
    leg.complete("sched_hangup", then)


def _app_bert(leg: Leg, arg: str, then: Callable[[], None] | None) -> None:
    if leg.role == "B" and leg.answer != "answered":
        leg.answer_call()
    leg.bert_running = True
    if "b" not in leg.history:
        leg.history = "b" + leg.history
    timeout_ms = _int(leg.getvar("bert_timeout_ms"), 10000)
    leg.later(timeout_ms / 1000.0, bert_timeout, leg)
    if leg.bert_peer:
        bert_start_sync(leg)
    else:
        leg.send("BERT", 0.0)  # tell the far end our pattern is flowing


def _int(v: str | None, default: int) -> int:
    try:
        return int(v) if v is not None else default
    except ValueError:
        return default


def bert_start_sync(leg: Leg, deadline: float = 0.0) -> None:
    """Both ends run bert_test: in_sync on both after the sync window, at one shared
    (wall-clock) deadline, the B-leg's first (as in captures g and n)."""
    if leg.bert_sync_scheduled:
        return
    leg.bert_sync_scheduled = True
    if deadline <= 0:
        deadline = time.time() + leg.core.cfg.bert_sync_delay
        leg.send("BERT", deadline)
    delay = deadline - time.time() + (0.0 if leg.role == "B" else 0.002)
    leg.later(delay, bert_in_sync, leg)


def bert_peer(leg: Leg, deadline: float) -> None:
    """The far end runs bert_test (``deadline`` > 0: when both get in sync)."""
    leg.bert_peer = True
    if leg.bert_running:
        bert_start_sync(leg, deadline)


def bert_in_sync(leg: Leg) -> None:
    if leg.hungup or not leg.bert_running:
        return
    leg.bert_synced = True
    leg.fire("CUSTOM::mod_bert::in_sync")
    p = leg.core.cfg.bert_lost_sync_prob
    if p > 0 and leg.core.rng.random() < p:
        window = _int(leg.getvar("bert_window_ms"), 1000) / 1000.0
        leg.later(window, bert_lost_sync, leg)


def bert_lost_sync(leg: Leg) -> None:
    if leg.hungup or not leg.bert_running:
        return
    leg.bert_lost_count += 1
    leg.set("bert_lost", "true")
    leg.set("bert_lost_count", str(leg.bert_lost_count))
    leg.set("sync_lost_percent", "100.00")
    leg.set("sync_lost_count", str(leg.bert_lost_count))
    leg.fire("CUSTOM::mod_bert::lost_sync")
    if leg.getvar("bert_hangup_on_error") in ("yes", "true", "1"):
        leg.hangup("MEDIA_TIMEOUT")


def bert_timeout(leg: Leg) -> None:
    if leg.hungup or not leg.bert_running or leg.bert_synced:
        return
    leg.fire("CUSTOM::mod_bert::timeout")
    if leg.getvar("bert_hangup_on_error") in ("yes", "true", "1"):
        leg.hangup("MEDIA_TIMEOUT")


def sched_hangup(leg: Leg, arg: str) -> bool:
    """``sched_hangup +N [cause]``: hang up at the next whole second N seconds on
    (the scheduler runs once a second), cause ALLOTTED_TIMEOUT by default."""
    import time as _time

    parts = arg.split()
    if not parts:
        return False
    when = parts[0]
    cause = parts[1].upper() if len(parts) > 1 else "ALLOTTED_TIMEOUT"
    try:
        if when.startswith("+"):
            target = int(_time.time()) + int(when[1:])
        else:
            target = int(when)
    except ValueError:
        return False
    delay = target - _time.time()
    if delay <= 0:
        leg.core.loop.call_soon(leg.hangup, cause)
    else:
        leg.core.loop.call_later(delay, _sched_fire, leg, cause)
    return True


def _sched_fire(leg: Leg, cause: str) -> None:
    if not leg.hungup:
        leg.hangup(cause)


APPS: dict[str, Callable[[Leg, str, Callable[[], None] | None], None]] = {
    "park": _app_park,
    "answer": _app_answer,
    "pre_answer": _app_pre_answer,
    "ring_ready": _app_ring_ready,
    "respond": _app_respond,
    "hangup": _app_hangup,
    "set": _app_set,
    "export": _app_set,
    "sleep": _app_sleep,
    "playback": _app_playback,
    "endless_playback": _app_stay,
    "echo": _app_stay,
    "bert_test": _app_bert,
    "sched_hangup": _app_sched_hangup,
}


def dp_match(dest: str, core: Core) -> str:
    """``variable_DP_MATCH`` of an inbound leg: the regex captures of its extension
    (``ARRAY::doggy|:doggy``; the bert, busy and vanilla catch-all extensions have none:
    captures d, g)."""
    if (
        dest == "doggy"
        or dest.startswith(("park", "ctl", "control", "nosuch", "404"))
        or (dest not in ("bert", "busy") and core.cfg.dialplan != "vanilla")
    ):
        return f"ARRAY::{dest}|:{dest}"
    return ""


def dialplan(dest: str, core: Core) -> list[tuple[str, str]]:
    """The public-context dialplan of the captures' FreeSWITCH (plus switchio's park-all).

    ``doggy``/``park*`` answer+park, ``ctl*``/``control*`` park only (unanswered),
    ``bert`` set bert_timeout_ms=5000+answer+bert_test, ``tone`` answer+tone playback, ``busy`` respond 486,
    ``nosuch*``/``404*`` hangup NO_ROUTE_DESTINATION, anything else park unanswered
    (with ``dialplan="vanilla"``: set/export, then hang up NORMAL_CLEARING, i.e. a 480).
    ``answer_delay`` makes the answering extensions ring (180) first.
    """
    delay = core.cfg.answer_delay
    ring: list[tuple[str, str]] = [("ring_ready", ""), ("delay", str(delay))] if delay > 0 else []
    if dest == "doggy" or dest.startswith("park"):
        return ring + [("answer", ""), ("park", "")]
    if dest.startswith("ctl") or dest.startswith("control"):
        return [("park", "")]
    if dest == "bert":  # capture g: set, answer, bert_test
        return [("set", "bert_timeout_ms=5000")] + ring + [("answer", ""), ("bert_test", "")]
    if dest == "tone":
        return ring + [("answer", ""), ("playback", "tone_stream://%(251,0,1004);loops=-1")]
    if dest == "busy":
        return [("respond", "486 Busy Here")]  # capture d
    if dest.startswith("nosuch") or dest.startswith("404"):
        return [("hangup", "NO_ROUTE_DESTINATION")]
    if core.cfg.dialplan == "vanilla":
        date = time.strftime("%a, %d %b %Y %H:%M:%S +0000", time.gmtime())
        return [
            ("set", "outside_call=true"),
            ("export", f"RFC2822_DATE={date}"),
            ("end", "NORMAL_CLEARING"),
        ]
    return [("park", "")]
