"""`python tests/slow_tl.py ARGS...`: the `tl` command line with a slowed-down backbone, so tests
can interrupt it in the middle of an extraction.

Environment: SLOW_TL_DELAY seconds of sleep per forward pass (default 0.3); SLOW_TL_CHUNK rows per
cache chunk (default 4); SLOW_TL_LOG, a file that gets one line per finished forward pass;
SLOW_TL_HOLD, a file: while it exists, every forward pass after the first SLOW_TL_HOLD_AFTER (default 1)
waits (up to 2 minutes).
"""

from __future__ import annotations

import dataclasses
import os
import signal
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import tl_cli.head.small_data as small_data  # noqa: E402
from tl_cli.backbones.wrapper import Backbone  # noqa: E402

DELAY = float(os.environ.get("SLOW_TL_DELAY", "0.3"))
CHUNK = int(os.environ.get("SLOW_TL_CHUNK", "4"))
LOG = os.environ.get("SLOW_TL_LOG")
HOLD = os.environ.get("SLOW_TL_HOLD")
HOLD_AFTER = int(os.environ.get("SLOW_TL_HOLD_AFTER", "1"))
_done = 0  # forward passes finished

_forward = Backbone.forward_features


def slow_forward(self, x):
    global _done
    time.sleep(DELAY)
    t0 = time.monotonic()
    while HOLD and LOG and os.path.exists(HOLD) and _done >= HOLD_AFTER and time.monotonic() - t0 < 120:
        time.sleep(0.05)
    out = _forward(self, x)
    _done += 1
    if LOG:
        with open(LOG, "a") as fh:
            fh.write(f"{x.shape[0]}\n")
    return out


Backbone.forward_features = slow_forward
# Ctrl-C as in a terminal: a shell starts background jobs with SIGINT ignored, which Python then
# keeps (no KeyboardInterrupt), so a suite run with `... &` saw the interrupted job finish normally.
signal.signal(signal.SIGINT, signal.default_int_handler)
_extract = small_data.extract_features


def extract_in_small_chunks(data_dir, cfg, *args, **kwargs):
    changes = {"chunk_rows": CHUNK}
    if "engine" in {f.name for f in dataclasses.fields(cfg)}:
        changes["engine"] = "torch"  # the slowed-down Python forward must be what runs
    return _extract(data_dir, dataclasses.replace(cfg, **changes), *args, **kwargs)


small_data.extract_features = extract_in_small_chunks

if __name__ == "__main__":
    from tl_cli.cli import main

    sys.argv[0] = "tl"
    main()
