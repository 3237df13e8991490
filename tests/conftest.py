"""Fixtures shared by every test suite."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

# Makes ``import support`` work for every suite without a tests/__init__.py.
_TESTS_DIR = str(Path(__file__).resolve().parent)
if _TESTS_DIR not in sys.path:
    sys.path.insert(0, _TESTS_DIR)

from support.tiny_model import ensure_tiny_catalog, ensure_tiny_model  # noqa: E402

# Database fixtures (SQLite and a fresh PostgreSQL database) for every suite.
pytest_plugins = ["support.databases"]


@pytest.fixture(scope="session")
def tiny_model_dir() -> Path:
    """The tiny chat model's directory (trained on first use, then reused)."""
    return ensure_tiny_model()


@pytest.fixture(scope="session")
def tiny_catalog(tiny_model_dir: Path) -> Path:
    """A model catalog pinning the tiny model, calibrated once and kept beside it."""
    return ensure_tiny_catalog(tiny_model_dir)
