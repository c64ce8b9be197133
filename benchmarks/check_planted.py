"""Score `tl check` on the planted dataset of benchmarks/check_data.py.

    python benchmarks/check_planted.py /tmp/chk/planted.json <checks folder>/check.json
"""

from __future__ import annotations

import json
import sys


def main(planted_file: str, check_file: str) -> None:
    with open(planted_file) as a, open(check_file) as b:
        planted, found = json.load(a), json.load(b)
    issues = {t["path"] for t in found["label_issues"]}
    same_group = lambda a, b, kind: any(  # noqa: E731
        {a, b} <= {m["path"] for m in g["members"]} and (kind is None or g["kind"] == kind) for g in found["duplicates"])
    swaps = sum(p in issues for p in planted["label_swaps"])
    near = sum(same_group(a, b, None) for a, b in planted["near_leaks"])
    near_leak = sum(any({a, b} <= {m["path"] for m in g["members"]} and g["leakage"] for g in found["duplicates"])
                    for a, b in planted["near_leaks"])
    exact = sum(same_group(a, b, "exact") for a, b in planted["exact"])
    planted_paths = set(planted["label_swaps"]) | {p for pair in planted["near_leaks"] + planted["exact"] for p in pair}
    clean_flagged = sorted(issues - planted_paths)
    print(f"label swaps found: {swaps}/{len(planted['label_swaps'])}")
    print(f"near-duplicate copies grouped: {near}/{len(planted['near_leaks'])} (named as train/val leakage: {near_leak})")
    print(f"exact copies grouped as exact: {exact}/{len(planted['exact'])}")
    print(f"other images flagged as label issues: {len(clean_flagged)} {clean_flagged}")
    print(f"groups: {len(found['duplicates'])}, outliers: {len(found['outliers'])}")


if __name__ == "__main__":
    main(*sys.argv[1:])
