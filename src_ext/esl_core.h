/* C core of the Cython ESL parser (declared in esl_core.pxd, used by _esl.pyx).
 *
 * No Python objects here except esl_ascii_str. esl_index makes one pass over a plain
 * event's header lines, finding '\n' 64 bytes at a time (SSE2; memchr elsewhere): it
 * records every line's start (32-bit offsets), recognises the hot headers by their first
 * bytes and locates their values, and stops at the blank line. Other headers are then
 * looked up among the recorded line starts (esl_find_line); esl_find (one memmem for
 * "\n<name>:", the pure-Python twin's bytes.find) serves events over 4 GiB.
 */
#ifndef FASTSWITCH_ESL_CORE_H
#define FASTSWITCH_ESL_CORE_H

#include <Python.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#if defined(__SSE2__) || defined(_M_X64) || (defined(_M_IX86_FP) && _M_IX86_FP >= 2)
#include <emmintrin.h>
#define ESL_SSE2 1
#if defined(_MSC_VER)
#include <intrin.h>
static __inline int esl_ctz64(unsigned __int64 x) { unsigned long i; _BitScanForward64(&i, x); return (int)i; }
#else
#define esl_ctz64(x) __builtin_ctzll(x)
#endif
/* bit j set: byte j of the 16 at q is '\n' */
#define ESL_NLMASK(q, nl) \
    ((uint64_t)(unsigned)_mm_movemask_epi8(_mm_cmpeq_epi8(_mm_loadu_si128((const __m128i *)(q)), (nl))))
#endif

/* the hot headers: indices into an Event's hot arrays */
enum {
    ESL_H_NAME = 0,
    ESL_H_SUBCLASS,
    ESL_H_UNIQUE_ID,
    ESL_H_JOB_UUID,
    ESL_H_OTHER_LEG,
    ESL_H_DIRECTION,
    ESL_H_CAUSE,
    ESL_H_ANSWER,
    ESL_H_TIMESTAMP,
    ESL_H_SEQUENCE,
    ESL_H_CLEN,
    ESL_NHOT
};

#define ESL_IS(s, n, lit) ((n) > (Py_ssize_t)(sizeof(lit) - 2) && memcmp((s), (lit), sizeof(lit) - 1) == 0)

/* Which hot header the name s[:n] (no ':') is, exactly; -1 none. */
static inline int esl_hot_name(const char *s, Py_ssize_t n)
{
    switch (n) {
    case 10:
        if (memcmp(s, "Event-Name", 10) == 0) return ESL_H_NAME;
        return -1;
    case 9:
        if (memcmp(s, "Unique-ID", 9) == 0) return ESL_H_UNIQUE_ID;
        return -1;
    case 8:
        if (memcmp(s, "Job-UUID", 8) == 0) return ESL_H_JOB_UUID;
        return -1;
    case 14:
        if (memcmp(s, "Event-Subclass", 14) == 0) return ESL_H_SUBCLASS;
        if (memcmp(s, "Call-Direction", 14) == 0) return ESL_H_DIRECTION;
        if (memcmp(s, "Event-Sequence", 14) == 0) return ESL_H_SEQUENCE;
        if (memcmp(s, "Content-Length", 14) == 0) return ESL_H_CLEN;
        return -1;
    case 19:
        if (memcmp(s, "Other-Leg-Unique-ID", 19) == 0) return ESL_H_OTHER_LEG;
        return -1;
    case 12:
        if (memcmp(s, "Hangup-Cause", 12) == 0) return ESL_H_CAUSE;
        if (memcmp(s, "Answer-State", 12) == 0) return ESL_H_ANSWER;
        return -1;
    case 20:
        if (memcmp(s, "Event-Date-Timestamp", 20) == 0) return ESL_H_TIMESTAMP;
        return -1;
    }
    return -1;
}

/* Which hot header the line s[:n] holds ("Name:..."), from its first bytes; -1 none. */
static inline int esl_hot_line(const char *s, Py_ssize_t n)
{
    if (n < 9)
        return -1;
    switch (s[0]) {
    case 'E':
        if (n < 11 || s[5] != '-') return -1;
        switch (s[6]) {
        case 'N': return ESL_IS(s, n, "Event-Name:") ? ESL_H_NAME : -1;
        case 'D': return ESL_IS(s, n, "Event-Date-Timestamp:") ? ESL_H_TIMESTAMP : -1;
        case 'S':
            if (ESL_IS(s, n, "Event-Sequence:")) return ESL_H_SEQUENCE;
            return ESL_IS(s, n, "Event-Subclass:") ? ESL_H_SUBCLASS : -1;
        }
        return -1;
    case 'U':
        return ESL_IS(s, n, "Unique-ID:") ? ESL_H_UNIQUE_ID : -1;
    case 'C':
        if (s[4] == '-') return ESL_IS(s, n, "Call-Direction:") ? ESL_H_DIRECTION : -1;
        if (s[1] == 'o') return ESL_IS(s, n, "Content-Length:") ? ESL_H_CLEN : -1;
        return -1;
    case 'J':
        return ESL_IS(s, n, "Job-UUID:") ? ESL_H_JOB_UUID : -1;
    case 'H':
        return ESL_IS(s, n, "Hangup-Cause:") ? ESL_H_CAUSE : -1;
    case 'A':
        return ESL_IS(s, n, "Answer-State:") ? ESL_H_ANSWER : -1;
    case 'O':
        return ESL_IS(s, n, "Other-Leg-Unique-ID:") ? ESL_H_OTHER_LEG : -1;
    }
    return -1;
}

static const Py_ssize_t esl_hot_len[ESL_NHOT] = {10, 14, 9, 8, 19, 14, 12, 12, 20, 14, 14};

/* Value bounds of the header line [s, e) whose ':' is at c: after the ':' and any spaces,
 * a trailing '\r' dropped. */
static inline void esl_split(const char *p, Py_ssize_t c, Py_ssize_t e,
                             Py_ssize_t *vo, Py_ssize_t *vl)
{
    Py_ssize_t vs = c + 1;
    if (e > vs && p[e - 1] == '\r')
        e--;
    while (vs < e && p[vs] == ' ')
        vs++;
    *vo = vs;
    *vl = e - vs;
}

/* Line starts of a plain event's header lines, as offsets from the event's start. */
typedef struct {
    uint32_t *ls;
    Py_ssize_t n, cap;
} esl_lines;

static int esl_lines_push(esl_lines *L, Py_ssize_t off)
{
    if (L->n == L->cap) {
        Py_ssize_t cap = L->cap ? 2 * L->cap : 64;
        uint32_t *q = (uint32_t *)realloc(L->ls, (size_t)cap * sizeof(uint32_t));
        if (q == NULL)
            return -1;
        L->ls = q;
        L->cap = cap;
    }
    L->ls[L->n++] = (uint32_t)off;
    return 0;
}

/* One header line [s, k) ended by the '\n' at k. Returns 1 when it is the blank line
 * ending the header lines (sets *t, *after), -1 on memory error, else 0 (the line is
 * recorded, and a hot header's value located). */
static inline int esl_line(const char *p, Py_ssize_t bs, Py_ssize_t s, Py_ssize_t k,
                           Py_ssize_t *vo, Py_ssize_t *vl, Py_ssize_t *t, Py_ssize_t *after,
                           esl_lines *L)
{
    int h;
    if (k == s || (k == s + 1 && p[s] == '\r')) {
        *t = s - 1 > bs ? s - 1 : bs;
        *after = k + 1;
        return 1;
    }
    if (L != NULL) {
        if (L->n < L->cap)
            L->ls[L->n++] = (uint32_t)(s - bs);
        else if (esl_lines_push(L, s - bs) < 0)
            return -1;
    }
    h = esl_hot_line(p + s, k - s);
    if (h >= 0 && vo[h] < 0)
        esl_split(p, s + esl_hot_len[h], k, &vo[h], &vl[h]);
    return 0;
}

/* Index a plain event's header lines p[bs:be] in one pass: *t = end of the header lines
 * (the '\n' before the blank line, or be), *after = start of the inner body (-1 none);
 * vo[h] / vl[h] = value bounds of the first occurrence of hot header h (vo[h] stays -1
 * when absent; the caller sets every vo[h] to -1 first); L (unless NULL: be - bs must
 * fit in 32 bits) = every line's start. Returns 0, or -1 when out of memory. */
static int esl_index(const char *p, Py_ssize_t bs, Py_ssize_t be, Py_ssize_t *vo,
                     Py_ssize_t *vl, Py_ssize_t *t, Py_ssize_t *after, esl_lines *L)
{
    Py_ssize_t s = bs, i = bs, k;
    const char *q;
    int r;
    *t = be;
    *after = -1;
#ifdef ESL_SSE2
    {
        /* 64 bytes per step: fewer (unpredictable) exits from the per-line loop */
        const __m128i nl = _mm_set1_epi8('\n');
        uint64_t m;
        for (; i + 64 <= be; i += 64) {
            m = ESL_NLMASK(p + i, nl) | (ESL_NLMASK(p + i + 16, nl) << 16) |
                (ESL_NLMASK(p + i + 32, nl) << 32) | (ESL_NLMASK(p + i + 48, nl) << 48);
            while (m) {
                k = i + esl_ctz64(m);
                m &= m - 1;
                r = esl_line(p, bs, s, k, vo, vl, t, after, L);
                if (r)
                    return r < 0 ? -1 : 0;
                s = k + 1;
            }
        }
    }
#endif
    while (i < be) {
        q = (const char *)memchr(p + i, '\n', (size_t)(be - i));
        if (q == NULL)
            break;
        k = q - p;
        r = esl_line(p, bs, s, k, vo, vl, t, after, L);
        if (r)
            return r < 0 ? -1 : 0;
        s = i = k + 1;
    }
    if (s < be) {  /* a last line without '\n' */
        int h;
        if (L != NULL && esl_lines_push(L, s - bs) < 0)
            return -1;
        h = esl_hot_line(p + s, be - s);
        if (h >= 0 && vo[h] < 0)
            esl_split(p, s + esl_hot_len[h], be, &vo[h], &vl[h]);
    }
    return 0;
}

/* The first header line "name:" among the indexed lines (p[bs:t], starts in L): its value
 * bounds in *vo / *vl; returns 1, or 0 when absent. name has no ':' or '\n'. */
static int esl_find_line(const char *p, Py_ssize_t bs, Py_ssize_t t,
                                const esl_lines *L, const char *name, Py_ssize_t ln,
                                Py_ssize_t *vo, Py_ssize_t *vl)
{
    Py_ssize_t i, s, n = L->n;
    const uint32_t *ls = L->ls;
    const char *q;
    char c0 = ln ? name[0] : ':';
    for (i = 0; i < n; i++) {
        s = bs + (Py_ssize_t)ls[i];
        if (s + ln < t && p[s + ln] == ':' && p[s] == c0 && memcmp(p + s, name, (size_t)ln) == 0) {
            s += ln;
            q = (const char *)memchr(p + s, '\n', (size_t)(t - s));
            esl_split(p, s, q == NULL ? t : q - p, vo, vl);
            return 1;
        }
    }
    return 0;
}

/* Index of the first occurrence of needle[:nn] in p[start:end], -1 when absent. */
static inline Py_ssize_t esl_memmem(const char *p, Py_ssize_t start, Py_ssize_t end,
                                    const char *needle, Py_ssize_t nn)
{
    const char *r;
    if (end - start < nn)
        return -1;
#if defined(__GLIBC__) || defined(__APPLE__) || defined(__FreeBSD__) || defined(__OpenBSD__) || defined(__NetBSD__)
    r = (const char *)memmem(p + start, (size_t)(end - start), needle, (size_t)nn);
    return r == NULL ? -1 : r - p;
#else
    {
        Py_ssize_t i = start, last = end - nn;
        while (i <= last) {
            r = (const char *)memchr(p + i, needle[0], (size_t)(last - i + 1));
            if (r == NULL)
                return -1;
            i = r - p;
            if (memcmp(r, needle, (size_t)nn) == 0)
                return i;
            i++;
        }
        return -1;
    }
#endif
}

/* esl_find_line without a line index (events over 4 GiB): one memmem for "\nname:" in
 * p[bs - 1:t] (p[bs - 1] is a '\n'). Returns 1 found, 0 absent, -1 out of memory. */
static int esl_find(const char *p, Py_ssize_t bs, Py_ssize_t t, const char *name,
                    Py_ssize_t ln, Py_ssize_t *vo, Py_ssize_t *vl)
{
    char small[256];
    char *pat = small;
    Py_ssize_t i, e;
    const char *q;
    if (ln + 2 > (Py_ssize_t)sizeof(small)) {
        pat = (char *)malloc((size_t)ln + 2);
        if (pat == NULL)
            return -1;
    }
    pat[0] = '\n';
    memcpy(pat + 1, name, (size_t)ln);
    pat[ln + 1] = ':';
    i = esl_memmem(p, bs - 1, t, pat, ln + 2);
    if (pat != small)
        free(pat);
    if (i < 0)
        return 0;
    i += ln + 1;  /* the ':' */
    q = (const char *)memchr(p + i, '\n', (size_t)(t - i));
    e = q == NULL ? t : q - p;
    esl_split(p, i, e, vo, vl);
    return 1;
}

/* 1 when s[:n] is ASCII with no '%' (a value that needs no decoding). */
static inline int esl_plain_ascii(const char *s, Py_ssize_t n)
{
    Py_ssize_t i = 0;
    uint64_t w, x;
    const uint64_t lo = 0x0101010101010101ULL, hi = 0x8080808080808080ULL;
    const uint64_t pct = 0x2525252525252525ULL;
    for (; i + 8 <= n; i += 8) {
        memcpy(&w, s + i, 8);
        x = w ^ pct;  /* a zero byte where s has '%' */
        if ((w & hi) | ((x - lo) & ~x & hi))
            return 0;
    }
    for (; i < n; i++) {
        if ((unsigned char)s[i] >= 0x80 || s[i] == '%')
            return 0;
    }
    return 1;
}

/* A new str from ASCII bytes (no check; see esl_plain_ascii). */
static inline PyObject *esl_ascii_str(const char *s, Py_ssize_t n)
{
    PyObject *u = PyUnicode_New(n, 127);
    if (u != NULL && n)
        memcpy(PyUnicode_1BYTE_DATA(u), s, (size_t)n);
    return u;
}

/* The value s[:n] when it is all ASCII digits (at most 18), else -1. */
static inline long long esl_digits(const char *s, Py_ssize_t n)
{
    long long v = 0;
    Py_ssize_t i;
    if (n == 0 || n > 18)
        return -1;
    for (i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return -1;
        v = v * 10 + (s[i] - '0');
    }
    return v;
}

#endif /* FASTSWITCH_ESL_CORE_H */
