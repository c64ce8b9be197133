"""Exact and near duplicates, grouped, with what each group means for training.

Exact: the same bytes, or the same decoded pixels (another container, stripped metadata).
Near: cosine similarity of the cached features at or above a threshold calibrated on real photos
(README, "tl check"), or a thumbnail hash that matches under a rotation or flip (thumbhash.py).
Pairs are joined into groups (connected components, as fastdup does, then split around leaders
so chains of merely similar photos do not merge), so a photo and its edited copies are one group.
A group is flagged `conflicting_labels` when its members sit in different class folders and
`leakage` when it spans train and validation.
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


def _split_chain(comp: list[int], edges) -> list[list[int]]:
    """Split a connected component into groups around leaders, so that A~B~C~...~Z (distinct
    photos each similar to the next, common among blurry photos of one kind of flower) does not
    become one group: the image with the most near copies leads a group of its copies; the rest is
    split the same way; an image left alone joins the group of a neighbour. Every member is then a
    near copy of its leader or of a member next to it.
    """
    if len(comp) <= 2:
        return [comp]
    inside = set(comp)
    adj: dict[int, set[int]] = {i: set() for i in comp}
    for a, b in edges:
        if a in inside and b in inside and a != b:
            adj[a].add(b)
            adj[b].add(a)
    group_of: dict[int, int] = {}
    groups: list[list[int]] = []
    free = set(comp)
    while free:
        lead = max(sorted(free), key=lambda i: len(adj[i] & free))
        members = [lead] + sorted(adj[lead] & free)
        if len(members) == 1:  # its copies all lead or joined other groups: go with one of them
            groups[group_of[min(adj[lead])]].append(lead)
            group_of[lead] = group_of[min(adj[lead])]
            free.discard(lead)
            continue
        for m in members:
            group_of[m] = len(groups)
        groups.append(members)
        free -= set(members)
    return [sorted(g, key=lambda i: (i != g[0], i)) for g in groups]


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
                    pairs: tuple[np.ndarray, np.ndarray],
                    rotated: tuple[np.ndarray, np.ndarray] = (np.zeros(0, int), np.zeros(0, int))) -> list[Group]:
    """Groups of exact and near duplicates.

    Args:
        relpaths, labels, splits: per image. bytes_sha, pixels_sha: hashes ("" = unknown).
        features_unit: (N, D) L2-normalised features (for each member's similarity).
        pairs: (i, j) index arrays of near pairs (similarity >= the threshold).
        rotated: (i, j) pairs of rotated/flipped copies (check/thumbhash.py).

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
    feat_edges = [(int(a), int(b)) for a, b in zip(*pairs)]
    edges = exact_edges + feat_edges + [(int(a), int(b)) for a, b in zip(*rotated)]
    near = [g for c in _components(n, edges) if frozenset(c) not in exact_sets for g in _split_chain(c, edges)]
    by_features = {i for e in feat_edges for i in e}

    def group(kind: str, idx: list[int], match: str) -> Group:
        lead = features_unit[idx[0]]
        members = [Member(relpaths[i], str(splits[i]), classes[int(labels[i])],
                          1.0 if kind == "exact" else float(features_unit[i] @ lead)) for i in idx]
        return Group(kind, match, members)

    groups = [group("exact", c, "bytes" if frozenset(c) in byte_sets else "pixels") for c in exact]
    # "features": found by feature similarity; "thumbnail": only as a rotated or flipped copy.
    groups += [group("near", c, "features" if any(i in by_features for i in c) else "thumbnail") for c in near]
    return sorted(groups, key=lambda g: (g.kind != "exact", not g.leakage, not g.conflicting_labels, g.members[0].path))


def leaked_val(groups: list[Group]) -> set[str]:
    """Validation images that have a copy (exact or near) in the training split."""
    out: set[str] = set()
    for g in groups:
        if g.leakage:
            out.update(m.path for m in g.members if m.split == "val")
    return out
