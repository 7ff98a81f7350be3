"""Measurement: the per-call records a run leaves behind, and what they mean.

Recording (in each worker)
    :class:`CDRWriter` appends one row per call (schema :data:`CDR_SCHEMA`) to a pyarrow IPC
    *stream* file ``cdr-<worker>.arrows``; :class:`CounterWriter` appends per-second counters to
    ``counters-<worker>.arrows`` (like SIPp's periodic statistics); the parent keeps the settings
    and their changes in ``settings.json`` through :class:`SettingsLog`. All three live in one run
    directory (:func:`new_run_dir`, default ``./fastswitch-runs/<YYYYmmdd-HHMMSS>/``).

    Rows are buffered in memory and written as one Arrow record batch every ``flush_rows`` rows
    or ``flush_ms`` milliseconds, whichever comes first; every batch is followed by an OS write,
    so a worker killed with SIGKILL loses at most its unflushed rows, never a written batch.
    Reading tolerates the truncated tail such a kill leaves (:func:`read_stream`).

Analysis (in the parent, live or from a finished run directory)
    :func:`load_run` returns a :class:`Run`: ``.cdr`` (all workers' rows, the B-leg-only rows of
    calls routed to another slave merged into their caller row, ordered by ``caller_create``),
    ``.counters``, ``.settings``, ``.call_metrics`` (see :func:`call_metrics` for the definition
    of every metric), ``.summary()`` (see :func:`summarize`), ``.plot()``.
    :class:`Measurers` is what ``originator.measurers`` returns: the same views, re-read from the
    files on every access. :func:`report_html` writes a self-contained HTML page.

pandas is optional for analysis: without it ``.cdr``, ``.counters`` and ``.call_metrics`` are
lists of lists (rows, columns in schema order; the names are in ``Run.cdr_columns``,
``Run.counter_columns`` and :data:`CALL_METRICS_COLUMNS`). matplotlib is optional for plots.

Times: every seed time column (``caller_create`` ... ``callee_hangup``) is the *worker's receive
time* of the event, ``time.time()`` in float epoch seconds, one clock for all workers on the
host. FreeSWITCH's own stamps (``Event-Date-Timestamp``) are kept in the ``*_fs`` columns; they
move in 20 ms steps, so they are not fit for delays under about 20 ms.
"""

from __future__ import annotations

import base64
import html
import io
import json
import logging
import math
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

log = logging.getLogger(__name__)

__all__ = [
    "CALL_METRICS_COLUMNS",
    "CDR_COLUMNS",
    "CDR_SCHEMA",
    "COUNTER_SCHEMA",
    "OK_CAUSES",
    "CDRWriter",
    "CounterWriter",
    "Measurers",
    "Run",
    "SettingsLog",
    "call_metrics",
    "cdr_path",
    "counters_path",
    "format_summary",
    "load_run",
    "new_run_dir",
    "read_stream",
    "report_html",
    "summarize",
]

# --------------------------------------------------------------------------------------------
# Schemas
# --------------------------------------------------------------------------------------------

_F = pa.float64()
_I = pa.int64()
_S = pa.string()

#: One row per call. The seed's columns first (same order as switchio's CDR), then extras.
CDR_SCHEMA: pa.Schema = pa.schema(
    [
        # --- the seed's columns ---
        pa.field("fastswitch_app", _S),  # app id the call ran (the A-leg's fastswitch_client)
        pa.field("hangup_cause", _S),  # the caller's cause (callee's on a callee-only row)
        pa.field("caller_create", _F),  # worker receive time of the A-leg CHANNEL_CREATE
        pa.field("caller_answer", _F),  # ... A-leg CHANNEL_ANSWER
        pa.field("caller_req_originate", _F),  # ... A-leg CHANNEL_ORIGINATE
        pa.field("caller_originate", _F),  # ... the originate job's BACKGROUND_JOB reply
        pa.field("caller_hangup", _F),  # ... A-leg CHANNEL_HANGUP (DESTROY if no HANGUP)
        pa.field("job_launch", _F),  # time the originate bgapi was written
        pa.field("callee_create", _F),  # ... B-leg CHANNEL_CREATE
        pa.field("callee_answer", _F),  # ... B-leg CHANNEL_ANSWER
        pa.field("callee_hangup", _F),  # ... B-leg CHANNEL_HANGUP (DESTROY if no HANGUP)
        pa.field("failed_calls", _I),  # the worker's cumulative failed calls at row time
        pa.field("active_sessions", _I),  # the worker's live sessions at row time
        pa.field("erlangs", _I),  # the worker's live calls at row time
        # --- extras ---
        pa.field("call_uuid", _S),  # the A-leg uuid (the origination uuid): the merge key
        pa.field("callee_uuid", _S),
        pa.field("slave", _S),  # host:port of the slave the writing worker drives
        pa.field("worker", _I),
        pa.field("job_uuid", _S),
        pa.field("job_result", _S),  # the BACKGROUND_JOB body, stripped ('+OK <uuid>', '-ERR ...')
        pa.field("caller_hangup_cause", _S),
        pa.field("callee_hangup_cause", _S),
        pa.field("caller_sip_status", _S),  # variable_sip_term_status (or invite failure status)
        pa.field("callee_sip_status", _S),
        pa.field("failed", pa.bool_()),
        pa.field("app_verdict", _S),  # an app's word on the call, e.g. 'bert lost_sync'
        pa.field("lost", _S),  # why the worker stopped following the call; null if it did not
        pa.field("row_kind", _S),  # 'call' or 'callee' (B-leg only; merged by call_uuid)
        pa.field("caller_create_fs", _F),  # FreeSWITCH Event-Date-Timestamp, seconds
        pa.field("caller_answer_fs", _F),
        pa.field("caller_hangup_fs", _F),
        pa.field("callee_create_fs", _F),
        pa.field("callee_answer_fs", _F),
        pa.field("callee_hangup_fs", _F),
    ]
)
#: Column names of :data:`CDR_SCHEMA`, in order (the tuple order :meth:`CDRWriter.append` takes).
CDR_COLUMNS: tuple[str, ...] = tuple(CDR_SCHEMA.names)

#: Per-second counters of one worker. ``offered``, ``answered`` and ``failed`` are cumulative
#: since the worker started (per-second rates are their differences, robust to a missed tick);
#: ``active_calls`` / ``active_sessions`` are sampled at ``time``; ``rate_target`` (calls/s) and
#: ``limit_target`` (concurrent calls) are this worker's share of the run's targets at ``time``.
COUNTER_SCHEMA: pa.Schema = pa.schema(
    [
        pa.field("time", _F),
        pa.field("worker", _I),
        pa.field("offered", _I),
        pa.field("answered", _I),
        pa.field("failed", _I),
        pa.field("active_calls", _I),
        pa.field("active_sessions", _I),
        pa.field("rate_target", _F),
        pa.field("limit_target", _F),
    ]
)

#: Hangup causes of a call that ended normally. A call is failed when its originate failed,
#: it was never answered, its caller's cause is not in this set, or an app said so
#: (see :mod:`fastswitch.apps.cdr`). ALLOTTED_TIMEOUT is what ``sched_hangup`` (the hold
#: timer) leaves on the A-leg.
OK_CAUSES: frozenset[str] = frozenset({"NORMAL_CLEARING", "ALLOTTED_TIMEOUT"})

# The B-leg columns a callee-only row contributes to its caller's row when merged.
_CALLEE_COLUMNS = (
    "callee_uuid",
    "callee_create",
    "callee_answer",
    "callee_hangup",
    "callee_hangup_cause",
    "callee_sip_status",
    "callee_create_fs",
    "callee_answer_fs",
    "callee_hangup_fs",
)

SETTINGS_FILE = "settings.json"
RUNS_DIR = "fastswitch-runs"


def cdr_path(run_dir: str | os.PathLike, worker: int) -> Path:
    """The CDR file of ``worker`` in ``run_dir``: ``cdr-<worker>.arrows``."""
    return Path(run_dir) / f"cdr-{worker}.arrows"


def counters_path(run_dir: str | os.PathLike, worker: int) -> Path:
    """The counters file of ``worker`` in ``run_dir``: ``counters-<worker>.arrows``."""
    return Path(run_dir) / f"counters-{worker}.arrows"


def new_run_dir(base: str | os.PathLike | None = None) -> Path:
    """Create and return a fresh run directory ``<base>/<YYYYmmdd-HHMMSS>/`` (local time).

    ``base`` defaults to ``./fastswitch-runs``. A second run started within the same second
    gets a ``-1``, ``-2`` ... suffix, so a run never writes into another's directory.
    """
    root = Path(base) if base is not None else Path.cwd() / RUNS_DIR
    root.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for n in range(10000):
        path = root / (stamp if n == 0 else f"{stamp}-{n}")
        try:
            path.mkdir()
        except FileExistsError:
            continue
        return path
    raise FileExistsError(f"no free run directory name under {root} for {stamp}")


# --------------------------------------------------------------------------------------------
# Writers
# --------------------------------------------------------------------------------------------


# The IPC stream's end-of-stream marker: continuation token + zero metadata length.
_EOS = b"\xff\xff\xff\xff\x00\x00\x00\x00"


class ArrowStreamWriter:
    """Append rows (tuples in ``schema`` order) to an Arrow IPC stream file.

    The record path is one ``list.append`` plus a length check: rows stay tuples until a flush
    transposes them into column lists (``zip(*rows)``, in C) and converts those to Arrow arrays.
    That is about five times cheaper per row than appending to one list per column, and the
    buffer is cleared by every flush, so memory does not grow with the number of rows written.

    A flush happens when ``flush_rows`` rows are buffered (checked on append) or, through
    :meth:`maybe_flush` (call it from a timer), when ``flush_ms`` milliseconds have passed since
    the previous one. Each flush writes one record batch and flushes the file object, so the
    bytes are in the OS before :meth:`flush` returns: a SIGKILL afterwards loses nothing.

    A row that cannot be converted (wrong type or length) is dropped with an error logged and
    counted in :attr:`dropped`; the rest of its batch is written.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        schema: pa.Schema,
        flush_rows: int = 1000,
        flush_ms: float = 500,
    ) -> None:
        if flush_rows < 1:
            raise ValueError(f"flush_rows must be >= 1, not {flush_rows}")
        self.path = Path(path)
        self.schema = schema
        self.flush_rows = int(flush_rows)
        self.flush_ms = float(flush_ms)
        self.rows_written = 0
        self.batches_written = 0
        self.dropped = 0
        self._types = [f.type for f in schema]
        self._ncols = len(schema)
        self._rows: list[tuple] = []
        self._file = open(self.path, "wb")  # noqa: SIM115 - closed by close()
        # The stream format by hand: the schema message now (an empty run is readable), one
        # encapsulated record batch message per flush, the end-of-stream marker on close.
        # Byte-identical to pa.ipc.new_stream's output, and a third of its cost per row:
        # one write of the serialized batch instead of a write per Arrow buffer.
        self._file.write(schema.serialize())
        self._file.flush()
        self._last_flush = time.monotonic()
        self.closed = False

    @property
    def pending(self) -> int:
        """Rows buffered and not yet written."""
        return len(self._rows)

    def append(self, row: tuple) -> None:
        """Buffer one row (a tuple in schema column order); flush when ``flush_rows`` are buffered."""
        rows = self._rows
        rows.append(row)
        if len(rows) >= self.flush_rows:
            self.flush()

    def maybe_flush(self, now: float | None = None) -> bool:
        """Flush if rows are buffered and ``flush_ms`` has passed since the last flush.

        ``now`` is a ``time.monotonic()`` reading (taken here when omitted). Returns whether
        a batch was written.
        """
        if not self._rows:
            return False
        if now is None:
            now = time.monotonic()
        if len(self._rows) >= self.flush_rows or (now - self._last_flush) * 1000.0 >= self.flush_ms:
            return self.flush()
        return False

    def flush(self) -> bool:
        """Write the buffered rows as one record batch and push it to the OS. Returns whether
        a batch was written."""
        self._last_flush = time.monotonic()
        rows = self._rows
        if not rows or self.closed:
            return False
        self._rows = []
        batch = self._to_batch(rows)
        if batch is None or batch.num_rows == 0:
            return False
        self._file.write(batch.serialize())
        self._file.flush()
        self.rows_written += batch.num_rows
        self.batches_written += 1
        return True

    def _to_batch(self, rows: list[tuple]) -> pa.RecordBatch | None:
        ncols = self._ncols
        try:
            if all(len(r) == ncols for r in rows):
                cols = zip(*rows, strict=True)
                arrays = [pa.array(c, type=t) for c, t in zip(cols, self._types, strict=True)]
                return pa.RecordBatch.from_arrays(arrays, schema=self.schema)
        except (pa.ArrowException, TypeError, ValueError, OverflowError):
            pass
        # Slow path: find and drop the rows that do not fit the schema.
        good = []
        for row in rows:
            problem = self._check_row(row)
            if problem is None:
                good.append(row)
            else:
                self.dropped += 1
                log.error("%s: dropped a row that does not fit the schema: %s", self.path, problem)
        if not good:
            return None
        cols = zip(*good, strict=True)
        arrays = [pa.array(c, type=t) for c, t in zip(cols, self._types, strict=True)]
        return pa.RecordBatch.from_arrays(arrays, schema=self.schema)

    def _check_row(self, row: Any) -> str | None:
        if not isinstance(row, tuple | list) or len(row) != self._ncols:
            n = len(row) if isinstance(row, tuple | list) else type(row).__name__
            return f"expected {self._ncols} values, got {n}"
        for value, field in zip(row, self.schema, strict=True):
            try:
                pa.array([value], type=field.type)
            except (pa.ArrowException, TypeError, ValueError, OverflowError) as exc:
                return f"column {field.name!r}: {value!r} is not {field.type} ({exc})"
        return None

    def close(self) -> None:
        """Flush, end the stream and close the file (idempotent)."""
        if self.closed:
            return
        try:
            self.flush()
        finally:
            self.closed = True
            try:
                self._file.write(_EOS)
            finally:
                self._file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"<{type(self).__name__} {self.path} written={self.rows_written} "
            f"pending={self.pending} batches={self.batches_written}>"
        )


class CDRWriter(ArrowStreamWriter):
    """The CDR file of one worker: rows in :data:`CDR_SCHEMA` order (:data:`CDR_COLUMNS`).

    ``w = CDRWriter(path, flush_rows=1000, flush_ms=500)``; ``w.append(row)`` per call;
    ``w.maybe_flush()`` from the worker's timer; ``w.close()`` at the end.
    """

    def __init__(self, path: str | os.PathLike, flush_rows: int = 1000, flush_ms: float = 500):
        super().__init__(path, CDR_SCHEMA, flush_rows=flush_rows, flush_ms=flush_ms)


class CounterWriter(ArrowStreamWriter):
    """Per-second counters of one worker (:data:`COUNTER_SCHEMA`), like SIPp's statistics file.

    ``append((time, offered, answered, failed, active_calls, active_sessions, rate_target,
    limit_target))`` — the ``worker`` column is filled from the constructor — or
    :meth:`record` with keywords. Every row is written at once by default (``flush_rows=1``):
    at one row a second that costs nothing and a reader always sees the latest second.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        worker: int = 0,
        flush_rows: int = 1,
        flush_ms: float = 1000,
    ) -> None:
        super().__init__(path, COUNTER_SCHEMA, flush_rows=flush_rows, flush_ms=flush_ms)
        self.worker = int(worker)

    def append(self, row: tuple) -> None:
        """Buffer ``(time, offered, answered, failed, active_calls, active_sessions,
        rate_target, limit_target)``."""
        if len(row) == len(COUNTER_SCHEMA) - 1:
            row = (row[0], self.worker, *row[1:])
        super().append(row)

    def record(
        self,
        *,
        offered: int,
        answered: int,
        failed: int,
        active_calls: int,
        active_sessions: int,
        rate_target: float,
        limit_target: float,
        time_: float | None = None,
    ) -> None:
        """Append one sample (``time_`` defaults to ``time.time()``)."""
        self.append(
            (
                time.time() if time_ is None else time_,
                offered,
                answered,
                failed,
                active_calls,
                active_sessions,
                float(rate_target),
                float(limit_target),
            )
        )


class SettingsLog:
    """The run's settings and every change to them, kept in ``<run_dir>/settings.json``.

    File format::

        {"start_time": <epoch s>, "initial": {name: value, ...},
         "changes": [{"time": <epoch s>, "setting": name, "value": value}, ...]}

    The file is rewritten atomically (temporary file + rename) on every change, so a reader
    never sees half of it. Values that JSON cannot hold are stored as their ``str()``.
    Opening an existing file continues it.
    """

    def __init__(self, run_dir: str | os.PathLike, initial: Mapping[str, Any] | None = None):
        self.path = Path(run_dir) / SETTINGS_FILE
        if self.path.exists():
            self.data = read_settings(run_dir)
        else:
            self.data = {"start_time": time.time(), "initial": {}, "changes": []}
        if initial is not None:
            self.data["initial"].update(initial)
        self._save()

    def set_initial(self, settings: Mapping[str, Any]) -> None:
        """Record the settings in force when the run starts."""
        self.data["initial"].update(settings)
        self._save()

    def record(self, name: str, value: Any, time_: float | None = None) -> None:
        """Record that setting ``name`` became ``value`` (at ``time_``, default now)."""
        t = time.time() if time_ is None else float(time_)
        self.data["changes"].append({"time": t, "setting": name, "value": value})
        self._save()

    def incident(self, kind: str, time_: float | None = None, **fields: Any) -> None:
        """Record something that happened to the run (``incidents``: a slave went down or
        came back, a worker crashed or was restarted, a worker shed load, FreeSWITCH killed
        a listener for lost events ...), with its details (``slave``, ``unrecorded`` ...)."""
        t = time.time() if time_ is None else float(time_)
        self.data.setdefault("incidents", []).append(dict(fields, time=t, kind=kind))
        self._save()

    def set_totals(self, totals: Mapping[str, Any]) -> None:
        """Record the Originator's final counters (``totals``: calls offered, answered,
        failed, lost ..., over every worker incarnation) when the run ends."""
        self.data["totals"] = dict(totals)
        self._save()

    @property
    def initial(self) -> dict[str, Any]:
        return self.data["initial"]

    @property
    def changes(self) -> list[dict[str, Any]]:
        return self.data["changes"]

    def value_at(self, name: str, t: float, default: Any = None) -> Any:
        """The value ``name`` had at time ``t``."""
        return settings_value_at(self.data, name, t, default)

    def _save(self) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp")
        with open(tmp, "w") as f:
            json.dump(self.data, f, indent=1, default=str)
        os.replace(tmp, self.path)


def read_settings(run_dir: str | os.PathLike) -> dict[str, Any]:
    """``settings.json`` of a run as ``{"initial": {...}, "changes": [...], ...}``.

    Missing or unreadable: empty ``initial`` and ``changes``. A flat ``{setting: value}``
    object (no ``initial`` / ``changes`` keys) is read as the initial settings.
    """
    path = Path(run_dir) / SETTINGS_FILE
    try:
        with open(path) as f:
            data = json.load(f)
    except (FileNotFoundError, json.JSONDecodeError):
        data = {}
    if not isinstance(data, dict):
        data = {}
    if "initial" not in data and "changes" not in data and data:
        # A flat {setting: value} file (no change history): those are the initial settings.
        data = {"initial": data, "changes": []}
    data.setdefault("initial", {})
    data.setdefault("changes", [])
    return data


def settings_value_at(settings: Mapping[str, Any], name: str, t: float, default: Any = None):
    """The value setting ``name`` had at time ``t``: the last change at or before ``t``, else
    its initial value, else ``default``."""
    value = settings.get("initial", {}).get(name, default)
    for ch in settings.get("changes", ()):
        if ch.get("setting") == name and ch.get("time", math.inf) <= t:
            value = ch.get("value")
    return value


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------


def read_stream(path: str | os.PathLike, schema: pa.Schema | None = None) -> pa.Table:
    """Every complete record batch of an Arrow IPC stream file, as one Table.

    A stream whose writer was killed ends in a partial message (or has no end-of-stream marker):
    batches are read until that error, so every batch that was fully written is returned. An
    empty or unreadable file gives an empty table of ``schema`` (when given). When ``schema``
    is given the result is conformed to it (missing columns null, extra columns dropped).
    """
    batches = []
    file_schema = None
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        data = b""
    if data:
        try:
            reader = pa.ipc.open_stream(pa.py_buffer(data))
            file_schema = reader.schema
            while True:
                try:
                    batches.append(reader.read_next_batch())
                except StopIteration:
                    break
                except (pa.ArrowInvalid, pa.ArrowException, OSError) as exc:
                    log.debug("%s: stream ends in a partial batch (%s)", path, exc)
                    break
        except (pa.ArrowInvalid, pa.ArrowException, OSError) as exc:
            log.debug("%s: no readable schema (%s)", path, exc)
    if file_schema is None:
        if schema is None:
            return pa.table({})
        return schema.empty_table()
    table = pa.Table.from_batches(batches, schema=file_schema)
    return _conform(table, schema) if schema is not None else table


def _conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    if table.schema.equals(schema):
        return table
    cols = []
    for field in schema:
        if field.name in table.column_names:
            cols.append(table.column(field.name).cast(field.type))
        else:
            cols.append(pa.nulls(table.num_rows, type=field.type))
    return pa.Table.from_arrays(cols, schema=schema)


def _worker_files(run_dir: Path, prefix: str) -> list[Path]:
    def key(p: Path):
        tail = p.stem[len(prefix) :]
        return (0, int(tail), "") if tail.isdigit() else (1, 0, tail)

    return sorted(run_dir.glob(f"{prefix}*.arrows"), key=key)


def read_cdr(run_dir: str | os.PathLike) -> pa.Table:
    """All workers' CDR rows of a run, callee-only rows merged, ordered by ``caller_create``.

    A row of kind ``'callee'`` (the B-leg of a call another worker originated) is merged into
    the ``'call'`` row with the same ``call_uuid``: its B-leg columns fill the caller row's
    empty ones, ``failed`` becomes the OR of both, ``app_verdict`` the first non-null. A
    callee row with no caller row in the run stays a row of its own (kind ``'callee'``).
    Rows are ordered by ``caller_create`` (rows without one by ``callee_create``), ties by
    ``call_uuid``.
    """
    tables = [read_stream(p, CDR_SCHEMA) for p in _worker_files(Path(run_dir), "cdr-")]
    table = pa.concat_tables(tables) if tables else CDR_SCHEMA.empty_table()
    table = merge_callee_rows(table)
    order_key = pc.coalesce(table.column("caller_create"), table.column("callee_create"))
    keyed = table.append_column("__order", order_key)
    idx = pc.sort_indices(
        keyed, sort_keys=[("__order", "ascending", "at_end"), ("call_uuid", "ascending", "at_end")]
    )
    return table.take(idx)


def merge_callee_rows(table: pa.Table) -> pa.Table:
    """Merge ``'callee'`` rows into the ``'call'`` rows with the same ``call_uuid`` (see
    :func:`read_cdr`). Order is not preserved."""
    is_callee = pc.fill_null(pc.equal(table.column("row_kind"), "callee"), False)
    callees = table.filter(is_callee)
    if callees.num_rows == 0:
        return table
    calls = table.filter(pc.invert(is_callee))
    # One callee row per call_uuid (the first), should a B-leg ever be reported twice.
    seen: set = set()
    keep = []
    for i, key in enumerate(callees.column("call_uuid").to_pylist()):
        if key is None or key not in seen:
            keep.append(i)
            seen.add(key)
    if len(keep) != callees.num_rows:
        callees = callees.take(pa.array(keep, type=pa.int64()))
    callee_keys = callees.column("call_uuid")
    idx = pc.index_in(
        calls.column("call_uuid"), value_set=callee_keys.combine_chunks(), skip_nulls=True
    )
    merged = {}
    for name in _CALLEE_COLUMNS:
        merged[name] = pc.coalesce(calls.column(name), callees.column(name).take(idx))
    b_failed = pc.fill_null(callees.column("failed").take(idx), False)
    merged["failed"] = pc.or_(pc.fill_null(calls.column("failed"), False), b_failed)
    merged["app_verdict"] = pc.coalesce(
        calls.column("app_verdict"), callees.column("app_verdict").take(idx)
    )
    cols = [merged.get(name, calls.column(name)) for name in table.column_names]
    calls = pa.Table.from_arrays(cols, schema=table.schema)
    matched = pc.fill_null(
        pc.is_in(
            callee_keys, value_set=calls.column("call_uuid").combine_chunks(), skip_nulls=True
        ),
        False,
    )
    orphans = callees.filter(pc.invert(matched))
    return pa.concat_tables([calls, orphans])


def read_counters(run_dir: str | os.PathLike) -> pa.Table:
    """All workers' per-second counters of a run, ordered by time then worker."""
    tables = []
    for p in _worker_files(Path(run_dir), "counters-"):
        t = read_stream(p, COUNTER_SCHEMA)
        tail = p.stem[len("counters-") :]
        if t.num_rows and tail.isdigit() and t.column("worker").null_count == t.num_rows:
            t = t.set_column(
                t.schema.get_field_index("worker"), "worker", pa.array([int(tail)] * t.num_rows)
            )
        tables.append(t)
    table = pa.concat_tables(tables) if tables else COUNTER_SCHEMA.empty_table()
    idx = pc.sort_indices(table, sort_keys=[("time", "ascending"), ("worker", "ascending")])
    return table.take(idx)


def _have_pandas() -> bool:
    try:
        import pandas  # noqa: F401
    except ImportError:
        return False
    return True


def _present(table: pa.Table):
    """A DataFrame when pandas is importable, else a list of row lists."""
    if _have_pandas():
        return table.to_pandas()
    cols = [c.to_pylist() for c in table.columns]
    return [list(r) for r in zip(*cols, strict=True)] if cols else []


# --------------------------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------------------------

#: Columns of :func:`call_metrics`, in order.
CALL_METRICS_COLUMNS: tuple[str, ...] = (
    "call_uuid",
    "fastswitch_app",
    "slave",
    "hangup_cause",
    "failed",
    "caller_create",
    "invite_latency",
    "originate_latency",
    "call_setup_latency",
    "answer_latency",
    "call_duration",
    "call_rate",
    "avg_call_rate",
    "failed_calls",
    "active_sessions",
    "erlangs",
    "seizure_fail_rate",
    "answer_seizure_ratio",
)

#: ``call_rate`` is clipped at this many calls per second.
CALL_RATE_CLIP = 1000.0
#: ``avg_call_rate`` is NaN until this many calls (or the window) have arrived.
AVG_RATE_MIN_CALLS = 10
#: ``avg_call_rate`` window, in calls.
AVG_RATE_WINDOW = 100


def _f64(table: pa.Table, name: str) -> np.ndarray:
    return np.asarray(table.column(name).to_numpy(), dtype=np.float64)


def call_metrics_arrays(
    table: pa.Table, window: int = AVG_RATE_WINDOW, rate_clip: float = CALL_RATE_CLIP
) -> dict[str, np.ndarray | pa.ChunkedArray]:
    """The :func:`call_metrics` columns as numpy arrays (strings as Arrow columns); see there."""
    n = table.num_rows
    caller_create = _f64(table, "caller_create")
    caller_answer = _f64(table, "caller_answer")
    callee_create = _f64(table, "callee_create")
    callee_answer = _f64(table, "callee_answer")
    caller_hangup = _f64(table, "caller_hangup")
    caller_req = _f64(table, "caller_req_originate")
    job_launch = _f64(table, "job_launch")
    failed = np.asarray(pc.fill_null(table.column("failed"), False).to_numpy(zero_copy_only=False))
    failed = failed.astype(bool)
    is_call = np.asarray(
        pc.fill_null(pc.not_equal(table.column("row_kind"), "callee"), True).to_numpy(
            zero_copy_only=False
        ),
        dtype=bool,
    )

    with np.errstate(invalid="ignore", divide="ignore"):
        # Rates over the caller rows only, in caller_create order.
        call_rate = np.full(n, np.nan)
        avg_rate = np.full(n, np.nan)
        sfr = np.full(n, np.nan)
        asr = np.full(n, np.nan)
        sel = np.flatnonzero(is_call & ~np.isnan(caller_create))
        if sel.size:
            t = caller_create[sel]
            d = np.diff(t)
            r = np.empty(t.size)
            r[0] = np.nan
            r[1:] = np.where(d > 0, 1.0 / np.where(d > 0, d, 1.0), np.inf)
            call_rate[sel] = np.minimum(r, rate_clip)
            k = np.arange(t.size)
            lag = np.maximum(k - window, 0)
            span = t - t[lag]
            avg = np.where(span > 0, (k - lag) / np.where(span > 0, span, 1.0), np.nan)
            # a rate over one or two arrivals is noise (two workers' calls created in the
            # same millisecond read as thousands per second): wait for a few arrivals
            avg[k < min(window, AVG_RATE_MIN_CALLS)] = np.nan
            avg_rate[sel] = avg
        sel_all = np.flatnonzero(is_call)
        if sel_all.size:
            k1 = np.arange(1, sel_all.size + 1)
            sfr[sel_all] = np.cumsum(failed[sel_all]) / k1
            asr[sel_all] = np.cumsum(~np.isnan(caller_answer[sel_all])) / k1
        out: dict[str, np.ndarray | pa.ChunkedArray] = {
            "call_uuid": table.column("call_uuid"),
            "fastswitch_app": table.column("fastswitch_app"),
            "slave": table.column("slave"),
            "hangup_cause": table.column("hangup_cause"),
            "failed": failed,
            "caller_create": caller_create,
            "invite_latency": callee_create - caller_create,
            "originate_latency": caller_req - job_launch,
            "call_setup_latency": caller_answer - caller_create,
            "answer_latency": caller_answer - callee_answer,
            "call_duration": caller_hangup - caller_create,
            "call_rate": call_rate,
            "avg_call_rate": avg_rate,
            "failed_calls": _f64(table, "failed_calls"),
            "active_sessions": _f64(table, "active_sessions"),
            "erlangs": _f64(table, "erlangs"),
            "seizure_fail_rate": sfr,
            "answer_seizure_ratio": asr,
        }
    return out


def call_metrics(
    table: pa.Table, window: int = AVG_RATE_WINDOW, rate_clip: float = CALL_RATE_CLIP
) -> pa.Table:
    """Per-call metrics derived from merged CDR rows (one output row per input row, same order:
    the order of :func:`read_cdr`, i.e. by ``caller_create``). Times in seconds; NaN where an
    input is missing (e.g. no B-leg, never answered).

    Pass-through: ``call_uuid``, ``fastswitch_app``, ``slave``, ``hangup_cause``, ``failed``,
    ``caller_create`` (the time axis), ``failed_calls``, ``active_sessions``, ``erlangs``.

    - ``invite_latency`` = ``callee_create − caller_create``: from our A-leg's creation to the
      B-leg's arrival through the system under test (the INVITE's trip).
    - ``originate_latency`` = ``caller_req_originate − job_launch``: from writing the originate
      ``bgapi`` to receiving the A-leg's CHANNEL_ORIGINATE (FreeSWITCH's and the event path's
      own delay; nothing to do with the SUT).
    - ``call_setup_latency`` = ``caller_answer − caller_create``: from our A-leg's creation to
      its answer, i.e. post-dial delay plus the callee's answer delay.
    - ``answer_latency`` = ``caller_answer − callee_answer``: how long the B-leg's answer (200 OK)
      takes to reach the A-leg through the SUT.
    - ``call_duration`` = ``caller_hangup − caller_create``: the A-leg's life, create to hangup
      (switchio's definition; the Originator's hold timer counts ``duration`` from the
      A-leg's answer, so ``call_duration`` ≈ ``call_setup_latency + duration``).
    - ``call_rate``: instantaneous offered rate, ``1 / (caller_create[i] − caller_create[i−1])``
      over consecutive caller rows (all workers together), NaN on the first, clipped at
      ``rate_clip`` (1000 /s; also the value for two creates in the same instant).
    - ``avg_call_rate``: offered rate over the last ``window`` (100) calls,
      ``m / (caller_create[i] − caller_create[i−m])`` with ``m = min(i, window)`` — the mean
      of the arrival rate over that window (an honest average of rates, unlike the mean of the
      clipped instantaneous values); NaN until ``min(window, 10)`` calls have arrived.
    - ``seizure_fail_rate``: failed calls / offered calls, cumulative over the caller rows up
      to and including this one (``failed`` as recorded by the CDR app).
    - ``answer_seizure_ratio`` (ASR): answered calls (``caller_answer`` present) / offered calls,
      cumulative likewise. Unlike switchio it is not ``1 − seizure_fail_rate``: a call that
      was answered and later failed (e.g. BERT lost sync) counts in both.

    Callee-only rows (no caller row in the run) get NaN rates and ratios.
    """
    cols = call_metrics_arrays(table, window=window, rate_clip=rate_clip)
    arrays = []
    for name in CALL_METRICS_COLUMNS:
        v = cols[name]
        if isinstance(v, pa.ChunkedArray):
            arrays.append(v)
        elif v.dtype == bool:
            arrays.append(pa.array(v, type=pa.bool_()))
        else:
            arrays.append(pa.array(v, type=pa.float64(), from_pandas=True))
    return pa.Table.from_arrays(arrays, names=list(CALL_METRICS_COLUMNS)).combine_chunks()


def _percentiles(values: np.ndarray) -> dict[str, float | int | None]:
    """count, mean, p50, p90, p95, p99, max of the finite values (numpy's linear
    interpolation)."""
    v = values[np.isfinite(values)]
    if v.size == 0:
        return {"count": 0, **dict.fromkeys(("mean", "p50", "p90", "p95", "p99", "max"))}
    p50, p90, p95, p99 = np.percentile(v, [50, 90, 95, 99])
    return {
        "count": int(v.size),
        "mean": float(v.mean()),
        "p50": float(p50),
        "p90": float(p90),
        "p95": float(p95),
        "p99": float(p99),
        "max": float(v.max()),
    }


_LATENCIES = ("call_setup_latency", "answer_latency", "invite_latency", "originate_latency")


def _max_concurrent(start: np.ndarray, end: np.ndarray) -> int:
    """Maximum number of intervals ``[start, end)`` open at once (an end at the same instant
    as a start closes first); intervals with no end count as open until the last event."""
    ok = np.isfinite(start)
    s = start[ok]
    e = end[ok]
    if s.size == 0:
        return 0
    e = np.where(np.isfinite(e), e, np.inf)
    times = np.concatenate([s, e])
    steps = np.concatenate([np.ones(s.size, dtype=np.int64), -np.ones(e.size, dtype=np.int64)])
    order = np.lexsort((steps, times))
    return int(np.cumsum(steps[order]).max())


def _bools(arr: pa.ChunkedArray | pa.Array) -> np.ndarray:
    return np.asarray(arr.to_numpy(zero_copy_only=False), dtype=bool)


def _value_counts(col: pa.ChunkedArray) -> dict[str, int]:
    """``{value: count}`` of the non-null values, most common first (ties by value)."""
    vc = pc.value_counts(col.drop_null()).to_pylist()
    pairs = sorted(((d["values"], d["counts"]) for d in vc), key=lambda p: (-p[1], str(p[0])))
    return {str(v): int(c) for v, c in pairs}


def _group_rows_by(col: pa.ChunkedArray) -> dict[str, np.ndarray]:
    """``{value: row indices}`` of a string column (null grouped as ``''``)."""
    if len(col) == 0:
        return {}
    enc = pc.dictionary_encode(pc.fill_null(col, "").combine_chunks())
    codes = enc.indices.to_numpy(zero_copy_only=False).astype(np.int64)
    names = enc.dictionary.to_pylist()
    order = np.argsort(codes, kind="stable")
    bounds = np.searchsorted(codes[order], np.arange(len(names) + 1))
    return {str(names[k]): order[bounds[k] : bounds[k + 1]] for k in range(len(names))}


def _group_summary(
    m: dict, rows: np.ndarray, answered: np.ndarray, lost: np.ndarray
) -> dict[str, Any]:
    return {
        "offered": int(rows.size),
        "answered": int(answered[rows].sum()),
        "failed": int(m["failed"][rows].sum()),
        "lost": int(lost[rows].sum()),
        "latency": {name: _percentiles(m[name][rows]) for name in _LATENCIES},
    }


def _counter_sums(counters: pa.Table, name: str, at: np.ndarray) -> np.ndarray:
    """For each time in ``at``: the sum over workers of each worker's latest sample of
    counter ``name`` at or before that time (NaN where no worker has a sample yet).
    O((samples + len(at)) log samples)."""
    out = np.full(at.shape, np.nan)
    if counters.num_rows == 0:
        return out
    t = _f64(counters, "time")
    v = _f64(counters, name)
    w = np.asarray(counters.column("worker").to_numpy(zero_copy_only=False))
    for worker in np.unique(w):
        sel = np.flatnonzero(w == worker)
        order = sel[np.argsort(t[sel], kind="stable")]
        idx = np.searchsorted(t[order], at, side="right") - 1
        have = idx >= 0
        vals = np.where(have, v[order][np.maximum(idx, 0)], 0.0)
        out = np.where(have, np.where(np.isnan(out), 0.0, out) + vals, out)
    return out


# A counter target at or above this is "unlimited" (workers write 2**53 for an infinite limit).
_UNLIMITED = 1e15


def _average_target(
    counters: pa.Table,
    settings: Mapping[str, Any],
    target: Any,
    start: float | None,
    end: float | None,
) -> float | None:
    """The time-weighted average of the rate target over ``[start, end]``.

    The target is a step function: it changes only at a worker's counter sample or at a
    change of the ``rate`` setting, so it is evaluated at each such instant inside the span
    (and at ``start``) and integrated exactly. Stretches with no known target are left out;
    None when the target is never known. A span of 0 gives the target at ``start``."""
    if start is None or end is None:
        return None
    cuts = [start]
    if counters.num_rows:
        t = _f64(counters, "time")
        cuts.extend(t[(t > start) & (t < end)].tolist())
    for ch in settings.get("changes", ()):
        ct = ch.get("time")
        if ch.get("setting") == "rate" and isinstance(ct, int | float) and start < ct < end:
            cuts.append(float(ct))
    at = np.unique(np.asarray(cuts, dtype=float))
    sums = _counter_sums(counters, "rate_target", at)
    values = [target("rate", sums[k], float(at[k])) for k in range(at.size)]
    if end <= start:
        v = values[0]
        return float(v) if isinstance(v, int | float) else None
    widths = np.diff(np.append(at, end))
    total = weight = 0.0
    for v, w in zip(values, widths, strict=True):
        if isinstance(v, int | float) and not isinstance(v, bool):
            total += float(v) * w
            weight += w
    return total / weight if weight > 0 else None


def summarize(
    table: pa.Table,
    counters: pa.Table | None = None,
    settings: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The run in numbers, from merged CDR rows (:func:`read_cdr`), counters and settings.

    Keys:

    - ``offered``: caller rows (one per originate attempt, failed or not);
      ``answered``: those with a ``caller_answer``; ``failed``: those with ``failed`` set;
      ``failed_by_cause``: ``{hangup_cause: n}`` over the failed rows ('UNKNOWN' if none);
      ``failed_by_verdict``: ``{app_verdict: n}``; ``lost``: rows with ``lost`` set, and
      ``lost_by_reason``; ``callee_only``: B-leg rows with no caller row in the run.
    - ``unrecorded``: calls offered whose rows were lost with a crashed worker (counted by the
      parent when it saw the crash: settings.json ``incidents``); ``incidents``: ``{kind: n}``
      (``slave_down``, ``slave_up``, ``worker_died``, ``worker_restarted``, ``shedding``,
      ``listener_killed`` ...); ``offered_total``: the Originator's count of calls offered
      (settings.json ``totals``, None while the run is going on). A run that ended cleanly
      has ``offered == offered_total - unrecorded``.
    - ``start``, ``end``, ``duration``: first and last ``caller_create`` and the span (s).
    - ``rate``: ``achieved`` and ``target`` over the offering period, the span from the
      first to the last call created. ``achieved`` counts the intervals between successive
      calls of each worker (a worker's first call opens its first interval: offered minus
      one per worker that offered) over the span, calls/s (None when no worker offered two
      calls); ``target`` is the time-weighted average target over the span (the one in force
      at the first call when the span is 0). ``over_time``: one entry a second ``{"t":
      seconds since start, "achieved": calls created in that second, "target": target at
      mid-second}``. A target at an instant is the sum over workers of their latest
      ``rate_target`` counter sample at that time; without counters, the ``rate`` setting
      (settings.json, with its changes).
    - ``concurrency``: ``max_active_calls`` (most calls alive at once, from the CDR intervals
      ``caller_create`` → ``caller_hangup``), ``max_active_counters`` (largest per-second sum of
      the workers' ``active_calls``), ``limit`` (``limit_target`` / the ``limit`` setting, as
      for the rate; None when unlimited).
    - ``latency``: for each of call_setup, answer, invite and originate latency (see
      :func:`call_metrics`): count, mean, p50, p90, p95, p99, max — seconds, over the calls that
      have the value, percentiles by numpy's linear interpolation.
    - ``per_app`` / ``per_slave``: ``{name: {offered, answered, failed, lost, latency}}``
      (callee-only rows count under their own slave / app).
    """
    settings = settings or {}
    m = call_metrics_arrays(table)
    n = table.num_rows
    is_call = _bools(pc.fill_null(pc.not_equal(table.column("row_kind"), "callee"), True))
    lost = _bools(pc.is_valid(table.column("lost")))
    caller_answer = _f64(table, "caller_answer")
    # Answered: the caller leg answered (a callee-only row: its B-leg answered).
    answered = np.where(is_call, ~np.isnan(caller_answer), ~np.isnan(_f64(table, "callee_answer")))
    failed = m["failed"]
    call_rows = np.flatnonzero(is_call)
    failed_calls = table.filter(pa.array(is_call & failed))
    failed_by_cause = _value_counts(pc.fill_null(failed_calls.column("hangup_cause"), "UNKNOWN"))
    failed_by_verdict = _value_counts(failed_calls.column("app_verdict"))
    lost_by_reason = _value_counts(table.filter(pa.array(is_call & lost)).column("lost"))

    create = m["caller_create"][call_rows]
    finite_create = create[np.isfinite(create)]
    start = float(finite_create.min()) if finite_create.size else None
    end = float(finite_create.max()) if finite_create.size else None
    span = (end - start) if start is not None else 0.0

    # Targets: the workers' counters first, else the settings log.
    ctr = counters if counters is not None else COUNTER_SCHEMA.empty_table()

    def target(setting: str, summed: float, t: float):
        """The counters' sum if there is one, else the setting; None for 'no limit'."""
        v = settings_value_at(settings, setting, t) if np.isnan(summed) else float(summed)
        if isinstance(v, int | float) and not isinstance(v, bool):
            if not math.isfinite(v) or v >= _UNLIMITED:
                return None
        return v

    def target_at(setting: str, counter: str, t: float):
        return target(setting, _counter_sums(ctr, counter, np.array([t]))[0], t)

    over_time = []
    if start is not None:
        nbins = int(math.floor(span)) + 1
        counts = np.bincount(
            np.minimum((finite_create - start).astype(np.int64), nbins - 1), minlength=nbins
        )
        mids = start + np.arange(nbins) + 0.5
        sums = _counter_sums(ctr, "rate_target", mids)
        for k in range(nbins):
            tgt = target("rate", sums[k], float(mids[k]))
            over_time.append({"t": k, "achieved": int(counts[k]), "target": tgt})
    last_t = end if end is not None else math.inf
    rate_target = _average_target(ctr, settings, target, start, end)
    limit_target = target_at("limit", "limit_target", last_t)
    achieved = None
    if span > 0:
        # the calls of each worker, a null worker id counting as one more worker
        workers = pc.fill_null(table.column("worker"), -1).to_numpy(zero_copy_only=False)
        _ids, per_worker = np.unique(workers[call_rows][np.isfinite(create)], return_counts=True)
        intervals = int(np.maximum(per_worker - 1, 0).sum())
        achieved = intervals / span if intervals else None

    hang = m["caller_create"] + np.where(
        np.isfinite(m["call_duration"]), m["call_duration"], np.nan
    )
    max_active = _max_concurrent(m["caller_create"][call_rows], hang[call_rows])
    max_active_counters = None
    if ctr.num_rows:
        sums = _counter_sums(ctr, "active_calls", np.unique(_f64(ctr, "time")))
        max_active_counters = int(np.nanmax(sums))

    # Calls whose rows died with a crashed worker (counted by the parent at the crash),
    # the run's incidents by kind, and the Originator's own count of calls offered.
    incident_list = [i for i in settings.get("incidents", ()) if isinstance(i, Mapping)]
    unrecorded = int(sum(int(i.get("unrecorded", 0) or 0) for i in incident_list))
    incidents: dict[str, int] = {}
    for i in incident_list:
        k = str(i.get("kind"))
        incidents[k] = incidents.get(k, 0) + 1
    totals = settings.get("totals")
    offered_total = (
        int(totals["originated"])
        if isinstance(totals, Mapping) and totals.get("originated") is not None
        else None
    )

    def groups(col: str) -> dict[str, dict]:
        return {
            name: _group_summary(m, idx, answered, lost)
            for name, idx in sorted(_group_rows_by(table.column(col)).items())
        }

    return {
        "offered": int(call_rows.size),
        "answered": int(answered[call_rows].sum()),
        "failed": int(failed[call_rows].sum()),
        "failed_by_cause": failed_by_cause,
        "failed_by_verdict": failed_by_verdict,
        "lost": int(lost[call_rows].sum()),
        "lost_by_reason": lost_by_reason,
        "callee_only": int(n - call_rows.size),
        "unrecorded": unrecorded,
        "incidents": incidents,
        "offered_total": offered_total,
        "start": start,
        "end": end,
        "duration": span,
        "rate": {
            "achieved": achieved,
            "target": rate_target,
            "over_time": over_time,
        },
        "concurrency": {
            "max_active_calls": max_active,
            "max_active_counters": max_active_counters,
            "limit": limit_target,
        },
        "latency": {name: _percentiles(m[name][call_rows]) for name in _LATENCIES},
        "per_app": groups("fastswitch_app"),
        "per_slave": groups("slave"),
    }


def _fmt(v: Any, unit: str = "") -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    if isinstance(v, float):
        if unit == "ms":
            return f"{v * 1000:.1f}"
        return f"{v:.2f}"
    return str(v)


def _table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    rows = [[str(c) for c in r] for r in rows]
    widths = [len(h) for h in headers]
    for r in rows:
        widths = [max(w, len(c)) for w, c in zip(widths, r, strict=True)]
    line = "  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))
    out = [line, "  ".join("-" * w for w in widths)]
    out += ["  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(out)


def _latency_rows(latency: Mapping[str, Mapping[str, Any]]) -> list[list[str]]:
    return [
        [name, str(p["count"])] + [_fmt(p[k], "ms") for k in ("mean", "p50", "p90", "p99", "max")]
        for name, p in latency.items()
    ]


_LAT_HEADERS = ("latency (ms)", "count", "mean", "p50", "p90", "p99", "max")
_GROUP_HEADERS = ("offered", "answered", "failed", "lost", "setup p50", "setup p99", "invite p50")


def _group_rows(groups: Mapping[str, Mapping[str, Any]]) -> list[list[str]]:
    rows = []
    for name, g in groups.items():
        lat = g["latency"]
        rows.append(
            [name or "-", g["offered"], g["answered"], g["failed"], g["lost"]]
            + [
                _fmt(lat["call_setup_latency"]["p50"], "ms"),
                _fmt(lat["call_setup_latency"]["p99"], "ms"),
                _fmt(lat["invite_latency"]["p50"], "ms"),
            ]
        )
    return rows


def _headline_tables(s: Mapping[str, Any]) -> tuple[tuple[Any, list[list[Any]]], ...]:
    """The (headers, rows) of the two headline tables of a summary (calls; rate and
    concurrency), shared by the text and the HTML report."""
    rate, conc = s["rate"], s["concurrency"]
    calls = (
        ("offered", "answered", "failed", "lost", "callee-only", "duration s"),
        [
            [
                s["offered"],
                s["answered"],
                s["failed"],
                s["lost"],
                s["callee_only"],
                _fmt(float(s["duration"])),
            ]
        ],
    )
    rates = (
        ("rate achieved /s", "rate target /s", "max active calls", "limit"),
        [
            [
                _fmt(rate["achieved"]),
                _fmt(rate["target"]),
                conc["max_active_calls"],
                _fmt(conc["limit"]),
            ]
        ],
    )
    return calls, rates


def format_summary(summary: Mapping[str, Any]) -> str:
    """A plain-text report of :func:`summarize`'s dict (fixed-width tables)."""
    s = summary
    calls, rates = _headline_tables(s)
    parts = [
        _table(*calls),
        "",
        _table(*rates),
        "",
        _table(_LAT_HEADERS, _latency_rows(s["latency"])),
    ]
    if s["failed_by_cause"]:
        parts += ["", _table(("failure cause", "calls"), sorted(s["failed_by_cause"].items()))]
    if s.get("failed_by_verdict"):
        parts += ["", _table(("app verdict", "calls"), sorted(s["failed_by_verdict"].items()))]
    if s["lost_by_reason"]:
        parts += ["", _table(("lost because", "calls"), sorted(s["lost_by_reason"].items()))]
    if s.get("unrecorded"):
        parts += ["", f"unrecorded (rows lost with a crashed worker): {s['unrecorded']}"]
    if s.get("incidents"):
        parts += ["", _table(("incident", "times"), sorted(s["incidents"].items()))]
    parts += ["", _table(("app",) + _GROUP_HEADERS, _group_rows(s["per_app"]))]
    parts += ["", _table(("slave",) + _GROUP_HEADERS, _group_rows(s["per_slave"]))]
    return "\n".join(parts) + "\n"


# --------------------------------------------------------------------------------------------
# Plot and HTML report
# --------------------------------------------------------------------------------------------


#: Per-call series are thinned to at most this many points in plots (evenly spaced calls).
PLOT_MAX_POINTS = 20_000


def _thin(mask: np.ndarray, limit: int = PLOT_MAX_POINTS) -> np.ndarray:
    """Indices of the True entries of ``mask``, every k-th one so that at most ``limit``."""
    idx = np.flatnonzero(mask)
    if idx.size > limit:
        idx = idx[:: -(-idx.size // limit)]
    return idx


#: Incidents drawn on the plot, and their colours (trouble red, recovery green).
_INCIDENT_STYLE = {
    "slave_down": "tab:red",
    "worker_died": "tab:red",
    "listener_killed": "tab:red",
    "shedding": "tab:orange",
    "originate_rejected": "tab:red",
    "slave_up": "tab:green",
    "worker_restarted": "tab:green",
}


def plot_run(run: Run, path: str | os.PathLike | None = None):
    """A matplotlib Figure of the run, three panels against seconds since the first call:

    1. latencies (call setup, answer, invite, originate), ms;
    2. active sessions and erlangs (the workers' per-second counters summed when present,
       else the CDR columns) and cumulative failed calls;
    3. call rate (per-second offered calls, and ``avg_call_rate``) with the target rate;
    incidents (a slave down or up, a worker died or restarted, shedding ...) are dotted
    vertical lines on every panel.

    Per-call series of big runs are thinned to :data:`PLOT_MAX_POINTS` evenly spaced calls
    (a scatter of more is not more readable, only slower). Uses the Agg canvas directly (no pyplot, no global backend change). Saved as PNG to
    ``path`` when given. Raises ImportError when matplotlib is not installed.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    table = run.cdr_table
    m = call_metrics_arrays(table)
    summ = run.summary()
    t0 = summ["start"] if summ["start"] is not None else 0.0
    x = m["caller_create"] - t0

    fig = Figure(figsize=(11, 9), dpi=100)
    FigureCanvasAgg(fig)
    ax1, ax2, ax3 = fig.subplots(3, 1, sharex=True)
    for name in _LATENCIES:
        y = m[name] * 1000.0
        ok = _thin(np.isfinite(x) & np.isfinite(y))
        if ok.size:
            ax1.plot(x[ok], y[ok], ".", markersize=2, label=name)
    ax1.set_ylabel("latency (ms)")
    ax1.set_title(f"fastswitch run {Path(run.run_dir).name}" if run.run_dir else "fastswitch run")

    ctr = run.counters_table
    if ctr.num_rows:
        times = np.unique(_f64(ctr, "time"))
        for col, label in (("active_sessions", "active_sessions"), ("active_calls", "erlangs")):
            ax2.step(times - t0, _counter_sums(ctr, col, times), where="post", label=label)
    else:
        for col in ("active_sessions", "erlangs"):
            ok = _thin(np.isfinite(x) & np.isfinite(m[col]))
            ax2.plot(x[ok], m[col][ok], ".", markersize=2, label=col)
    ok = np.isfinite(x)
    if ok.any():
        order = np.argsort(x[ok], kind="stable")
        xs, fs = x[ok][order], np.cumsum(m["failed"][ok][order])
        keep = _thin(np.ones(xs.size, dtype=bool))
        ax2.step(xs[keep], fs[keep], where="post", label="failed_calls")
    ax2.set_ylabel("calls")

    ot = summ["rate"]["over_time"]
    if ot:
        # step(where="post") draws each value from its own x to the next one: repeat the
        # last value at the end of its second so that the last second is drawn too
        edges = [e["t"] for e in ot] + [ot[-1]["t"] + 1]
        achieved = [e["achieved"] for e in ot]
        ax3.step(edges, achieved + achieved[-1:], where="post", label="call_rate (per second)")
        tgt = [np.nan if e["target"] is None else float(e["target"]) for e in ot]
        if not all(np.isnan(tgt)):
            ax3.step(edges, tgt + tgt[-1:], where="post", linestyle="--", label="target rate")
    ok = _thin(np.isfinite(x) & np.isfinite(m["avg_call_rate"]))
    if ok.size:
        ax3.plot(x[ok], m["avg_call_rate"][ok], label="avg_call_rate")
    # the run's incidents (settings.json) as vertical markers, one legend entry per kind
    seen_kinds: set[str] = set()
    for inc in run.settings.get("incidents", ()):
        kind, t = inc.get("kind"), inc.get("time")
        style = _INCIDENT_STYLE.get(kind)
        if style is None or not isinstance(t, int | float):
            continue
        label = kind.replace("_", " ") if kind not in seen_kinds else None
        seen_kinds.add(kind)
        for ax in (ax3, ax2, ax1):  # the legend entry on the rate panel
            ax.axvline(t - t0, color=style, linestyle=":", linewidth=1, label=label)
            label = None
    ax3.set_ylabel("calls/s")
    ax3.set_xlabel("seconds since the first call")
    for ax in (ax1, ax2, ax3):
        ax.grid(True, alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="upper left", fontsize="small")
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, format="png")
    return fig


def _html_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in headers)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def report_html(run: Run, path: str | os.PathLike) -> Path:
    """Write a self-contained HTML page for ``run`` to ``path`` and return the path: the
    summary tables, the settings and their changes, and the plot embedded as a base64 PNG
    (a note instead when matplotlib is missing). Nothing is loaded from elsewhere."""
    s = run.summary()
    calls, rates = _headline_tables(s)
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'>",
        f"<title>fastswitch run {html.escape(str(run.run_dir))}</title>",
        "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;"
        "margin:1em 0}td,th{border:1px solid #bbb;padding:2px 8px;text-align:right}"
        "th{background:#eee}</style></head><body>",
        f"<h1>fastswitch run {html.escape(str(run.run_dir))}</h1>",
        "<h2>Calls</h2>",
        _html_table(*calls),
        _html_table(*rates),
        "<h2>Latency</h2>",
        _html_table(_LAT_HEADERS, _latency_rows(s["latency"])),
    ]
    if s["failed_by_cause"]:
        parts += [
            "<h2>Failures</h2>",
            _html_table(("cause", "calls"), sorted(s["failed_by_cause"].items())),
        ]
    if s["failed_by_verdict"]:
        parts.append(_html_table(("app verdict", "calls"), sorted(s["failed_by_verdict"].items())))
    if s["lost_by_reason"]:
        parts += [
            "<h2>Lost calls</h2>",
            _html_table(("reason", "calls"), sorted(s["lost_by_reason"].items())),
        ]
    if s.get("unrecorded") or s.get("incidents"):
        rows = sorted(s.get("incidents", {}).items())
        if s.get("unrecorded"):
            rows.append(("calls without a CDR row (crashed worker)", s["unrecorded"]))
        parts += ["<h2>Incidents</h2>", _html_table(("incident", "times"), rows)]
    parts += ["<h2>Per app</h2>", _html_table(("app",) + _GROUP_HEADERS, _group_rows(s["per_app"]))]
    parts += [
        "<h2>Per slave</h2>",
        _html_table(("slave",) + _GROUP_HEADERS, _group_rows(s["per_slave"])),
    ]
    settings = run.settings
    if settings.get("initial") or settings.get("changes"):
        parts += [
            "<h2>Settings</h2>",
            _html_table(
                ("setting", "initial value"),
                sorted((k, json.dumps(v, default=str)) for k, v in settings["initial"].items()),
            ),
        ]
        if settings["changes"]:
            t0 = s["start"] or 0.0
            parts.append(
                _html_table(
                    ("t (s)", "setting", "value"),
                    [
                        [
                            _fmt(float(c["time"]) - t0),
                            c["setting"],
                            json.dumps(c["value"], default=str),
                        ]
                        for c in settings["changes"]
                    ],
                )
            )
    parts.append("<h2>Plot</h2>")
    try:
        buf = io.BytesIO()
        plot_run(run).savefig(buf, format="png")
        b64 = base64.b64encode(buf.getvalue()).decode("ascii")
        parts.append(f"<img alt='fastswitch run plot' src='data:image/png;base64,{b64}'>")
    except ImportError:
        parts.append("<p>matplotlib is not installed: no plot.</p>")
    parts.append("</body></html>")
    path = Path(path)
    path.write_text("\n".join(parts), encoding="utf-8")
    return path


# --------------------------------------------------------------------------------------------
# Run and Measurers
# --------------------------------------------------------------------------------------------


class Run:
    """One run's measurements, read from its directory (see :func:`load_run`).

    Views: ``cdr`` (merged CDR rows, by ``caller_create``), ``counters``, ``call_metrics`` —
    pandas DataFrames, or lists of row lists without pandas (column names in ``cdr_columns``,
    ``counter_columns``, ``metrics_columns``); ``settings`` (dict). The underlying Arrow
    tables are ``cdr_table``, ``counters_table``, ``call_metrics_table``.
    """

    cdr_columns = CDR_COLUMNS
    counter_columns: tuple[str, ...] = tuple(COUNTER_SCHEMA.names)
    metrics_columns = CALL_METRICS_COLUMNS

    def __init__(
        self,
        cdr: pa.Table,
        counters: pa.Table | None = None,
        settings: Mapping[str, Any] | None = None,
        run_dir: str | os.PathLike | None = None,
    ) -> None:
        self.cdr_table = cdr
        self.counters_table = counters if counters is not None else COUNTER_SCHEMA.empty_table()
        self.settings: dict[str, Any] = dict(settings or {"initial": {}, "changes": []})
        self.settings.setdefault("initial", {})
        self.settings.setdefault("changes", [])
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self._metrics: pa.Table | None = None
        self._summary: dict | None = None

    @property
    def cdr(self):
        """All CDR rows (DataFrame, or list of lists without pandas)."""
        return _present(self.cdr_table)

    @property
    def counters(self):
        """All workers' per-second counters (DataFrame, or list of lists without pandas)."""
        return _present(self.counters_table)

    @property
    def call_metrics_table(self) -> pa.Table:
        if self._metrics is None:
            self._metrics = call_metrics(self.cdr_table)
        return self._metrics

    @property
    def call_metrics(self):
        """:func:`call_metrics` of the CDR (DataFrame, or list of lists without pandas)."""
        return _present(self.call_metrics_table)

    def summary(self) -> dict[str, Any]:
        """:func:`summarize` of this run."""
        if self._summary is None:
            self._summary = summarize(self.cdr_table, self.counters_table, self.settings)
        return self._summary

    def format_summary(self) -> str:
        return format_summary(self.summary())

    def plot(self, path: str | os.PathLike | None = None):
        """:func:`plot_run` of this run (returns the Figure; PNG saved to ``path``)."""
        return plot_run(self, path)

    def report_html(self, path: str | os.PathLike) -> Path:
        return report_html(self, path)

    def __len__(self) -> int:
        return self.cdr_table.num_rows

    def __repr__(self) -> str:
        return f"<Run {self.run_dir} calls={self.cdr_table.num_rows}>"


def load_run(run_dir: str | os.PathLike) -> Run:
    """Read a run directory (finished, or still being written) into a :class:`Run`."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"no run directory {run_dir}")
    return Run(read_cdr(run_dir), read_counters(run_dir), read_settings(run_dir), run_dir)


class _Stores:
    def __init__(self, owner: Measurers) -> None:
        self._owner = owner

    @property
    def CDR(self):  # noqa: N802 - the seed's name
        """The CDR rows, freshly read (DataFrame, or list of lists without pandas)."""
        return self._owner.load().cdr

    @property
    def counters(self):
        return self._owner.load().counters

    @property
    def settings(self) -> dict[str, Any]:
        return read_settings(self._owner.run_dir)


class _Ops:
    def __init__(self, owner: Measurers) -> None:
        self._owner = owner

    @property
    def call_metrics(self):
        """:func:`call_metrics` of the freshly read CDR."""
        return self._owner.load().call_metrics


class Measurers:
    """What ``originator.measurers`` returns: a run directory's measurements, re-read from the
    files on every access (so it follows a live run).

    ``stores.CDR`` (``stores.counters``, ``stores.settings``), ``ops.call_metrics``,
    ``summary()``, ``format_summary()``, ``plot(path=None)``, ``report_html(path)``,
    ``load()`` (a :class:`Run` snapshot), ``run_dir``.
    """

    def __init__(self, run_dir: str | os.PathLike) -> None:
        self.run_dir = Path(run_dir)
        self.stores = _Stores(self)
        self.ops = _Ops(self)

    def load(self) -> Run:
        return load_run(self.run_dir)

    def summary(self) -> dict[str, Any]:
        return self.load().summary()

    def format_summary(self) -> str:
        return format_summary(self.summary())

    def plot(self, path: str | os.PathLike | None = None):
        return self.load().plot(path)

    def report_html(self, path: str | os.PathLike) -> Path:
        return report_html(self.load(), path)

    def __repr__(self) -> str:
        return f"<Measurers {self.run_dir}>"
