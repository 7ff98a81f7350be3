"""Live call set-up latency percentiles, read from the CDR files a run is writing.

The workers append a CDR row when a call completes; :class:`LatencyTail` re-reads a worker's
file only when it grew, at most every ``every`` seconds, and keeps the set-up latencies
(``caller_answer - caller_create``, the measure module's ``call_setup_latency``) of the
answered caller rows. A partially written last batch is skipped by ``read_stream``.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

PERCENTILES = (50.0, 95.0, 99.0)


class LatencyTail:
    """Set-up latency percentiles (p50, p95, p99) of the calls completed so far in a run."""

    def __init__(self, run_dir: Path, every: float = 2.0) -> None:
        self.run_dir = Path(run_dir)
        self.every = every
        self._sizes: dict[Path, int] = {}
        self._values: dict[Path, np.ndarray] = {}
        self._last = -float("inf")
        self._cached: tuple[float | None, float | None, float | None] = (None, None, None)

    def _read(self, path: Path) -> np.ndarray:
        from fastswitch.measure import read_stream

        table = read_stream(path)
        if table.num_rows == 0 or "caller_answer" not in table.column_names:
            return np.zeros(0)
        create = np.asarray(
            table.column("caller_create").to_numpy(zero_copy_only=False), dtype=float
        )
        answer = np.asarray(
            table.column("caller_answer").to_numpy(zero_copy_only=False), dtype=float
        )
        lat = answer - create
        if "row_kind" in table.column_names:
            kind = np.asarray(table.column("row_kind").to_pylist(), dtype=object)
            lat = lat[kind != "callee"]
        return lat[np.isfinite(lat)]

    def refresh(self) -> None:
        """Re-read the CDR files that grew since the last read."""
        for path in sorted(self.run_dir.glob("cdr-*.arrows")):
            try:
                size = path.stat().st_size
            except OSError:
                continue
            if self._sizes.get(path) != size:
                self._sizes[path] = size
                self._values[path] = self._read(path)
        values = [v for v in self._values.values() if v.size]
        if values:
            allv = np.concatenate(values)
            p = np.percentile(allv, PERCENTILES)
            self._cached = (float(p[0]), float(p[1]), float(p[2]))

    def percentiles(
        self, now: float | None = None
    ) -> tuple[float | None, float | None, float | None]:
        """(p50, p95, p99) in seconds, None before the first answered call completes."""
        now = time.monotonic() if now is None else now
        if now - self._last >= self.every:
            self._last = now
            self.refresh()
        return self._cached
