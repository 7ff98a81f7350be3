# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Cython ESL frame parser (``fastswitch._esl``).

Behaves exactly like the pure-Python twin ``fastswitch._pyesl`` (which documents the
framing rules); this one scans with C pointers. A plain event is indexed in one pass over
its header lines (esl_core.h: newlines found 64 bytes at a time) that records every line's
start and locates the hot headers' values (Event-Name, Unique-ID, Job-UUID, timestamp,
...); a value is decoded (URL-unquote + UTF-8, ASCII without '%' copied straight) only
when read, and the hot ones are cached. json / xml events are delegated to the twin's
Event (decoded by orjson / xml.etree anyway); their hot values are cached here too.

Declarations: src_ext/fastswitch/_esl.pxd (this module's cdef classes) and
src_ext/esl_core.pxd (the C-level core), found through ``include_path=["src_ext"]``.

After :class:`~fastswitch.errors.ESLProtocolError` a :class:`Parser` is unusable (every
``feed`` raises the same error again) until :meth:`Parser.reset`.
"""

from collections.abc import Mapping

cimport cython
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.ref cimport Py_INCREF, Py_XDECREF
from cpython.unicode cimport PyUnicode_DecodeUTF8
from libc.stdint cimport uint32_t
from libc.stdlib cimport free, malloc
from libc.string cimport memchr, memcmp

from esl_core cimport (
    ESL_H_ANSWER,
    ESL_H_CAUSE,
    ESL_H_CLEN,
    ESL_H_DIRECTION,
    ESL_H_JOB_UUID,
    ESL_H_NAME,
    ESL_H_OTHER_LEG,
    ESL_H_SEQUENCE,
    ESL_H_SUBCLASS,
    ESL_H_TIMESTAMP,
    ESL_H_UNIQUE_ID,
    ESL_NHOT,
    block_end,
    decode_value,
    esl_digits,
    esl_find,
    esl_find_line,
    esl_hot_name,
    esl_index,
)

from fastswitch import _pyesl
from fastswitch._pyesl import _digits, _int_field, _split_array
from fastswitch.errors import ESLProtocolError

cdef extern from "Python.h":
    const char* PyUnicode_AsUTF8AndSize(object s, Py_ssize_t* size) except NULL

__all__ = ["Parser", "Frame", "Event", "MAX_FRAME_SIZE"]

MAX_FRAME_SIZE = 16 * 1024 * 1024

cdef tuple _FORMATS = ("plain", "json", "xml")
cdef object _PyEvent = _pyesl.Event

# the hot headers' names, by index (json / xml events look them up by name)
cdef tuple _HOT_NAMES = (
    "Event-Name",
    "Event-Subclass",
    "Unique-ID",
    "Job-UUID",
    "Other-Leg-Unique-ID",
    "Call-Direction",
    "Hangup-Cause",
    "Answer-State",
    "Event-Date-Timestamp",
    "Event-Sequence",
    "Content-Length",
)

# Content-Type values seen on the wire, returned without decoding
cdef tuple _CTYPES = (
    "text/event-plain",
    "text/event-json",
    "command/reply",
    "api/response",
    "text/event-xml",
    "auth/request",
    "text/disconnect-notice",
    "log/data",
    "text/rude-rejection",
)
cdef tuple _CTYPES_B = tuple(s.encode() for s in _CTYPES)


# freed line-start arrays kept for the next events (saves a malloc / free pair per event);
# only touched with the GIL held
cdef enum:
    _POOL = 16
cdef uint32_t* _pool_ls[_POOL]
cdef Py_ssize_t _pool_cap[_POOL]
cdef int _npool = 0


@cython.no_gc  # holds only bytes / str / int / its own objects: no cycles
cdef class Event:
    """A decoded FreeSWITCH event: a read-only ``Mapping[str, str]`` of its headers.

    See ``fastswitch._pyesl.Event`` for the semantics (identical). Attributes are declared
    in src_ext/fastswitch/_esl.pxd.
    """

    def __cinit__(self):
        cdef int i
        self._indexed = False
        self._hdone = 0
        self._t = -2
        self._after = -1
        self._body_done = False
        self._L.ls = NULL
        self._L.n = 0
        self._L.cap = 0
        for i in range(ESL_NHOT):
            self._hv[i] = NULL

    def __dealloc__(self):
        global _npool
        cdef int i
        if self._L.ls != NULL:
            if _npool < _POOL and self._L.cap <= 4096:
                _pool_ls[_npool] = self._L.ls
                _pool_cap[_npool] = self._L.cap
                _npool += 1
            else:
                free(self._L.ls)
        if self._hdone:
            for i in range(ESL_NHOT):
                Py_XDECREF(self._hv[i])

    def __init__(self, *args, **kwargs):
        raise TypeError("Event objects are created by Parser.feed / Frame.event")

    # -- plain internals -------------------------------------------------------------
    cdef int _index(self) except -1:
        """One pass over the plain header lines (esl_core.h): the hot headers' first
        occurrences, every line's start and where the lines end (the first blank line)."""
        global _npool
        cdef int i
        cdef Py_ssize_t size = self._be - self._bs
        cdef esl_lines* L = NULL
        if self._indexed:
            return 0
        for i in range(ESL_NHOT):
            self._vo[i] = -1
        if size < 0xFFFFFFFF:  # line starts are 32-bit offsets (else lookups use memmem)
            if _npool:
                _npool -= 1
                self._L.ls = _pool_ls[_npool]
                self._L.cap = _pool_cap[_npool]
            else:
                self._L.cap = 64 + min(size // 32, 960)  # grows by doubling
                self._L.ls = <uint32_t*>malloc(self._L.cap * sizeof(uint32_t))
                if self._L.ls == NULL:
                    raise MemoryError()
            L = &self._L
        if esl_index(PyBytes_AS_STRING(self._raw), self._bs, self._be, self._vo, self._vl,
                     &self._t, &self._after, L) < 0:
            raise MemoryError()
        self._indexed = True
        return 0

    cdef object _compute_hot(self, int h):
        cdef Py_ssize_t vo, vl
        cdef long long v
        cdef const char* p
        if self.fmt:
            if h == ESL_H_TIMESTAMP:
                return self._py.timestamp
            if h == ESL_H_SEQUENCE:
                return self._py.sequence
            return self._py.get(<str>_HOT_NAMES[h])
        self._index()
        vo = self._vo[h]
        if h == ESL_H_TIMESTAMP or h == ESL_H_SEQUENCE:
            if vo < 0:
                return 0
            p = PyBytes_AS_STRING(self._raw) + vo
            vl = self._vl[h]
            v = esl_digits(p, vl)
            if v >= 0:
                return v
            if vl and vl <= 18 and memchr(p, 37, vl) == NULL:
                return 0  # not all digits
            return _int_field(decode_value(p, vl))
        if vo < 0:
            return None
        return decode_value(PyBytes_AS_STRING(self._raw) + vo, self._vl[h])

    cdef object _hot(self, int h):
        """Hot value h (str / None, or int for the timestamp / sequence), cached."""
        cdef object v
        if self._hdone & (1u << h):
            return <object>self._hv[h]
        v = self._compute_hot(h)
        Py_INCREF(v)
        self._hv[h] = <PyObject*>v
        self._hdone |= 1u << h
        return v

    cdef object _plain_get(self, str name):
        """The decoded first value of header ``name`` of a plain event, None if absent."""
        cdef Py_ssize_t ln, vo, vl
        cdef const char* s
        cdef bytes nb
        cdef int h, r
        try:
            s = PyUnicode_AsUTF8AndSize(name, &ln)
        except UnicodeEncodeError:
            nb = name.encode("utf-8", "surrogateescape")
            s = PyBytes_AS_STRING(nb)
            ln = PyBytes_GET_SIZE(nb)
        h = esl_hot_name(s, ln)
        if h >= 0:
            if h != ESL_H_TIMESTAMP and h != ESL_H_SEQUENCE:
                return self._hot(h)
            self._index()
            if self._vo[h] < 0:
                return None
            return decode_value(PyBytes_AS_STRING(self._raw) + self._vo[h], self._vl[h])
        if memchr(s, 58, ln) != NULL or memchr(s, 10, ln) != NULL:
            return None
        self._index()
        if self._L.ls != NULL:
            r = esl_find_line(PyBytes_AS_STRING(self._raw), self._bs, self._t, &self._L, s, ln,
                              &vo, &vl)
        else:
            r = esl_find(PyBytes_AS_STRING(self._raw), self._bs, self._t, s, ln, &vo, &vl)
        if r < 0:
            raise MemoryError()
        if r == 0:
            return None
        return decode_value(PyBytes_AS_STRING(self._raw) + vo, vl)

    cdef list _all_lines(self):
        """(name, value) bytes of every header line with a ':', in order."""
        cdef list idx
        cdef bytes line
        cdef Py_ssize_t c
        if self._lines is None:
            self._index()
            idx = []
            for line in self._raw[self._bs:self._t].split(b"\n"):
                c = line.find(b":")
                if c < 0:
                    continue
                if line.endswith(b"\r"):
                    line = line[:len(line) - 1]
                idx.append((line[:c], line[c + 1:].lstrip(b" ")))
            self._lines = idx
        return self._lines

    # -- public API -------------------------------------------------------------------
    @property
    def format(self):
        """'plain' | 'json' | 'xml'."""
        return _FORMATS[self.fmt]

    def get(self, str name, default=None):
        """The first value of header ``name`` (JSON arrays rendered ``ARRAY::a|:b``)."""
        cdef object v
        if self.fmt:
            return self._py.get(name, default)
        v = self._plain_get(name)
        return default if v is None else v

    def getall(self, str name):
        """Every value of header ``name``: duplicates in order, arrays split."""
        cdef list out = []
        cdef bytes nb, n, v
        if self.fmt:
            return self._py.getall(name)
        nb = name.encode("utf-8", "surrogateescape")
        for n, v in self._all_lines():
            if n == nb:
                out.extend(_split_array(decode_value(PyBytes_AS_STRING(v), PyBytes_GET_SIZE(v))))
        return out

    def var(self, str name, default=None):
        """The channel variable ``name`` (header ``variable_<name>``)."""
        return self.get("variable_" + name, default)

    @property
    def name(self):
        """Event-Name ('' when absent)."""
        cdef object v
        if self._hdone & 1u:
            v = <object>self._hv[ESL_H_NAME]
        else:
            v = self._hot(ESL_H_NAME)
        return "" if v is None else v

    @property
    def subclass(self):
        return self._hot(ESL_H_SUBCLASS)

    @property
    def unique_id(self):
        return self._hot(ESL_H_UNIQUE_ID)

    @property
    def job_uuid(self):
        return self._hot(ESL_H_JOB_UUID)

    @property
    def other_leg_unique_id(self):
        return self._hot(ESL_H_OTHER_LEG)

    @property
    def call_direction(self):
        return self._hot(ESL_H_DIRECTION)

    @property
    def hangup_cause(self):
        return self._hot(ESL_H_CAUSE)

    @property
    def answer_state(self):
        return self._hot(ESL_H_ANSWER)

    @property
    def timestamp(self):
        """Event-Date-Timestamp in microseconds (0 when absent or not a number)."""
        return self._hot(ESL_H_TIMESTAMP)

    @property
    def sequence(self):
        """Event-Sequence (0 when absent or not a number)."""
        return self._hot(ESL_H_SEQUENCE)

    @property
    def body(self):
        """The event's own body (a BACKGROUND_JOB result), None when it has none."""
        cdef bytes rest
        cdef Py_ssize_t n, vo
        if self.fmt:
            return self._py.body
        if not self._body_done:
            self._index()
            if self._after < 0:
                self._body = None
            else:
                rest = self._raw[self._after:self._be]
                vo = self._vo[ESL_H_CLEN]
                if vo >= 0:
                    n = _digits(self._raw[vo:vo + self._vl[ESL_H_CLEN]])
                    if 0 <= n < len(rest):
                        rest = rest[:n]
                    self._body = rest.decode("utf-8", "replace")
                else:
                    self._body = rest.decode("utf-8", "replace") if rest else None
            self._body_done = True
        return self._body

    @property
    def raw(self):
        """The event's serialized bytes (the frame body)."""
        return self._raw[self._bs:self._be]

    def _names(self):
        cdef dict seen
        if self.fmt:
            return self._py._names()
        seen = {}
        for n, _ in self._all_lines():
            seen.setdefault(n.decode("utf-8", "replace"), None)
        return list(seen)

    def __getitem__(self, str name):
        v = self.get(name)
        if v is None:
            raise KeyError(name)
        return v

    def __contains__(self, name):
        return isinstance(name, str) and self.get(name) is not None

    def __iter__(self):
        return iter(self._names())

    def __len__(self):
        return len(self._names())

    def keys(self):
        return self._names()

    def items(self):
        return [(k, self.get(k)) for k in self._names()]

    def values(self):
        return [self.get(k) for k in self._names()]

    def __repr__(self):
        return f"<Event {self.format} {self.name!r} {self.unique_id!r}>"


Mapping.register(Event)


cdef Event _make_event(int fmt, bytes raw, Py_ssize_t bs, Py_ssize_t be, Py_ssize_t offset):
    cdef Event ev = Event.__new__(Event)
    ev.fmt = fmt
    ev._raw = raw
    ev._bs = bs
    ev._be = be
    ev._offset = offset
    if fmt:
        ev._py = _PyEvent(_FORMATS[fmt], raw, bs, be, offset)
    return ev


@cython.no_gc
cdef class Frame:
    """One ESL message: its outer headers, body and (for events) the decoded event."""

    def __init__(self, *args, **kwargs):
        raise TypeError("Frame objects are created by Parser.feed")

    @property
    def body(self):
        """The outer body (b'' when none)."""
        return self.raw[self._hlen:]

    cdef dict _hdrs(self):
        cdef dict headers
        if self._headers is None:
            headers = {}
            for line in self.raw[:self._t].split(b"\n"):
                cidx = line.find(b":")
                if line.endswith(b"\r"):
                    line = line[:len(line) - 1]
                sname = line[:cidx].decode("utf-8", "replace")
                if sname not in headers:
                    headers[sname] = line[cidx + 1:].lstrip(b" ").decode("utf-8", "replace")
            self._headers = headers
        return self._headers

    @property
    def headers(self):
        """All outer headers (first occurrence of a duplicate)."""
        return dict(self._hdrs())

    def get(self, str name, default=None):
        """An outer header's value."""
        return self._hdrs().get(name, default)

    @property
    def event(self):
        """The decoded event of a ``text/event-*`` frame (built on first access), else None."""
        if self._event is None:
            if self._fmt < 0:
                return None
            self._event = _make_event(self._fmt, self.raw, self._hlen,
                                      PyBytes_GET_SIZE(self.raw), self.offset)
        return self._event

    def __repr__(self):
        return f"<Frame {self.content_type!r} {len(self.raw)} bytes>"


cdef str _ctype(const char* p, Py_ssize_t n):
    cdef Py_ssize_t i
    cdef bytes b
    for i in range(len(_CTYPES_B)):
        b = <bytes>_CTYPES_B[i]
        if PyBytes_GET_SIZE(b) == n and memcmp(PyBytes_AS_STRING(b), p, n) == 0:
            return <str>_CTYPES[i]
    return PyUnicode_DecodeUTF8(p, n, "replace")


@cython.no_gc
cdef class Parser:
    """Incremental ESL frame parser.

    ``feed`` any chunking of the stream; it returns every frame completed so far, in
    order. After an :class:`ESLProtocolError` every ``feed`` raises it again until
    :meth:`reset`.
    """


    def __init__(self, Py_ssize_t max_frame_size=MAX_FRAME_SIZE):
        if max_frame_size <= 0:
            raise ValueError("max_frame_size must be positive")
        self.max_frame_size = max_frame_size
        self._offset = 0
        self._buf = b""
        self._parts = []
        self._plen = 0
        self._need = 0
        self._scan = 0
        self._err_msg = None
        self._err_off = 0

    def reset(self):
        """Drop buffered bytes and any error; the parser is usable again.

        ``offset`` keeps counting stream bytes: the dropped bytes count as consumed.
        """
        self._offset += PyBytes_GET_SIZE(self._buf) + self._plen
        self._buf = b""
        self._parts = []
        self._plen = 0
        self._need = 0
        self._scan = 0
        self._err_msg = None
        self._err_off = 0

    @property
    def buffered(self):
        """Bytes waiting for the rest of a frame."""
        return PyBytes_GET_SIZE(self._buf) + self._plen

    @property
    def offset(self):
        """Total bytes consumed (stream offset of the first buffered byte)."""
        return self._offset

    cdef object _fail(self, str msg, Py_ssize_t offset):
        # remember the error: every later feed raises it again until reset()
        self._err_msg = msg
        self._err_off = offset
        return ESLProtocolError(msg, offset)

    def feed(self, data):
        """Add ``data``; return the frames it completes (possibly none).

        Raises :class:`ESLProtocolError` on a framing error; its ``frames`` attribute holds
        the frames this call completed before the bad one (they are valid).
        """
        cdef bytes buf
        cdef list out = []
        if self._err_msg is not None:
            e = ESLProtocolError(self._err_msg, self._err_off)
            e.frames = []
            raise e
        if not data:
            return out
        if type(data) is not bytes:
            data = bytes(data)
        if self._need:
            self._parts.append(data)
            self._plen += PyBytes_GET_SIZE(data)
            if PyBytes_GET_SIZE(self._buf) + self._plen < self._need:
                return out
            self._parts.insert(0, self._buf)
            buf = b"".join(self._parts)
            self._parts = []
            self._plen = 0
            self._need = 0
        elif PyBytes_GET_SIZE(self._buf):
            buf = self._buf + data
        else:
            buf = data
        try:
            self._parse(buf, out)
        except ESLProtocolError as e:
            e.frames = out
            raise
        return out

    cdef int _parse(self, bytes buf, list out) except -1:
        cdef const char* p
        cdef Py_ssize_t n, pos, base, maxf, scan, t, after, start, hlen, total, end
        cdef Py_ssize_t ls, le, c, vs, ve, clen, ct_o, ct_l, rt_o, rt_l, ju_o, ju_l, k
        cdef const char* q
        cdef Frame fr
        cdef char ch
        cdef str ct
        cdef object big = None
        p = PyBytes_AS_STRING(buf)
        n = PyBytes_GET_SIZE(buf)
        pos = 0
        base = self._offset
        maxf = self.max_frame_size
        scan = self._scan
        while pos < n:
            ch = p[pos]
            if ch == 10 or ch == 13:
                pos += 1
                continue
            start = pos if pos > scan else scan
            scan = 0
            after = -1
            t = block_end(p, start, n, &after)
            if t < 0:
                if n - pos > maxf:
                    raise self._fail(
                        f"header block exceeds max_frame_size ({maxf} bytes) without an end",
                        base + pos)
                scan = n - 2 if n - 2 > pos else pos
                break
            if after - pos > maxf:
                raise self._fail(
                    f"header block exceeds max_frame_size ({maxf} bytes) without an end",
                    base + pos)
            clen = -1
            ct_o = -1
            ct_l = 0
            rt_o = -1
            rt_l = 0
            ju_o = -1
            ju_l = 0
            ls = pos
            while ls < t:
                q = <const char*>memchr(p + ls, 10, t - ls)
                le = t if q == NULL else q - p
                q = <const char*>memchr(p + ls, 58, le - ls)
                if q == NULL:
                    raise self._fail(
                        f"malformed header line (no ':'): {buf[ls:min(le, ls + 60)]!r}",
                        base + pos)
                c = q - p
                ve = le
                if p[ve - 1] == 13:
                    ve -= 1
                vs = c + 1
                while vs < ve and p[vs] == 32:
                    vs += 1
                k = c - ls
                if k == 14 and clen < 0 and memcmp(p + ls, b"Content-Length", 14) == 0:
                    while vs < ve and (p[vs] == 32 or p[vs] == 9):
                        vs += 1
                    while ve > vs and (p[ve - 1] == 32 or p[ve - 1] == 9):
                        ve -= 1
                    if ve == vs:
                        raise self._fail(f"invalid Content-Length {b''!r}", base + pos)
                    clen = 0
                    for k in range(vs, ve):
                        ch = p[k]
                        if ch < 48 or ch > 57:
                            clen = -1
                            break
                        if ve - vs <= 18:
                            clen = clen * 10 + (ch - 48)
                    if clen < 0:
                        big = buf[vs:ve]
                        if big[:1] == b"-" and _digits(big[1:]) >= 0:
                            raise self._fail(f"negative Content-Length {big[:40]!r}", base + pos)
                        raise self._fail(f"invalid Content-Length {big[:40]!r}", base + pos)
                    if ve - vs > 18:  # may overflow: let Python size it after the loop
                        big = int(buf[vs:ve])
                elif k == 12 and ct_o < 0 and memcmp(p + ls, b"Content-Type", 12) == 0:
                    ct_o = vs
                    ct_l = ve - vs
                elif k == 10 and rt_o < 0 and memcmp(p + ls, b"Reply-Text", 10) == 0:
                    rt_o = vs
                    rt_l = ve - vs
                elif k == 8 and ju_o < 0 and memcmp(p + ls, b"Job-UUID", 8) == 0:
                    ju_o = vs
                    ju_l = ve - vs
                ls = le + 1
            hlen = after - pos
            if big is not None:
                if hlen + big > maxf:
                    raise self._fail(
                        f"frame of {hlen + big} bytes exceeds max_frame_size ({maxf} bytes)",
                        base + pos)
                clen = big
                big = None
            total = hlen + (clen if clen > 0 else 0)
            if total > maxf:
                raise self._fail(
                    f"frame of {total} bytes exceeds max_frame_size ({maxf} bytes)", base + pos)
            if n - pos < total:
                self._need = total
                break
            end = pos + total
            fr = Frame.__new__(Frame)
            if pos == 0 and end == n:
                fr.raw = buf
            else:
                fr.raw = PyBytes_FromStringAndSize(p + pos, total)
            fr._hlen = hlen
            fr._t = t - pos
            fr.offset = base + pos
            if ct_o >= 0:
                ct = _ctype(p + ct_o, ct_l)
            else:
                ct = ""
            fr.content_type = ct
            fr._fmt = -1
            if ct_l >= 11 and memcmp(p + ct_o, b"text/event-", 11) == 0:
                fr.is_event = True
                if ct is _CTYPES[0]:
                    fr._fmt = 0
                elif ct is _CTYPES[1]:
                    fr._fmt = 1
                elif ct is _CTYPES[4]:
                    fr._fmt = 2
            if rt_o >= 0:
                fr.reply_text = PyUnicode_DecodeUTF8(p + rt_o, rt_l, "replace")
            if ju_o >= 0:
                fr.job_uuid = PyUnicode_DecodeUTF8(p + ju_o, ju_l, "replace")
            out.append(fr)
            pos = end
        self._scan = scan - pos if scan else 0
        self._buf = buf[pos:] if pos < n else b""
        self._offset = base + pos
        return 0

    def __repr__(self):
        return f"<Parser offset={self._offset} buffered={self.buffered}>"
