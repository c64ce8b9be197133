"""runtime.memory: glibc keeps freed memory, so repeated large allocations stop page-faulting."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import tl_cli

CHILD = """
import resource, sys, torch
from tl_cli.runtime.memory import keep_freed_memory
ok = keep_freed_memory() if sys.argv[1] == "1" else True
a = torch.ones(12 << 20); del a  # first 48 MiB block: faults either way
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    a = torch.ones(12 << 20); del a  # 48 MiB of float32, above glibc's 32 MiB mmap limit
print(ok, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt")
def test_large_blocks_are_reused_instead_of_faulted_in_again():
    def faults(flag: str) -> int:
        root = str(Path(tl_cli.__file__).resolve().parents[1])  # this checkout's tl_cli, whatever the cwd
        env = {**os.environ, "PYTHONPATH": root + os.pathsep + os.environ.get("PYTHONPATH", "")}
        proc = subprocess.run([sys.executable, "-c", CHILD, flag], capture_output=True, text=True, env=env)
        assert proc.returncode == 0, proc.stderr
        out = proc.stdout.split()
        assert out[0] == "True"
        return int(out[1])

    plain, kept = faults("0"), faults("1")
    assert plain > 20 * 10_000  # 48 MiB = 12,288 pages faulted in on every allocation
    assert kept < plain / 2  # measured: 36,864-86,016 vs 245,780
