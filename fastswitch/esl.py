"""The ESL frame parser: the Cython extension when available, else the pure-Python twin.

``fastswitch._esl`` (built from ``src_ext/_esl.pyx``) is used unless ``FASTSWITCH_PURE=1``
is set or the extension is not built; then ``fastswitch._pyesl``. Both behave identically;
see ``fastswitch._pyesl`` for the framing rules. ``PARSER`` names the one in use
(``"cython"`` or ``"python"``).

After :class:`~fastswitch.errors.ESLProtocolError` a :class:`Parser` is unusable (every
``feed`` raises the same error again) until :meth:`Parser.reset`.
"""

from __future__ import annotations

import os

if os.environ.get("FASTSWITCH_PURE", "") not in ("", "0"):
    from fastswitch._pyesl import MAX_FRAME_SIZE, Event, Frame, Parser

    PARSER = "python"
else:
    try:
        from fastswitch._esl import MAX_FRAME_SIZE, Event, Frame, Parser

        PARSER = "cython"
    except ImportError:
        from fastswitch._pyesl import MAX_FRAME_SIZE, Event, Frame, Parser

        PARSER = "python"

__all__ = ["PARSER", "MAX_FRAME_SIZE", "Parser", "Frame", "Event"]
