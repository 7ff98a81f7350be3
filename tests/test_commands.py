"""build_originate_cmd renders exactly what FreeSWITCH accepted in the captures."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

from fastswitch.commands import build_originate_cmd, quote_value

sys.path.insert(0, str(Path(__file__).parent))
from replay_server import load_capture  # noqa: E402


def captured_originates(captures_dir: Path, name: str) -> list[str]:
    _, _, sends = load_capture(captures_dir / name)
    out = []
    for s in sends:
        text = s.decode()
        if text.startswith("bgapi originate "):
            out.append(text[len("bgapi ") :].split("\n", 1)[0])
    return out


@pytest.mark.parametrize(
    "capture", ["k_ctl_answer", "l_ctl_respond404", "m_ctl_ringready", "o_hupall_by_var"]
)
def test_default_command_is_the_captured_one(captures_dir, capture):
    """The command FreeSWITCH accepted in the captures, but for the caller-id name variable
    (see test_captured_caller_id_name_variable_had_no_effect)."""
    cmds = captured_originates(captures_dir, capture)
    assert cmds
    for cmd in cmds:
        m = re.search(r"origination_uuid=([^,]+),fastswitch_client=(\w+),", cmd)
        assert m, cmd
        dest = re.search(r"sofia/external/(\S+) &park\(\)$", cmd).group(1)
        template = build_originate_cmd(dest)
        fixed = cmd.replace("originate_caller_id_name=", "origination_caller_id_name=")
        assert fixed != cmd
        assert template.format(uuid_str=m.group(1), app_id=m.group(2)) == fixed


def test_captured_caller_id_name_variable_had_no_effect(captures_dir):
    """Why the name goes in ``origination_caller_id_name``: the captures' commands set
    ``originate_caller_id_name=Mr_fastswitch``, and FreeSWITCH kept it as a plain variable
    while no channel took the name."""
    raw = (captures_dir / "k_ctl_answer.bin").read_bytes()
    assert b"variable_originate_caller_id_name: Mr_fastswitch" in raw
    assert b"Caller-Caller-ID-Name: Mr_fastswitch" not in raw
    names = set(re.findall(rb"\nCaller-Caller-ID-Name: ([^\n]*)", raw))
    assert names and b"Mr_fastswitch" not in names


def test_template_keeps_placeholders_and_doubles_braces():
    t = build_originate_cmd("doggy@10.0.0.1:5080")
    assert t.startswith("originate {{origination_uuid={uuid_str},")
    assert "}}sofia/external/doggy@10.0.0.1:5080 &park()" in t
    rendered = t.format(uuid_str="U", app_id="A")
    assert rendered.startswith("originate {origination_uuid=U,fastswitch_client=A,")
    assert "sip_h_X-fastswitch_client=A" in rendered
    assert "sip_h_X-originating_session_uuid=U" in rendered


def test_switchio_prefix_restores_switchio_names():
    r = build_originate_cmd("x@h", var_prefix="switchio").format(uuid_str="U", app_id="A")
    assert "switchio_client=A" in r and "sip_h_X-switchio_client=A" in r
    assert "fastswitch" not in r.replace("Mr_fastswitch", "")


def test_proxy_gateway_app_and_codec_options():
    r = build_originate_cmd(
        "doggy@hostnameA:5080",
        proxy="doggy@intermediary:5060",
        app_name="bert_test",
        abs_codec="PCMA",
        timeout=30,
    ).format(uuid_str="U", app_id="A")
    assert r.endswith(
        "}sofia/external/doggy@hostnameA:5080;fs_path=sip:doggy@intermediary:5060 &bert_test()"
    )
    assert "absolute_codec_string=PCMA" in r and "originate_timeout=30" in r
    g = build_originate_cmd("1000", gateway="gw1", profile="internal").format(
        uuid_str="U", app_id="A"
    )
    assert "}sofia/gateway/gw1/1000 &park()" in g
    d = build_originate_cmd("x@h", app_name="1000", dp_context="default")
    assert d.endswith("}}sofia/external/x@h 1000 XML default")


def test_xheaders_kwargs_and_quoting():
    r = build_originate_cmd(
        "x@h",
        caller_id="Load Test",
        xheaders={"Foo": "bar", "sip_h_X-Raw": 1},
        execute_on_answer="sched_hangup +2",
        origination_caller_id_number="{call_index}",
        absolute_codec_string="PCMU,PCMA",
    ).format(uuid_str="U", app_id="A", call_index="77")
    assert "origination_caller_id_name='Load Test'" in r
    assert "sip_h_X-Foo=bar" in r and "sip_h_X-Raw=1" in r
    assert "execute_on_answer='sched_hangup +2'" in r
    assert "origination_caller_id_number=77" in r
    assert "absolute_codec_string=PCMU\\,PCMA" in r  # kwargs override, commas escaped
    assert r.count("absolute_codec_string") == 1
    assert quote_value("a,b c") == "'a\\,b c'"


def test_fixed_uuid_is_embedded():
    r = build_originate_cmd("x@h", uuid_str="abc").format(app_id="A")
    assert "origination_uuid=abc" in r and "sip_h_X-originating_session_uuid=abc" in r
