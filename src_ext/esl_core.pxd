# C-level core of the ESL parser, cimported by _esl.pyx (``from esl_core cimport ...``;
# found through include_path=["src_ext"] in setup.py). Only C declarations and inline
# functions: cimporting it needs no runtime module. The scanning / hot-header code is C
# (esl_core.h); the helpers below that build Python objects are Cython inline functions.

from libc.stdlib cimport free, malloc
from libc.string cimport memchr

from cpython.unicode cimport PyUnicode_DecodeUTF8


from libc.stdint cimport uint32_t


cdef extern from "esl_core.h" nogil:
    # the start of every header line of a plain event (offsets from the event's start)
    ctypedef struct esl_lines:
        uint32_t* ls
        Py_ssize_t n
        Py_ssize_t cap

    enum:
        ESL_H_NAME
        ESL_H_SUBCLASS
        ESL_H_UNIQUE_ID
        ESL_H_JOB_UUID
        ESL_H_OTHER_LEG
        ESL_H_DIRECTION
        ESL_H_CAUSE
        ESL_H_ANSWER
        ESL_H_TIMESTAMP
        ESL_H_SEQUENCE
        ESL_H_CLEN
        ESL_NHOT

    # hot header of an exact name / of a "Name:..." line (-1: none)
    int esl_hot_name(const char* s, Py_ssize_t n)
    int esl_hot_line(const char* s, Py_ssize_t n)
    # one pass over a plain event's header lines p[bs:be]: hot values' bounds, the end of
    # the header lines (*t), the start of the inner body (*after, -1 none) and every line's
    # start (L, unless NULL); -1 when out of memory
    int esl_index(const char* p, Py_ssize_t bs, Py_ssize_t be, Py_ssize_t* vo,
                  Py_ssize_t* vl, Py_ssize_t* t, Py_ssize_t* after, esl_lines* L)
    # the first "name:" line: 1 found (value bounds set), 0 absent (-1 no memory)
    int esl_find_line(const char* p, Py_ssize_t bs, Py_ssize_t t, const esl_lines* L,
                      const char* name, Py_ssize_t ln, Py_ssize_t* vo, Py_ssize_t* vl)
    int esl_find(const char* p, Py_ssize_t bs, Py_ssize_t t, const char* name,
                 Py_ssize_t ln, Py_ssize_t* vo, Py_ssize_t* vl)
    int esl_plain_ascii(const char* s, Py_ssize_t n)
    long long esl_digits(const char* s, Py_ssize_t n)


cdef extern from "esl_core.h":
    object esl_ascii_str(const char* s, Py_ssize_t n)


cdef inline int hexval(char c) noexcept nogil:
    if c >= 48 and c <= 57:
        return c - 48
    if c >= 65 and c <= 70:
        return c - 55
    if c >= 97 and c <= 102:
        return c - 87
    return -1


cdef inline str decode_value(const char* s, Py_ssize_t n):
    """URL-unquote once (malformed escapes copied, '+' kept) then UTF-8-decode ('replace').

    ASCII without '%' (nearly every value) is copied straight into a new str."""
    cdef const char* pct
    cdef char small[512]
    cdef char* out
    cdef Py_ssize_t i = 0, j = 0
    cdef int hi, lo
    cdef str res
    if esl_plain_ascii(s, n):
        return <str>esl_ascii_str(s, n)
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
            hi = hexval(s[i + 1])
            lo = hexval(s[i + 2])
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


cdef inline Py_ssize_t find_nl(const char* p, Py_ssize_t start, Py_ssize_t end) noexcept nogil:
    cdef const char* q
    if start >= end:
        return -1
    q = <const char*>memchr(p + start, 10, end - start)
    if q == NULL:
        return -1
    return q - p


cdef inline Py_ssize_t block_end(const char* p, Py_ssize_t start, Py_ssize_t end,
                                 Py_ssize_t* after) noexcept nogil:
    """Index of the '\\n' ending the last header line of the block in p[start:end]
    (the earliest '\\n\\n' or '\\n\\r\\n'), -1 when there is none yet."""
    cdef Py_ssize_t i = start
    while True:
        i = find_nl(p, i, end)
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
