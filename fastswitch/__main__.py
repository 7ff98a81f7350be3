"""``python -m fastswitch``: the command line (see :mod:`fastswitch.cli`)."""

from __future__ import annotations

import sys

from fastswitch.cli import main

if __name__ == "__main__":
    sys.exit(main())
