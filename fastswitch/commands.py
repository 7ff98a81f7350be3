"""Builders for the FreeSWITCH commands fastswitch sends.

:func:`build_originate_cmd` returns the *template* a :class:`~fastswitch.client.Client`
fills per call with :meth:`str.format` (placeholders ``{uuid_str}``, ``{app_id}``,
``{call_index}`` and any ``rep_fields`` the user put in a value). Literal braces of the
``{var=val,...}`` block are doubled so that ``.format`` leaves one pair.

With the defaults, a rendered command is byte for byte the one FreeSWITCH accepted in
the captures k-s::

    originate {origination_uuid=U,fastswitch_client=app1,sip_h_X-fastswitch_client=app1,
    sip_h_X-originating_session_uuid=U,originate_timeout=60,
    origination_caller_id_name=Mr_fastswitch,absolute_codec_string=PCMU}
    sofia/external/ctl@127.0.0.1:5080 &park()

(one line, no spaces inside the braces). The caller-id name goes in
``origination_caller_id_name``, the variable FreeSWITCH applies to the new channel; the
seed's (switchio's) ``originate_caller_id_name`` is accepted by FreeSWITCH but has no
effect: in capture k it shows up only as ``variable_originate_caller_id_name`` while every
``Caller-Caller-ID-Name`` stays ``0000000000``.
"""

from __future__ import annotations

from typing import Any

__all__ = ["build_originate_cmd", "quote_value", "ORIGINATING_SESSION_VAR", "client_var"]

#: The channel variable (and SIP X-header) carrying the originating session's uuid.
ORIGINATING_SESSION_VAR = "sip_h_X-originating_session_uuid"


def client_var(var_prefix: str = "fastswitch") -> str:
    """The channel variable that carries a call's app id (``fastswitch_client``)."""
    return f"{var_prefix}_client"


def quote_value(value: Any) -> str:
    """Render one ``{var=value}`` value as FreeSWITCH's originate parser wants it.

    Commas are escaped (``\\,``) because they separate variables; a value with a space is
    wrapped in single quotes because the whole originate line is split on spaces.
    """
    s = str(value)
    if "," in s:
        s = s.replace(",", "\\,")
    if " " in s and not (s.startswith("'") and s.endswith("'")):
        s = f"'{s}'"
    return s


def build_originate_cmd(
    dest_url: str,
    uuid_str: str | None = None,
    profile: str = "external",
    gateway: str | None = None,
    app_name: str = "park",
    app_arg_str: str = "",
    dp_context: str | bool = False,
    proxy: str | None = None,
    endpoint: str = "sofia",
    timeout: int = 60,
    caller_id: str = "Mr_fastswitch",
    codec: str = "PCMU",
    abs_codec: str = "",
    xheaders: dict[str, Any] | None = None,
    var_prefix: str = "fastswitch",
    **kwargs: Any,
) -> str:
    """Return an ``originate`` command template for a call to ``dest_url``.

    - ``dest_url``: ``user@host[:port]`` (or a gateway number with ``gateway``).
    - ``uuid_str``: a fixed origination uuid; ``None`` (default) leaves the ``{uuid_str}``
      placeholder that :meth:`Client.originate` fills per call.
    - ``profile`` / ``gateway`` / ``endpoint``: the call URL is
      ``<endpoint>/<profile>/<dest_url>`` or ``<endpoint>/gateway/<gateway>/<dest_url>``.
    - ``app_name`` / ``app_arg_str``: the application run on the originated leg once it
      answers (``&park()`` by default).
    - ``dp_context``: when set to a context name, the originated leg is sent through the
      XML dialplan instead: the action becomes ``<app_name> XML <dp_context>`` (``app_name``
      is then the extension).
    - ``proxy``: route the INVITE through ``sip:<proxy>`` (``;fs_path=sip:<proxy>``) while
      keeping the request URI.
    - ``timeout``: ``originate_timeout`` seconds; ``caller_id``: ``origination_caller_id_name``.
    - ``codec`` / ``abs_codec``: ``absolute_codec_string`` is ``abs_codec`` if given, else
      ``codec`` (an empty value leaves the variable out).
    - ``xheaders``: extra SIP headers, ``{'Foo': 1}`` -> ``sip_h_X-Foo=1`` (a name already
      starting with ``sip_h_`` is used as is).
    - ``var_prefix``: prefix of the app-id variable: ``fastswitch`` gives
      ``fastswitch_client`` / ``sip_h_X-fastswitch_client``; ``'switchio'`` restores
      switchio's names.
    - ``**kwargs``: further channel variables, added last (overriding same-named ones).
      Values are inserted unescaped except for commas and spaces, so a value may hold a
      ``{placeholder}`` filled at originate time (e.g.
      ``origination_caller_id_number='{call_index}'``).
    """
    uuid_val = uuid_str if uuid_str is not None else "{uuid_str}"
    cvar = client_var(var_prefix)
    variables: dict[str, str] = {
        "origination_uuid": uuid_val,
        cvar: "{app_id}",
        f"sip_h_X-{cvar}": "{app_id}",
        ORIGINATING_SESSION_VAR: uuid_val,
        "originate_timeout": str(int(timeout)),
        "origination_caller_id_name": quote_value(caller_id),
    }
    acs = abs_codec or codec
    if acs:
        variables["absolute_codec_string"] = quote_value(acs)
    for name, value in (xheaders or {}).items():
        key = name if name.startswith("sip_h_") else f"sip_h_X-{name}"
        variables[key] = quote_value(value)
    for name, value in kwargs.items():
        variables[name] = quote_value(value)

    block = ",".join(f"{k}={v}" for k, v in variables.items())
    if gateway:
        url = f"{endpoint}/gateway/{gateway}/{dest_url}"
    else:
        url = f"{endpoint}/{profile}/{dest_url}"
    if proxy:
        url = f"{url};fs_path=sip:{proxy}"
    if dp_context:
        action = f"{app_name} XML {dp_context}"
    else:
        action = f"&{app_name}({app_arg_str})"
    return f"originate {{{{{block}}}}}{url} {action}"
