"""--device cuda:N on a real GPU machine: checked against the GPU count, and made current."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from tests.helpers.gpu import GPU, REPO, needs_2_gpus

pytestmark = GPU


def test_a_gpu_index_that_does_not_exist_is_one_line_and_exit_2(tmp_path):
    from tests.helpers.images import make_folder

    data = make_folder(tmp_path / "d", n_per_class=3)
    n = torch.cuda.device_count()
    p = subprocess.run([sys.executable, "-m", "tl_cli", "extract", str(data), "-b", "lenet5", "--no-pretrained",
                        "--device", f"cuda:{n}"], capture_output=True, text=True, timeout=120,
                       env={**__import__("os").environ, "PYTHONPATH": str(REPO), "TL_WORKSPACE": str(tmp_path / "ws")})
    assert p.returncode != 0
    assert "visible GPU" in p.stderr and "Traceback" not in p.stderr, p.stderr
    assert len([ln for ln in p.stderr.splitlines() if ln.strip()]) <= 3


def test_resolve_device_binds_the_gpu():
    from tl_cli.errors import ConfigError
    from tl_cli.runtime.device import resolve_device

    assert resolve_device("cuda:0") == torch.device("cuda", 0) and torch.cuda.current_device() == 0
    with pytest.raises(ConfigError, match="visible GPU"):
        resolve_device(f"cuda:{torch.cuda.device_count()}")


@needs_2_gpus
def test_a_process_on_cuda_1_leaves_gpu_0_alone(tmp_path):
    """Pinned memory and the loader's pin thread follow the current device: nothing lands on GPU 0."""
    code = (
        "import torch\n"
        "from tl_cli.runtime.device import resolve_device\n"
        "d = resolve_device('cuda:1')\n"
        "x = torch.ones(1 << 20).pin_memory().to(d, non_blocking=True)\n"
        "torch.cuda.synchronize(d)\n"
        "print(torch.cuda.current_device(), torch.cuda.memory_reserved(0), torch.cuda.memory_reserved(1) > 0)\n"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                       env={**__import__("os").environ, "PYTHONPATH": str(REPO)})
    assert p.returncode == 0, p.stderr
    assert p.stdout.split() == ["1", "0", "True"]
