"""Live call set-up latency percentiles, read from the CDR files a run is writing.

The workers append CDR rows (Arrow IPC stream files, one record batch per flush) as calls
complete; :class:`LatencyTail` decodes, at most every ``every`` seconds, only the record
batches appended since its last look (a batch still being written is left for the next look)
and keeps the set-up latencies (``caller_answer - caller_create``, the measure module's
``call_setup_latency``) of the answered caller rows.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.ipc  # noqa: F401  (pa.ipc)

PERCENTILES = (50.0, 95.0, 99.0)


class _FileTail:
    """Incremental reader of one Arrow IPC stream file that a worker keeps appending to:
    each refresh decodes only the complete messages written since the last one."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.schema: pa.Schema | None = None
        self.chunks: list[np.ndarray] = []

    def refresh(self) -> bool:
        """Read the new complete record batches; True when latencies were added."""
        try:
            with self.path.open("rb") as f:
                f.seek(self.offset)
                data = f.read()
        except OSError:
            return False
        if not data:
            return False
        base = self.offset
        buf = pa.BufferReader(pa.py_buffer(data))
        added = False
        try:
            reader = pa.ipc.MessageReader.open_stream(buf)
            while True:
                msg = reader.read_next_message()
                if self.schema is None:
                    self.schema = pa.ipc.read_schema(msg)
                elif msg.type == "record batch":
                    lat = setup_latencies(pa.ipc.read_record_batch(msg, self.schema))
                    if lat.size:
                        self.chunks.append(lat)
                        added = True
                self.offset = base + buf.tell()
        except StopIteration:  # end-of-stream marker: the writer closed the file
            self.offset = base + buf.tell()
        except (OSError, pa.ArrowInvalid):
            pass  # a message still being written: read it again next time
        return added


def setup_latencies(batch: pa.RecordBatch) -> np.ndarray:
    """``caller_answer - caller_create`` of the answered caller rows of one CDR batch."""
    names = batch.schema.names
    if "caller_answer" not in names or "caller_create" not in names or batch.num_rows == 0:
        return np.zeros(0)
    create = batch.column(names.index("caller_create")).to_numpy(zero_copy_only=False)
    answer = batch.column(names.index("caller_answer")).to_numpy(zero_copy_only=False)
    lat = np.asarray(answer, dtype=float) - np.asarray(create, dtype=float)
    if "row_kind" in names:
        kind = np.asarray(batch.column(names.index("row_kind")).to_pylist(), dtype=object)
        lat = lat[kind != "callee"]
    return lat[np.isfinite(lat)]


class LatencyTail:
    """Set-up latency percentiles (p50, p95, p99) of the calls completed so far in a run."""

    def __init__(self, run_dir: Path, every: float = 2.0) -> None:
        self.run_dir = Path(run_dir)
        self.every = every
        self._files: dict[Path, _FileTail] = {}
        self._last = -float("inf")
        self._cached: tuple[float | None, float | None, float | None] = (None, None, None)

    def refresh(self) -> None:
        """Read what the workers appended to their CDR files since the last refresh."""
        added = False
        for path in sorted(self.run_dir.glob("cdr-*.arrows")):
            tail = self._files.setdefault(path, _FileTail(path))
            added |= tail.refresh()
        if added:
            values = [c for t in self._files.values() for c in t.chunks]
            p = np.percentile(np.concatenate(values), PERCENTILES)
            self._cached = (float(p[0]), float(p[1]), float(p[2]))

    def percentiles(
        self, now: float | None = None, force: bool = False
    ) -> tuple[float | None, float | None, float | None]:
        """(p50, p95, p99) in seconds, None before the first answered call completes
        (``force``: read the files now, whenever the last look was)."""
        now = time.monotonic() if now is None else now
        if force or now - self._last >= self.every:
            self._last = now
            self.refresh()
        return self._cached
