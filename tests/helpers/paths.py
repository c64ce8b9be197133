"""Folders the tests read: the repository, its sample photos, and the shared real data sets."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "tl_cli"
SAMPLE_DATA = REPO / "sample_data"
SHARED_DATA = REPO.parent / "shared" / "data"  # real data sets beside the checkout; tests skip without them
