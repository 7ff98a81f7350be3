"""``--originate-cmd``: a whole originate command given by the user.

The command is taken apart into the arguments of
:func:`fastswitch.commands.build_originate_cmd` (which each slave's ``set_orig_cmd`` takes),
so the slave renders the user's command with the call-tracking variables fastswitch needs
(``origination_uuid``, the app id and the X-headers) added to its ``{...}`` block::

    originate {originate_timeout=30,sip_h_X-Test=1}sofia/gateway/sut/1000;fs_path=sip:10.0.0.1 &park()
      -> dest_url='1000', gateway='sut', proxy='10.0.0.1', app_name='park',
         timeout=30, kwargs={'sip_h_X-Test': '1'}
"""

from __future__ import annotations

import re
from typing import Any

from fastswitch.errors import ConfigurationError

#: Variables fastswitch sets itself on every call (a user's value would break call tracking).
TRACKING_VARS = frozenset(
    {
        "origination_uuid",
        "fastswitch_client",
        "sip_h_X-fastswitch_client",
        "sip_h_X-originating_session_uuid",
    }
)
_APP = re.compile(r"^&([\w-]+)\((.*)\)$", re.S)
HINT = "use e.g. 'originate {var=val}sofia/external/user@host:port &park()'"


def _var_block_end(s: str) -> int:
    """The index of the ``}`` closing the ``{...}`` block that ``s`` starts with (braces
    nest, so placeholders such as ``{uuid_str}`` inside values stay whole); -1 if unclosed."""
    depth = 0
    for i, ch in enumerate(s):
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return i
    return -1


def _split_top(block: str) -> list[str]:
    """Split a variable block on the commas outside ``{...}`` placeholders (``\\,`` stays)."""
    items, depth, start, prev = [], 0, 0, ""
    for i, ch in enumerate(block):
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth = max(depth - 1, 0)
        elif ch == "," and depth == 0 and prev != "\\":
            items.append(block[start:i])
            start = i + 1
        prev = ch
    items.append(block[start:])
    return items


def _split_vars(block: str) -> dict[str, str]:
    """``a=1,b=x\\,y`` -> {'a': '1', 'b': 'x,y'} (commas escaped with a backslash stay;
    ``{placeholder}`` values such as ``{call_index}`` are kept, filled per call)."""
    out: dict[str, str] = {}
    for item in _split_top(block):
        if not item.strip():
            continue
        k, eq, v = item.partition("=")
        if not eq or not k.strip():
            raise ConfigurationError(
                f"invalid variable {item!r} in --originate-cmd: expected name=value"
            )
        v = v.replace("\\,", ",")
        if len(v) >= 2 and v[0] == v[-1] == "'":
            v = v[1:-1]
        out[k.strip()] = v
    return out


def parse_originate_cmd(cmd: str) -> tuple[str, dict[str, Any]]:
    """Split a whole originate command into ``(dest_url, build_originate_cmd kwargs)``."""
    s = cmd.strip()
    if s.startswith("originate "):
        s = s[len("originate ") :].lstrip()
    variables: dict[str, str] = {}
    if s.startswith("{"):
        end = _var_block_end(s)
        if end < 0:
            raise ConfigurationError(f"invalid --originate-cmd {cmd!r}: unclosed '{{'; {HINT}")
        variables = _split_vars(s[1:end])
        s = s[end + 1 :]
    dial, _, action = s.partition(" ")
    action = action.strip()
    if not dial or not action:
        raise ConfigurationError(
            f"invalid --originate-cmd {cmd!r}: expected a dial string and an application; {HINT}"
        )
    kwargs: dict[str, Any] = {}
    url, _, params = dial.partition(";")
    parts = url.split("/")
    if len(parts) >= 4 and parts[1] == "gateway":
        kwargs.update(endpoint=parts[0], gateway=parts[2])
        dest = "/".join(parts[3:])
    elif len(parts) >= 3:
        kwargs.update(endpoint=parts[0], profile=parts[1])
        dest = "/".join(parts[2:])
    else:
        raise ConfigurationError(
            f"invalid --originate-cmd {cmd!r}: the dial string must be ENDPOINT/PROFILE/DEST "
            f"or ENDPOINT/gateway/NAME/DEST; {HINT}"
        )
    rest = []
    for p in params.split(";") if params else []:
        if p.startswith("fs_path=sip:"):
            kwargs["proxy"] = p[len("fs_path=sip:") :]
        elif p:
            rest.append(p)
    dest_url = ";".join([dest, *rest])
    m = _APP.match(action)
    if m:
        kwargs.update(app_name=m.group(1), app_arg_str=m.group(2))
    else:
        words = action.split()
        if len(words) == 3 and words[1] == "XML":
            kwargs.update(app_name=words[0], dp_context=words[2])
        elif len(words) == 1:
            kwargs.update(app_name=words[0], dp_context="default")
        else:
            raise ConfigurationError(
                f"invalid --originate-cmd {cmd!r}: the application must be '&app(args)' or "
                f"'EXTENSION XML CONTEXT'; {HINT}"
            )
    kwargs["codec"] = ""  # only the user's absolute_codec_string, if any
    if "originate_timeout" in variables:
        try:
            kwargs["timeout"] = int(variables.pop("originate_timeout"))
        except ValueError:
            raise ConfigurationError(
                "invalid originate_timeout in --originate-cmd: seconds expected"
            ) from None
    if "origination_caller_id_name" in variables:
        kwargs["caller_id"] = variables.pop("origination_caller_id_name")
    if "absolute_codec_string" in variables:
        kwargs["abs_codec"] = variables.pop("absolute_codec_string")
    for k in TRACKING_VARS:
        variables.pop(k, None)
    kwargs.update(variables)
    return dest_url, kwargs


#: The placeholders fastswitch fills in every call's originate command.
PLACEHOLDERS = ("uuid_str", "app_id", "call_index")


def check_originate_cmd(cmd: str) -> tuple[str, dict[str, Any]]:
    """:func:`parse_originate_cmd`, then render the command once as a slave will, so that a
    lone brace or an unknown ``{placeholder}`` fails before any slave is connected."""
    from fastswitch.commands import build_originate_cmd

    dest_url, kwargs = parse_originate_cmd(cmd)
    template = build_originate_cmd(dest_url, **kwargs)
    try:
        template.format(uuid_str="u", app_id="a", call_index="1")
    except KeyError as e:
        name = str(e.args[0]) if e.args else ""
        raise ConfigurationError(
            f"invalid --originate-cmd {cmd!r}: unknown placeholder {{{name}}}; the ones filled "
            f"in per call are {', '.join('{' + p + '}' for p in PLACEHOLDERS)}"
        ) from None
    except (ValueError, IndexError) as e:
        raise ConfigurationError(
            f"invalid --originate-cmd {cmd!r}: {e} (a literal brace must be doubled)"
        ) from None
    return dest_url, kwargs
