"""Exact and near duplicates, grouped, with what each group means for training.

Exact: the same bytes, or the same decoded pixels (another container, stripped metadata).
Near: cosine similarity of the cached features at or above a threshold calibrated on real photos
(README, "tl check"). Pairs are joined into groups (connected components, as fastdup does), so
a photo and its five edited copies are one group. A group is flagged `conflicting_labels` when its
members sit in different class folders and `leakage` when it spans train and validation.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Member:
    path: str  # relative to DATA
    split: str
    cls: str
    similarity: float  # cosine similarity to the group's first member (1.0 for the first)

    def to_dict(self) -> dict:
        return {"path": self.path, "split": self.split, "class": self.cls, "similarity": round(self.similarity, 4)}


@dataclass
class Group:
    kind: str  # "exact" or "near"
    match: str  # "bytes", "pixels" or "features"
    members: list[Member]

    @property
    def conflicting_labels(self) -> bool:
        return len({m.cls for m in self.members}) > 1

    @property
    def leakage(self) -> bool:
        return len({m.split for m in self.members}) > 1

    def to_dict(self) -> dict:
        return {"kind": self.kind, "match": self.match, "conflicting_labels": self.conflicting_labels,
                "leakage": self.leakage, "members": [m.to_dict() for m in self.members]}


class _UnionFind:
    def __init__(self, n: int):
        self.parent = list(range(n))

    def find(self, a: int) -> int:
        while self.parent[a] != a:
            self.parent[a] = self.parent[self.parent[a]]
            a = self.parent[a]
        return a

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def _components(n: int, edges) -> list[list[int]]:
    uf = _UnionFind(n)
    for a, b in edges:
        uf.union(int(a), int(b))
    comps: dict[int, list[int]] = {}
    for i in range(n):
        comps.setdefault(uf.find(i), []).append(i)
    return [sorted(c) for c in comps.values() if len(c) > 1]


def _hash_edges(keys: list[str]) -> list[tuple[int, int]]:
    first: dict[str, int] = {}
    edges = []
    for i, k in enumerate(keys):
        if not k:
            continue
        if k in first:
            edges.append((first[k], i))
        else:
            first[k] = i
    return edges


def find_duplicates(relpaths: list[str], labels: np.ndarray, splits: np.ndarray, classes: list[str],
                    bytes_sha: list[str], pixels_sha: list[str], features_unit: np.ndarray,
                    pairs: tuple[np.ndarray, np.ndarray]) -> list[Group]:
    """Groups of exact and near duplicates.

    Args:
        relpaths, labels, splits: per image. bytes_sha, pixels_sha: hashes ("" = unknown).
        features_unit: (N, D) L2-normalised features (for each member's similarity).
        pairs: (i, j) index arrays of near pairs (similarity >= the threshold).

    Returns:
        Exact groups first (each a set of identical images), then near groups (connected
        components of near and exact pairs that are not a single exact group); leakage and
        conflicting labels first within each kind.
    """
    n = len(relpaths)
    by_bytes = _hash_edges(bytes_sha)
    exact_edges = by_bytes + _hash_edges(pixels_sha)
    exact = _components(n, exact_edges)
    byte_sets = {frozenset(c) for c in _components(n, by_bytes)}
    exact_sets = {frozenset(c) for c in exact}
    near = [c for c in _components(n, exact_edges + list(zip(*pairs))) if frozenset(c) not in exact_sets]

    def group(kind: str, idx: list[int], match: str) -> Group:
        lead = features_unit[idx[0]]
        members = [Member(relpaths[i], str(splits[i]), classes[int(labels[i])],
                          1.0 if kind == "exact" else float(features_unit[i] @ lead)) for i in idx]
        return Group(kind, match, members)

    groups = [group("exact", c, "bytes" if frozenset(c) in byte_sets else "pixels") for c in exact]
    groups += [group("near", c, "features") for c in near]
    return sorted(groups, key=lambda g: (g.kind != "exact", not g.leakage, not g.conflicting_labels, g.members[0].path))


def leaked_val(groups: list[Group]) -> set[str]:
    """Validation images that have a copy (exact or near) in the training split."""
    out: set[str] = set()
    for g in groups:
        if g.leakage:
            out.update(m.path for m in g.members if m.split == "val")
    return out
