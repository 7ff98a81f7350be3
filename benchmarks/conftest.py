"""Benchmark fixtures: the ``--quick`` option, the capture locator and the benchmark streams.

Run: ``python -m pytest benchmarks/test_bench_parser.py [--quick] --benchmark-columns=median``.
The captures are found in ``$FASTSWITCH_CAPTURES`` or ``../shared/esl-captures`` beside the
repository. switchio (which does not import on Python 3.11) is benchmarked by loading its
``protocol.py`` on its own: from ``$FASTSWITCH_SWITCHIO_SRC`` (a path to that file or to an
unpacked sdist) or from an installed ``switchio`` distribution, when either exists.
"""

from __future__ import annotations

import os
import random
import uuid
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
CHUNK = 65536  # bytes per feed, as asyncio reads them


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--quick",
        action="store_true",
        default=False,
        help="fewer rounds and a smaller generated stream (a smoke run on a busy machine)",
    )
    # system benchmarks (benchmarks/_support.py): the 10-minute soaks run only when asked
    parser.addoption(
        "--soak",
        action="store_true",
        default=False,
        help="also run the soak benchmarks (test_bench_soak.py, ~10 min each)",
    )


@pytest.fixture(scope="session")
def quick(request: pytest.FixtureRequest) -> bool:
    return bool(request.config.getoption("--quick"))


def locate_captures() -> Path | None:
    """The directory of the real FreeSWITCH captures, or None."""
    for cand in (os.environ.get("FASTSWITCH_CAPTURES"), REPO.parent / "shared" / "esl-captures"):
        if cand and (Path(cand) / "README.md").exists():
            return Path(cand)
    return None


@pytest.fixture(scope="session")
def captures_dir() -> Path:
    found = locate_captures()
    if found is None:
        pytest.fail("ESL captures not found; set FASTSWITCH_CAPTURES=/path/to/esl-captures")
    return found


def locate_switchio_protocol() -> Path | None:
    """switchio's protocol.py (loaded on its own by the benchmark), or None."""
    env = os.environ.get("FASTSWITCH_SWITCHIO_SRC")
    cands: list[Path] = []
    if env:
        p = Path(env)
        cands += [p, p / "protocol.py", p / "switchio" / "protocol.py"]
    try:
        import importlib.util

        spec = importlib.util.find_spec("switchio")  # does not execute the package
        if spec is not None and spec.submodule_search_locations:
            cands += [Path(x) / "protocol.py" for x in spec.submodule_search_locations]
    except (ImportError, ValueError):
        pass
    for c in cands:
        if c.is_file():
            return c
    return None


@pytest.fixture(scope="session")
def switchio_protocol() -> Path | None:
    """Path of switchio's protocol.py, or None (the switchio benchmark then skips)."""
    return locate_switchio_protocol()


class Stream:
    """A benchmark input: the bytes as a list of CHUNK-sized feeds, cycled ``repeat`` times."""

    def __init__(self, name: str, variants: list[bytes], repeat: int, events: int) -> None:
        self.name = name
        self.chunks = [[v[i : i + CHUNK] for i in range(0, len(v), CHUNK)] for v in variants]
        self.repeat = repeat
        self.nbytes = sum(len(v) for v in variants) * repeat
        self.events = events  # text/event-* frames in the whole stream

    def feeds(self):
        for _ in range(self.repeat):
            for chunks in self.chunks:
                yield from chunks

    def whole(self) -> bytes:
        return b"".join(b"".join(c) for c in self.chunks) * self.repeat


def _count_events(data: bytes) -> int:
    return data.count(b"\nContent-Type: text/event-")


def _vary_uuids(frames: list[bytes], rng: random.Random) -> bytes:
    """Replace every uuid in the frames with a fresh one (same length: Content-Length holds)."""
    import re

    pat = re.compile(rb"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
    mapping: dict[bytes, bytes] = {}

    def sub(m: re.Match[bytes]) -> bytes:
        u = m.group(0)
        if u not in mapping:
            mapping[u] = str(uuid.UUID(int=rng.getrandbits(128), version=4)).encode()
        return mapping[u]

    return pat.sub(sub, b"".join(frames))


@pytest.fixture(scope="session")
def streams(captures_dir: Path, quick: bool) -> dict[str, Stream]:
    """The three benchmark inputs.

    * ``e_burst20_plain``: e_burst20_hupall_plain.bin (840 events of 2-9 KB + replies)
    * ``q_load_minimal``: q_load_minimal.bin (3005 frames, 2700 events, 16 MB)
    * ``generated``: >= 100,000 CHANNEL_* events (20,000 with --quick) taken from
      q_load_minimal's events with every uuid replaced, in 4 variants cycled (memory stays
      ~55 MB however many events are fed).
    """
    from fastswitch import _pyesl

    out: dict[str, Stream] = {}
    for key, fname in (
        ("e_burst20_plain", "e_burst20_hupall_plain.bin"),
        ("q_load_minimal", "q_load_minimal.bin"),
    ):
        data = (captures_dir / fname).read_bytes()
        out[key] = Stream(key, [data], 1, _count_events(data))
    q = (captures_dir / "q_load_minimal.bin").read_bytes()
    chan = [
        f.raw for f in _pyesl.Parser().feed(q) if f.is_event and f.event.name.startswith("CHANNEL_")
    ]
    rng = random.Random(20261203)
    nvar = 1 if quick else 4
    variants = [_vary_uuids(chan, rng) for _ in range(nvar)]
    target = 20_000 if quick else 100_000
    per_cycle = len(chan) * nvar
    repeat = -(-target // per_cycle)
    out["generated"] = Stream("generated", variants, repeat, per_cycle * repeat)
    return out
