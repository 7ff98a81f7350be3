"""Shared test fixtures.

The real FreeSWITCH captures live in ``../shared/esl-captures`` beside the repository
(override with FASTSWITCH_CAPTURES=/path/to/esl-captures).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

#: the simulator's fixtures (sim_server, sim_cluster) for every test module
pytest_plugins = ["fastswitch.sim.pytest_plugin"]

REPO = Path(__file__).resolve().parent.parent
CAPTURES = Path(os.environ.get("FASTSWITCH_CAPTURES", REPO.parent / "shared" / "esl-captures"))


@pytest.fixture(scope="session")
def captures_dir() -> Path:
    """The directory of real FreeSWITCH ESL captures (``*.bin`` received, ``*.txt`` sent)."""
    if not (CAPTURES / "README.md").exists():
        pytest.fail(f"ESL captures not found at {CAPTURES}; set FASTSWITCH_CAPTURES")
    return CAPTURES
