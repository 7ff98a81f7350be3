"""Event templates extracted from real FreeSWITCH captures, precompiled for rendering.

A template is the header list of one captured event with the per-call values
replaced by named *slots*. A template is compiled once per output format
(``plain``, ``json``, ``xml``; on first use) into a single bytes ``%``-format with
one ``%s`` per slot and an ``operator.itemgetter`` of the slot names, so rendering
an event is ``pattern % getter(encoded_values)``: two C-level calls over values
that were encoded when they changed, not a serialisation of 150 headers.

Slot values live in two dicts of already-encoded bytes per channel (see
:class:`Encoded`): URL-encoded (``plain`` and ``xml``) and JSON-escaped (``json``).
Slot names: ``core host dlocal dgmt ts seq cs callstate answer prev_callstate
callstate_num cause q850 disposition term_status proto_cause t_<milestone>
e_<milestone> s_<milestone> d_<duration> app app_data app_uuid last_app last_arg
job_uuid job_cmd job_arg chan_name uuid dest requri session_id call_id bert_lost
bert_lost_count`` plus heartbeat counters. Block slots ``@VARS:<p|t|l|x>`` and
``@XHDRS:<...>`` expand a list of ``(variable, value)`` pairs into one
``variable_<name>`` header each (``p`` plain, ``t``/``l`` json with a trailing or
leading comma, ``x`` xml); ``#body:<p|j|x>`` is an event body.

FreeSWITCH never sends a header with an empty value (an unset channel variable has
no header at all). A header whose whole value is one of the :data:`OPTIONAL_SLOTS`
(values that are empty in some states: the hangup cause before the hangup, the SIP
status of a leg that sent its BYE, ...) is therefore compiled into one *derived* slot
``?<p|x|j><slot>\x00<header>`` holding the whole header (``name: value\n``, the xml
element, or the json member after its comma), or nothing while the value is empty.
Derived values are computed when first rendered and dropped when their slot is set
(:meth:`Encoded.set` and friends), so rendering does no extra work.
"""

from __future__ import annotations

import gzip
import json
import operator
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

FORMATS = ("plain", "json", "xml")
BLOCKS = ("VARS", "XHDRS")
_SLOT_RE = re.compile("\x01([A-Za-z0-9_]+)\x01")

# switch_url_encode: everything outside this set is written as %XX (uppercase hex).
_SAFE = frozenset(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!$'()*,-./_~")
_URL_TABLE = [chr(b) if b in _SAFE else f"%{b:02X}" for b in range(256)]
_URL_ASCII = {chr(b): f"%{b:02X}" for b in range(128) if b not in _SAFE}
_UNSAFE_RE = re.compile(r"[^A-Za-z0-9!$'()*,\-./_~]")
_SAFE_RE = re.compile(r"[A-Za-z0-9!$'()*,\-./_~]*")
_JSON_SAFE_RE = re.compile(r"[ !#-\[\]-~]*")  # printable ASCII but " and \


def url_encode(value: str) -> str:
    """Percent-encode a header value as FreeSWITCH's plain serializer does."""
    if _SAFE_RE.fullmatch(value):
        return value
    if value.isascii():  # replace each unsafe character present (% first): C-speed
        chars = set(_UNSAFE_RE.findall(value))
        if "%" in chars:
            value = value.replace("%", "%25")
            chars.discard("%")
        for c in chars:
            value = value.replace(c, _URL_ASCII[c])
        return value
    return "".join([_URL_TABLE[b] for b in value.encode("utf-8", "surrogateescape")])


def json_escape(value: str) -> str:
    """The inside of a JSON string literal for ``value``."""
    if _JSON_SAFE_RE.fullmatch(value):
        return value
    return json.dumps(value, ensure_ascii=False)[1:-1]


def xml_escape(value: str) -> str:
    return value.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


# slots whose value can be empty: a header showing only such a slot is left out while
# the value is empty (see the module doc)
OPTIONAL_SLOTS = frozenset(
    "cause q850 term_cause disposition term_status proto_cause invite_failure sip_reason "
    "app_data last_app last_arg call_id dp_match".split()
)
# optional slot -> the derived keys compiled templates use for it (dropped when it is set)
_DERIVED: dict[str, list[str]] = {}


def _derived_key(fmt: str, slot: str, header: str) -> str:
    key = f"?{fmt[0]}{slot}\x00{header}"
    keys = _DERIVED.setdefault(slot, [])
    if key not in keys:
        keys.append(key)
    return key


def encode_optional(key: str, value: bytes) -> bytes:
    """The derived slot ``key`` (``?<p|x|j><slot>\\x00<header>``) for an encoded value."""
    if not value:
        return b""
    header = key[2:].partition("\x00")[2].encode()
    kind = key[1]
    if kind == "p":
        return b"%s: %s\n" % (header, value)
    if kind == "x":
        return b"<%s>%s</%s>" % (header, value, header)
    return b',"%s":"%s"' % (header, value)  # json: with its leading comma


_URL_CACHE: dict[str, bytes] = {}
_JSON_CACHE: dict[str, bytes] = {}


def enc_url(value: str) -> bytes:
    """URL-encoded bytes of a value (cached: values repeat across events)."""
    b = _URL_CACHE.get(value)
    if b is None:
        if len(_URL_CACHE) > 100_000:
            _URL_CACHE.clear()
        b = _URL_CACHE[value] = url_encode(value).encode()
    return b


def enc_json(value: str) -> bytes:
    """JSON-escaped bytes of a value (cached)."""
    b = _JSON_CACHE.get(value)
    if b is None:
        if len(_JSON_CACHE) > 100_000:
            _JSON_CACHE.clear()
        b = _JSON_CACHE[value] = json_escape(value).encode("utf-8", "surrogateescape")
    return b


def encode_block(fmt: str, pairs: Sequence[tuple[str, str]], position: str = "t") -> bytes:
    """Render variables as headers: ``variable_<n>`` lines (plain), members (json), elements (xml).

    For json, ``position`` ``t`` gives each member a trailing comma, ``l`` a leading one.
    """
    if fmt == "plain":
        return "".join([f"variable_{n}: {url_encode(v)}\n" for n, v in pairs]).encode()
    if fmt == "xml":
        return "".join(f"<variable_{n}>{url_encode(v)}</variable_{n}>" for n, v in pairs).encode()
    if position == "t":
        return "".join(
            f'"variable_{json_escape(n)}":"{json_escape(v)}",' for n, v in pairs
        ).encode()
    return "".join(f',"variable_{json_escape(n)}":"{json_escape(v)}"' for n, v in pairs).encode()


def _block_keys(name: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The slot names of block ``name``: in the url encodings (plain, xml), in json."""
    return (f"@{name}:p", f"@{name}:x"), (f"@{name}:t", f"@{name}:l")


_BLOCK_KEYS = {name: _block_keys(name) for name in BLOCKS}


class _Encodings(dict):  # type: ignore[type-arg]
    """Encoded slot values of one format; a missing key is encoded on first use."""

    __slots__ = ("encode", "raw", "blocks", "lazy")

    def __missing__(self, key: str) -> bytes:
        if key[0] == "?":
            slot = key[2:].partition("\x00")[0]
            raw = self.raw.get(slot, "")
            if key[1] == "j" and raw.startswith("ARRAY::"):  # a multi-valued variable
                items = json.dumps(raw[7:].split("|:"), ensure_ascii=False, separators=(",", ":"))
                b = b',"%s":%s' % (key[2:].partition("\x00")[2].encode(), items.encode())
            else:
                try:
                    v = self[slot]
                except KeyError:  # a slot this event source does not have: no header
                    v = b""
                b = encode_optional(key, v)
        elif key[0] == "#":
            b = encode_body(key, self.raw.get("#body"))
        elif key[0] == "@":
            name, _, pos = key[1:].partition(":")
            fmt = "json" if pos in ("t", "l") else ("xml" if pos == "x" else "plain")
            b = encode_block(fmt, self.blocks.get(name, ()), pos)
        else:
            v = self.raw.get(key)
            if v is None:
                if self.lazy is None:
                    raise KeyError(key)
                more = self.lazy(key)  # a group of values (e.g. all durations) at once
                self.raw.update(more)
                for k, mv in more.items():  # digits: the same in every encoding
                    self[k] = mv.encode()
                return self[key]
            b = self.encode(v)
        self[key] = b
        return b


class Encoded:
    """The slot values of one event source, encoded lazily for both value encodings.

    ``url`` serves the plain and xml formats, ``json`` the json format. ``set``
    only records the raw value; a value is encoded the first time an event that
    shows it is rendered (and then reused until it changes).
    """

    __slots__ = ("raw", "url", "json", "blocks", "tick")

    def __init__(self, values: Mapping[str, str] | None = None) -> None:
        self.tick = -1  # the clock tick whose time values url/json hold
        self.raw: dict[str, str] = dict(values or {})
        self.blocks: dict[str, Sequence[tuple[str, str]]] = {}
        self.url = self._encodings(enc_url)
        self.json = self._encodings(enc_json)

    def _encodings(
        self, fn: Callable[[str], bytes], init: Mapping[str, bytes] | None = None
    ) -> _Encodings:
        d = _Encodings(init) if init else _Encodings()  # one presized copy, not N inserts
        d.encode = fn
        d.raw = self.raw
        d.blocks = self.blocks
        d.lazy = None
        return d

    def set_lazy(self, fn: Callable[[str], dict[str, str]] | None) -> None:
        """``fn(key)`` supplies values never set (a dict that includes ``key``, possibly
        with related ones), when an event first shows them; the values must need no
        encoding (digits)."""
        self.url.lazy = self.json.lazy = fn

    def set(self, key: str, value: str) -> None:
        raw = self.raw
        if raw.get(key) != value:
            raw[key] = value
            self.url.pop(key, None)
            self.json.pop(key, None)
            if key in OPTIONAL_SLOTS:
                self.drop_derived(key)

    def set_plain(self, key: str, value: str) -> None:
        """Set a value that needs no encoding in any format (digits, uuids, state and
        app names): stored encoded at once."""
        self.raw[key] = value
        b = value.encode()
        self.url[key] = b
        self.json[key] = b
        if key in OPTIONAL_SLOTS:
            self.drop_derived(key)

    def drop_derived(self, key: str) -> None:
        """Forget the derived (optional-header) values of slot ``key`` after it changed."""
        url, js = self.url, self.json
        for k in _DERIVED.get(key, ()):
            url.pop(k, None)
            js.pop(k, None)

    def warm(self) -> Encoded:
        """Encode every raw value now (for templates of values shared by many legs)."""
        for k in self.raw:
            self.url[k]
            self.json[k]
        return self

    def update(self, values: Mapping[str, str]) -> None:
        raw, url, js = self.raw, self.url, self.json
        for k, v in values.items():
            raw[k] = v
            url.pop(k, None)
            js.pop(k, None)
            if k in OPTIONAL_SLOTS:
                self.drop_derived(k)

    def copy(self) -> Encoded:
        """An independent copy (cheap: a few dict copies, encodings kept)."""
        new = Encoded.__new__(Encoded)
        new.tick = -1
        new.raw = dict(self.raw)
        new.blocks = dict(self.blocks)
        new.url = new._encodings(enc_url, self.url)
        new.json = new._encodings(enc_json, self.json)
        return new

    def set_block(self, name: str, pairs: Sequence[tuple[str, str]]) -> None:
        """(Re)set a block slot (``VARS``/``XHDRS``): a list of (variable, value) pairs."""
        self.blocks[name] = pairs
        url_keys, json_keys = _BLOCK_KEYS.get(name) or _block_keys(name)
        for k in url_keys:
            self.url.pop(k, None)
        for k in json_keys:
            self.json.pop(k, None)

    def set_body(self, body: str | None) -> None:
        """Set the event body (BACKGROUND_JOB result) for the next render (encoded then,
        in the format that shows it)."""
        self.raw["#body"] = body or ""
        for d, k in ((self.url, "#body:p"), (self.url, "#body:x"), (self.json, "#body:j")):
            d.pop(k, None)

    def for_format(self, fmt: str) -> dict[str, bytes]:
        return self.json if fmt == "json" else self.url


def encode_body(key: str, text: Any) -> bytes:
    """The ``#body:<p|x|j>`` slot: an event body (with its length) in one format."""
    text = text or ""
    b = text.encode("utf-8", "surrogateescape")
    if key == "#body:p":
        return b"Content-Length: %d\n\n%s" % (len(b), b)
    if key == "#body:x":
        return b"<Content-Length>%d</Content-Length><body>%s</body>" % (
            len(b),
            xml_escape(text).encode("utf-8", "surrogateescape"),
        )
    return b',"Content-Length":"%d","_body":"%s"' % (
        len(b),
        json_escape(text).encode("utf-8", "surrogateescape"),
    )


@dataclass(slots=True)
class Compiled:
    """One template in one format: ``pattern % args(values)`` renders the event text.

    ``parts`` is the same text as a list, literal pieces at even indices and the slot
    values of the last render at odd ones: rendering stores the values with one slice
    assignment and joins the list (about twice as fast as ``%`` at ~80 slots).
    ``frame`` is ``parts`` after one more leading item, for the ESL frame head (its
    Content-Length is ``size``, the literal bytes, plus the values' lengths), so a
    whole frame is one join (no second copy of the event to prepend the head).
    """

    pattern: bytes
    slots: tuple[str, ...]
    args: Callable[[Mapping[str, bytes]], Any]
    parts: list[bytes]
    frame: list[bytes]
    size: int


@dataclass(slots=True)
class Template:
    """A captured event's header list with slots, compiled per format on first use."""

    key: str
    src: str
    headers: list[tuple[str, str]]
    has_body: bool
    compiled: dict[str, Compiled] = field(default_factory=dict)

    @property
    def names(self) -> list[str]:
        """Header names in order, block slots shown as ``@VARS``/``@XHDRS``."""
        return [("@" + k[1:-1]) if k.startswith("\x01") else k for k, _ in self.headers]

    def slot_names(self) -> set[str]:
        out = set()
        for k, v in self.headers:
            if k.startswith("\x01"):
                out.add(k[1:-1])
            out.update(_SLOT_RE.findall(v))
        return out

    def compile(self, fmt: str) -> Compiled:
        c = self.compiled.get(fmt)
        if c is None:
            c = self.compiled[fmt] = _compile(self, fmt)
        return c

    def render(self, fmt: str, values: Mapping[str, bytes]) -> bytes:
        """Render the event text (the frame body) in ``fmt`` from encoded slot values
        (``Encoded.for_format(fmt)``)."""
        c = self.compiled.get(fmt) or self.compile(fmt)
        parts = c.parts
        parts[1::2] = c.args(values)
        return b"".join(parts)


def _single(getter: Callable[[Any], Any]) -> Callable[[Any], tuple[Any, ...]]:
    return lambda values: (getter(values),)


def _compile(tpl: Template, fmt: str) -> Compiled:
    pieces: list[bytes] = []
    slots: list[str] = []

    def lit(text: str, kind: str) -> None:
        if kind == "url":
            text = url_encode(text)
        elif kind == "json":
            text = json_escape(text)
        pieces.append(text.encode("utf-8", "surrogateescape").replace(b"%", b"%%"))

    def value(v: str, kind: str) -> None:
        pos = 0
        for m in _SLOT_RE.finditer(v):
            lit(v[pos : m.start()], kind)
            pieces.append(b"%s")
            slots.append(m.group(1))
            pos = m.end()
        lit(v[pos:], kind)

    headers = tpl.headers
    n = len(headers)
    if fmt == "json":
        pieces.append(b"{")
    elif fmt == "xml":
        pieces.append(b"<event><headers>")
    # json: an optional header (and a block just before one, or at the end) brings its
    # own leading comma, so the header before it writes none
    optional = [
        i > 0
        and not k.startswith("\x01")
        and (m := _SLOT_RE.fullmatch(v)) is not None
        and m.group(1) in OPTIONAL_SLOTS
        for i, (k, v) in enumerate(headers)
    ]
    leads = [
        optional[i] or (k.startswith("\x01") and (i == n - 1 or optional[i + 1]))
        for i, (k, _v) in enumerate(headers)
    ]
    for i, (k, v) in enumerate(headers):
        last = i == n - 1
        if k.startswith("\x01"):
            pieces.append(b"%s")
            pos = {"plain": "p", "xml": "x"}.get(fmt) or ("l" if leads[i] else "t")
            slots.append(f"@{k[1:-1]}:{pos}")
            continue
        if optional[i]:
            pieces.append(b"%s")  # the whole header, or nothing while the value is empty
            slots.append(_derived_key(fmt, v[1:-1], k))
        elif fmt == "plain":
            lit(k + ": ", "raw")
            value(v, "url")
            pieces.append(b"\n")
        elif fmt == "xml":
            lit(f"<{k}>", "raw")
            value(v, "url")
            lit(f"</{k}>", "raw")
        else:
            lit(f'"{json_escape(k)}":', "raw")
            if v.startswith("ARRAY::") and "\x01" not in v:
                items = v[7:].split("|:")
                lit(json.dumps(items, ensure_ascii=False, separators=(",", ":")), "raw")
            else:
                pieces.append(b'"')
                value(v, "json")
                pieces.append(b'"')
        if fmt == "json" and not last and not leads[i + 1]:
            pieces.append(b",")
    if fmt == "plain":
        if tpl.has_body:
            pieces.append(b"%s")
            slots.append("#body:p")
        else:
            pieces.append(b"\n")
    elif fmt == "json":
        if tpl.has_body:
            pieces.append(b"%s")
            slots.append("#body:j")
        pieces.append(b"}")
    else:
        pieces.append(b"</headers>")
        if tpl.has_body:
            pieces.append(b"%s")
            slots.append("#body:x")
        pieces.append(b"</event>")
    getter: Callable[[Any], Any]
    if not slots:
        getter = lambda values: ()  # noqa: E731
    elif len(slots) == 1:
        getter = _single(operator.itemgetter(slots[0]))
    else:
        getter = operator.itemgetter(*slots)
    parts: list[bytes] = []
    text: list[bytes] = []
    for piece in pieces:
        if piece == b"%s":  # a slot (literal pieces have their % doubled)
            parts += (b"".join(text).replace(b"%%", b"%"), b"")
            text = []
        else:
            text.append(piece)
    parts.append(b"".join(text).replace(b"%%", b"%"))
    size = sum(len(p) for p in parts[0::2])
    return Compiled(b"".join(pieces), tuple(slots), getter, parts, [b"", *parts], size)


class TemplateStore:
    """All templates, looked up by key with progressive generalisation."""

    def __init__(self, templates: dict[str, Template]) -> None:
        self.templates = templates
        self._by_general: dict[str, Template] = {}
        for key, tpl in templates.items():
            for g in self._generalisations(key):
                self._by_general.setdefault(g, tpl)
        self._cache: dict[str, Template | None] = {}

    # fields wildcarded, in order, when looking for the closest template:
    # 2 cs, 3 callstate, 4 answer, 5 app, 6 cause, 7 answered, 8 disposition, 9 nested
    _STEPS = (
        (),
        (9,),
        (8, 9),
        (8, 6, 9),
        (8, 6, 5, 9),
        (8, 6, 5, 2, 9),
        (8, 6, 5, 2, 3, 9),
        (8, 6, 5, 2, 3, 4, 9),
    )

    @classmethod
    def _generalisations(cls, key: str) -> list[str]:
        fields = key.split("|")
        out = []
        # the disposition variable may not be set yet on an event: try "" (keeping
        # whether a Reason was received) before giving the field up
        bare = "+reason" if fields[8].endswith("+reason") else ""
        for step in cls._STEPS:
            f = list(fields)
            for i in step:
                f[i] = "*"
            out.append("|".join(f))
            if 8 not in step and f[8] != bare:
                f[8] = bare
                out.append("|".join(f))
        f = fields[:2] + ["*"] * (len(fields) - 2)
        out.append("|".join(f))
        return out

    def find(self, key: str) -> Template | None:
        """The template for ``key`` or the closest generalisation (None if the event is unknown)."""
        try:
            return self._cache[key]
        except KeyError:
            pass
        found = None
        keys = self._generalisations(key)
        fields = key.split("|")
        if len(fields[7]) > 1:  # bert/playback ran on the leg: prefer such templates, then plain
            fields[7] = fields[7][:1]
            keys = keys[:-1] + self._generalisations("|".join(fields))
        for g in keys:
            found = self._by_general.get(g)
            if found is not None:
                break
        if found is None and key[0] in "AB":
            other = ("B" if key[0] == "A" else "A") + key[1:]
            for g in self._generalisations(other):
                found = self._by_general.get(g)
                if found is not None:
                    break
        self._cache[key] = found
        return found


_STORE: TemplateStore | None = None


def load() -> TemplateStore:
    """Load and compile the packaged templates (once per process)."""
    global _STORE
    if _STORE is None:
        raw = resources.files("fastswitch.sim").joinpath("templates/events.json.gz").read_bytes()
        data = json.loads(gzip.decompress(raw))
        templates = {}
        for key, t in data["templates"].items():
            templates[key] = Template(key, t["src"], [(k, v) for k, v in t["headers"]], t["body"])
        _derive(templates)
        _STORE = TemplateStore(templates)
    return _STORE


def global_key(name: str) -> str:
    """The template key of an event that belongs to no channel (BACKGROUND_JOB, API ...)."""
    return f"-|{name}||||||0||"


def _derive(templates: dict[str, Template]) -> None:
    """Templates the captures do not show directly, derived from ones they do."""
    for name, drop in (("BACKGROUND_JOB", "Job-Command-Arg"), ("API", "API-Command-Argument")):
        t = templates.get(global_key(name))
        if t is not None:
            headers = [(k, v) for k, v in t.headers if k != drop]
            _add(templates, t, global_key(name + "_NOARG"), headers)
    bert_extra = {
        "lost_sync": [
            ("sync_lost_percent", "\x01sync_lost_percent\x01"),
            ("sync_lost_count", "\x01sync_lost_count\x01"),
            ("cng_count", "0"),
            ("err_samples", "8000"),
        ],
        "timeout": [],
    }
    for key, t in list(templates.items()):
        if "CUSTOM::mod_bert::in_sync" not in key:
            continue
        for sub, extra in bert_extra.items():
            headers = [
                (k, v.replace("in_sync", sub) if k == "Event-Subclass" else v) for k, v in t.headers
            ] + extra
            _add(templates, t, key.replace("in_sync", sub), headers)


def _add(
    templates: dict[str, Template], base: Template, key: str, headers: list[tuple[str, str]]
) -> None:
    templates[key] = Template(key, base.src + "*", headers, base.has_body)
