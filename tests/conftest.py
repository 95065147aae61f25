"""Shared fixtures: the real Flickr8k pack beside the repo, seeded torch."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
FLICKR8K = REPO_ROOT.parent / "shared" / "data" / "flickr8k"


@pytest.fixture
def flickr8k_dir() -> Path:
    """The Flickr8k pack at ../shared/data/flickr8k; skips with a reason where it is absent."""
    if not (FLICKR8K / "captions.tsv").is_file():
        pytest.skip(f"real-data test: {FLICKR8K} not found (CI has it at ../shared beside the repo)")
    return FLICKR8K


@pytest.fixture(autouse=True)
def _seed_torch() -> None:
    torch.manual_seed(0)
