"""Defect 5 on a GPU: the LP-FT probe reuses the feature cache `tl extract` made on that GPU."""

from __future__ import annotations

import numpy as np

from tests.helpers.gpu import GPU
from tl_cli.runs.workspace import Workspace

pytestmark = GPU


def test_finetune_on_cuda_reads_the_features_tl_extract_made_on_cuda(tmp_path):
    from tests.helpers.images import make_folder
    from tl_cli.features.extract import ExtractConfig, extract_features
    from tl_cli.finetune.config import FinetuneConfig
    from tl_cli.finetune.trainer import start
    from tl_cli.runtime.progress import Reporter

    class Log(Reporter):
        def __init__(self):
            self.lines: list[str] = []

        def log(self, message: str) -> None:
            self.lines.append(message)

    data = make_folder(tmp_path / "d", n_per_class=15)
    ws = Workspace.open(tmp_path / "ws")
    ex = extract_features(data, ExtractConfig(backbone="lenet5", pretrained=False, device="cuda"), ws)
    assert ex.n_extracted == 45
    log = Log()
    r = start(data, FinetuneConfig(backbone="lenet5", pretrained=False, freeze=2, epochs=1, batch_size=8,
                                   workers=2, device="cuda"), ws, log)
    assert any("features from the tl extract cache" in m for m in log.lines), log.lines
    assert r.history[0]["epoch"] == 0 and np.isfinite(r.history[0]["val_loss"])
