# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Cython ESL frame parser (``fastswitch._esl``).

Behaves exactly like the pure-Python twin ``fastswitch._pyesl`` (which documents the
framing rules); this one scans with C pointers and indexes a plain event's header lines
as offsets into the frame's bytes, decoding (URL-unquote + UTF-8) only the values read.
The hot fields (Event-Name, Unique-ID, Job-UUID, ...) are located while indexing and
cached once decoded. json / xml events are delegated to the twin's Event (they are
decoded by orjson / xml.etree anyway).

After :class:`~fastswitch.errors.ESLProtocolError` a :class:`Parser` is unusable (every
``feed`` raises the same error again) until :meth:`Parser.reset`.
"""

from collections.abc import Mapping

cimport cython

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.unicode cimport PyUnicode_DecodeUTF8
from libc.stdlib cimport free, malloc, realloc
from libc.string cimport memchr, memcmp

from fastswitch import _pyesl
from fastswitch._pyesl import _digits, _int_field, _split_array
from fastswitch.errors import ESLProtocolError

cdef extern from "Python.h":
    const char* PyUnicode_AsUTF8AndSize(object s, Py_ssize_t* size) except NULL

__all__ = ["Parser", "Frame", "Event", "MAX_FRAME_SIZE"]

cdef struct Entry:
    # one header line of a plain event, as offsets into Event._raw; the name / value
    # split is found only when the line is looked at (nl == -1 until then)
    Py_ssize_t ls   # line start
    Py_ssize_t le   # line end (its '\n', or the end of the header lines)
    Py_ssize_t nl   # name length; -1 not parsed yet, -2 no ':' on the line
    Py_ssize_t vo   # value start (after ':' and spaces)
    Py_ssize_t vl   # value length (trailing '\r' dropped)


MAX_FRAME_SIZE = 16 * 1024 * 1024

# indices into Event._hot (NHOT entries; the array size is in _esl.pxd)
cdef enum:
    H_NAME = 0
    H_SUBCLASS = 1
    H_UNIQUE_ID = 2
    H_JOB_UUID = 3
    H_OTHER_LEG = 4
    H_DIRECTION = 5
    H_CAUSE = 6
    H_ANSWER = 7
    H_TIMESTAMP = 8
    H_SEQUENCE = 9
    H_CLEN = 10
    NHOT = 11

cdef str _FMT_PLAIN = "plain"
cdef tuple _FORMATS = ("plain", "json", "xml")
cdef object _PyEvent = _pyesl.Event

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


cdef inline int _hexval(char c) noexcept nogil:
    if c >= 48 and c <= 57:
        return c - 48
    if c >= 65 and c <= 70:
        return c - 55
    if c >= 97 and c <= 102:
        return c - 87
    return -1


cdef str _decode(const char* s, Py_ssize_t n):
    """URL-unquote once (malformed escapes copied, '+' kept) then UTF-8-decode ('replace')."""
    cdef const char* pct
    cdef char small[512]
    cdef char* out
    cdef Py_ssize_t i = 0, j = 0
    cdef int hi, lo
    cdef str res
    if n == 0:
        return ""
    pct = <const char*>memchr(s, 37, n)
    if pct == NULL:
        return PyUnicode_DecodeUTF8(s, n, "replace")
    if n <= 512:
        out = small
    else:
        out = <char*>malloc(n)
        if out == NULL:
            raise MemoryError()
    i = pct - s
    for j in range(i):
        out[j] = s[j]
    j = i
    while i < n:
        if s[i] == 37 and i + 2 < n:
            hi = _hexval(s[i + 1])
            lo = _hexval(s[i + 2])
            if hi >= 0 and lo >= 0:
                out[j] = <char>(hi * 16 + lo)
                j += 1
                i += 3
                continue
        out[j] = s[i]
        j += 1
        i += 1
    try:
        res = PyUnicode_DecodeUTF8(out, j, "replace")
    finally:
        if out != small:
            free(out)
    return res


cdef inline Py_ssize_t _find_nl(const char* p, Py_ssize_t start, Py_ssize_t end) noexcept nogil:
    cdef const char* q
    if start >= end:
        return -1
    q = <const char*>memchr(p + start, 10, end - start)
    if q == NULL:
        return -1
    return q - p


cdef inline Py_ssize_t _block_end(const char* p, Py_ssize_t start, Py_ssize_t end,
                                  Py_ssize_t* after) noexcept nogil:
    """Index of the '\\n' ending the last header line of the block in p[start:end]
    (the earliest '\\n\\n' or '\\n\\r\\n'), -1 when there is none yet."""
    cdef Py_ssize_t i = start
    while True:
        i = _find_nl(p, i, end)
        if i < 0:
            return -1
        if i + 1 < end:
            if p[i + 1] == 10:
                after[0] = i + 2
                return i
            if p[i + 1] == 13 and i + 2 < end and p[i + 2] == 10:
                after[0] = i + 3
                return i
        else:
            return -1
        i += 1


cdef inline bint _is(const char* s, Py_ssize_t n, const char* lit, Py_ssize_t ln) noexcept nogil:
    # does the line s[:n] start with lit (a name followed by ':')?
    return n >= ln and memcmp(s, lit, ln) == 0


cdef inline int _hot_line(const char* s, Py_ssize_t n) noexcept nogil:
    """Which hot header the line s[:n] holds (-1: none), from its first bytes."""
    cdef char c = s[0]
    if c == 69:  # 'E'
        if n > 6 and s[6] == 78 and _is(s, n, b"Event-Name:", 11):
            return H_NAME
        if _is(s, n, b"Event-Date-Timestamp:", 21):
            return H_TIMESTAMP
        if _is(s, n, b"Event-Sequence:", 15):
            return H_SEQUENCE
        if _is(s, n, b"Event-Subclass:", 15):
            return H_SUBCLASS
    elif c == 85:  # 'U'
        if _is(s, n, b"Unique-ID:", 10):
            return H_UNIQUE_ID
    elif c == 67:  # 'C'
        if n > 2 and s[1] == 97 and _is(s, n, b"Call-Direction:", 15):
            return H_DIRECTION
        if n > 2 and s[1] == 111 and _is(s, n, b"Content-Length:", 15):
            return H_CLEN
    elif c == 74:  # 'J'
        if _is(s, n, b"Job-UUID:", 9):
            return H_JOB_UUID
    elif c == 72:  # 'H'
        if _is(s, n, b"Hangup-Cause:", 13):
            return H_CAUSE
    elif c == 65:  # 'A'
        if _is(s, n, b"Answer-State:", 13):
            return H_ANSWER
    elif c == 79:  # 'O'
        if _is(s, n, b"Other-Leg-Unique-ID:", 20):
            return H_OTHER_LEG
    return -1


cdef int[11] _HOT_LEN
_HOT_LEN[:] = [10, 14, 9, 8, 19, 14, 12, 12, 20, 14, 14]


@cython.final
cdef class Event:
    """A decoded FreeSWITCH event: a read-only ``Mapping[str, str]`` of its headers.

    See ``fastswitch._pyesl.Event`` for the semantics (identical).
    """

    cdef readonly int fmt            # 0 plain, 1 json, 2 xml
    cdef bytes _raw                  # the frame's bytes; the event is _raw[_bs:_be]
    cdef Py_ssize_t _bs, _be
    cdef Py_ssize_t _t, _after       # end of the header lines, start of the inner body
    cdef Py_ssize_t _offset
    cdef Entry* _ents
    cdef Py_ssize_t _n, _cap
    cdef bint _indexed
    cdef int _hot[11]                # entry index of each hot header (-1 absent)
    cdef unsigned int _hdone         # bit i set: hot value i is cached in _hv
    cdef list _hv
    cdef object _py                  # json / xml: the pure-Python Event doing the work
    cdef object _body
    cdef bint _body_done


    def __cinit__(self):
        self._ents = NULL
        self._n = 0
        self._cap = 0
        self._indexed = False
        self._hdone = 0
        self._t = -2
        self._after = -1
        self._body_done = False
        for i in range(NHOT):
            self._hot[i] = -1

    def __dealloc__(self):
        if self._ents != NULL:
            free(self._ents)

    def __init__(self, *args, **kwargs):
        raise TypeError("Event objects are created by Parser.feed / Frame.event")

    # -- plain internals -------------------------------------------------------------
    cdef int _index(self) except -1:
        """One pass over the plain header lines: record where each line starts and ends,
        the hot headers' first occurrences and where the lines end (the first blank line).
        Names and values are split only when a line is looked at."""
        cdef const char* p
        cdef Py_ssize_t s, k, be, n = 0
        cdef const char* r
        cdef Entry* ents
        cdef int h
        if self._indexed:
            return 0
        p = PyBytes_AS_STRING(self._raw)
        s = self._bs
        be = self._be
        self._t = be
        self._after = -1
        if self._cap == 0:
            self._cap = 64 + min((be - s) // 32, 448)  # grows by doubling
            self._ents = <Entry*>malloc(self._cap * sizeof(Entry))
            if self._ents == NULL:
                raise MemoryError()
        ents = self._ents
        while s < be:
            r = <const char*>memchr(p + s, 10, be - s)
            k = be if r == NULL else r - p
            # an empty line (or a lone '\r' before '\n') ends the header lines; the byte
            # before the first line is always the outer block's '\n'
            if r != NULL and (k == s or (k == s + 1 and p[s] == 13)):
                self._t = s - 1 if s - 1 > self._bs else self._bs
                self._after = k + 1
                break
            if n == self._cap:
                self._cap *= 2
                ents = <Entry*>realloc(self._ents, self._cap * sizeof(Entry))
                if ents == NULL:
                    raise MemoryError()
                self._ents = ents
            ents[n].ls = s
            ents[n].le = k
            ents[n].nl = -1
            h = _hot_line(p + s, k - s)
            if h >= 0 and self._hot[h] < 0:
                self._hot[h] = <int>n
                self._set_entry(n, _HOT_LEN[h])
            n += 1
            s = k + 1
        self._n = n
        self._indexed = True
        return 0

    cdef void _set_entry(self, Py_ssize_t i, Py_ssize_t nl) noexcept:
        """Split line i whose first ':' is at nl (-1: find it)."""
        cdef const char* p = PyBytes_AS_STRING(self._raw)
        cdef Entry* e = &self._ents[i]
        cdef const char* r
        cdef Py_ssize_t vs, ve
        if nl < 0:
            r = <const char*>memchr(p + e.ls, 58, e.le - e.ls)
            if r == NULL:
                e.nl = -2
                return
            nl = r - p - e.ls
        e.nl = nl
        vs = e.ls + nl + 1
        ve = e.le
        if ve > vs and p[ve - 1] == 13:
            ve -= 1
        while vs < ve and p[vs] == 32:
            vs += 1
        e.vo = vs
        e.vl = ve - vs

    cdef Py_ssize_t _match(self, Py_ssize_t i, const char* s, Py_ssize_t ln) noexcept:
        """Is line i a ``name:`` line for the name s[:ln] (which has no ':' or '\\n')?"""
        cdef const char* p = PyBytes_AS_STRING(self._raw)
        cdef Entry* e = &self._ents[i]
        if e.le - e.ls > ln and p[e.ls + ln] == 58 and (ln == 0 or p[e.ls] == s[0]) \
                and memcmp(p + e.ls, s, ln) == 0:
            if e.nl == -1:
                self._set_entry(i, ln)
            return 1
        return 0

    cdef Py_ssize_t _lookup(self, str name) except -2:
        """Entry index of the first ``name`` line, -1 when absent."""
        cdef Py_ssize_t ln, i
        cdef const char* s
        cdef bytes nb
        self._index()
        try:
            s = PyUnicode_AsUTF8AndSize(name, &ln)
        except UnicodeEncodeError:
            nb = name.encode("utf-8", "surrogateescape")
            s = PyBytes_AS_STRING(nb)
            ln = PyBytes_GET_SIZE(nb)
        if memchr(s, 58, ln) != NULL or memchr(s, 10, ln) != NULL:
            return -1
        for i in range(self._n):
            if self._match(i, s, ln):
                return i
        return -1

    cdef object _value(self, Py_ssize_t i):
        if i < 0:
            return None
        return _decode(PyBytes_AS_STRING(self._raw) + self._ents[i].vo, self._ents[i].vl)

    cdef object _hotval(self, int h):
        cdef object v
        if self._hdone & (1u << h):
            return self._hv[h]
        self._index()
        v = self._value(self._hot[h])
        if self._hv is None:
            self._hv = [None] * NHOT
        self._hv[h] = v
        self._hdone |= 1u << h
        return v

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
        v = self._value(self._lookup(name))
        return default if v is None else v

    def getall(self, str name):
        """Every value of header ``name``: duplicates in order, arrays split."""
        cdef list out = []
        cdef Py_ssize_t ln, i
        cdef bytes nb
        if self.fmt:
            return self._py.getall(name)
        self._index()
        nb = name.encode("utf-8", "surrogateescape")
        ln = len(nb)
        if b":" in nb or b"\n" in nb:
            return out
        for i in range(self._n):
            if self._match(i, PyBytes_AS_STRING(nb), ln):
                out.extend(_split_array(self._value(i)))
        return out

    def var(self, str name, default=None):
        """The channel variable ``name`` (header ``variable_<name>``)."""
        return self.get("variable_" + name, default)

    @property
    def name(self):
        """Event-Name ('' when absent)."""
        cdef object v
        if self.fmt:
            return self._py.name
        v = self._hotval(H_NAME)
        return "" if v is None else v

    @property
    def subclass(self):
        return self._py.subclass if self.fmt else self._hotval(H_SUBCLASS)

    @property
    def unique_id(self):
        return self._py.unique_id if self.fmt else self._hotval(H_UNIQUE_ID)

    @property
    def job_uuid(self):
        return self._py.job_uuid if self.fmt else self._hotval(H_JOB_UUID)

    @property
    def other_leg_unique_id(self):
        return self._py.other_leg_unique_id if self.fmt else self._hotval(H_OTHER_LEG)

    @property
    def call_direction(self):
        return self._py.call_direction if self.fmt else self._hotval(H_DIRECTION)

    @property
    def hangup_cause(self):
        return self._py.hangup_cause if self.fmt else self._hotval(H_CAUSE)

    @property
    def answer_state(self):
        return self._py.answer_state if self.fmt else self._hotval(H_ANSWER)

    cdef object _intfield(self, int h):
        cdef Py_ssize_t i, j, n
        cdef const char* s
        cdef long long v = 0
        cdef char c
        self._index()
        i = self._hot[h]
        if i < 0:
            return 0
        n = self._ents[i].vl
        s = PyBytes_AS_STRING(self._raw) + self._ents[i].vo
        if n == 0 or n > 18 or memchr(s, 37, n) != NULL:
            return _int_field(self._hotval(h))
        for j in range(n):
            c = s[j]
            if c < 48 or c > 57:
                return 0
            v = v * 10 + (c - 48)
        return v

    @property
    def timestamp(self):
        """Event-Date-Timestamp in microseconds (0 when absent or not a number)."""
        if self.fmt:
            return self._py.timestamp
        return self._intfield(H_TIMESTAMP)

    @property
    def sequence(self):
        """Event-Sequence (0 when absent or not a number)."""
        if self.fmt:
            return self._py.sequence
        return self._intfield(H_SEQUENCE)

    @property
    def body(self):
        """The event's own body (a BACKGROUND_JOB result), None when it has none."""
        cdef bytes rest
        cdef Py_ssize_t n, i
        if self.fmt:
            return self._py.body
        if not self._body_done:
            self._index()
            if self._after < 0:
                self._body = None
            else:
                rest = self._raw[self._after:self._be]
                i = self._hot[H_CLEN]
                if i >= 0:
                    n = _digits(self._raw[self._ents[i].vo:self._ents[i].vo + self._ents[i].vl])
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
        cdef Py_ssize_t i
        cdef const char* p
        if self.fmt:
            return self._py._names()
        self._index()
        seen = {}
        p = PyBytes_AS_STRING(self._raw)
        for i in range(self._n):
            if self._ents[i].nl == -1:
                self._set_entry(i, -1)
            if self._ents[i].nl >= 0:
                seen.setdefault(
                    PyUnicode_DecodeUTF8(p + self._ents[i].ls, self._ents[i].nl, "replace"), None
                )
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


@cython.final
cdef class Frame:
    """One ESL message: its outer headers, body and (for events) the decoded event."""

    cdef readonly str content_type
    cdef readonly bytes raw
    cdef readonly object reply_text
    cdef readonly object job_uuid
    cdef readonly bint is_event
    cdef readonly Py_ssize_t offset
    cdef Py_ssize_t _hlen, _t
    cdef int _fmt
    cdef dict _headers
    cdef Event _event


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


cdef inline bint _eq(const char* p, Py_ssize_t n, const char* lit, Py_ssize_t ln) noexcept nogil:
    return n == ln and memcmp(p, lit, ln) == 0


cdef str _ctype(const char* p, Py_ssize_t n):
    cdef Py_ssize_t i
    cdef bytes b
    for i in range(len(_CTYPES_B)):
        b = <bytes>_CTYPES_B[i]
        if PyBytes_GET_SIZE(b) == n and memcmp(PyBytes_AS_STRING(b), p, n) == 0:
            return <str>_CTYPES[i]
    return PyUnicode_DecodeUTF8(p, n, "replace")


@cython.final
cdef class Parser:
    """Incremental ESL frame parser.

    ``feed`` any chunking of the stream; it returns every frame completed so far, in
    order. After an :class:`ESLProtocolError` every ``feed`` raises it again until
    :meth:`reset`.
    """

    cdef readonly Py_ssize_t max_frame_size
    cdef bytes _buf
    cdef list _parts
    cdef Py_ssize_t _plen, _need, _scan, _offset
    cdef object _err_msg
    cdef Py_ssize_t _err_off


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
            t = _block_end(p, start, n, &after)
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
