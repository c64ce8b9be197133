"""Validation accuracy with and without a grouped split on a pre-augmented dataset, against a clean
held-out set (benchmarks/check_data.py makes preaug/ and preaug_test/).

    TL_WORKSPACE=/tmp/chk/ws python benchmarks/check_preaug.py /tmp/chk/preaug /tmp/chk/preaug_test [groups.json]
"""

from __future__ import annotations

import sys

import numpy as np

from tl_cli.check.quick import leaked_val_count
from tl_cli.features.extract import ExtractConfig, extract_features
from tl_cli.head.softmax import train_head
from tl_cli.runtime.progress import Reporter


def main(data: str, test: str, groups: str | None = None) -> None:
    te = extract_features(test, ExtractConfig(), reporter=Reporter())
    variants = [("hash split by file name (no grouping)", {}),
                ("--group-pattern '_aug\\d+'", {"group_pattern": r"_aug\d+"})]
    if groups:
        variants.append(("--groups (tl check's groups.json)", {"groups": groups}))
    print("| split | train / val images | val images with a copy in train | val accuracy | held-out accuracy |")
    print("| --- | --- | --- | --- | --- |")
    for name, opts in variants:
        ex = extract_features(data, ExtractConfig(**opts), reporter=Reporter())
        tr, va = ex.splits == "train", ex.splits == "val"
        k = len(ex.dataset.classes)
        head = train_head(ex.features[tr], ex.labels[tr], ex.features[va], ex.labels[va], k)
        test_y = np.array([ex.dataset.classes.index(te.dataset.classes[c]) for c in te.labels])
        test_acc = float((head.logits(te.features).argmax(1) == test_y).mean())
        leaked = leaked_val_count(ex.features, ex.splits)
        print(f"| {name} | {tr.sum()} / {va.sum()} | {leaked} | {head.val_accuracy:.3f} | {test_acc:.3f} (n={len(test_y)}) |")


if __name__ == "__main__":
    main(*sys.argv[1:])
