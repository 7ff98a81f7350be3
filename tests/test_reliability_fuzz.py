"""Issue 9: fuzzing the ESL client and both frame parsers.

A fake FreeSWITCH on the loopback writes random bytes, or real capture bytes
(``../shared/esl-captures/*.bin``, what FreeSWITCH sent) mutated at random, in random
chunks, then closes. Whatever arrives, the client must end in a clean error
(:class:`ESLProtocolError`, :class:`ConnectionLost`, :class:`AuthenticationError`, a
:class:`ConnectError` that is not a timeout, or a :class:`CommandError` for a ``-ERR``
reply) or succeed: never hang, never raise or log anything else. Every case is seeded; a
failure names its seed.
"""

from __future__ import annotations

import asyncio
import logging
import random
import sys
from pathlib import Path

import pytest

from fastswitch import _pyesl
from fastswitch.client import Client
from fastswitch.errors import (
    AuthenticationError,
    CommandError,
    ConnectError,
    ConnectionLost,
    ESLError,
    ESLProtocolError,
)

sys.path.insert(0, str(Path(__file__).parent))
from replay_server import CLOSE, ScriptServer, api_response, reply  # noqa: E402

try:
    from fastswitch import _esl
except ImportError:  # pragma: no cover - the extension is built in place
    _esl = None

pytestmark = pytest.mark.timeout(60)

CLEAN = (ESLProtocolError, ConnectionLost, AuthenticationError, ConnectError, CommandError)
N_CASES = 1000


def mutate(data: bytes, rng: random.Random) -> bytes:
    """A few random edits: flipped/replaced bytes, insertions, deletions, duplicated spans,
    a broken Content-Length, truncation."""
    b = bytearray(data)
    for _ in range(rng.randint(1, 6)):
        if not b:
            b.extend(rng.randbytes(rng.randint(1, 64)))
            continue
        op = rng.randrange(7)
        i = rng.randrange(len(b))
        if op == 0:
            b[i] ^= 1 << rng.randrange(8)
        elif op == 1:
            b[i] = rng.choice(b"\n:0123456789 %{}\x00\xff")
        elif op == 2:
            b[i:i] = rng.randbytes(rng.randint(1, 32))
        elif op == 3:
            del b[i : i + rng.randint(1, 200)]
        elif op == 4:
            j = min(len(b), i + rng.randint(1, 300))
            b[j:j] = b[i:j]
        elif op == 5:
            k = b.find(b"Content-Length: ", i)
            if k >= 0:
                k += len(b"Content-Length: ")
                b[k : k + 1] = rng.choice([b"9999999", b"-1", b"x", b"", b"00", b"4294967296"])
        else:
            del b[rng.randrange(len(b)) :]
    return bytes(b)


def cases(captures_dir: Path) -> list[tuple[int, bytes]]:
    """(seed, bytes the fake server sends): a third pure random, the rest mutated
    captures (their first 64 KiB: auth request, replies, events of every kind)."""
    bins = sorted(captures_dir.glob("*.bin"))
    assert bins, captures_dir
    blobs = [p.read_bytes()[:65536] for p in bins]
    out = []
    for seed in range(N_CASES):
        rng = random.Random(seed)
        if seed % 3 == 0:
            data = rng.randbytes(rng.randint(0, 4096))
            if rng.random() < 0.5:  # random bytes after a valid greeting
                data = b"Content-Type: auth/request\n\n" + data
        else:
            data = mutate(blobs[seed % len(blobs)], rng)
        out.append((seed, data))
    return out


class FakeServer:
    """Writes one payload per connection (in random chunks), then closes."""

    def __init__(self, payloads: list[tuple[int, bytes]]) -> None:
        self.payloads = payloads
        self.next = 0
        self.server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seed, data = self.payloads[self.next]
        self.next += 1
        rng = random.Random(seed + 1_000_000)
        try:
            pos = 0
            while pos < len(data):
                n = rng.randint(1, 8192)
                writer.write(data[pos : pos + n])
                pos += n
                if rng.random() < 0.3:
                    await writer.drain()
                    await asyncio.sleep(0)
            await writer.drain()
            if rng.random() < 0.5:
                await asyncio.sleep(0.005)  # let the client's commands cross the close
        except (ConnectionError, OSError, asyncio.CancelledError):
            pass  # the client hung up first, or the test is over
        finally:
            writer.close()

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


async def exercise(port: int, seed: int) -> str:
    """Connect, run a few commands and an originate; return how it ended."""
    client = Client("127.0.0.1", port, reconnect=False, connect_timeout=10)
    try:
        async with asyncio.timeout(5):  # a hang: the server always closes at once
            try:
                await client.connect()
                client.set_orig_cmd("doggy@127.0.0.1:5080")
                job = client.originate()
                await client.api("status")
                await client.bgapi("status")
                await job
                return "ok"
            except CLEAN as exc:
                assert "timed out" not in str(exc), f"seed {seed}: {exc}"
                return type(exc).__name__
    except TimeoutError:
        pytest.fail(f"seed {seed}: the client hung")
    finally:
        async with asyncio.timeout(5):
            await client.close()


def test_client_survives_random_and_mutated_server_bytes(captures_dir, caplog):
    payloads = cases(captures_dir)
    caplog.set_level(logging.WARNING)

    async def main() -> dict[str, int]:
        srv = FakeServer(payloads)
        await srv.start()
        outcomes: dict[str, int] = {}
        try:
            for seed, _data in payloads:
                try:
                    how = await exercise(srv.port, seed)
                except ESLError as exc:  # an ESLError outside the clean set
                    pytest.fail(f"seed {seed}: unexpected {type(exc).__name__}: {exc}")
                outcomes[how] = outcomes.get(how, 0) + 1
        finally:
            await srv.stop()
        return outcomes

    outcomes = asyncio.run(main())
    assert sum(outcomes.values()) == N_CASES
    # the inputs reached every stage: parse errors, lost connections, failed auth
    assert outcomes.get("ESLProtocolError", 0) > 0 and outcomes.get("ConnectionLost", 0) > 0
    # nothing blew up inside the client's frame handling
    crashes = [
        r for r in caplog.records if r.exc_info is not None and r.name.startswith("fastswitch")
    ]
    assert not crashes, [(r.getMessage(), r.exc_info[1]) for r in crashes[:3]]


PARSERS = [_pyesl] + ([_esl] if _esl is not None else [])


@pytest.mark.parametrize("mod", PARSERS, ids=lambda m: m.__name__.rsplit(".", 1)[-1])
def test_parser_fuzz_only_protocol_errors(captures_dir, mod):
    """Both parsers, fed mutated captures in random splits: frames or ESLProtocolError,
    nothing else; every decoded event's accessors work; after an error the parser keeps
    refusing until reset() and then parses a valid stream again."""
    valid = (captures_dir / "a_auth_api.bin").read_bytes()
    blobs = [p.read_bytes()[:32768] for p in sorted(captures_dir.glob("*.bin"))]
    errors = bad_events = 0
    for seed in range(400):
        rng = random.Random(seed)
        data = mutate(blobs[seed % len(blobs)], rng)
        parser = mod.Parser(max_frame_size=1 << 20)
        pos = 0
        while pos < len(data):
            n = rng.randint(1, 4096)
            try:
                frames = parser.feed(data[pos : pos + n])
            except ESLProtocolError:
                errors += 1
                with pytest.raises(ESLProtocolError):
                    parser.feed(b"Content-Type: command/reply\n\n")
                parser.reset()
                assert [f.content_type for f in parser.feed(valid)][:1] == ["auth/request"]
                break
            pos += n
            for frame in frames:
                _ = (frame.content_type, frame.body, frame.headers, frame.reply_text)
                try:  # an event body is decoded lazily: a bad one is a protocol error
                    ev = frame.event
                    if ev is not None:
                        _ = (ev.name, ev.unique_id, ev.timestamp, ev.sequence, ev.body)
                        _ = list(ev.items())
                except ESLProtocolError:
                    bad_events += 1
    assert errors > 0 and bad_events > 0


def test_unexpected_content_type_is_a_clear_error_and_nothing_else_breaks(caplog):
    """A frame of a Content-Type FreeSWITCH never sends, mid-session: one clear error
    naming the server and the type (not repeated for the next one), the connection and
    the commands around it go on; a reply for no command is a warning, not a crash."""
    odd = b"Content-Type: text/x-surprise\nContent-Length: 5\n\nhello"

    def respond(i: int, cmd: bytes):
        text = cmd.decode()
        if text.startswith("auth"):
            return reply("+OK accepted")
        if text == "api status":
            return [odd, api_response("UP\n"), odd, reply("+OK stray")]
        if text.startswith("api "):
            return api_response("+OK\n")
        return reply("+OK")

    caplog.set_level(logging.INFO)

    async def main() -> tuple[str, str, bool]:
        async with ScriptServer(respond) as srv:
            client = Client("127.0.0.1", srv.port, reconnect=False)
            await client.connect(timeout=5)
            try:
                async with asyncio.timeout(5):
                    first = await client.api("status")
                    second = await client.api("version")
                return first, second, client.connected
            finally:
                await client.close()

    first, second, connected = asyncio.run(main())
    assert (first, second, connected) == ("UP\n", "+OK\n", True)
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len([m for m in errors if "text/x-surprise" in m]) == 1, errors
    assert "unexpected ESL frame" in errors[0] and "127.0.0.1:" in errors[0]
    assert any("unexpected reply '+OK stray'" in r.getMessage() for r in caplog.records)


NOTICE = (
    b"Content-Type: text/disconnect-notice\nContent-Length: 39\n\n"
    b"killed listener because of lost events\n"
)
EVENT_HEAD = b"Content-Length: 400\nContent-Type: text/event-plain\n\n"


@pytest.mark.parametrize(
    "stream",
    [
        NOTICE,  # on its own, as a frame
        EVENT_HEAD + b"Event-Name: CHANNEL_CREATE\n" + NOTICE,  # inside an event's body
        b"Content-Length: 400\nContent-Ty" + NOTICE,  # inside an event's header block
    ],
    ids=["frame", "in-body", "in-headers"],
)
def test_lost_events_notice_is_reported_wherever_it_lands(caplog, stream):
    """FreeSWITCH's 'killed listener because of lost events' notice is written by another
    thread than the events and can land inside an event frame (research §6.1). Wherever
    it lands, the connection's error names it, so the worker counts and reports a killed
    listener."""
    causes: list[BaseException] = []

    def respond(i: int, cmd: bytes):
        text = cmd.decode()
        if text.startswith("auth"):
            return reply("+OK accepted")
        if text.startswith("api "):
            return [stream, CLOSE]
        return reply("+OK")

    async def main() -> None:
        async with ScriptServer(respond) as srv:
            client = Client("127.0.0.1", srv.port, reconnect=False)
            client.disconnect_hooks.append(lambda c, cause, lost: causes.append(cause))
            await client.connect(timeout=5)
            try:
                async with asyncio.timeout(5):
                    with pytest.raises((ConnectionLost, ESLProtocolError)) as ei:
                        await client.api("status")
                assert "killed listener because of lost events" in str(ei.value)
            finally:
                await client.close()

    asyncio.run(main())
    assert len(causes) == 1 and "killed listener because of lost events" in str(causes[0])
