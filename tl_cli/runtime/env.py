"""On/off switches read from the environment (TL_OFFLINE, TL_DEBUG, TL_DETERMINISTIC, HF_HUB_OFFLINE).

One parser, so every switch accepts the same spellings: unset, empty, 0, false, no and off mean
off; anything else means on.
"""

from __future__ import annotations

import os

_OFF = ("", "0", "false", "no", "off")


def env_flag(name: str) -> bool:
    """True when environment variable `name` is set to something other than an "off" spelling."""
    return os.environ.get(name, "").strip().lower() not in _OFF
