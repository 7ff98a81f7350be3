"""Pure-Python ESL frame parser: the twin of the Cython extension ``fastswitch._esl``.

Both implementations behave identically (same frames, same values, same errors with the
same offsets); ``fastswitch.esl`` picks one. The rules both follow:

* A frame is a header block of ``Name: value`` lines ended by a blank line (``\\n\\n``; a
  ``\\n\\r\\n`` also ends it and a trailing ``\\r`` is stripped from every line), then exactly
  ``Content-Length`` body bytes when that header is present. Blank lines between frames are
  skipped. Header names are case-sensitive; a value starts after the first ``:`` and any spaces.
* Outer header values are not URL-decoded (FreeSWITCH does not encode them); the first
  occurrence of a duplicated header wins.
* A ``text/event-plain`` body is itself a header block with URL-encoded values, optionally
  followed (after its blank line) by a body whose length is the inner ``Content-Length``.
  It is indexed lazily: nothing is decoded until a header is read, and a value is
  percent-decoded (any-case hex, malformed escapes copied, ``+`` kept) then UTF-8-decoded
  with ``errors='replace'`` only when asked for. Inner lines without ``:`` are ignored.
* ``text/event-json`` bodies are decoded with orjson on first access (invalid UTF-8 is
  replaced first); ``text/event-xml`` bodies are parsed with ``xml.etree`` on first access.
  A body that does not decode raises :class:`ESLProtocolError` at that access.
* Errors (garbage header line, bad ``Content-Length``, frame over ``max_frame_size``,
  unterminated header block growing past it) raise :class:`ESLProtocolError` whose offset
  is where the offending frame starts. The parser then stays failed: every ``feed`` raises
  the same error again until :meth:`Parser.reset`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any
from urllib.parse import unquote_to_bytes

import orjson

from fastswitch.errors import ESLProtocolError

__all__ = ["Parser", "Frame", "Event", "MAX_FRAME_SIZE"]

MAX_FRAME_SIZE = 16 * 1024 * 1024

_EVENT_FORMATS = {
    "text/event-plain": "plain",
    "text/event-json": "json",
    "text/event-xml": "xml",
}


def _decode_value(v: bytes) -> str:
    """URL-unquote (once, malformed escapes kept) then UTF-8-decode a plain event value."""
    if b"%" in v:
        v = unquote_to_bytes(v)
    return v.decode("utf-8", "replace")


def _find_block_end(buf: bytes, start: int, end: int) -> tuple[int, int]:
    """Find the blank line ending a header block in ``buf[start:end]``.

    Returns ``(t, after)``: ``t`` is the index of the ``\\n`` ending the last header line
    (the block's lines are ``buf[start:t]``) and ``after`` the index just past the blank
    line; ``(-1, -1)`` when there is no blank line yet.
    """
    a = buf.find(b"\n\n", start, end)
    lim = end if a < 0 else a + 1  # a "\n\r\n" starting before ``a`` ends by a + 1
    b = buf.find(b"\n\r\n", start, lim)
    if b >= 0:
        return b, b + 3
    if a >= 0:
        return a, a + 2
    return -1, -1


def _digits(v: bytes) -> int:
    """The value of an all-ASCII-digit byte string, -1 otherwise."""
    if v and v.isdigit():
        return int(v)
    return -1


def _int_field(v: str | None) -> int:
    if v and v.isascii() and v.isdigit():
        return int(v)
    return 0


def _split_array(v: str) -> list[str]:
    if v.startswith("ARRAY::"):
        return v[7:].split("|:")
    return [v]


def _render(v: Any) -> str | None:
    """A JSON value as FreeSWITCH's plain format would show it."""
    if v is None:
        return None
    if isinstance(v, str):
        return v
    if isinstance(v, list):
        return "ARRAY::" + "|:".join([x if isinstance(x, str) else str(x) for x in v])
    return str(v)


class Event:
    """A decoded FreeSWITCH event: a read-only ``Mapping[str, str]`` of its headers.

    Plain events index their bytes lazily and decode (URL-unquote + UTF-8) only the
    headers that are read; the hot fields are cached. ``get`` returns the first occurrence
    of a header; ``getall`` returns every value with ``ARRAY::a|:b`` values (and JSON
    arrays) split.
    """

    __slots__ = (
        "format",
        "_raw",
        "_bs",
        "_be",
        "_t",
        "_after",
        "_offset",
        "_index",
        "_data",
        "_cache",
        "_body",
        "_body_done",
        "_ts",
        "_seq",
    )

    def __init__(self, fmt: str, raw: bytes, bs: int, be: int, offset: int) -> None:
        self.format = fmt
        self._raw = raw  # the frame's bytes; the event is raw[bs:be]
        self._bs = bs
        self._be = be
        self._offset = offset
        self._index: list[tuple[bytes, bytes]] | None = None
        self._data: dict[str, list[str]] | None = None  # json / xml: name -> values
        self._cache: dict[str, str | None] = {}
        self._body: str | None = None
        self._body_done = False
        self._t = -2
        self._after = -1
        self._ts = -1  # timestamp / sequence once computed (they are >= 0)
        self._seq = -1

    # -- plain internals -------------------------------------------------------------
    def _region(self) -> int:
        """End index (exclusive) of the plain header lines; computes the body bounds."""
        if self._t == -2:
            t, after = _find_block_end(self._raw, self._bs - 1, self._be)
            if t < 0:
                self._t, self._after = self._be, -1
            else:
                self._t, self._after = max(t, self._bs), after
        return self._t

    def _find(self, name: str) -> bytes | None:
        """The raw (still encoded) value of the first ``name`` line of a plain event."""
        if ":" in name or "\n" in name:
            return None
        pat = b"\n" + name.encode("utf-8", "surrogateescape") + b":"
        t = self._region()
        i = self._raw.find(pat, self._bs - 1, t)
        if i < 0:
            return None
        raw = self._raw
        j = i + len(pat)
        e = raw.find(b"\n", j, t)
        if e < 0:
            e = t
        while j < e and raw[j] == 32:
            j += 1
        if e > j and raw[e - 1] == 13:
            e -= 1
        return raw[j:e]

    def _lines(self) -> list[tuple[bytes, bytes]]:
        if self._index is None:
            t = self._region()
            idx = []
            for line in self._raw[self._bs : t].split(b"\n"):
                c = line.find(b":")
                if c < 0:
                    continue
                if line.endswith(b"\r"):
                    line = line[:-1]
                    if c >= len(line):
                        continue
                name = line[:c]
                v = line[c + 1 :].lstrip(b" ")
                idx.append((name, v))
            self._index = idx
        return self._index

    def _decoded(self) -> dict[str, list[str]]:
        """json / xml: every header name -> its list of values (arrays kept as lists)."""
        if self._data is None:
            if self.format == "json":
                self._data = self._load_json()
            else:
                self._data = self._load_xml()
        return self._data

    def _load_json(self) -> dict[str, list[str]]:
        b = self._raw[self._bs : self._be]
        try:
            try:
                d = orjson.loads(b)
            except orjson.JSONDecodeError:
                d = orjson.loads(b.decode("utf-8", "replace"))
        except orjson.JSONDecodeError as e:
            raise ESLProtocolError(f"invalid JSON event body: {e}", self._offset) from None
        if not isinstance(d, dict):
            raise ESLProtocolError("JSON event body is not an object", self._offset)
        out: dict[str, Any] = {}
        for k, v in d.items():
            if k == "_body":
                self._body = v if isinstance(v, str) else _render(v)
                continue
            out[k] = v
        self._body_done = True
        return out

    def _load_xml(self) -> dict[str, Any]:
        import xml.etree.ElementTree as ET

        try:
            root = ET.fromstring(self._raw[self._bs : self._be])
        except ET.ParseError as e:
            raise ESLProtocolError(f"invalid XML event body: {e}", self._offset) from None
        out: dict[str, Any] = {}
        hdrs = root.find("headers")
        if hdrs is not None:
            for el in hdrs:
                v = _decode_value((el.text or "").encode("utf-8", "surrogateescape"))
                prev = out.get(el.tag)
                if prev is None:
                    out[el.tag] = v
                elif isinstance(prev, list):
                    prev.append(v)
                else:
                    out[el.tag] = [prev, v]
        cl = root.find("Content-Length")
        if cl is not None:
            out.setdefault("Content-Length", cl.text or "")
        body = root.find("body")
        self._body = None if body is None else (body.text or "")
        self._body_done = True
        return out

    # -- public API -------------------------------------------------------------------
    def get(self, name: str, default: Any = None) -> Any:
        """The first value of header ``name`` (JSON arrays rendered ``ARRAY::a|:b``)."""
        c = self._cache
        if name in c:
            v = c[name]
            return default if v is None else v
        if self.format == "plain":
            b = self._find(name)
            v = None if b is None else _decode_value(b)
        else:
            v = _render(self._decoded().get(name))
        c[name] = v
        return default if v is None else v

    def getall(self, name: str) -> list[str]:
        """Every value of header ``name``: duplicates in order, arrays split."""
        out: list[str] = []
        if self.format == "plain":
            nb = name.encode("utf-8", "surrogateescape")
            for n, v in self._lines():
                if n == nb:
                    out.extend(_split_array(_decode_value(v)))
            return out
        v = self._decoded().get(name)
        if v is None:
            return out
        if isinstance(v, list):
            return [x if isinstance(x, str) else str(x) for x in v]
        return _split_array(_render(v))  # type: ignore[arg-type]

    def var(self, name: str, default: Any = None) -> Any:
        """The channel variable ``name`` (header ``variable_<name>``)."""
        return self.get("variable_" + name, default)

    @property
    def name(self) -> str:
        """Event-Name ('' when absent)."""
        return self.get("Event-Name", "")

    @property
    def subclass(self) -> str | None:
        return self.get("Event-Subclass")

    @property
    def unique_id(self) -> str | None:
        return self.get("Unique-ID")

    @property
    def job_uuid(self) -> str | None:
        return self.get("Job-UUID")

    @property
    def other_leg_unique_id(self) -> str | None:
        return self.get("Other-Leg-Unique-ID")

    @property
    def call_direction(self) -> str | None:
        return self.get("Call-Direction")

    @property
    def hangup_cause(self) -> str | None:
        return self.get("Hangup-Cause")

    @property
    def answer_state(self) -> str | None:
        return self.get("Answer-State")

    @property
    def timestamp(self) -> int:
        """Event-Date-Timestamp in microseconds (0 when absent or not a number)."""
        v = self._ts
        if v < 0:
            v = self._ts = _int_field(self.get("Event-Date-Timestamp"))
        return v

    @property
    def sequence(self) -> int:
        """Event-Sequence (0 when absent or not a number)."""
        v = self._seq
        if v < 0:
            v = self._seq = _int_field(self.get("Event-Sequence"))
        return v

    @property
    def body(self) -> str | None:
        """The event's own body (a BACKGROUND_JOB result), None when it has none."""
        if not self._body_done:
            if self.format == "plain":
                self._region()
                a = self._after
                if a < 0:
                    self._body = None
                else:
                    rest = self._raw[a : self._be]
                    cl = self._find("Content-Length")
                    if cl is not None:
                        n = _digits(cl)
                        if 0 <= n < len(rest):
                            rest = rest[:n]
                        self._body = rest.decode("utf-8", "replace")
                    else:
                        self._body = rest.decode("utf-8", "replace") if rest else None
                self._body_done = True
            else:
                self._decoded()
        return self._body

    @property
    def raw(self) -> bytes:
        """The event's serialized bytes (the frame body)."""
        return self._raw[self._bs : self._be]

    def _names(self) -> list[str]:
        if self.format == "plain":
            seen: dict[str, None] = {}
            for n, _ in self._lines():
                seen.setdefault(n.decode("utf-8", "replace"), None)
            return list(seen)
        return list(self._decoded())

    def __getitem__(self, name: str) -> str:
        v = self.get(name)
        if v is None:
            raise KeyError(name)
        return v

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.get(name) is not None

    def __iter__(self) -> Iterator[str]:
        return iter(self._names())

    def __len__(self) -> int:
        return len(self._names())

    def keys(self) -> list[str]:  # type: ignore[override]
        return self._names()

    def items(self) -> list[tuple[str, str]]:  # type: ignore[override]
        return [(k, self.get(k)) for k in self._names()]

    def values(self) -> list[str]:  # type: ignore[override]
        return [self.get(k) for k in self._names()]

    def __repr__(self) -> str:
        return f"<Event {self.format} {self.name!r} {self.unique_id!r}>"


Mapping.register(Event)


class Frame:
    """One ESL message: its outer headers, body and (for events) the decoded event."""

    __slots__ = (
        "content_type",
        "raw",
        "reply_text",
        "job_uuid",
        "is_event",
        "offset",
        "_hlen",
        "_headers",
        "_event",
    )

    def __init__(
        self,
        raw: bytes,
        hlen: int,
        headers: dict[str, str],
        offset: int,
    ) -> None:
        self.raw = raw
        self._hlen = hlen
        self._headers = headers
        self.offset = offset  # stream offset of the frame's first byte
        ct = headers.get("Content-Type", "")
        self.content_type = ct
        self.reply_text = headers.get("Reply-Text")
        self.job_uuid = headers.get("Job-UUID")
        self.is_event = ct.startswith("text/event-")
        self._event: Event | None = None

    @property
    def body(self) -> bytes:
        """The outer body (b'' when none)."""
        return self.raw[self._hlen :]

    @property
    def headers(self) -> dict[str, str]:
        """All outer headers (first occurrence of a duplicate)."""
        return dict(self._headers)

    def get(self, name: str, default: Any = None) -> Any:
        """An outer header's value."""
        return self._headers.get(name, default)

    @property
    def event(self) -> Event | None:
        """The decoded event of a ``text/event-*`` frame (built on first access), else None."""
        ev = self._event
        if ev is None:
            fmt = _EVENT_FORMATS.get(self.content_type)
            if fmt is None:
                return None
            ev = self._event = Event(fmt, self.raw, self._hlen, len(self.raw), self.offset)
        return ev

    def __repr__(self) -> str:
        return f"<Frame {self.content_type!r} {len(self.raw)} bytes>"


class Parser:
    """Incremental ESL frame parser.

    ``feed`` any chunking of the stream; it returns every frame completed so far, in
    order. After an :class:`ESLProtocolError` every ``feed`` raises it again until
    :meth:`reset`.
    """

    __slots__ = (
        "max_frame_size",
        "_buf",
        "_parts",
        "_plen",
        "_need",
        "_scan",
        "_offset",
        "_err_msg",
        "_err_off",
    )

    def __init__(self, max_frame_size: int = MAX_FRAME_SIZE) -> None:
        if max_frame_size <= 0:
            raise ValueError("max_frame_size must be positive")
        self.max_frame_size = max_frame_size
        self._offset = 0
        self._buf = b""
        self._parts: list[bytes] = []
        self._plen = 0
        self._need = 0  # bytes (counted from the frame start) needed before parsing again
        self._scan = 0  # where to resume looking for the blank line
        self._err_msg: str | None = None
        self._err_off = 0

    def reset(self) -> None:
        """Drop buffered bytes and any error; the parser is usable again.

        ``offset`` keeps counting stream bytes: the dropped bytes count as consumed.
        """
        self._offset += self.buffered
        self._buf = b""
        self._parts = []
        self._plen = 0
        self._need = 0
        self._scan = 0
        self._err_msg = None
        self._err_off = 0

    @property
    def buffered(self) -> int:
        """Bytes waiting for the rest of a frame."""
        return len(self._buf) + self._plen

    @property
    def offset(self) -> int:
        """Total bytes consumed (stream offset of the first buffered byte)."""
        return self._offset

    def _fail(self, msg: str, offset: int) -> ESLProtocolError:
        self._err_msg = msg
        self._err_off = offset
        return ESLProtocolError(msg, offset)

    def feed(self, data: bytes) -> list[Frame]:
        """Add ``data``; return the frames it completes (possibly none).

        Raises :class:`ESLProtocolError` on a framing error; its ``frames`` attribute holds
        the frames this call completed before the bad one (they are valid).
        """
        if self._err_msg is not None:
            e = ESLProtocolError(self._err_msg, self._err_off)
            e.frames = []  # type: ignore[attr-defined]
            raise e
        if not data:
            return []
        data = bytes(data)
        if self._need:
            self._parts.append(data)
            self._plen += len(data)
            if len(self._buf) + self._plen < self._need:
                return []
            self._parts.insert(0, self._buf)
            buf = b"".join(self._parts)
            self._parts = []
            self._plen = 0
            self._need = 0
        elif self._buf:
            buf = self._buf + data
        else:
            buf = data
        out: list[Frame] = []
        try:
            self._parse(buf, out)
        except ESLProtocolError as e:
            e.frames = out  # type: ignore[attr-defined]
            raise
        return out

    def _parse(self, buf: bytes, out: list[Frame]) -> None:
        pos = 0
        n = len(buf)
        base = self._offset
        maxf = self.max_frame_size
        scan = self._scan
        while pos < n:
            c = buf[pos]
            if c == 10 or c == 13:  # blank lines between frames
                pos += 1
                continue
            t, after = _find_block_end(buf, max(pos, scan), n)
            scan = 0
            if t < 0:
                if n - pos > maxf:
                    raise self._fail(
                        f"header block exceeds max_frame_size ({maxf} bytes) without an end",
                        base + pos,
                    )
                scan = max(pos, n - 2)
                break
            if after - pos > maxf:
                raise self._fail(
                    f"header block exceeds max_frame_size ({maxf} bytes) without an end",
                    base + pos,
                )
            headers: dict[str, str] = {}
            clen = -1
            for line in buf[pos:t].split(b"\n"):
                cidx = line.find(b":")
                if cidx < 0:
                    raise self._fail(f"malformed header line (no ':'): {line[:60]!r}", base + pos)
                if line.endswith(b"\r"):
                    line = line[:-1]
                name = line[:cidx]
                v = line[cidx + 1 :].lstrip(b" ")
                if name == b"Content-Length" and clen < 0:
                    vs = v.strip(b" \t")
                    clen = _digits(vs)
                    if clen < 0:
                        if vs[:1] == b"-" and _digits(vs[1:]) >= 0:
                            raise self._fail(f"negative Content-Length {vs[:40]!r}", base + pos)
                        raise self._fail(f"invalid Content-Length {vs[:40]!r}", base + pos)
                sname = name.decode("utf-8", "replace")
                if sname not in headers:
                    headers[sname] = v.decode("utf-8", "replace")
            hlen = after - pos
            total = hlen + (clen if clen > 0 else 0)
            if total > maxf:
                raise self._fail(
                    f"frame of {total} bytes exceeds max_frame_size ({maxf} bytes)", base + pos
                )
            if n - pos < total:
                self._need = total
                break
            end = pos + total
            out.append(Frame(buf[pos:end], hlen, headers, base + pos))
            pos = end
        self._scan = scan - pos if scan else 0
        self._buf = buf[pos:] if pos < n else b""
        self._offset = base + pos

    def __repr__(self) -> str:
        return f"<Parser offset={self._offset} buffered={self.buffered}>"
