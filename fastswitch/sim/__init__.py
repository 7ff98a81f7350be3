"""fastswitch.sim: a FreeSWITCH simulator that speaks ESL and loops calls back.

>>> from fastswitch import sim
>>> with sim.SimServer(port=0) as server:   # own process, own uvloop
...     host, port = server.address

See docs/ARCHITECTURE.md (sim/) and the module docs: config, server, core,
channel, originate, siplink, eslserver, api, templates, extract, faults.
"""

from .cli import main
from .config import SimConfig
from .server import SimCluster, SimServer

__all__ = ["SimCluster", "SimConfig", "SimServer", "main"]
