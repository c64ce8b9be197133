"""Real CUDA out-of-memory (a memory cap set with set_per_process_memory_fraction) through both
fallbacks: extraction halves its batch, training redoes forward/backward in micro-batches."""

from __future__ import annotations

import contextlib

import numpy as np
import torch

from tests.helpers.gpu import GPU
from tl_cli.runs.workspace import Workspace

pytestmark = GPU


@contextlib.contextmanager
def memory_cap(gib: float):
    """Let this process use at most `gib` GiB of the GPU (torch's caching allocator enforces it)."""
    torch.cuda.empty_cache()
    total = torch.cuda.get_device_properties(0).total_memory
    torch.cuda.set_per_process_memory_fraction(min(1.0, gib * 2**30 / total), 0)
    try:
        yield
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0, 0)
        torch.cuda.empty_cache()


def test_extraction_halves_its_batch_on_a_real_oom_and_keeps_every_row():
    from tl_cli.backbones import create_backbone, get_spec
    from tl_cli.features.engines import TorchEngine
    from tl_cli.runtime.oom import HalvingForward

    torch.manual_seed(0)
    net = create_backbone("resnet50", pretrained=False)[0]
    pre = get_spec("resnet50").preprocess
    engine = TorchEngine(net, torch.device("cuda", 0), pre=pre)
    crops = np.random.default_rng(0).integers(0, 256, (512, 224, 224, 3), dtype=np.uint8)
    ref = np.concatenate([engine(crops[i:i + 32]) for i in range(0, 512, 32)])
    halves: list[int] = []
    fwd = HalvingForward(engine, halves.append)
    with memory_cap(1.5):  # 512 images of resnet50 activations do not fit in 1.5 GiB
        got = fwd(crops)
    assert halves and fwd.limit is not None and fwd.limit < 512
    np.testing.assert_allclose(got, ref, rtol=1e-2, atol=1e-2)  # other batch sizes: other cuDNN kernels


def test_finetuning_goes_on_in_micro_batches_on_a_real_oom(tmp_path):
    from tests.helpers.images import make_folder
    from tl_cli.finetune.config import FinetuneConfig
    from tl_cli.finetune.trainer import start
    from tl_cli.runtime.progress import Reporter

    class Log(Reporter):
        def __init__(self):
            self.lines: list[str] = []

        def log(self, message: str) -> None:
            self.lines.append(message)

    data = make_folder(tmp_path / "d", n_per_class=60)
    cfg = FinetuneConfig(backbone="resnet50", pretrained=False, freeze=0, epochs=1, batch_size=128, workers=4,
                         head_init="random", device="cuda", patience=0)
    log = Log()
    with memory_cap(4.0):  # resnet50 training at batch 128 needs far more than 4 GiB
        r = start(data, cfg, Workspace.open(tmp_path / "ws"), log)
    assert any("micro-batches of" in m for m in log.lines), log.lines
    assert r.history[-1]["train_loss"] == r.history[-1]["train_loss"]  # a number, not NaN
    assert torch.cuda.max_memory_allocated(0) <= 4.2 * 2**30
