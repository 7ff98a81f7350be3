"""Tiny loopback ESL servers for client tests: replay real FreeSWITCH captures, or answer
from a script (garbage, drops, silence).

:class:`ReplayServer` serves one capture of ``../shared/esl-captures``: on connect it sends
the bytes FreeSWITCH sent before the first command (``auth/request``); for the *i*-th
command it receives it sends the bytes FreeSWITCH sent between the capture's *i*-th and
(*i*+1)-th ``SEND`` (the reply plus the events that arrived meanwhile); after the last
command it sends the rest and closes, as FreeSWITCH did. Every received command is kept
in ``received`` so tests can compare them with what FreeSWITCH accepted.

:class:`ScriptServer` calls ``respond(index, command) -> bytes | None | CLOSE`` per command.
"""

from __future__ import annotations

import ast
import asyncio
import re
from collections.abc import Callable
from pathlib import Path

AUTH_REQUEST = b"Content-Type: auth/request\n\n"
CLOSE = object()

_SEND = re.compile(r"^SEND t=\S+ rx_offset=(\d+) bytes=(\d+) (b['\"].*)$")


def reply(text: str) -> bytes:
    """A ``command/reply`` frame."""
    return f"Content-Type: command/reply\nReply-Text: {text}\n\n".encode()


def api_response(body: str | bytes) -> bytes:
    """An ``api/response`` frame."""
    b = body.encode() if isinstance(body, str) else body
    return b"Content-Type: api/response\nContent-Length: %d\n\n" % len(b) + b


def load_capture(path: Path) -> tuple[bytes, list[int], list[bytes]]:
    """``(received bytes, rx_offset per SEND, sent bytes per SEND)`` of one capture."""
    data = path.with_suffix(".bin").read_bytes()
    offsets: list[int] = []
    sends: list[bytes] = []
    for line in path.with_suffix(".txt").read_text().splitlines():
        m = _SEND.match(line)
        if m:
            offsets.append(int(m.group(1)))
            sends.append(ast.literal_eval(m.group(3)))
    return data, offsets, sends


class ScriptServer:
    """An asyncio TCP server on 127.0.0.1 (ephemeral port) speaking just enough ESL.

    ``respond(index, command)`` returns the bytes to send for the ``index``-th command
    (``None`` sends nothing, ``CLOSE`` closes the connection, a list is sent in order). ``greeting`` is sent on
    connect. ``received`` collects every command (terminator stripped).
    """

    def __init__(
        self,
        respond: Callable[[int, bytes], object],
        greeting: bytes = AUTH_REQUEST,
    ) -> None:
        self.respond = respond
        self.greeting = greeting
        self.received: list[bytes] = []
        self.connections = 0
        self.server: asyncio.AbstractServer | None = None
        self.writers: list[asyncio.StreamWriter] = []
        self.port = 0

    async def __aenter__(self) -> ScriptServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def start(self, port: int = 0) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", port)
        self.port = self.server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        for w in self.writers:
            w.close()
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
            self.server = None

    def drop_all(self) -> None:
        """Abort every open connection (the server stays up)."""
        for w in self.writers:
            w.transport.abort()
        self.writers.clear()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.writers.append(writer)
        index = 0
        try:
            if self.greeting:
                writer.write(self.greeting)
            buf = b""
            while True:
                chunk = await reader.read(65536)
                if not chunk:
                    break
                buf += chunk
                while b"\n\n" in buf:
                    cmd, _, buf = buf.partition(b"\n\n")
                    self.received.append(cmd)
                    out = self.respond(index, cmd)
                    index += 1
                    parts = out if isinstance(out, list) else [out]
                    for part in parts:
                        if part is CLOSE:
                            await writer.drain()
                            writer.close()
                            return
                        if part:
                            writer.write(part)  # type: ignore[arg-type]
                await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()


class ReplayServer(ScriptServer):
    """Replays ``<capture>.bin`` in step with the commands of ``<capture>.txt``.

    ``answer_events=True`` answers ``event ...`` commands with ``+OK`` outside the
    capture (for captures made without a subscription).
    """

    def __init__(self, capture: Path, answer_events: bool = False) -> None:
        self.data, self.offsets, self.sends = load_capture(capture)
        self.answer_events = answer_events
        self._step = 0
        super().__init__(self._chunk, greeting=self.data[: self.offsets[0]])

    def _chunk(self, _index: int, cmd: bytes) -> object:
        if self.answer_events and cmd.startswith(b"event "):
            # a capture without an event subscription: answer it without using a step
            fmt = cmd.split(b" ")[1].decode()
            return reply(f"+OK event listener enabled {fmt}")
        index = self._step
        self._step += 1
        offs = self.offsets
        if index >= len(offs):
            return CLOSE
        start = offs[index]
        if index + 1 < len(offs):
            return self.data[start : offs[index + 1]]
        # the last command: the rest of the capture, then FreeSWITCH closed the socket
        return [self.data[start:], CLOSE]

    def expected(self, index: int) -> bytes:
        """The command FreeSWITCH accepted at this position (terminator stripped)."""
        return self.sends[index].rstrip(b"\n")
