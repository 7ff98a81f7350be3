"""pytest fixtures for the simulator: ``sim_server`` and ``sim_cluster``.

Load with ``pytest_plugins = ["fastswitch.sim.pytest_plugin"]``. Both fixtures use
free ports (``port=0``); ``sim_server`` is one server, ``sim_cluster`` two.
Parametrise them indirectly with a dict of SimConfig settings::

    @pytest.mark.parametrize("sim_server", [{"answer_delay": 0.2}], indirect=True)
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from .server import SimCluster, SimServer


@pytest.fixture
def sim_server(request: Any) -> Iterator[SimServer]:
    """A running simulated FreeSWITCH (own process), stopped after the test."""
    kwargs = {"port": 0, "heartbeat_interval": 0.0}
    kwargs.update(getattr(request, "param", None) or {})
    server = SimServer(**kwargs)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def sim_cluster(request: Any) -> Iterator[SimCluster]:
    """Two running simulated servers (``param`` may set ``count`` and settings)."""
    kwargs: dict[str, Any] = {"count": 2, "port": 0, "heartbeat_interval": 0.0}
    kwargs.update(getattr(request, "param", None) or {})
    cluster = SimCluster(**kwargs)
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()
