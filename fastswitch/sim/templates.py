"""Event templates extracted from real FreeSWITCH captures, precompiled for rendering.

A template is the header list of one captured event with the per-call values
replaced by named *slots*. :func:`load` compiles every template once per output
format (``plain``, ``json``, ``xml``) into a single bytes ``%``-format with one
``%s`` per slot, so rendering an event is one C-level formatting of a few
already-encoded values into the precompiled pieces, not a serialisation of 150
headers.

Slot names (values supplied by the call model, all ``str``): ``core host dlocal dgmt
ts seq cs callstate csnum answer prev_callstate callstate_num cause q850
disposition term_status proto_cause t_<milestone> e_<milestone> s_<milestone>
d_<duration> app app_data app_uuid last_app last_arg job_uuid job_cmd job_arg
chan_name uuid dest requri session_id call_id bert_lost bert_lost_count`` plus
heartbeat counters. Block slots (``VARS``, ``XHDRS``) take a sequence of
``(variable name, value)`` pairs and expand to one ``variable_<name>`` header each.
"""

from __future__ import annotations

import gzip
import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources

FORMATS = ("plain", "json", "xml")
BLOCKS = ("VARS", "XHDRS")
_SLOT_RE = re.compile("\x01([A-Za-z0-9_]+)\x01")

# switch_url_encode: everything outside this set is written as %XX (uppercase hex).
_SAFE = frozenset(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!$'()*,-./_~")
_URL_TABLE = [chr(b) if b in _SAFE else f"%{b:02X}" for b in range(256)]
_SAFE_RE = re.compile(r"[A-Za-z0-9!$'()*,\-./_~]*")


def url_encode(value: str) -> str:
    """Percent-encode a header value as FreeSWITCH's plain serializer does."""
    if _SAFE_RE.fullmatch(value):
        return value
    return "".join([_URL_TABLE[b] for b in value.encode("utf-8", "surrogateescape")])


def json_escape(value: str) -> str:
    """The inside of a JSON string literal for ``value``."""
    return json.dumps(value, ensure_ascii=False)[1:-1]


def xml_escape(value: str) -> str:
    return value.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


_ENC_CACHE: dict[tuple[str, str], bytes] = {}


def encode_value(fmt: str, value: str) -> bytes:
    """Encode one slot value for ``fmt`` (cached; values repeat across events)."""
    k = (fmt, value)
    b = _ENC_CACHE.get(k)
    if b is None:
        if len(_ENC_CACHE) > 200_000:
            _ENC_CACHE.clear()
        if fmt == "json":
            b = json_escape(value).encode("utf-8", "surrogateescape")
        else:
            b = url_encode(value).encode()
        _ENC_CACHE[k] = b
    return b


def encode_block(fmt: str, pairs: Sequence[tuple[str, str]], position: str = "t") -> bytes:
    """Render variables as headers: ``variable_<n>`` lines (plain), members (json), elements (xml).

    For json, ``position`` ``t`` gives each member a trailing comma, ``l`` a leading one.
    """
    if fmt == "plain":
        return "".join(f"variable_{n}: {url_encode(v)}\n" for n, v in pairs).encode()
    if fmt == "xml":
        return "".join(f"<variable_{n}>{url_encode(v)}</variable_{n}>" for n, v in pairs).encode()
    if position == "t":
        return "".join(
            f'"variable_{json_escape(n)}":"{json_escape(v)}",' for n, v in pairs
        ).encode()
    return "".join(f',"variable_{json_escape(n)}":"{json_escape(v)}"' for n, v in pairs).encode()


@dataclass(frozen=True, slots=True)
class Compiled:
    """One template in one format: ``pattern % args`` renders the event text."""

    pattern: bytes
    slots: tuple[str, ...]  # slot names in %s order; "@VARS:t" style for blocks, "#body" for body


@dataclass(slots=True)
class Template:
    """A captured event's header list with slots, compiled for every format."""

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

    def render(
        self,
        fmt: str,
        values: Mapping[str, str],
        blocks: Callable[[str, str, str], bytes],
        body: str | None = None,
    ) -> bytes:
        """Render the event text (the frame body) in ``fmt``.

        ``values`` maps slot names to raw strings; ``blocks(fmt, name, position)``
        returns an encoded block; ``body`` is the inner body (BACKGROUND_JOB result).
        """
        c = self.compiled[fmt]
        args = []
        for s in c.slots:
            if s[0] == "@":
                name, _, pos = s[1:].partition(":")
                args.append(blocks(fmt, name, pos))
            elif s[0] == "#":
                b = (body or "").encode("utf-8", "surrogateescape")
                if fmt == "plain":
                    args.append(b"Content-Length: %d\n\n%s" % (len(b), b))
                elif fmt == "json":
                    esc = json_escape(body or "").encode("utf-8", "surrogateescape")
                    args.append(b',"Content-Length":"%d","_body":"%s"' % (len(b), esc))
                else:
                    esc = xml_escape(body or "").encode("utf-8", "surrogateescape")
                    args.append(
                        b"<Content-Length>%d</Content-Length><body>%s</body>" % (len(b), esc)
                    )
            else:
                args.append(encode_value(fmt, values[s]))
        return c.pattern % tuple(args)


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
    for i, (k, v) in enumerate(headers):
        last = i == n - 1
        if k.startswith("\x01"):
            if fmt == "json":
                pieces.append(b"%s")
                slots.append("@" + k[1:-1] + (":l" if last else ":t"))
            else:
                pieces.append(b"%s")
                slots.append("@" + k[1:-1] + ":t")
            continue
        if fmt == "plain":
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
            if not last:
                pieces.append(b",")
    if tpl.has_body:
        pieces.append(b"%s")
        slots.append("#body")
    if fmt == "plain":
        if not tpl.has_body:
            pieces.append(b"\n")
    elif fmt == "json":
        pieces.append(b"}")
    else:
        pieces.append(b"</headers>" if not tpl.has_body else b"")
        if tpl.has_body:
            # body goes after </headers>: move the slot
            pass
        pieces.append(b"</event>")
    pattern = b"".join(pieces)
    if fmt == "xml" and tpl.has_body:
        pattern = pattern.replace(b"%s</event>", b"</headers>%s</event>")
    return Compiled(pattern, tuple(slots))


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
        for step in cls._STEPS:
            f = list(fields)
            for i in step:
                f[i] = "*"
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
        if fields[7].endswith("b"):  # bert ran on the leg: prefer bert templates, then plain ones
            fields[7] = fields[7][:-1]
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
            tpl = Template(key, t["src"], [(k, v) for k, v in t["headers"]], t["body"])
            for fmt in FORMATS:
                tpl.compiled[fmt] = _compile(tpl, fmt)
            templates[key] = tpl
        _derive(templates)
        _STORE = TemplateStore(templates)
    return _STORE


def _derive(templates: dict[str, Template]) -> None:
    """Templates the captures do not show directly, derived from ones they do."""
    for key, drop in (
        ("-|BACKGROUND_JOB||||||0", "Job-Command-Arg"),
        ("-|API||||||0", "API-Command-Argument"),
    ):
        t = templates.get(key)
        if t is not None:
            name = key.split("|")[1] + "_NOARG"
            _add(templates, t, f"-|{name}||||||0", [(k, v) for k, v in t.headers if k != drop])
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
    tpl = Template(key, base.src + "*", headers, base.has_body)
    for fmt in FORMATS:
        tpl.compiled[fmt] = _compile(tpl, fmt)
    templates[key] = tpl
