"""Pending cache chunks are read in the order they were written, whatever their names sort as."""

from __future__ import annotations

import itertools
import os
import uuid

import numpy as np

from tl_cli.features.cache import FeatureCache, FileStat

INFO = {"backbone": "test", "feature_dim": 2}


def test_a_later_chunk_wins_even_when_its_random_name_sorts_first(tmp_path, monkeypatch):
    # uuids that sort in the opposite order of their creation (what names by uuid4 do half the time)
    descending = (uuid.UUID(int=n << 64) for n in itertools.count(2**60, -1))
    monkeypatch.setattr(uuid, "uuid4", lambda: next(descending))
    old, new = FileStat("a/x.jpg", 10, 1), FileStat("a/x.jpg", 12, 2)  # the file changed between two runs
    with FeatureCache(tmp_path, INFO) as cache:
        cache.write_chunk([old, FileStat("a/y.jpg", 5, 1)], np.array([[1, 1], [3, 3]], np.float32))
    with FeatureCache(tmp_path, INFO) as cache:  # the next run, killed before consolidating
        cache.write_chunk([new], np.array([[2, 2]], np.float32))
    with FeatureCache(tmp_path, INFO) as cache:
        assert cache.lookup([new, FileStat("a/y.jpg", 5, 1)]) == {"a/x.jpg", "a/y.jpg"}
        np.testing.assert_array_equal(cache.read(["a/x.jpg", "a/y.jpg"]), [[2, 2], [3, 3]])
        cache.consolidate([new, FileStat("a/y.jpg", 5, 1)])
        np.testing.assert_array_equal(cache.read(["a/x.jpg", "a/y.jpg"]), [[2, 2], [3, 3]])


def test_chunks_of_older_versions_come_before_numbered_ones(tmp_path):
    stat_old, stat_new = FileStat("x.jpg", 1, 1), FileStat("x.jpg", 2, 2)
    with FeatureCache(tmp_path, INFO) as cache:
        legacy = cache.pending / "chunk-ffffffffffff.h5"  # a uuid name, as before numbering
        cache._write(legacy, [stat_old], np.array([[1, 1]], np.float32))
        os.utime(legacy, ns=(1, 1))
        cache.write_chunk([stat_new], np.array([[2, 2]], np.float32))
        assert [p.name for p in cache._chunks()] == ["chunk-ffffffffffff.h5", "chunk-0000000001.h5"]
    with FeatureCache(tmp_path, INFO) as cache:
        assert cache.lookup([stat_new]) == {"x.jpg"}
        cache.write_chunk([stat_old], np.array([[5, 5]], np.float32))
        assert cache._chunks()[-1].name == "chunk-0000000002.h5"
