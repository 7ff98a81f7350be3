"""The end-of-run report: summary text, thresholds with their measured values, PNG and HTML.

Used after every ``run``/``demo`` and by ``python -m fastswitch report RUN_DIR``. The text goes
to stdout and to ``report.txt``; the plot to ``report.png`` (when matplotlib is available) and
a self-contained page to ``report.html``, all inside the run directory.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastswitch.cli.runner import load_outcome
from fastswitch.cli.thresholds import Check, Measured, Thresholds, evaluate, format_checks
from fastswitch.errors import ConfigurationError

REPORT_TXT = "report.txt"
REPORT_PNG = "report.png"
REPORT_HTML = "report.html"


@dataclass
class Report:
    """A finished report: its text, threshold checks and the files written."""

    text: str
    checks: list[Check]
    files: list[Path] = field(default_factory=list)


def check_run_dir(run_dir: Path) -> Path:
    """The run directory, or a ConfigurationError saying how to find one."""
    p = Path(run_dir)
    if not p.is_dir():
        raise ConfigurationError(
            f"run directory {str(p)!r} does not exist: give a directory a run wrote "
            "(default ./fastswitch-runs/<timestamp>, printed at the end of a run)"
        )
    if not any(p.glob("cdr-*.arrows")) and not (p / "settings.json").exists():
        raise ConfigurationError(
            f"{str(p)!r} is not a fastswitch run directory (no cdr-*.arrows or settings.json in it)"
        )
    return p


def measured_values(summary: dict[str, Any], run_dir: Path) -> Measured:
    """The thresholds' inputs from the run summary (and the CLI's saved offering time/target).

    The rate ratio uses the CLI's own record when there is one: calls offered per second of
    offering time against the time-averaged target (right for ramps, stages and pauses);
    without it, the summary's rate figures (achieved over the calls' span against the
    target averaged over the same span).
    """
    lat = (summary.get("latency") or {}).get("call_setup_latency") or {}
    outcome = load_outcome(run_dir)
    if outcome is not None and outcome.offering_time > 0:
        achieved = summary["offered"] / outcome.offering_time
        target = outcome.target_rate
    else:
        rate = summary.get("rate") or {}
        achieved, target = rate.get("achieved"), rate.get("target")
    return Measured(
        offered=int(summary.get("offered", 0)),
        failed=int(summary.get("failed", 0)),
        setup_p99=lat.get("p99"),
        achieved_rate=achieved,
        target_rate=target,
    )


def build_report(
    run_dir: Path, thresholds: Thresholds, plot: bool = True, run: Any = None
) -> Report:
    """Summarise ``run_dir``, check ``thresholds`` and write report.txt (and, with ``plot``,
    report.png and report.html) into it. ``run``: its :func:`~fastswitch.measure.load_run`
    when already read."""
    from fastswitch.measure import format_summary, load_run, report_html

    run_dir = check_run_dir(run_dir)
    if run is None:
        run = load_run(run_dir)
    summary = run.summary()
    checks = evaluate(thresholds, measured_values(summary, run_dir))
    text = f"Run directory: {run_dir}\n\n{format_summary(summary)}\n\n{format_checks(checks)}\n"
    files: list[Path] = []
    txt = run_dir / REPORT_TXT
    txt.write_text(text)
    files.append(txt)
    if not plot:  # the HTML page embeds the plot too: skip both (matplotlib is slow to load)
        return Report(text, checks, files)
    if plot:
        try:
            import matplotlib

            matplotlib.use("Agg")
        except ImportError:
            pass
        else:
            import matplotlib.pyplot as plt

            fig = run.plot(run_dir / REPORT_PNG)
            if fig is not None:
                plt.close(fig)
            if (run_dir / REPORT_PNG).exists():
                files.append(run_dir / REPORT_PNG)
    html_path = Path(report_html(run, run_dir / REPORT_HTML))
    if checks:
        page = html_path.read_text()
        block = "<h2>Thresholds</h2><pre>" + _escape(format_checks(checks)) + "</pre>"
        html_path.write_text(page.replace("</body>", block + "</body>", 1))
    files.append(html_path)
    return Report(text, checks, files)


def _escape(s: str) -> str:
    import html

    return html.escape(s)
