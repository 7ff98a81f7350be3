# Declarations of fastswitch._esl (src_ext/_esl.pyx): its cdef classes' attributes and
# C methods. Cython looks up a module's own .pxd by its qualified name, so for the module
# fastswitch._esl this file is src_ext/fastswitch/_esl.pxd, found through
# include_path=["src_ext"] (setup.py). The C-level core (hot-header index, scanning,
# decoding) is in src_ext/esl_core.pxd / esl_core.h.

cimport cython
from cpython.ref cimport PyObject

from esl_core cimport ESL_NHOT, esl_lines


@cython.final
cdef class Event:
    cdef readonly int fmt            # 0 plain, 1 json, 2 xml
    cdef bytes _raw                  # the frame's bytes; the event is _raw[_bs:_be]
    cdef Py_ssize_t _bs, _be
    cdef Py_ssize_t _t, _after       # end of the header lines, start of the inner body
    cdef Py_ssize_t _offset
    cdef bint _indexed
    cdef esl_lines _L                # every header line's start (non-hot lookups)
    cdef Py_ssize_t _vo[ESL_NHOT]    # value start of each hot header (-1 absent)
    cdef Py_ssize_t _vl[ESL_NHOT]    # value length
    cdef unsigned int _hdone         # bit h set: hot value h is cached in _hv[h]
    cdef PyObject* _hv[ESL_NHOT]     # owned references (str, int or None)
    cdef list _lines                 # (name, value) bytes of every line: getall / iteration
    cdef object _py                  # json / xml: the pure-Python Event doing the work
    cdef object _body
    cdef bint _body_done

    cdef int _index(self) except -1
    cdef object _hot(self, int h)
    cdef object _compute_hot(self, int h)
    cdef object _plain_get(self, str name)
    cdef list _all_lines(self)


@cython.final
cdef class Frame:
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

    cdef dict _hdrs(self)


@cython.final
cdef class Parser:
    cdef readonly Py_ssize_t max_frame_size
    cdef bytes _buf
    cdef list _parts
    cdef Py_ssize_t _plen, _need, _scan, _offset
    cdef object _err_msg
    cdef Py_ssize_t _err_off

    cdef object _fail(self, str msg, Py_ssize_t offset)
    cdef int _parse(self, bytes buf, list out) except -1
